"""Guards against mass loss and damaged output, valid-set leakage, and the one-line errors
of the scheduled jobs (issue 10). Each test is a fault an outside tester injected by hand."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pipeline import build_records, make_sample, score
from tests import outputs

ARGS = ["--image_size=16", "--num_shards=1", "--runner=DirectRunner"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("guards") / "in")
    make_sample.generate(root, num_patients=10, num_valid_patients=3, seed=4, workers=1, progress=False)
    return root


@pytest.fixture()
def data(pristine, tmp_path):
    """A private copy of the input and a committed build of it."""
    root = str(tmp_path / "in")
    shutil.copytree(pristine, root)
    out = str(tmp_path / "out")
    build_records.run([f"--input_dir={root}", f"--output_dir={out}", *ARGS])
    return root, out


def _build(root, out, *extra):
    return build_records.run([f"--input_dir={root}", f"--output_dir={out}", *ARGS, *extra])


def _main(root, out, *extra):
    return build_records.main([f"--input_dir={root}", f"--output_dir={out}", *ARGS, *extra])


def _committed(out):
    return {rel: open(os.path.join(out, rel), "rb").read()
            for rel in ["manifest.json", *outputs.manifest(out)["files"]]}


def test_an_unmounted_image_folder_is_an_error_naming_it_and_keeps_the_records(data, capsys):
    root, out = data
    before = _committed(out)
    train = os.path.join(root, make_sample.DATASET_DIR, "train")
    shutil.move(train, train + ".away")
    assert _main(root, out, "--incremental") == 2
    err = capsys.readouterr().err
    assert f"{train}: " in err and "does not exist" in err and "mounted" in err
    assert _committed(out) == before
    os.makedirs(train)  # mounted, but empty
    assert _main(root, out, "--incremental") == 2
    assert "holds none of them" in capsys.readouterr().err
    assert _committed(out) == before


def test_a_run_that_rejects_too_much_commits_nothing_and_exits_non_zero(data, capsys):
    root, out = data
    before = _committed(out)
    ds = os.path.join(root, make_sample.DATASET_DIR)
    images = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ds, "train")) for f in fs)
    for path in images[: len(images) // 5]:  # a fifth of the images unreadable: 20% > 5%
        open(path, "wb").write(b"not a jpeg")
    assert _main(root, out, "--incremental") == 1
    err = capsys.readouterr().err
    assert "rejected" in err and "--max_reject_fraction=0.05" in err and "nothing committed" in err
    assert _committed(out) == before and not outputs.unreferenced(out)
    m = _build(root, out, "--incremental", "--max_reject_fraction=0.5", "--max_shrink_fraction=1")
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"not_an_image": len(images) // 5}


def test_a_large_shrink_needs_an_explicit_flag(data, capsys):
    root, out = data
    before = _committed(out)
    csv_path = os.path.join(root, make_sample.DATASET_DIR, "train.csv")
    lines = open(csv_path).read().splitlines()
    open(csv_path, "w").write("\n".join(lines[: len(lines) // 2]) + "\n")  # half the rows gone
    assert _main(root, out, "--incremental") == 1
    err = capsys.readouterr().err
    assert "shrink the committed output" in err and "--max_shrink_fraction=1" in err
    assert _committed(out) == before
    m = _build(root, out, "--incremental", "--max_shrink_fraction=1")
    assert m["written"] < outputs.manifest(out)["written"] + 1 and m["written"] < json.loads(before["manifest.json"])["written"]


def test_a_deleted_or_resized_shard_is_named_not_nothing_new_and_overwrite_recovers(data, capsys):
    root, out = data
    m = outputs.manifest(out)
    shard = m["splits"]["train"]["shards"][0]
    os.remove(os.path.join(out, shard))
    assert _main(root, out) == 1  # unchanged input: without the check this said "nothing new"
    err = capsys.readouterr().err
    assert f"{out}/{shard}: listed by the committed manifest but missing" in err and "--overwrite" in err
    assert _main(root, out, "--incremental") == 1
    open(os.path.join(out, shard), "wb").write(b"\0" * 10)
    assert _main(root, out) == 1
    assert "10 bytes, the committed manifest says" in capsys.readouterr().err
    fixed = _build(root, out, "--overwrite")
    assert fixed["nothing_new"] is False and fixed["written"] == m["written"]
    assert not outputs.unreferenced(out)
    assert _build(root, out)["nothing_new"] is True


@pytest.mark.parametrize("damage", ["truncate", "garbage", "list"])
def test_damaged_manifest_is_an_error_naming_it_and_overwrite_recovers(data, capsys, damage):
    root, out = data
    path = os.path.join(out, "manifest.json")
    data_ = open(path, "rb").read()
    open(path, "wb").write({"truncate": data_[: len(data_) // 2], "garbage": b"\xff\xfe{", "list": b"[1, 2]"}[damage])
    assert _main(root, out, "--incremental") == 1
    err = capsys.readouterr().err
    assert f"{path}: " in err and "--overwrite" in err and "Traceback" not in err
    m = _build(root, out, "--overwrite")
    assert m["written"] > 0 and not outputs.unreferenced(out)  # the old snapshot was collected too


def test_a_truncated_index_is_an_error_naming_it(data, capsys):
    root, out = data
    index = os.path.join(out, outputs.manifest(out)["index_file"])
    open(index, "r+b").truncate(100)
    assert _main(root, out, "--incremental") == 1
    assert f"{index}: 100 bytes" in capsys.readouterr().err
    # Same size, bad content: the incremental reader names it too.
    m = outputs.manifest(out)
    size = m["files"][m["index_file"]]
    open(index, "wb").write(b"x" * size)
    csv_path = os.path.join(root, make_sample.DATASET_DIR, "valid.csv")
    open(csv_path, "a").close()
    os.utime(csv_path, None)
    lines = open(csv_path).read().splitlines()
    open(csv_path, "w").write("\n".join(lines[:-1]) + "\n")  # something changed: not "nothing new"
    assert _main(root, out, "--incremental") == 1
    err = capsys.readouterr().err
    assert f"{index}: unreadable records index" in err
    assert _build(root, out, "--overwrite")["written"] > 0


def test_output_dir_that_is_a_file_is_a_one_line_error(pristine, tmp_path, capsys, trained_job):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert _main(pristine, str(target)) == 2
    err = capsys.readouterr().err
    assert f"--output_dir={target} is a file" in err and "Traceback" not in err
    assert score.main([f"--job_dir={trained_job}", f"--output_dir={target}", "--runner=DirectRunner",
                       f"--input_pattern={pristine}/**/*.jpg"]) == 2
    assert f"--output_dir={target} is a file" in capsys.readouterr().err


def _add_train_row(root, path):
    """Appends a train.csv row for ``path`` (relative to the dataset root), copying a real
    image into place."""
    ds = os.path.join(root, make_sample.DATASET_DIR)
    lines = open(os.path.join(ds, "train.csv")).read().splitlines()
    cells = lines[1].split(",")
    cells[0] = f"{make_sample.DATASET_DIR}/{path}"
    full = os.path.join(root, cells[0])
    if not os.path.exists(full):
        os.makedirs(os.path.dirname(full), exist_ok=True)
        shutil.copy(os.path.join(root, lines[1].split(",")[0]), full)
    open(os.path.join(ds, "train.csv"), "a").write(",".join(cells) + "\n")


def test_a_patient_in_train_and_valid_is_rejected_from_train_by_default(pristine, tmp_path):
    root = str(tmp_path / "in")
    shutil.copytree(pristine, root)
    ds = os.path.join(root, make_sample.DATASET_DIR)
    valid_paths = [line.split(",")[0] for line in open(os.path.join(ds, "valid.csv")).read().splitlines()[1:]]
    patient = valid_paths[0].split("/")[2]
    _add_train_row(root, f"train/{patient}/study9/view1_frontal.jpg")  # the patient again, in train
    _add_train_row(root, valid_paths[1].split("/", 1)[1])  # a train row that uses a valid image's Path
    out = str(tmp_path / "out")
    m = _build(root, out, "--max_reject_fraction=0.5")  # 2 of 22 rows, in this small set
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"patient_in_valid": 2}
    assert m["sources"]["valid.csv"]["rejected"] == 0  # the valid rows stay, that image included
    assert m["splits"]["valid"]["written"] == len(valid_paths)
    assert m["patient_overlap"] == {"mode": "reject", "valid_patients": 3, "rows_rejected": 2}
    rejects = [json.loads(line) for line in open(os.path.join(out, m["rejected_files"][0]))]
    assert {r["reason"] for r in rejects} == {"patient_in_valid"} and all("valid.csv" in r["detail"] for r in rejects)
    with pytest.raises(build_records.ConfigError, match="2 train.csv rows belong to patients of valid.csv"):
        _build(root, str(tmp_path / "strict"), "--patient_overlap=fail")


def test_incremental_rejects_kept_train_rows_of_a_patient_who_later_appears_in_valid(data):
    root, out = data
    ds = os.path.join(root, make_sample.DATASET_DIR)
    train_lines = open(os.path.join(ds, "train.csv")).read().splitlines()
    patient = train_lines[1].split(",")[0].split("/")[2]
    n_rows = sum(f"/{patient}/" in line for line in train_lines)
    lines = open(os.path.join(ds, "valid.csv")).read().splitlines()
    cells = lines[1].split(",")
    src = os.path.join(root, cells[0])
    cells[0] = f"{make_sample.DATASET_DIR}/valid/{patient}/study1/view1_frontal.jpg"
    os.makedirs(os.path.dirname(os.path.join(root, cells[0])), exist_ok=True)
    shutil.copy(src, os.path.join(root, cells[0]))
    open(os.path.join(ds, "valid.csv"), "a").write(",".join(cells) + "\n")
    inc = _build(root, out, "--incremental", "--max_shrink_fraction=1", "--max_reject_fraction=1")
    full = _build(root, str(os.path.dirname(out) + "/full"), "--max_reject_fraction=1")
    assert inc["sources"]["train.csv"]["rejected_by_reason"] == {"patient_in_valid": n_rows}
    assert {k: inc["splits"][k]["written"] for k in inc["splits"]} == {k: full["splits"][k]["written"]
                                                                       for k in full["splits"]}


def test_what_no_manifest_references_is_collected_and_user_files_are_left(data):
    root, out = data
    orphan = os.path.join(out, "snapshot-20000101T000000-deadbeef")
    os.makedirs(orphan)
    open(os.path.join(orphan, "train-00000-of-00001.tfrecord"), "wb").write(b"half")
    open(os.path.join(out, ".manifest-0123abcd.tmp"), "w").write("{")
    os.makedirs(os.path.join(out, ".staging-abc"))
    current = outputs.manifest(out)["snapshot"]
    open(os.path.join(out, current, "stats-00000-of-00001.jsonl"), "w").write("{}")
    open(os.path.join(out, "NOTES.txt"), "w").write("mine")
    assert _build(root, out)["nothing_new"] is True
    assert outputs.unreferenced(out) == {"NOTES.txt"}


def test_score_guards_and_damage(trained_job, pristine, tmp_path, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i in range(4):
        (folder / f"bad{i}.jpg").write_bytes(b"not an image")
    out = str(tmp_path / "scores")
    argv = [f"--job_dir={trained_job}", f"--output_dir={out}", "--runner=DirectRunner",
            f"--input_pattern={folder}/*.jpg"]
    assert score.main(argv) == 1
    assert "4 of 4 inputs rejected" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    csv_path = os.path.join(pristine, make_sample.DATASET_DIR, "valid.csv")
    assert score.main([*argv[:3], f"--csv={csv_path}", f"--image_root={tmp_path / 'nowhere'}"]) == 2
    assert f"{tmp_path / 'nowhere'}: " in capsys.readouterr().err
    m = score.run([*argv[:3], f"--csv={csv_path}"])
    os.remove(os.path.join(out, m["outputs"]["scores_csv"]))
    assert score.main([*argv[:3], f"--csv={csv_path}"]) == 1
    assert "scores.csv: listed by the committed manifest but missing" in capsys.readouterr().err
    assert score.main([*argv[:3], f"--csv={csv_path}", "--overwrite"]) == 0
    assert "WARNING: the model was trained on SYNTHETIC data" in capsys.readouterr().err
    assert not outputs.unreferenced(out)
    # The shrink guard: a CSV with half the rows would drop half the committed scores.
    lines = open(csv_path).read().splitlines()
    half = tmp_path / "half.csv"
    half.write_text("\n".join(lines[: 1 + (len(lines) - 1) // 2]) + "\n")
    before = open(os.path.join(out, "manifest.json"), "rb").read()
    shrunk = [*argv[:3], f"--csv={half}", f"--image_root={pristine}"]
    assert score.main(shrunk) == 1
    assert "--max_shrink_fraction" in capsys.readouterr().err
    assert open(os.path.join(out, "manifest.json"), "rb").read() == before
    assert score.run([*shrunk, "--max_shrink_fraction=1"])["scored"] == (len(lines) - 1) // 2


def test_a_fifo_where_an_image_should_be_is_a_dead_letter_not_a_hang(data, trained_job, tmp_path):
    root, out = data
    ds = os.path.join(root, make_sample.DATASET_DIR)
    first = open(os.path.join(ds, "train.csv")).read().splitlines()[1].split(",")[0]
    os.remove(os.path.join(root, first))
    os.mkfifo(os.path.join(root, first))  # opening it for reading would block forever
    m = _build(root, out, "--incremental", "--max_reject_fraction=0.5", "--max_shrink_fraction=1")
    assert m["sources"]["train.csv"]["rejected_by_reason"] == {"not_a_file": 1}
    folder = tmp_path / "incoming"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    shutil.copy(os.path.join(root, open(os.path.join(ds, "valid.csv")).read().splitlines()[1].split(",")[0]),
                folder / "ok.jpg")
    s = score.run([f"--job_dir={trained_job}", f"--output_dir={tmp_path / 'scores'}", "--runner=DirectRunner",
                   f"--input_pattern={folder}", "--max_reject_fraction=1"])
    assert (s["scored"], s["rejected_by_reason"]) == (1, {"not_a_file": 1})


def test_a_typo_in_one_rows_path_costs_that_row_not_the_job(data, capsys):
    root, out = data
    csv_path = os.path.join(root, make_sample.DATASET_DIR, "train.csv")
    lines = open(csv_path, encoding="utf-8").read().splitlines()
    lines[1] = "\ufeff" + lines[1]  # a BOM pasted into the middle of the file: its own folder name
    lines[2] = lines[2].replace("CheXpert-v1.0-small/", "CheXpert-v1.0-smal/", 1)
    open(csv_path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    assert _main(root, out, "--incremental", "--max_reject_fraction=0.5", "--max_shrink_fraction=1") == 0
    m = outputs.manifest(out)
    assert m["sources"]["train.csv"]["rejected"] == 2
    printed = capsys.readouterr().out
    src = m["sources"]["train.csv"]
    assert f"train.csv: {src['rows']} rows = {src['written']} written + 2 rejected" in printed


def test_overwrite_rebuilds_even_when_nothing_changed_and_repairs_same_size_damage(data, capsys):
    """Damage that keeps a file's size is invisible to the size check; --overwrite must
    still rebuild, not say "nothing new"."""
    root, out = data
    m = outputs.manifest(out)
    want = {rel: open(os.path.join(out, rel), "rb").read() for rel in m["splits"]["train"]["shards"]}
    shard = os.path.join(out, m["splits"]["train"]["shards"][0])
    with open(shard, "r+b") as f:
        f.seek(100)
        f.write(b"XXXX")
    assert _build(root, out)["nothing_new"] is True  # size and inputs unchanged: not detectable cheaply
    again = _build(root, out, "--overwrite")
    assert again["nothing_new"] is False and again["snapshot"] != m["snapshot"]
    got = [open(os.path.join(out, rel), "rb").read() for rel in again["splits"]["train"]["shards"]]
    assert got == list(want.values()) and not outputs.unreferenced(out)


@pytest.mark.parametrize("damage,flag,message", [
    ("batch", "--batch_size=0", "--batch_size=0: expected >= 1"),
    ("nan", "--threshold=nan", "--threshold=nan: expected a probability"),
    ("two", "--threshold=2", "--threshold=2.0: expected a probability"),
    ("empty_model", "", "model.keras: missing or empty"),
    ("garbage_spec", "", "job_spec.json: unreadable"),
    ("garbage_config", "", "config.json: unreadable"),
])
def test_score_refuses_bad_flags_and_broken_jobs_in_one_line(trained_job, pristine, tmp_path, capsys, damage, flag,
                                                             message):
    job = str(tmp_path / "job")
    shutil.copytree(trained_job, job)
    if damage == "empty_model":
        open(os.path.join(job, "model.keras"), "wb").close()
    if damage == "garbage_spec":
        open(os.path.join(job, "job_spec.json"), "w").write("{not json")
    if damage == "garbage_config":  # a job from before the spec: config.json is what describes it
        os.remove(os.path.join(job, "job_spec.json"))
        open(os.path.join(job, "config.json"), "w").write("{not json")
    argv = [f"--job_dir={job}", f"--output_dir={tmp_path / 'scores'}", "--runner=DirectRunner",
            f"--input_pattern={pristine}", *([flag] if flag else [])]
    assert score.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_lock_or_manifest_that_is_a_folder_is_a_one_line_error(data, capsys):
    root, out = data
    for name in (".lock", "manifest.json"):
        path = os.path.join(out, name)
        saved = path + ".saved"
        os.rename(path, saved)
        os.mkdir(path)
        assert _main(root, out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert f"{path} is not a file" in err and "Traceback" not in err
        os.rmdir(path)
        os.rename(saved, path)
    assert _build(root, out)["nothing_new"] is True


def test_score_refuses_to_replace_another_models_scores_without_overwrite(trained_job, pristine, tmp_path, capsys):
    other = str(tmp_path / "other-job")
    shutil.copytree(trained_job, other)
    out = str(tmp_path / "scores")
    base = [f"--output_dir={out}", "--runner=DirectRunner", f"--input_pattern={pristine}/{make_sample.DATASET_DIR}/valid"]
    first = score.run([f"--job_dir={trained_job}", *base])
    rows = [json.loads(line) for line in open(os.path.join(out, first["outputs"]["scores_jsonl"]))]
    assert {r["model_data"] for r in rows} == {"synthetic"}  # every JSON row too, not only the CSV
    before = _committed(out)
    assert score.main([f"--job_dir={other}", *base]) == 2
    assert "holds the committed scores of another model" in capsys.readouterr().err
    assert _committed(out) == before
    assert score.run([f"--job_dir={other}", *base, "--overwrite"])["job_dir"] == other
