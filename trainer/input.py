"""tf.data input: committed TFRecord shards -> batches of (image, targets, masks).

The order of operations, and why:

    list shard files (shuffled each epoch when training: a cheap global shuffle)
    -> shard per InputContext       (each worker reads different files, not every Nth record)
    -> repeat (training)            (of the file list, reshuffled each pass, as TF Model
                                     Garden's readers do: the record shuffle below never
                                     drains and refills at an epoch's end, a stall of a whole
                                     buffer per epoch that cost small datasets ~40% of their
                                     throughput (BUILD_NOTES). Epochs blur at the edges by at
                                     most the open files plus the buffer; steps per epoch are
                                     counted, so epochs, history and checkpoints are unchanged)
    -> interleave TFRecordDataset   (parallel reads; unordered when training: --deterministic's
                                     op determinism overrides that and every map's order)
    -> frontal views only           (records are frontal-first in each shard, so this is
                                     take(N) per file with N from the manifest: no per-record
                                     work; older records fall back to a per-record filter
                                     that parses only image/view)
    -> shuffle                      (serialized records: 2048 x ~100 KB = 210 MB, the same
                                     as uint8 pixels and 4x less than float ones)
    -> batch                        (per-replica batch; drop_remainder when training: static
                                     shapes, so XLA compiles once)
    -> parse + decode + targets     (vectorised over the batch: tf.io.parse_example, one
                                     decode_raw for the whole batch, policy table gather)
    -> resize                       (one batched resize, when training smaller than the
                                     records; augmented training keeps the float result)
    -> prefetch(AUTOTUNE)           (last)

Parsing and decoding per batch instead of per record is what makes this pipeline fast on
few cores: per-record tf.data map calls cost tens of microseconds each, which at 100 KB
images is more than the work itself (BUILD_NOTES.md, input benchmark). Augmentation is not
done here: the train step applies it on the replica's device (``trainer.augment``).

Elements are dicts:
    image    uint8   (batch, S, S, 1); float32 (batch, S, S, 1) when training with
             augmentation at a size S below the records' (the resize, not yet rounded)
    targets  float32 (batch, T)   per task: 0/1 or a soft value; class index for multiclass
    masks    float32 (batch, T)   1 where the target counts in the loss
    raw      int64   (batch, T)   the stored label codes (evaluation's ground truth)
    path     string  (batch,)     study string (batch,), dataset string (batch,): b"chexpert",
                                  b"nih" or b"mimic" (``source/dataset``) (evaluation only)
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from schemas import chexpert
from schemas import example as ex
from schemas import example_tf
from core.errors import ConfigError
from schemas.manifest import Manifest
from serving import preprocess
from trainer.config import TrainConfig, read_manifest

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


class CorruptShardError(RuntimeError):
    """A TFRecord shard that cannot be read to the end; the message names the file."""


def shard_files(records_dir: str, split: str, manifest: Manifest) -> list[str]:
    """The shards a committed manifest lists for ``split`` (never a glob: no partial files)."""
    if split not in manifest.splits:
        raise ValueError(f"{records_dir}: the manifest has no split {split!r}; its splits are "
                         f"{', '.join(sorted(manifest.splits)) or 'none'}")
    return [os.path.join(records_dir, n) for n in manifest.splits[split].shards]


def frontal_counts(records_dir: str, files: list[str]) -> list[int] | None:
    """Frontal records at the head of each file, when the records job wrote them frontal
    first (manifest ``record_order``); None when that cannot be relied on (older records, or
    a file the manifest does not describe), and the reader must filter per record."""
    try:
        manifest = read_manifest(records_dir)
    except ConfigError:
        return None
    if manifest.record_order != ex.RECORD_ORDER:
        return None
    stats, root = manifest.shard_stats, os.path.abspath(records_dir)
    out = []
    for file in files:
        # Shards are named relative to the records folder (snapshot-.../train-...tfrecord).
        rel = os.path.relpath(os.path.abspath(file), root).replace(os.sep, "/")
        st = stats.get(rel)
        if st is None or rel.startswith("../"):
            return None
        out.append(int(st.views.get("frontal", 0)))
    return out


def count_examples(manifest: Manifest, split: str, views: str) -> int:
    """Examples of ``split`` the pipeline will yield under ``views`` (from the manifest)."""
    sp = manifest.splits[split]
    if views == "all" or sp.views is None:
        return int(sp.written)
    return int(sp.views.get("frontal", 0))


def scan_shards(files: list[str]) -> tuple[list[str], dict[str, str]]:
    """Reads every shard to the end, checking each record's CRCs, and parses its first
    record with the schema (a valid TFRecord of someone else's Examples is not a shard).

    Returns:
        ``(good files, {bad file: error})``.
    """
    good, bad = [], {}
    for f in files:
        try:
            first = None
            for record in tf.data.TFRecordDataset(f, buffer_size=1 << 20):
                first = record if first is None else first
            if first is not None:
                try:
                    example_tf.parse(first, decode=False)
                except tf.errors.InvalidArgumentError as e:
                    bad[f] = f"not a CheXpert record of this schema ({e.message.splitlines()[0]})"
                    continue
            good.append(f)
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError) as e:
            bad[f] = e.message.splitlines()[0] if e.message else type(e).__name__
    return good, bad


# What reading a damaged or foreign shard raises inside tf.data: DataLossError for bad
# CRCs or truncation, InvalidArgumentError when a record is not one of our Examples.
READ_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)


def checked(dataset: tf.data.Dataset, files: list[str]):
    """Iterates ``dataset``; a corrupt or foreign record becomes a CorruptShardError naming
    the shard(s) (TensorFlow's own errors name only an offset or a feature key)."""
    try:
        yield from dataset
    except READ_ERRORS as e:
        raise corrupt_error(files, e) from None


def corrupt_error(files: list[str], error: tf.errors.OpError) -> Exception:
    """The error to raise for ``error`` while reading ``files``: a CorruptShardError that
    names the bad shard(s) after scanning them, or ``error`` itself when every shard reads
    and parses (then the cause is elsewhere, e.g. a shape mismatch in the model)."""
    _, bad = scan_shards(files)
    if not bad:
        return error
    named = "; ".join(f"{f}: {err}" for f, err in bad.items())
    return CorruptShardError(f"corrupt or foreign TFRecord shard(s): {named}. Rebuild the records, or pass "
                             "--skip_corrupt to skip and report them")


def drop_corrupt(files: list[str]) -> tuple[list[str], dict[str, str]]:
    """``--skip_corrupt``: the readable shards, and {corrupt shard: error} (logged)."""
    good, bad = scan_shards(files)
    for f, err in bad.items():
        log.warning("--skip_corrupt: skipping corrupt shard %s (%s)", f, err)
    return good, bad


def task_indices(tasks) -> list[int]:
    return [chexpert.OBSERVATION_INDEX[t] for t in tasks]


def _decode_batch(f: dict, encoding: str, stored: int) -> tf.Tensor:
    """uint8 (B, stored, stored, 1) from a parsed batch."""
    if encoding == "raw":
        # Every raw record of a dataset has the same length: one op decodes the whole batch.
        flat = tf.io.decode_raw(f[ex.IMAGE_ENCODED], tf.uint8)
        return tf.reshape(flat, [-1, stored, stored, 1])
    return tf.map_fn(lambda e: tf.ensure_shape(tf.io.decode_image(e, channels=1, expand_animations=False),
                                               [stored, stored, 1]),
                     f[ex.IMAGE_ENCODED], fn_output_signature=tf.TensorSpec([stored, stored, 1], tf.uint8))


_VIEW_SPEC = {ex.IMAGE_VIEW: example_tf.FEATURE_SPEC[ex.IMAGE_VIEW]}


def make_dataset(
    files: list[str],
    cfg: TrainConfig,
    *,
    training: bool,
    batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    skip_errors: bool = False,
    teacher=None,
    frontal_only_by: str = "auto",
) -> tf.data.Dataset:
    """Builds the input pipeline described in the module docstring.

    Args:
        files: shard paths (``shard_files``).
        cfg: image sizes and encoding, tasks, policy, views, augmentation, seed, buffer.
        training: shuffle, repeat and drop the last partial batch (the step augments).
        batch_size: the batch this pipeline yields (per replica under a strategy).
        input_context: from ``strategy.distribute_datasets_from_function``; shards files.
        skip_errors: drop records that fail to read instead of raising (``--skip_corrupt``
            after ``scan_shards`` removed the files known to be bad).
        teacher: a ``distill.lookup`` function, paths (B,) -> teacher logits (B, T): adds
            ``"teacher"`` to training batches.
        frontal_only_by: with ``views="frontal"``: ``auto`` reads each shard's frontal head
            when the manifest allows (``frontal_counts``), else filters per record;
            ``filter`` always filters per record (the benchmark's comparison).

    Returns:
        A dataset of dicts (see module docstring).
    """
    table = chexpert.policy_matrix(cfg.policy, cfg.blank)
    idx = tf.constant(task_indices(cfg.tasks), tf.int64)
    size, stored = cfg.image_size, cfg.records_image_size
    if frontal_only_by not in ("auto", "filter"):
        raise ValueError(f"frontal_only_by={frontal_only_by!r}; expected auto or filter")
    heads = None
    if cfg.views == "frontal" and frontal_only_by == "auto":
        heads = frontal_counts(cfg.records_dir, files)
    if heads is not None:
        # Skip shards with no frontal record at all: nothing to open.
        files, heads = [f for f, n in zip(files, heads) if n], [n for n in heads if n]
    files_ds = tf.data.Dataset.from_tensor_slices((
        tf.constant(files, tf.string, shape=[len(files)]),
        tf.constant(heads if heads is not None else [-1] * len(files), tf.int64, shape=[len(files)])))
    if training:
        files_ds = files_ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)
    if input_context and input_context.num_input_pipelines > 1:
        files_ds = files_ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        files_ds = files_ds.repeat()
    ds = files_ds.interleave(
        # take(-1) reads the whole file.
        lambda f, n: tf.data.TFRecordDataset(f, buffer_size=1 << 20).take(n),
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if skip_errors:
        ds = ds.ignore_errors(log_warning=True)
    if cfg.views == "frontal" and heads is None:
        ds = ds.filter(lambda s: tf.equal(tf.io.parse_single_example(s, _VIEW_SPEC)[ex.IMAGE_VIEW], b"frontal"))
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training)

    def prepare(serialized):
        f = tf.io.parse_example(serialized, example_tf.FEATURE_SPEC)
        image = _decode_batch(f, cfg.records_encoding, stored)
        # Keep the static batch size of drop_remainder batches: XLA needs static shapes.
        image = tf.ensure_shape(image, [serialized.shape[0], stored, stored, 1])
        # Smaller training sizes (CPU demos) resize here, not in a rebuild, with the resize
        # every scorer repeats (serving.preprocess). The train step augments (trainer.augment)
        # the float result of a resize, rounding once, as when augmentation was done here.
        if training and cfg.augment and size != stored:
            image = preprocess.resize(tf.cast(image, tf.float32), size)
        else:
            image = preprocess.resize_pixels(image, size)
        targets, masks = example_tf.policy_targets(f[ex.LABELS_RAW], f[ex.LABELS_DRAW], table, f[ex.LABELS_LABELLER])
        # An observation the record's dataset does not label (NIH's fracture...) is blank
        # there: never a target, whatever --blank says.
        masks = masks * example_tf.labelled_mask(f[ex.SOURCE_DATASET])
        out = {"image": image, "targets": tf.gather(targets, idx, axis=-1), "masks": tf.gather(masks, idx, axis=-1)}
        if teacher is not None:
            out["teacher"] = teacher(f[ex.SOURCE_PATH])
        if not training:
            out.update(raw=tf.gather(f[ex.LABELS_RAW], idx, axis=-1), path=f[ex.SOURCE_PATH], study=f[ex.STUDY_ID],
                       dataset=f[ex.SOURCE_DATASET])
        return out

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=not training)
    options = tf.data.Options()
    options.deterministic = not training
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)
