"""Every bad input the system knows, with its expected outcome, through build, score and
predict; and corrupt shards through the trainer and evaluate. Input count = written +
rejected in every case."""

from __future__ import annotations

import collections
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import build_records, make_sample, score
from pipeline import index as index_lib
from schemas import chexpert
from trainer import config as config_lib
from serving import job as job_lib
from trainer import evaluate, predict, train
from trainer import input as input_lib
from tests import badinputs, images


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (10000, 9000)).save(buf, format="PNG")  # 90 Mpx, a few KB on disk
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turned upright on decoding
    buf = io.BytesIO()
    Image.fromarray(images.gradient(390, 320)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


# file name -> (bytes, expected reason or None when it must be converted and scored)
FILES = {
    "zero.jpg": (b"", "empty_file"),
    "truncated.jpg": (images.jpeg_bytes(images.gradient(300, 300))[:3000], "truncated_image"),
    "text.jpg": (b"GIF? no: plain text\n" * 30, "not_an_image"),
    "png16.png": (images.png_bytes(images.gradient(390, 320, np.uint16, 4095)), None),
    "rgb.jpg": (images.jpeg_bytes(np.stack([images.gradient(390, 320)] * 3, -1)), None),
    "mono1.dcm": (images.dicom_bytes(images.gradient(64, 64, np.uint16, 4000), photometric="MONOCHROME1"), None),
    "compressed.dcm": (images.dicom_bytes(images.gradient(64, 64, np.uint16), compressed=True), "dicom_unreadable"),
    "malformed.dcm": (b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage", "dicom_unreadable"),
    "bomb.png": (_bomb(), "image_too_large"),
    "nan.tif": (images.float_tiff_bytes(np.where(images.gradient(64, 64) == 7, np.nan, 1.0)), "nonfinite_pixels"),
    "tiny.png": (images.png_bytes(np.zeros((1, 1), np.uint8)), "image_too_small"),
    "rotated.jpg": (_rotated_jpeg(), None),
}


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    for name, (data, _) in FILES.items():
        (folder / name).write_bytes(data)
    return folder


def test_build_rejects_every_bad_row_with_its_reason(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=3, num_valid_patients=1, seed=5, workers=1, progress=False)
    expected = badinputs.plant(root)
    ds = os.path.join(root, make_sample.DATASET_DIR)
    # Add the DICOM and bomb cases as CSV rows too.
    extra = {"patient90100/study1/view1_frontal.dcm": FILES["compressed.dcm"],
             "patient90101/study1/view1_frontal.png": FILES["bomb.png"],
             "patient90102/study1/view1_frontal.tif": FILES["nan.tif"],
             "patient90103/study1/view1_frontal.png": FILES["tiny.png"]}
    with open(os.path.join(ds, "train.csv"), "a") as f:
        for rel, (data, reason) in extra.items():
            os.makedirs(os.path.join(ds, "train", os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(ds, "train", rel), "wb") as img:
                img.write(data)
            cells = {c: "" for c in chexpert.CSV_COLUMNS}
            cells.update({"Path": f"{make_sample.DATASET_DIR}/train/{rel}", "Sex": "Male", "Age": "50",
                          "Frontal/Lateral": "Frontal", "AP/PA": "AP"})
            f.write(",".join(cells[c] for c in chexpert.CSV_COLUMNS) + "\n")
            expected[cells["Path"]] = reason
    out = str(tmp_path / "out")
    m = build_records.run([f"--input_dir={root}", f"--output_dir={out}", "--image_size=32", "--runner=DirectRunner",
                           "--max_reject_fraction=1"])
    with open(os.path.join(out, m["rejected_files"][0])) as f:
        got = collections.Counter(json.loads(line)["reason"] for line in f)
    assert got == collections.Counter(r for r in expected.values() if r)
    for src in m["sources"].values():
        assert src["rows"] == src["written"] + src["rejected"]


@pytest.mark.parametrize("header_change,message", [
    (lambda h: h.replace(",Edema,", ","), "missing column.*'Edema'"),
    (lambda h: h + ",Comments", "unknown column.*'Comments'"),
])
def test_bad_csv_headers_fail_before_any_work(tmp_path, header_change, message):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=1, num_valid_patients=1, workers=1, progress=False)
    path = os.path.join(root, make_sample.DATASET_DIR, "train.csv")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join([header_change(lines[0])] + lines[1:]) + "\n")
    with pytest.raises(build_records.ConfigError, match=message):
        build_records.run([f"--input_dir={root}", f"--output_dir={tmp_path / 'out'}", "--runner=DirectRunner"])
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_score_and_predict_agree_on_every_bad_file(trained_job, bad_folder, tmp_path):
    m = score.run([f"--job_dir={trained_job}", f"--output_dir={tmp_path / 'scores'}", "--runner=DirectRunner",
                   f"--input_pattern={bad_folder}/*", "--max_reject_fraction=1"])
    assert m["inputs"] == len(FILES) == m["scored"] + m["rejected"]
    with open(tmp_path / "scores" / m["outputs"]["rejected"]) as f:
        score_rejects = {os.path.basename(json.loads(line)["key"]): json.loads(line)["reason"] for line in f}
    job = job_lib.load_job(trained_job)
    results, failures = predict.predict_files(job, sorted(str(p) for p in bad_folder.iterdir()), threshold=0.35)
    predict_rejects = {os.path.basename(f["path"]): f["reason"] for f in failures}
    want = {name: reason for name, (_, reason) in FILES.items() if reason}
    assert score_rejects == predict_rejects == want
    assert sorted(os.path.basename(r["path"]) for r in results) == sorted(n for n, (_, r) in FILES.items() if not r)


def _corrupt_copy(records_dir, tmp_path, damage="flipped"):
    """A copy of the records with one valid shard damaged: ``flipped``, a byte in the middle
    flipped (bad CRC); ``foreign``, replaced by a well-formed TFRecord of someone else's
    Examples."""
    copy = tmp_path / "records"
    shutil.copytree(records_dir, copy)
    m = json.loads((copy / "manifest.json").read_text())
    shard = copy / m["splits"]["valid"]["shards"][0]
    if damage == "flipped":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        with tf.io.TFRecordWriter(str(shard)) as w:
            for i in range(5):
                w.write(tf.train.Example(features=tf.train.Features(feature={
                    "image/raw": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})).SerializeToString())
    return str(copy), str(shard)


@pytest.mark.parametrize("damage", ["flipped", "foreign"])
def test_corrupt_shard_stops_evaluate_naming_it_or_is_skipped(trained_job, records_dir, tmp_path, damage):
    copy, shard = _corrupt_copy(records_dir, tmp_path, damage)
    job_dir = tmp_path / "job"
    shutil.copytree(trained_job, job_dir)
    cfg = json.loads((job_dir / "config.json").read_text())
    cfg["records_dir"] = copy
    (job_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(input_lib.CorruptShardError, match=os.path.basename(shard)):
        evaluate.run([str(job_dir)], tune_split="", n_boot=10, report_dir=str(tmp_path / "r1"))
    out = evaluate.run([str(job_dir)], tune_split="", n_boot=10, report_dir=str(tmp_path / "r2"), skip_corrupt=True)
    assert list(out["skipped_shards"]) == [shard]


@pytest.mark.parametrize("damage", ["flipped", "foreign"])
def test_corrupt_shard_stops_training_naming_it_or_is_skipped(records_dir, tmp_path, damage):
    copy, shard = _corrupt_copy(records_dir, tmp_path, damage)
    kw = dict(pathology="atelectasis", records_dir=copy, image_size=32, backbone="tiny", epochs=1,
              steps_per_epoch=2, batch_size=4, jit_compile=False)  # XLA: ~10 s per run, and tested elsewhere
    cfg = config_lib.make_config(job_dir=str(tmp_path / "j1"), **kw)
    with pytest.raises(input_lib.CorruptShardError, match=os.path.basename(shard)):
        train.run(cfg)
    cfg = config_lib.make_config(job_dir=str(tmp_path / "j2"), skip_corrupt=True, **kw)
    assert list(train.run(cfg)["skipped_shards"]) == [shard]


def test_build_survives_bad_bytes_in_its_csvs_losing_only_their_rows(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=3, num_valid_patients=1, seed=5, workers=1, progress=False)
    ds = os.path.join(root, make_sample.DATASET_DIR)
    clean = {name: open(os.path.join(ds, name), "rb").read().count(b"\n") - 1 for name in ("train.csv", "valid.csv")}
    want_rejects, want_written = badinputs.plant_csv_bytes(root)
    out = str(tmp_path / "out")
    m = build_records.run([f"--input_dir={root}", f"--output_dir={out}", "--image_size=32", "--runner=DirectRunner",
                           "--max_reject_fraction=1"])
    with open(os.path.join(out, m["rejected_files"][0])) as f:
        rejects = [json.loads(line) for line in f]
    assert {r["row"]: r["reason"] for r in rejects} == want_rejects
    for r in rejects:
        if r["reason"] in ("bad_csv", "nul_byte", "bad_row"):
            assert f"train.csv line {r['row']}" in r["detail"]
    train, valid = m["sources"]["train.csv"], m["sources"]["valid.csv"]
    assert train["rows"] == clean["train.csv"] + len(want_rejects) + len(want_written)
    assert train["rows"] == train["written"] + train["rejected"] and train["rejected"] == len(want_rejects)
    # valid.csv, rewritten with CR-only line endings, still reads as its rows.
    assert valid["rows"] == valid["written"] == clean["valid.csv"] and valid["rejected"] == 0
    with open(os.path.join(out, m["index_file"]), "rb") as f:
        index = index_lib.read_index(f.read())
    assert all(index[path]["view"] == "frontal" for path in want_written)


@pytest.fixture
def bad_bytes_csv(sample_dir, tmp_path):
    """A CSV of five readable rows of the sample's valid.csv (one with a quoted cell holding a
    line break) and rows with bad bytes. Returns ``(path, {line: reason})``."""
    with open(os.path.join(sample_dir, make_sample.DATASET_DIR, "valid.csv"), "rb") as f:
        header, *rows = f.read().splitlines()
    quoted = rows[4].split(b",")
    quoted[0] = b'"' + quoted[0] + b'"'
    quoted[3] = b'"' + quoted[3] + b'\r\n"'
    stray_cr, nul = rows[5].replace(b",", b"\r,", 1), rows[6].replace(b".jpg", b"\x00.jpg", 1)
    lines = [header, *rows[:4], b",".join(quoted), stray_cr, nul, b'"' + rows[7]]
    path = tmp_path / "bad_bytes.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), {8: "bad_csv", 9: "nul_byte", 10: "bad_csv"}  # the quoted row spans lines 6 and 7


def test_score_reads_a_csv_with_bad_bytes_row_by_row(trained_job, sample_dir, bad_bytes_csv, tmp_path):
    csv_path, want = bad_bytes_csv
    m = score.run([f"--job_dir={trained_job}", f"--output_dir={tmp_path / 'scores'}", "--runner=DirectRunner",
                   f"--csv={csv_path}", f"--image_root={sample_dir}", "--max_reject_fraction=1"])
    assert (m["inputs"], m["scored"], m["rejected"]) == (8, 5, 3)
    with open(tmp_path / "scores" / m["outputs"]["rejected"]) as f:
        assert {json.loads(line)["row"]: json.loads(line)["reason"] for line in f} == want


def test_evaluate_reads_a_csv_with_bad_bytes_row_by_row(trained_job, sample_dir, bad_bytes_csv):
    csv_path, want = bad_bytes_csv
    preds, failed = evaluate.predict_csv(job_lib.load_job(trained_job), csv_path, sample_dir, "all", tta=False)
    assert len(preds) == 5
    assert {f["row"]: f["reason"] for f in failed} == want


def test_an_incremental_build_keeps_rows_read_past_bad_bytes_by_their_first_line(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=2, num_valid_patients=1, seed=7, workers=1, progress=False)
    want_rejects, want_written = badinputs.plant_csv_bytes(root)
    args = [f"--input_dir={root}", "--image_size=32", "--runner=DirectRunner", "--max_reject_fraction=1"]
    first = build_records.run([f"--output_dir={tmp_path / 'out'}", *args])
    new = f"{make_sample.DATASET_DIR}/train/patient90300/study1/view1_frontal.jpg"
    os.makedirs(os.path.join(root, os.path.dirname(new)))
    with open(os.path.join(root, new), "wb") as f:
        f.write(images.jpeg_bytes(images.gradient(330, 320)))
    cells = {c: "" for c in chexpert.CSV_COLUMNS}
    cells.update({"Path": new, "Sex": "Male", "Age": "60", "Frontal/Lateral": "Frontal", "AP/PA": "PA"})
    with open(os.path.join(root, make_sample.DATASET_DIR, "train.csv"), "a") as f:
        f.write(",".join(cells[c] for c in chexpert.CSV_COLUMNS) + "\n")
    inc = build_records.run([f"--output_dir={tmp_path / 'out'}", "--incremental", *args])
    # Kept: every record of the first run, the two-line quoted row among them (skipped by its
    # first line); read again: the new row and the rejected ones.
    assert inc["incremental"]["kept"] == first["written"]
    assert inc["incremental"]["processed"] == 1 + len(want_rejects)
    full = build_records.run([f"--output_dir={tmp_path / 'ref'}", *args])
    assert inc["sources"] == full["sources"]
    for name, name_ref in zip(inc["rejected_files"], full["rejected_files"]):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name_ref).read_bytes()
    index = {d: index_lib.read_index((tmp_path / d / m["index_file"]).read_bytes())
             for d, m in (("out", inc), ("ref", full))}
    drop_shard = lambda ix: {p: {k: v for k, v in e.items() if k != "shard"} for p, e in ix.items()}  # noqa: E731
    assert drop_shard(index["out"]) == drop_shard(index["ref"])
    assert set(want_written) | {new} <= set(index["out"])


def test_build_refuses_a_link_out_of_the_dataset(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=2, num_valid_patients=1, seed=5, workers=1, progress=False)
    ds = os.path.join(root, make_sample.DATASET_DIR)
    outside = tmp_path / "elsewhere.jpg"  # a perfectly good image, just not the dataset's
    outside.write_bytes(images.jpeg_bytes(images.gradient(390, 320)))
    rel = "train/patient90200/study1/view1_frontal.jpg"
    os.makedirs(os.path.dirname(os.path.join(ds, rel)))
    os.symlink(outside, os.path.join(ds, rel))
    cells = {c: "" for c in chexpert.CSV_COLUMNS}
    cells.update({"Path": f"{make_sample.DATASET_DIR}/{rel}", "Sex": "Male", "Age": "50",
                  "Frontal/Lateral": "Frontal", "AP/PA": "AP"})
    with open(os.path.join(ds, "train.csv"), "a") as f:
        f.write(",".join(cells[c] for c in chexpert.CSV_COLUMNS) + "\n")
    # Paths that leave the dataset folder without a link inside it: another folder of the
    # input root, a link beside the dataset folder, a sibling whose name extends the dataset's.
    far = tmp_path / "far"
    beside = [f"other/patient90201/{rel.split('/', 2)[2]}", f"lnk/patient90202/{rel.split('/', 2)[2]}",
              f"{make_sample.DATASET_DIR}-x/train/patient90203/{rel.split('/', 2)[2]}"]
    os.symlink(far, os.path.join(root, "lnk"))
    for path in beside:
        target = os.path.join(str(far), path.split("/", 1)[1]) if path.startswith("lnk/") else os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(outside, target)
    with open(os.path.join(ds, "train.csv"), "a") as f:
        for path in beside[:2]:
            f.write(",".join({**cells, "Path": path}[c] for c in chexpert.CSV_COLUMNS) + "\n")
    out = str(tmp_path / "out")
    flags = [f"--input_dir={root}", f"--output_dir={out}", "--image_size=32", "--runner=DirectRunner",
             "--max_reject_fraction=1"]
    m = build_records.run(flags)
    with open(os.path.join(out, m["rejected_files"][0])) as f:
        rejects = [json.loads(line) for line in f]
    assert [(r["path"], r["reason"]) for r in rejects] == [(cells["Path"], "link_outside_dataset")] + [
        (path, "bad_path") for path in beside[:2]]
    assert str(outside) in rejects[0]["detail"] and "not followed" in rejects[0]["detail"]
    assert f"is not in {make_sample.DATASET_DIR}/, the dataset folder that holds train.csv" in rejects[1]["detail"]
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"link_outside_dataset": 1, "bad_path": 2}
    # The same rule on an incremental run's in-process path.
    with open(os.path.join(ds, "train.csv"), "a") as f:
        f.write(",".join({**cells, "Path": beside[2]}[c] for c in chexpert.CSV_COLUMNS) + "\n")
    m = build_records.run(flags + ["--incremental"])
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"link_outside_dataset": 1, "bad_path": 3}
    # A committed image replaced by a link to a copy outside the dataset with the same size and
    # mtime (`cp -a` then `ln -s`): a change, so the link is looked at and refused, as a full
    # rebuild would.
    kept = next(p for p in index_lib.read_index(open(os.path.join(out, m["index_file"]), "rb").read())
                if p.startswith(f"{make_sample.DATASET_DIR}/train/"))
    copy = str(tmp_path / "copy.jpg")
    shutil.copy2(os.path.join(root, kept), copy)
    os.remove(os.path.join(root, kept))
    os.symlink(copy, os.path.join(root, kept))
    rejected_before = m["incremental"]["processed"]  # dead letters are read again each run
    m = build_records.run(flags + ["--incremental", "--max_shrink_fraction=1"])
    assert m["incremental"]["processed"] == rejected_before + 1
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"link_outside_dataset": 2, "bad_path": 3}


def test_a_fifo_in_place_of_a_csv_is_an_error_naming_it_not_a_hang(tmp_path):
    root = str(tmp_path / "in")
    make_sample.generate(root, num_patients=2, num_valid_patients=1, seed=5, workers=1, progress=False)
    csv = os.path.join(root, make_sample.DATASET_DIR, "valid.csv")
    os.remove(csv)
    os.mkfifo(csv)

    def unblock():  # should the job open the FIFO, let it read an empty file and fail, not hang
        time.sleep(30)
        try:  # non-blocking: fails at once (ENXIO) when no reader has the FIFO open
            os.close(os.open(csv, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    threading.Thread(target=unblock, daemon=True).start()
    with pytest.raises(build_records.ConfigError, match=f"{csv}: not a regular file"):
        build_records.run([f"--input_dir={root}", f"--output_dir={tmp_path / 'out'}", "--runner=DirectRunner"])
