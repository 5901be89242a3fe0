"""Every bad input the system knows, with its expected outcome, through build, score and
predict; and corrupt shards through the trainer and evaluate. Input count = written +
rejected in every case."""

from __future__ import annotations

import collections
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline import build_records, make_sample, score
from schemas import chexpert
from trainer import config as config_lib
from trainer import evaluate, inference, predict, train
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
    m = build_records.run([f"--input_dir={root}", f"--output_dir={out}", "--image_size=32", "--runner=DirectRunner"])
    with open(os.path.join(out, "rejected-train.jsonl")) as f:
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
                   f"--input_pattern={bad_folder}/*"])
    assert m["inputs"] == len(FILES) == m["scored"] + m["rejected"]
    with open(tmp_path / "scores" / "rejected.jsonl") as f:
        score_rejects = {os.path.basename(json.loads(line)["key"]): json.loads(line)["reason"] for line in f}
    job = inference.load_job(trained_job)
    results, failures = predict.predict_files(job, sorted(str(p) for p in bad_folder.iterdir()), threshold=0.35)
    predict_rejects = {os.path.basename(f["path"]): f["reason"] for f in failures}
    want = {name: reason for name, (_, reason) in FILES.items() if reason}
    assert score_rejects == predict_rejects == want
    assert sorted(os.path.basename(r["path"]) for r in results) == sorted(n for n, (_, r) in FILES.items() if not r)


def _corrupt_copy(records_dir, tmp_path):
    """A copy of the records with one valid shard's bytes flipped in the middle."""
    copy = tmp_path / "records"
    shutil.copytree(records_dir, copy)
    m = json.loads((copy / "manifest.json").read_text())
    shard = copy / m["splits"]["valid"]["shards"][0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return str(copy), str(shard)


def test_corrupt_shard_stops_evaluate_naming_it_or_is_skipped(trained_job, records_dir, tmp_path):
    copy, shard = _corrupt_copy(records_dir, tmp_path)
    job_dir = tmp_path / "job"
    shutil.copytree(trained_job, job_dir)
    cfg = json.loads((job_dir / "config.json").read_text())
    cfg["records_dir"] = copy
    (job_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(input_lib.CorruptShardError, match=os.path.basename(shard)):
        evaluate.run([str(job_dir)], tune_split="", n_boot=10, report_dir=str(tmp_path / "r1"))
    out = evaluate.run([str(job_dir)], tune_split="", n_boot=10, report_dir=str(tmp_path / "r2"), skip_corrupt=True)
    assert list(out["skipped_shards"]) == [shard]


def test_corrupt_shard_stops_training_naming_it_or_is_skipped(records_dir, tmp_path):
    copy, shard = _corrupt_copy(records_dir, tmp_path)
    kw = dict(pathology="atelectasis", records_dir=copy, image_size=32, backbone="tiny", epochs=1,
              steps_per_epoch=2, batch_size=4)
    cfg = config_lib.make_config(job_dir=str(tmp_path / "j1"), **kw)
    with pytest.raises(input_lib.CorruptShardError, match=os.path.basename(shard)):
        train.run(cfg)
    cfg = config_lib.make_config(job_dir=str(tmp_path / "j2"), skip_corrupt=True, **kw)
    assert list(train.run(cfg)["skipped_shards"]) == [shard]


# Needs the one-line call in build_records._read_file, `imaging.refuse_link_outside(path, name)`
# (pipeline/imaging.py has the check; build_records.py is another branch's to edit): strict, so
# the marker must go once that line is in.
@pytest.mark.xfail(strict=True, reason="build_records._read_file does not call imaging.refuse_link_outside yet")
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
    out = str(tmp_path / "out")
    m = build_records.run([f"--input_dir={root}", f"--output_dir={out}", "--image_size=32", "--runner=DirectRunner"])
    with open(os.path.join(out, "rejected-train.jsonl")) as f:
        rejects = [json.loads(line) for line in f]
    assert [(r["path"], r["reason"]) for r in rejects] == [(cells["Path"], "link_outside_dataset")]
    assert str(outside) in rejects[0]["detail"] and "not followed" in rejects[0]["detail"]
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"link_outside_dataset": 1}
