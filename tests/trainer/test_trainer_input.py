"""trainer/input.py on generated records: shapes, targets, masks, order, shuffling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from schemas import chexpert
from trainer import config as config_lib
from trainer import input as input_lib


def _cfg(records_dir, **kw):
    kw.setdefault("pathology", "atelectasis,cardiomegaly")
    return config_lib.make_config(records_dir=records_dir, job_dir="/tmp/unused", image_size=32, **kw)


def _manifest(records_dir):
    return config_lib.read_manifest(records_dir)


def test_eval_pipeline_yields_every_frontal_once_with_policy_targets(records_dir):
    cfg = _cfg(records_dir)
    m = _manifest(records_dir)
    files = input_lib.shard_files(records_dir, "valid", m)
    ds = input_lib.make_dataset(files, cfg, training=False, batch_size=8)
    batches = list(ds.as_numpy_iterator())
    n = sum(len(b["path"]) for b in batches)
    assert n == input_lib.count_examples(m, "valid", "frontal") == m.splits["valid"].views["frontal"]
    b = batches[0]
    assert b["image"].dtype == np.uint8 and b["image"].shape[1:] == (32, 32, 1)
    assert b["targets"].dtype == np.float32 and b["targets"].shape[1:] == (2,)
    assert all(b"frontal" in p for batch in batches for p in batch["path"])
    # cardiomegaly (multiclass) first, atelectasis (ones): tasks follow CSV order.
    assert cfg.tasks == ("cardiomegaly", "atelectasis")
    table = chexpert.policy_matrix(cfg.policy, cfg.blank)
    for batch in batches:
        for raw, t, mk in zip(batch["raw"], batch["targets"], batch["masks"]):
            codes = np.full(14, int(chexpert.Code.BLANK))
            codes[[2, 8]] = raw
            want_t, want_m = chexpert.apply_policy(codes, np.zeros(14, np.float32), table)
            np.testing.assert_array_equal(t, want_t[[2, 8]])
            np.testing.assert_array_equal(mk, want_m[[2, 8]])


def test_policy_override_changes_targets_without_a_rebuild(records_dir):
    m = _manifest(records_dir)
    files = input_lib.shard_files(records_dir, "train", m)
    got = {}
    for policy in ("atelectasis=ones", "atelectasis=zeros", "atelectasis=ignore"):
        cfg = _cfg(records_dir, pathology="atelectasis", policy=policy)
        ds = input_lib.make_dataset(files, cfg, training=False, batch_size=1000)
        b = next(iter(ds))
        unc = b["raw"].numpy()[:, 0] == -1
        assert unc.any()
        got[policy] = (b["targets"].numpy()[unc, 0], b["masks"].numpy()[unc, 0])
    assert (got["atelectasis=ones"][0] == 1).all() and (got["atelectasis=ones"][1] == 1).all()
    assert (got["atelectasis=zeros"][0] == 0).all() and (got["atelectasis=zeros"][1] == 1).all()
    assert (got["atelectasis=ignore"][1] == 0).all()


def test_training_pipeline_order_and_static_batches(records_dir):
    cfg = _cfg(records_dir)
    files = input_lib.shard_files(records_dir, "train", _manifest(records_dir))
    ds = input_lib.make_dataset(files, cfg, training=True, batch_size=4)
    assert ds.element_spec["image"].shape.as_list() == [4, 32, 32, 1]  # drop_remainder: static for XLA
    # Augmentation happens in the train step (tests/trainer/test_augment.py): at the records'
    # size tf.data hands it the stored uint8 pixels.
    assert cfg.augment and ds.element_spec["image"].dtype == tf.uint8
    assert set(ds.element_spec) == {"image", "targets", "masks"}
    # Walk the graph back from the output: prefetch is last, then batch, the record shuffle,
    # interleave, and the file list's repeat and shuffle (repeat before the record shuffle:
    # the buffer never drains at an epoch's end).
    names, d = [], ds
    while hasattr(d, "_input_dataset"):
        names.append(type(d).__name__)
        d = d._input_dataset
    assert names[0] == "_PrefetchDataset"
    kept = ("_ParallelMapDataset", "_BatchDataset", "_RepeatDataset", "_ShuffleDataset", "_ParallelInterleaveDataset")
    order = [n for n in names if n in kept]
    assert order == ["_ParallelMapDataset", "_BatchDataset", "_ShuffleDataset", "_ParallelInterleaveDataset",
                     "_RepeatDataset", "_ShuffleDataset"], names
    for i, b in enumerate(ds.take(3)):
        assert b["image"].shape == (4, 32, 32, 1)


def test_files_are_shuffled_per_epoch_and_sharded_per_input_pipeline(records_dir, tmp_path):
    # make_dataset's own file shuffle, seen from outside: one record per file and a record
    # shuffle buffer of 1, so the order records come out in is the order files were opened in
    # (up to the parallel interleave's local reordering, at most its 8 open files).
    records = list(tf.data.TFRecordDataset(input_lib.shard_files(records_dir, "train", _manifest(records_dir))).take(32))
    files = []
    for i, record in enumerate(records):
        files.append(str(tmp_path / f"one-{i:02d}.tfrecord"))
        with tf.io.TFRecordWriter(files[-1]) as w:
            w.write(record.numpy())
    cfg = _cfg(records_dir, views="all", shuffle_buffer=1, augment=False)
    stream = input_lib.make_dataset(files, cfg, training=True, batch_size=1).as_numpy_iterator()
    seen = [next(stream)["image"].tobytes() for _ in range(3 * len(files) + 8)]  # an image names its file
    assert len(set(seen)) == len(files)
    # Each file once per pass of the list; the k-th pass's reads lie in the k-th block of 32,
    # give or take the interleave's 8 open files (the file list repeats before the interleave).
    places = [np.array([[i for i, image in enumerate(seen) if image == name][k] for name in seen[:len(files)]])
              for k in range(3)]
    for k, p in enumerate(places):
        assert (p >= k * len(files) - 8).all() and (p < (k + 1) * len(files) + 8).all(), (k, p)
    # Without the shuffle every epoch opens the files in one order (rank correlation near 1);
    # with it, each epoch's order is a fresh permutation (near 0; the seed is fixed).
    for a, b in ((0, 1), (1, 2), (0, 2)):
        rho = np.corrcoef(places[a], places[b])[0, 1]
        assert abs(rho) < 0.6, (a, b, rho)
    # The real pipeline: each of two input pipelines reads a disjoint half of the files.
    cfg = _cfg(records_dir)
    real = input_lib.shard_files(records_dir, "train", _manifest(records_dir))
    paths = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2)
        ds = input_lib.make_dataset(real, cfg, training=False, batch_size=1000, input_context=ctx)
        paths.append({p for b in ds for p in b["path"].numpy()})
    assert paths[0] and paths[1] and not paths[0] & paths[1]


def test_corrupt_shard_is_found_and_named(records_dir, tmp_path):
    src = input_lib.shard_files(records_dir, "valid", _manifest(records_dir))[0]
    bad = tmp_path / "valid-00000-of-00002.tfrecord"
    data = open(src, "rb").read()
    bad.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    good, broken = input_lib.scan_shards([src, str(bad)])
    assert good == [src] and list(broken) == [str(bad)]


def test_shards_hold_frontal_views_first_so_the_reader_takes_a_head(records_dir, tmp_path):
    from schemas import example as ex
    from schemas import example_tf

    m = _manifest(records_dir)
    assert m.record_order == ex.RECORD_ORDER
    files = input_lib.shard_files(records_dir, "train", m)
    heads = input_lib.frontal_counts(records_dir, files)
    assert sum(heads) == m.splits["train"].views["frontal"]
    saw_lateral = False
    for f, n in zip(files, heads):
        views = [r[ex.IMAGE_VIEW] for r in tf.data.TFRecordDataset(f).map(
            lambda s: example_tf.parse(s, decode=False)).as_numpy_iterator()]
        assert views == [b"frontal"] * n + [b"lateral"] * (len(views) - n)
        saw_lateral |= len(views) > n
    assert saw_lateral  # else the check above proves nothing
    # Reading the heads gives exactly what the per-record filter gives.
    cfg = _cfg(records_dir, pathology="atelectasis")
    paths = {}
    for how in ("auto", "filter"):
        ds = input_lib.make_dataset(files, cfg, training=False, batch_size=64, frontal_only_by=how)
        paths[how] = sorted(p for b in ds.as_numpy_iterator() for p in b["path"])
    assert paths["auto"] == paths["filter"] and len(paths["auto"]) == sum(heads)
    # A file the manifest does not describe (here: a copy elsewhere) falls back to filtering.
    copy = tmp_path / os.path.basename(files[0])
    copy.write_bytes(open(files[0], "rb").read())
    assert input_lib.frontal_counts(records_dir, [str(copy)]) is None


def test_the_blank_flag_overrides_the_records_blank_handling(records_dir):
    """--blank (make_config's ``blank``) decides what a blank label becomes in tf.data,
    whatever the records were built with (here --blank=negative, the default); the policy is
    applied to the stored raw codes, so no rebuild is needed."""
    from trainer import task

    m = _manifest(records_dir)
    assert m.blank == "negative"
    files = input_lib.shard_files(records_dir, "train", m)
    got = {}
    for blank in (None, "ignore"):
        cfg = _cfg(records_dir, pathology="atelectasis", blank=blank)
        b = next(iter(input_lib.make_dataset(files, cfg, training=False, batch_size=1000)))
        raw, targets, masks = b["raw"].numpy()[:, 0], b["targets"].numpy()[:, 0], b["masks"].numpy()[:, 0]
        is_blank = raw == int(chexpert.Code.BLANK)
        assert is_blank.any() and (raw == int(chexpert.Code.POSITIVE)).any()
        got[blank] = (cfg.blank, targets[is_blank], masks[is_blank], targets[~is_blank], masks[~is_blank])
    (default, t0, m0, known_t0, known_m0), (ignore, t1, m1, known_t1, known_m1) = got[None], got["ignore"]
    assert (default, ignore) == ("negative", "ignore")
    assert (t0 == 0).all() and (m0 == 1).all()  # the records' handling: blank is a known negative
    assert (m1 == 0).all()  # overridden: blank is masked out of the loss
    np.testing.assert_array_equal(known_t0, known_t1)  # other labels are untouched
    np.testing.assert_array_equal(known_m0, known_m1)
    try:  # the command line's flag reaches the config
        task.FLAGS(["trainer.task", f"--records_dir={records_dir}", "--image_size=32", "--blank=ignore"])
        assert task.config_from_flags().blank == "ignore"
    finally:
        task.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def encoded_records(sample_dir, tmp_path_factory):
    """Records of ``sample_dir`` as ``records_dir``'s (32 px, 20% holdout, 2 shards) but with
    the images PNG- and JPEG-encoded: {encoding: records folder}."""
    from pipeline import build_records

    out = {}
    for encoding in ("png", "jpeg"):
        out[encoding] = str(tmp_path_factory.mktemp(f"records32-{encoding}"))
        build_records.run([f"--input_dir={sample_dir}", f"--output_dir={out[encoding]}", "--image_size=32",
                           "--num_shards=2", "--holdout_fraction=0.2", "--runner=DirectRunner",
                           f"--encoding={encoding}"])
    return out


def _images_by_path(records_dir, split, **kw):
    cfg = _cfg(records_dir, views="all", **kw)
    files = input_lib.shard_files(records_dir, split, _manifest(records_dir))
    ds = input_lib.make_dataset(files, cfg, training=False, batch_size=64)
    return cfg, {p: image for b in ds.as_numpy_iterator() for p, image in zip(b["path"], b["image"])}


@pytest.mark.parametrize("split", ["train", "valid"])
def test_png_and_jpeg_records_are_read_as_the_raw_ones(records_dir, encoded_records, split):
    """The trainer decodes what the records job encoded (the manifest's encoding reaches the
    config): PNG gives the raw records' pixels exactly, JPEG close to them."""
    raw_cfg, raw = _images_by_path(records_dir, split)
    assert raw_cfg.records_encoding == "raw" and raw
    for encoding, folder in encoded_records.items():
        cfg, images = _images_by_path(folder, split)
        assert cfg.records_encoding == _manifest(folder).encoding == encoding
        assert images.keys() == raw.keys()
        diff = np.mean([np.abs(images[p].astype(int) - raw[p]).mean() for p in raw])
        if encoding == "png":  # lossless
            assert all(np.array_equal(images[p], raw[p]) for p in raw)
        else:
            assert 0 < diff < 4, diff
    if split != "train":
        return
    # Training batches decode too (the tester's train.run failed in DecodeRaw on PNG records).
    cfg = _cfg(encoded_records["png"], augment=False)
    files = input_lib.shard_files(encoded_records["png"], "train", _manifest(encoded_records["png"]))
    batch = next(iter(input_lib.make_dataset(files, cfg, training=True, batch_size=4)))
    assert batch["image"].shape == (4, 32, 32, 1) and batch["image"].dtype == tf.uint8
