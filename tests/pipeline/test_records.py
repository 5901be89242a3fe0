"""The records job's per-row functions (pipeline.rows, shards, index, example_builder, the CSV
reader) and the Beam transforms that wire them (TestPipeline)."""

from __future__ import annotations

import dataclasses
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core import csv_reader
from pipeline import example_builder, shards, transforms
from pipeline import index as index_lib
from pipeline import rows as rows_lib
from schemas import chexpert
from tests import images

HEADER = ",".join(chexpert.CSV_COLUMNS)


def _line(path, age="50", edema="1.0"):
    cells = {c: "" for c in chexpert.CSV_COLUMNS}
    cells.update({"Path": path, "Sex": "Male", "Age": age, "Frontal/Lateral": "Frontal", "AP/PA": "PA",
                  "Edema": edema})
    return ",".join(cells[c] for c in chexpert.CSV_COLUMNS)


def test_read_csv_rows_numbers_lines_and_rejects_bad_bytes_and_field_counts():
    text = "\n".join([HEADER, _line("d/train/patient1/study1/a.jpg"), "", "only,three,fields"]).encode()
    text += b"\n" + _line("d/train/patient2/study1/a.jpg").encode()[:-3] + b"\xff\xfe\n"
    items = list(csv_reader.read_csv_rows(io.BytesIO(text), "train.csv"))
    assert isinstance(items[0], csv_reader.CsvRow) and items[0].line == 2
    assert (items[1].reason, items[1].row) == ("bad_row", 4)  # the blank line 3 is skipped
    assert (items[2].reason, items[2].row) == ("bad_encoding", 5)
    assert csv_reader.count_data_rows(io.BytesIO(text)) == len(items) == 3


def test_read_header_fails_before_any_row_naming_the_column():
    bad = HEADER.replace(",Edema,", ",Oedema,") + "\n" + _line("d/train/patient1/study1/a.jpg")
    with pytest.raises(chexpert.CsvHeaderError, match="train.csv: missing column.*'Edema'.*unknown.*'Oedema'"):
        list(csv_reader.read_csv_rows(io.BytesIO(bad.encode()), "train.csv"))


def test_split_is_a_stable_patient_level_hash():
    splits = {p: rows_lib.split_of("train", f"patient{p:05d}", 0.2) for p in range(2000)}
    frac = sum(s == "holdout" for s in splits.values()) / len(splits)
    assert 0.17 < frac < 0.23
    assert all(rows_lib.split_of("train", f"patient{p:05d}", 0.2) == s for p, s in splits.items())
    assert rows_lib.split_of("valid", "patient64541", 0.9) == "valid"
    assert rows_lib.split_of("train", "patient00001", 0.0) == "train"


def test_num_shards_follows_size_but_never_leaves_shards_nearly_empty():
    kw = dict(image_size=320, encoding="raw", shard_size_mb=256, min_shards=4)
    assert shards.num_shards_for(223_414, **kw) == 86  # 223,414 x 103 KB = 23.0 GB / 256 MiB
    assert shards.num_shards_for(1000, **kw) == 4  # min_shards for parallel writers
    assert shards.num_shards_for(100, **kw) == 1  # too few rows to split 4 ways
    assert shards.num_shards_for(100, fixed=7, **kw) == 7
    assert shards.num_shards_for(0, **kw) == 0
    counts = [0] * 8
    for i in range(8000):
        counts[shards.shard_of(f"p{i}.jpg", 8)] += 1
    assert min(counts) > 850 and max(counts) < 1150


def _csv_row(line, path, **kw):
    cells = dict(zip(chexpert.CSV_COLUMNS, _line(path, **kw).split(",")))
    return csv_reader.CsvRow("train.csv", line, cells)


def test_parse_rows_transform_routes_bad_rows_to_dead_letters():
    good = _csv_row(2, "d/train/patient00001/study1/view1_frontal.jpg")
    bad_age = _csv_row(3, "d/train/patient00002/study1/view1_frontal.jpg", age="old")
    bad_label = _csv_row(4, "d/train/patient00003/study1/view1_frontal.jpg", edema="positive")
    with BeamTestPipeline() as p:
        out = (p | beam.Create([("train", good), ("train", bad_age), ("train", bad_label)])
                 | beam.ParDo(transforms.ParseRowFn(0.0)).with_outputs(transforms.REJECTED, main="rows"))
        assert_that(out.rows | beam.Map(lambda kv: (kv[0], kv[1][0], kv[1][1].patient_id)),
                    equal_to([(good.cells["Path"], "train", "patient00001")]), label="Rows")
        assert_that(out[transforms.REJECTED] | beam.Map(lambda r: (r.row, r.reason, r.split)),
                    equal_to([(3, "bad_age", "train"), (4, "bad_label", "train")]), label="Rejects")


def test_duplicate_paths_keep_the_first_row_and_reject_the_rest():
    path = "d/train/patient00001/study1/view1_frontal.jpg"
    rows = [_csv_row(n, path) for n in (9, 2, 5)]
    with BeamTestPipeline() as p:
        parsed = (p | beam.Create([("train", r) for r in rows])
                    | beam.ParDo(transforms.ParseRowFn(0.0)).with_outputs(transforms.REJECTED, main="rows"))
        out = (parsed.rows | beam.GroupByKey()
               | beam.ParDo(transforms.RejectDuplicatesFn()).with_outputs(transforms.REJECTED, main="rows"))
        assert_that(out.rows | beam.Map(lambda kv: (kv[0], kv[1][2])), equal_to([("train", 2)]), label="First")
        assert_that(out[transforms.REJECTED] | beam.Map(lambda r: (r.row, r.reason)),
                    equal_to([(5, "duplicate_path"), (9, "duplicate_path")]), label="Dupes")


def test_read_csv_in_parts_reads_every_row_once(tmp_path):
    # A CSV of more than 2,000 rows is read in parts by as many workers (csv_parts); the
    # parts together give each row and each dead letter of the file exactly once.
    lines = [_line(f"d/train/patient{n:05d}/study1/view1_frontal.jpg") for n in range(1, 12)]
    lines[4] = lines[4].replace("Male", "Ma\x00le")
    path = tmp_path / "train.csv"
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode())
    assert [transforms.csv_parts(n) for n in (0, 1, 2000, 2001, 6000, 16001, 10**6)] == [1, 1, 1, 2, 3, 8, 8]
    with BeamTestPipeline() as p:
        read = p | beam.Create([(str(path), "train", k, 3) for k in range(3)]) | transforms.ReadCsv()
        assert_that(read.rows | beam.Map(lambda kv: (kv[0], kv[1].line)),
                    equal_to([("train", n) for n in range(2, 13) if n != 6]), label="Rows")
        assert_that(read[transforms.REJECTED] | beam.Map(lambda r: (r.row, r.reason)), equal_to([(6, "nul_byte")]),
                    label="Rejects")


def test_a_run_without_repeated_paths_maps_rows_as_grouping_them_would():
    # RejectDuplicates(unique=True), for a driver that saw no path twice: each row as
    # KeepFirst gives it after GroupByPath (its split, Row, file and line), nothing rejected.
    rows = [_csv_row(n, f"d/train/patient0000{n}/study1/view1_frontal.jpg") for n in (2, 3, 4)]
    outs = {}
    with BeamTestPipeline() as p:
        parsed = (p | beam.Create([("train", r) for r in rows])
                    | beam.ParDo(transforms.ParseRowFn(0.5)).with_outputs(transforms.REJECTED, main="rows"))
        for unique in (False, True):
            out = parsed.rows | f"Dedupe{unique}" >> transforms.RejectDuplicates(unique)
            outs[unique] = out
            assert_that(out.rows | f"Key{unique}" >> beam.Map(lambda kv: (kv[0], kv[1][0].path, kv[1][1], kv[1][2])),
                        equal_to([(rows_lib.split_of("train", f"patient0000{n}", 0.5),
                                   f"d/train/patient0000{n}/study1/view1_frontal.jpg", "train.csv", n)
                                  for n in (2, 3, 4)]), label=f"Rows{unique}")
            assert_that(out[transforms.REJECTED], equal_to([]), label=f"None{unique}")


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_rows_travel_in_lists_of_at_most_size_per_split_and_none_is_lost(size):
    items = [("train", i) for i in range(7)] + [("holdout", i) for i in range(100, 104)]
    with BeamTestPipeline() as p:
        lists = p | beam.Create(items) | beam.ParDo(transforms.BatchRowsFn(size))
        assert_that(lists | "Rows" >> beam.FlatMap(lambda kv: [(kv[0], i) for i in kv[1]]), equal_to(items),
                    label="Rows")
        assert_that(lists | "Sizes" >> beam.Map(lambda kv: 0 < len(kv[1]) <= size), equal_to([True] * len(
            [1 for split in ("train", "holdout") for _ in range(0, sum(s == split for s, _ in items), size)])),
            label="Sizes")


def test_a_shards_labels_at_once_equal_each_rows_own():
    # The writer maps a whole shard's labels in one apply_policy; each record must get what
    # build_example gives that row alone: CheXpert and external rows, with and without
    # labeller values, under a smoothing policy whose targets use the draws.
    from schemas import external, nih

    policies = chexpert.resolve_policies({"atelectasis": "ones", "edema": "lsr_ones", "cardiomegaly": "self_trained"},
                                         have_labeller=True)
    settings = example_builder.ExampleSettings(16, "squash", "raw", chexpert.policy_matrix(policies, "ignore"), 7)
    rows = []
    for n, v in ((1, "-1.0"), (2, "1.0"), (3, ""), (4, "-1.0")):
        cells = dict(zip(chexpert.CSV_COLUMNS, _line(f"d/train/patient0000{n}/study1/view1_frontal.jpg",
                                                     edema=v).split(",")))
        cells["Cardiomegaly"] = v
        rows.append(chexpert.parse_row(cells))
    src = external.ExternalRow(dataset="nih", path="00000001_000.png", patient_id="00000001",
                               study_id="00000001/000", sex="Male", age=58, view="frontal", projection="PA",
                               codes=nih.codes_for(("Effusion",)), findings=("Effusion",))
    rows.append(rows_lib.record_row("images_001/images/00000001_000.png", src))
    soft = chexpert.no_labeller_values()
    soft[chexpert.OBSERVATION_INDEX["cardiomegaly"]] = 0.8
    labeller = [soft, None, None, soft, None]
    draws, targets, mask = example_builder.shard_labels(rows, settings, labeller)
    data = images.png_bytes(images.gradient(40, 40))
    assert len({tuple(d) for d in draws}) == len(rows)  # each row its own draws
    for i, row in enumerate(rows):
        serialized, want_t, want_m = example_builder.build_example(row, data, settings, labeller[i])
        np.testing.assert_array_equal(targets[i], want_t)
        np.testing.assert_array_equal(mask[i], want_m)
        np.testing.assert_array_equal(draws[i], chexpert.draws_for(row.path, 7))
        # and what the writer computed row by row before (apply_policy on one row's codes)
        t, m = chexpert.apply_policy(np.asarray(row.codes), chexpert.draws_for(row.path, 7), settings.table,
                                     labeller[i])
        np.testing.assert_array_equal(targets[i], t)
        np.testing.assert_array_equal(mask[i], m * (example_builder.labelled_mask("nih") if i == 4 else 1))
        parts, size = example_builder.example_parts(row, data, settings, draws[i], targets[i], mask[i], labeller[i])
        assert b"".join(parts) == serialized and size == len(serialized)
    assert mask[4][chexpert.OBSERVATION_INDEX["fracture"]] == 0  # NIH does not label fractures
    assert targets[0][chexpert.OBSERVATION_INDEX["cardiomegaly"]] == np.float32(0.8)


def test_label_counts_buckets_codes_and_mapped_targets():
    codes = [[1] * 14, [-1] * 14, [-2] * 14]
    targets = [[1.0] * 14, [0.7] * 14, [0.0] * 14]
    mask = [[1.0] * 14, [1.0] * 14, [0.0] * 14]
    raw, mapped = example_builder.label_counts(codes, targets, mask)
    assert raw["edema"] == {"1": 1, "-1": 1, "blank": 1}
    assert mapped["edema"] == {"1": 1, "soft": 1, "masked": 1}


def test_index_round_trips_and_row_digest_sees_relabels():
    index = {"a/b.jpg": {"stat": "10:20", "row": "ff", "split": "train", "shard": "train-00000-of-00001.tfrecord",
                         "codes": [1, 0, -1, -2] * 3 + [1, 0], "view": "frontal", "teacher": None},
             "a/c.jpg": {"stat": "11:20", "row": "fe", "split": "train", "shard": "train-00000-of-00001.tfrecord",
                         "codes": [-1] * 14, "view": "lateral",
                         "teacher": [float(v) for v in np.float32([0.1, 1 / 3] + [-1.0] * 12)]}}
    assert index_lib.read_index(index_lib.write_index(index)) == index
    cells = dict(zip(chexpert.CSV_COLUMNS, _line("d/train/patient1/study1/a.jpg").split(",")))
    relabelled = {**cells, "Edema": "0.0"}
    assert rows_lib.row_digest(cells) != rows_lib.row_digest(relabelled)
    assert rows_lib.row_digest(cells) == rows_lib.row_digest(dict(cells))


# --- NIH / MIMIC rows (core.datasets.DatasetRow) ------------------------------------------------


def test_external_splits_follow_the_official_lists_and_hash_patients_per_dataset():
    assert rows_lib.official_split("nih", "test") == "test" and rows_lib.official_split("nih", "train_val") is None
    assert rows_lib.official_split("mimic", "validate") == "valid" and rows_lib.official_split("mimic", None) is None
    with pytest.raises(ValueError, match="nih: unknown official split 'validate'"):
        rows_lib.official_split("nih", "validate")
    assert rows_lib.external_split("mimic", "valid", "10000032", 0.99) == "valid"
    # Namespaced: the same number draws differently per dataset, and CheXpert's bare id is unchanged.
    draws = {d: chexpert.stable_fraction(f"holdout:{d}/10000032") for d in ("nih", "mimic")}
    cut = (draws["nih"] + draws["mimic"]) / 2
    assert {rows_lib.external_split(d, None, "10000032", cut) for d in draws} == {"train", "holdout"}
    assert rows_lib.split_of("train", "patient00001", 0.5) == rows_lib.split_of("train", "patient00001", 0.5)
    assert rows_lib.leak_reason(None, "test") == "patient_in_test"
    assert rows_lib.leak_reason("valid", "test") == "patient_in_test"
    assert rows_lib.leak_reason(None, "valid") == "patient_in_valid"
    assert rows_lib.leak_reason("test", "test") is None and rows_lib.leak_reason(None, None) is None


def test_an_external_row_becomes_a_record_with_its_source_labels_and_masked_unlabelled():
    from schemas import external, nih

    src = external.ExternalRow(dataset="nih", path="00000001_000.png", patient_id="00000001", study_id="00000001/000",
                               sex="Male", age=58, view="frontal", projection="PA",
                               codes=nih.codes_for(("Effusion", "Mass")), findings=("Effusion", "Mass"))
    row = rows_lib.record_row("images_001/images/00000001_000.png", src)
    assert isinstance(row, chexpert.Row) and row.path == "images_001/images/00000001_000.png" and row.age == 58
    assert rows_lib.record_row("x.jpg", dataclasses.replace(src, age=None)).age == rows_lib.AGE_UNKNOWN == -1
    assert rows_lib.unmapped_findings("nih", src.findings) == ["Mass"]
    assert rows_lib.unmapped_findings("mimic", ("Edema", "Pleural Effusion")) == []
    assert rows_lib.dataset_digest("a", src, "test") != rows_lib.dataset_digest("a", src, "train_val")
    settings = example_builder.ExampleSettings(16, "squash", "raw", chexpert.policy_matrix(
        chexpert.resolve_policies(), "negative"), 0)
    data = images.png_bytes(images.gradient(40, 40))
    _, _, mask = example_builder.build_example(row, data, settings)
    labelled = example_builder.labelled_mask("nih")
    assert mask[chexpert.OBSERVATION_INDEX["fracture"]] == 0 and labelled[chexpert.OBSERVATION_INDEX["fracture"]] == 0
    assert (mask == labelled).all()  # blank=negative: every labelled entry counts, no other
    np.testing.assert_array_equal(example_builder.labelled_mask("chexpert"), np.ones(14, np.float32))


def test_labelled_mask_is_the_same_on_both_sides_eagerly_and_in_tf_data():
    import tensorflow as tf

    from schemas import example_tf, sources

    names = list(sources.FORMATS) + ["somewhere-else"]
    want = np.stack([example_builder.labelled_mask(n) if n in sources.FORMATS else np.ones(14, np.float32)
                     for n in names])
    np.testing.assert_array_equal(example_tf.labelled_mask(tf.constant(names)).numpy(), want)
    np.testing.assert_array_equal(example_tf.labelled_mask(tf.constant("nih")).numpy(), want[1])
    batched = tf.data.Dataset.from_tensor_slices(names).batch(2).map(example_tf.labelled_mask)
    np.testing.assert_array_equal(np.concatenate(list(batched.as_numpy_iterator())), want)


def test_read_dataset_yields_parsed_rows_and_dead_letters_with_lines(tmp_path):
    from tests.pipeline import external_folders as ef

    folder = ef.make_mimic(str(tmp_path / "mimic"))
    with BeamTestPipeline() as p:
        out = (p | beam.Create([(folder, "mimic")])
                 | transforms.ReadDataset(0.0, skip={"mimic-cxr-2.0.0-metadata.csv.gz": np.array([8])},
                                          held_out={"10000001": "test"}))
        assert_that(out.rows | beam.Map(lambda kv: (kv[0], kv[1][0], kv[1][1].dataset, kv[1][2].line)),
                    equal_to([(ef.mimic_image("d2a", "10000002", "50000002"), "valid", "mimic", 4),
                              (ef.mimic_image("d3a", "10000003", "50000003"), "test", "mimic", 5),
                              (ef.mimic_image("d3b", "10000003", "50000004"), "test", "mimic", 6)]), label="Rows")
        assert_that(out[transforms.REJECTED] | beam.Map(lambda r: (r.row, r.reason, r.split)),
                    equal_to([(2, "patient_in_test", "train"), (3, "patient_in_test", "train"),
                              (7, "no_labels", None), (9, "no_split", None)]), label="Rejects")
