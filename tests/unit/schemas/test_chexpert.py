"""schemas/chexpert.py and schemas/example.py without TensorFlow: label parsing, policies,
header and row checks. The reader side (schemas/example_tf.py) is tests/schemas/test_example_tf.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from schemas import chexpert

C = chexpert.Code


@pytest.mark.parametrize("text,code", [
    ("1.0", C.POSITIVE), ("1", C.POSITIVE), ("0.0", C.NEGATIVE), ("0", C.NEGATIVE),
    ("-1.0", C.UNCERTAIN), ("-1", C.UNCERTAIN), ("", C.BLANK), ("  ", C.BLANK), (None, C.BLANK),
    (" 1.0 ", C.POSITIVE), ("1.00", C.POSITIVE),
])
def test_parse_label_accepts_official_and_integer_spellings(text, code):
    assert chexpert.parse_label(text) == code


@pytest.mark.parametrize("text", ["2", "2.0", "-2", "0.5", "yes", "nan", "inf", "1e0", "--1", "1.0.0", "true"])
def test_parse_label_rejects_anything_else_by_name(text):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.parse_label(text, "Edema")
    assert e.value.reason == "bad_label"
    assert "'Edema'" in e.value.detail and repr(text) in e.value.detail


@pytest.mark.parametrize("text", [
    "\uff11.0", "\uff11", "\u0661", "-\u0661", "\u0660.0", "\u0967", "1.\u0660",  # full-width, Arabic-Indic, Devanagari
    "1.0\u00a0", "\u30001", "\u2007-1", "1\u200b",  # whitespace that is not ASCII
])
def test_parse_label_takes_only_ascii_digits_and_ascii_spaces(text):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.parse_label(text, "Edema")
    assert e.value.reason == "bad_label"


def test_parse_label_ignores_ascii_whitespace_around_a_code():
    assert chexpert.parse_label("\t1.0\r\n", "Edema") == C.POSITIVE  # a quoted cell with a line break


def test_observations_are_in_csv_order_with_stable_slugs():
    assert chexpert.CSV_COLUMNS[:5] == ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
    assert chexpert.OBSERVATION_NAMES[0] == "No Finding"
    assert chexpert.OBSERVATION_NAMES[-1] == "Support Devices"
    assert chexpert.OBSERVATIONS[8] == "atelectasis"
    assert chexpert.OBSERVATIONS[10] == "pleural_effusion"
    assert len(chexpert.CSV_COLUMNS) == 19
    assert set(chexpert.COMPETITION_TASKS) <= set(chexpert.OBSERVATIONS)


def test_check_header_names_missing_and_unknown_columns():
    header = [c for c in chexpert.CSV_COLUMNS if c != "Edema"] + ["Patient Name"]
    with pytest.raises(chexpert.CsvHeaderError, match="missing column.*'Edema'.*unknown column.*'Patient Name'"):
        chexpert.check_header(header, "train.csv")
    chexpert.check_header(list(chexpert.CSV_COLUMNS), "train.csv")  # the real header passes


# codes in the order BLANK, UNCERTAIN, NEGATIVE, POSITIVE
CODES = np.array([C.BLANK, C.UNCERTAIN, C.NEGATIVE, C.POSITIVE])
HALF = np.full(4, 0.5, np.float32)


# (uncertainty policy, blank mode, targets and masks for BLANK, UNCERTAIN, NEGATIVE, POSITIVE)
POLICY_TABLE = [
    ("ignore", "negative", [0, 0, 0, 1], [1, 0, 1, 1]),
    ("zeros", "negative", [0, 0, 0, 1], [1, 1, 1, 1]),
    ("ones", "negative", [0, 1, 0, 1], [1, 1, 1, 1]),
    ("multiclass", "negative", [0, 2, 0, 1], [1, 1, 1, 1]),
    ("lsr_ones", "negative", [0, 0.7, 0, 1], [1, 1, 1, 1]),
    ("lsr_zeros", "negative", [0, 0.15, 0, 1], [1, 1, 1, 1]),
    ("ones", "ignore", [0, 1, 0, 1], [0, 1, 1, 1]),
    ("ignore", "ignore", [0, 0, 0, 1], [0, 0, 1, 1]),
]


@pytest.mark.parametrize("policy,blank,targets,mask", POLICY_TABLE)
def test_policy_targets_and_masks_on_a_hand_written_table(policy, blank, targets, mask):
    table = chexpert.policy_matrix({s: policy for s in chexpert.OBSERVATIONS}, blank)
    codes = np.tile(CODES[:, None], (1, 14))  # 4 rows, every observation gets the same code
    draws = np.full((4, 14), 0.5, np.float32)
    t, m = chexpert.apply_policy(codes, draws, table)
    np.testing.assert_allclose(t[:, 0], targets, atol=1e-6)
    np.testing.assert_array_equal(m[:, 0], mask)


def test_lsr_targets_span_their_ranges():
    table = chexpert.policy_matrix({s: "lsr_ones" for s in chexpert.OBSERVATIONS})
    draws = np.stack([chexpert.draws_for(f"p{i}.jpg") for i in range(500)])
    t, _ = chexpert.apply_policy(np.full((500, 14), int(C.UNCERTAIN)), draws, table)
    assert 0.55 <= t.min() < 0.57 and 0.83 < t.max() < 0.85
    table = chexpert.policy_matrix({s: "lsr_zeros" for s in chexpert.OBSERVATIONS})  # U(0, 0.3)
    t, _ = chexpert.apply_policy(np.full((500, 14), int(C.UNCERTAIN)), draws, table)
    assert 0.0 <= t.min() < 0.02 and 0.28 < t.max() < 0.3
    np.testing.assert_array_equal(chexpert.draws_for("a.jpg", 3), chexpert.draws_for("a.jpg", 3))
    assert not np.array_equal(chexpert.draws_for("a.jpg", 3), chexpert.draws_for("a.jpg", 4))


def test_default_mapping_is_the_papers_and_self_trained_falls_back():
    p = chexpert.resolve_policies()
    assert p["atelectasis"] == "ones" and p["edema"] == "ones"
    assert p["cardiomegaly"] == "multiclass" and p["pleural_effusion"] == "multiclass"
    assert p["consolidation"] == chexpert.SELF_TRAINED_FALLBACK == "ignore"
    assert p["fracture"] == "ones"
    with pytest.raises(chexpert.PolicyError, match="needs a labeller.*--labeller JOB_DIR"):
        chexpert.resolve_policies({"consolidation": "self_trained"})
    assert chexpert.resolve_policies({"consolidation": "self_trained"}, have_labeller=True)["consolidation"] == (
        "self_trained")


def test_self_trained_takes_the_labeller_only_for_uncertain_entries():
    table = chexpert.policy_matrix({s: "self_trained" for s in chexpert.OBSERVATIONS})
    codes = np.tile(CODES[:, None], (1, 14))  # blank, uncertain, negative, positive
    draws = np.full((4, 14), 0.5, np.float32)
    labeller = np.full((4, 14), 0.3, np.float32)
    labeller[:, 7] = chexpert.NO_LABELLER_VALUE  # observation 7: the job stored no labeller value
    t, m = chexpert.apply_policy(codes, draws, table, labeller)
    np.testing.assert_allclose(t[:, 0], [0, 0.3, 0, 1], atol=0)  # the labeller's value, exactly
    np.testing.assert_array_equal(m[:, 0], [1, 1, 1, 1])
    np.testing.assert_array_equal(t[:, 7], [0, 0, 0, 1])  # no labeller value: ignore
    np.testing.assert_array_equal(m[:, 7], [1, 0, 1, 1])
    # Without any labeller vector self_trained is `ignore`; as ignore is.
    t0, m0 = chexpert.apply_policy(codes, draws, table)
    ti, mi = chexpert.apply_policy(codes, draws, chexpert.policy_matrix({s: "ignore" for s in chexpert.OBSERVATIONS}))
    np.testing.assert_array_equal(m0, mi)
    np.testing.assert_array_equal(t0, ti)


def test_policy_overrides_parse_and_errors_name_the_item():
    assert chexpert.parse_policy_overrides("atelectasis=zeros, Pleural Effusion=ones") == {
        "atelectasis": "zeros", "pleural_effusion": "ones"}
    with pytest.raises(chexpert.PolicyError, match="unknown observation 'atelectasiss'"):
        chexpert.parse_policy_overrides("atelectasiss=ones")
    with pytest.raises(chexpert.PolicyError, match="unknown policy"):
        chexpert.parse_policy_overrides("edema=maybe")
    with pytest.raises(chexpert.PolicyError, match="not OBSERVATION=POLICY"):
        chexpert.parse_policy_overrides("edema")


def _row(**over):
    cells = {c: "" for c in chexpert.CSV_COLUMNS}
    cells.update({"Path": "CheXpert-v1.0-small/train/patient00007/study2/view1_frontal.jpg", "Sex": "Female",
                  "Age": "63", "Frontal/Lateral": "Frontal", "AP/PA": "AP", "Edema": "1.0", "Atelectasis": "-1",
                  "Cardiomegaly": "0.0"})
    cells.update(over)
    return cells


def test_parse_row_extracts_ids_and_codes():
    r = chexpert.parse_row(_row())
    assert (r.patient_id, r.study_id, r.view, r.projection, r.sex, r.age) == (
        "patient00007", "patient00007/study2", "frontal", "AP", "Female", 63)
    idx = chexpert.OBSERVATION_INDEX
    assert r.codes[idx["edema"]] == 1 and r.codes[idx["atelectasis"]] == -1 and r.codes[idx["cardiomegaly"]] == 0
    assert r.codes[idx["fracture"]] == C.BLANK


@pytest.mark.parametrize("over,reason", [
    ({"Age": "sixty"}, "bad_age"), ({"Age": "-3"}, "bad_age"), ({"Age": "62.5"}, "bad_age"),
    ({"Sex": "M"}, "bad_sex"), ({"Frontal/Lateral": "Oblique"}, "bad_view"), ({"AP/PA": "XY"}, "bad_projection"),
    ({"Edema": "2"}, "bad_label"), ({"Path": "../../etc/passwd"}, "bad_path"),
    ({"Path": "CheXpert-v1.0-small/train/../../../x/patient1/study1/a.jpg"}, "bad_path"),
    ({"Path": "/abs/patient1/study1/a.jpg"}, "bad_path"), ({"Path": "somefile.jpg"}, "bad_path"),
])
def test_parse_row_rejects_with_a_reason(over, reason):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.parse_row(_row(**over))
    assert e.value.reason == reason


@pytest.mark.parametrize("age", ["\uff14\uff10", "\u0664\u0660", "4\u0660", "40\u00a0", "1_0", "4e1", "inf", "nan",
                                 "0x28", "\u00b2"])
def test_parse_row_takes_ages_in_ascii_digits_only(age):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.parse_row(_row(Age=age))
    assert e.value.reason == "bad_age"


def test_parse_row_still_takes_the_age_spellings_of_real_csvs():
    assert [chexpert.parse_row(_row(Age=a)).age for a in ("40", " 40 ", "40.0", "0", "120")] == [40, 40, 40, 0, 120]


@pytest.mark.parametrize("path", ["d/train/patient1/study1/a\x00.jpg", "d/train/patient1/study1/a\r.jpg",
                                  "d/train/patient1\n/study1/a.jpg", "d/train/patient1/study1/a\x85.jpg",
                                  "d/train/patient1/study1/a\x7f.jpg"])
def test_paths_with_control_characters_are_bad_paths(path):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.normalize_path(path)
    assert e.value.reason == "bad_path" and "control character" in e.value.detail


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(chexpert.CSV_COLUMNS), st.text(max_size=30)))
def test_row_parser_never_crashes_on_arbitrary_cells(cells):
    try:
        row = chexpert.parse_row(cells)
    except chexpert.RowError as e:
        assert e.reason.startswith("bad_")
    else:
        assert len(row.codes) == 14 and set(row.codes) <= {-2, -1, 0, 1}


def test_split_fractions_and_draws_are_pinned_float32_and_in_range():
    """What a rebuild must reproduce byte for byte: the patient's split fraction and the
    record's label-smoothing draws (default seed 0). A different number is a format change."""
    assert chexpert.stable_fraction("patient00001") == 0.37311762911917506
    assert all(0.0 <= chexpert.stable_fraction(f"patient{i:05d}") < 1.0 for i in range(200))
    draws = chexpert.draws_for("a/b.jpg")
    assert draws.dtype == np.float32 and draws.shape == (14,)
    np.testing.assert_array_equal(draws[:3], np.array([0.4879557490348816, 0.6309518218040466, 0.9292157888412476],
                                                      np.float32))
    none = chexpert.no_labeller_values((2, 14))
    assert none.dtype == np.float32 and (none == chexpert.NO_LABELLER_VALUE).all()


def test_policy_table_and_targets_are_float32_and_codes_of_any_int_or_float_dtype_index_alike():
    table = chexpert.policy_matrix(chexpert.resolve_policies())
    assert table.dtype == np.float32 and table.shape == (14, 4, 4)
    codes = np.tile(CODES[:, None], (1, 14))
    draws = np.full((4, 14), 0.25, np.float32)
    t, m = chexpert.apply_policy(codes, draws, table)
    assert t.dtype == m.dtype == np.float32
    t2, m2 = chexpert.apply_policy(codes.astype(np.float64), draws, table)  # a CSV's 1.0 read as a float
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(m2, m)


def test_a_labeller_probability_of_exactly_zero_is_a_value_not_a_missing_one():
    table = chexpert.policy_matrix({s: "self_trained" for s in chexpert.OBSERVATIONS})
    codes = np.full((14,), int(C.UNCERTAIN))
    t, m = chexpert.apply_policy(codes, np.full(14, 0.5, np.float32), table, np.zeros(14, np.float32))
    np.testing.assert_array_equal(t, np.zeros(14))
    np.testing.assert_array_equal(m, np.ones(14))  # trained on as a confident negative, not ignored


def test_overrides_reach_the_mapping_and_policy_errors_list_the_choices():
    assert chexpert.resolve_policies({"edema": "zeros"})["edema"] == "zeros"
    assert chexpert.parse_policy_overrides("edema=zeros,,atelectasis=ignore") == {"edema": "zeros",
                                                                                 "atelectasis": "ignore"}
    with pytest.raises(chexpert.PolicyError, match="--policy edema=zeros=x: unknown policy"):
        chexpert.parse_policy_overrides("edema=zeros=x")
    with pytest.raises(chexpert.PolicyError, match="known: no_finding, enlarged_cardiomediastinum, cardiomegaly"):
        chexpert.parse_policy_overrides("nope=ones")
    with pytest.raises(chexpert.PolicyError, match="known: ignore, zeros, ones, multiclass"):
        chexpert.parse_policy_overrides("edema=nope")
    with pytest.raises(chexpert.PolicyError, match="expected one of negative, ignore"):
        chexpert.policy_matrix(chexpert.resolve_policies(), blank="x")
    with pytest.raises(chexpert.PolicyError, match="policy 'nope' for edema cannot be applied"):
        chexpert.policy_matrix({**chexpert.resolve_policies(), "edema": "nope"})
    with pytest.raises(chexpert.PolicyError, match=r"with `python -m pipeline.build_records --labeller JOB_DIR` \("):
        chexpert.resolve_policies({"consolidation": "self_trained"})
    with pytest.raises(chexpert.RowError, match="column 'label' has 'x'"):
        chexpert.parse_label("x")


def test_labelled_observations_and_unreadable_reasons():
    policies = {**chexpert.resolve_policies(), "consolidation": "self_trained", "edema": "self_trained"}
    assert chexpert.labelled_observations(policies) == ("edema", "consolidation")
    assert chexpert.labelled_observations(chexpert.resolve_policies()) == ()
    assert chexpert.unreadable_reason(True) == chexpert.UNREADABLE_FILE
    assert chexpert.unreadable_reason(False) == chexpert.MISSING_FILE


def test_a_header_error_names_every_missing_unknown_and_duplicate_column_in_one_message():
    header = [c for c in chexpert.CSV_COLUMNS if c not in ("Edema", "Fracture")] + ["Patient Name", "Sex", "Age",
                                                                                  "Notes", "Sex"]
    with pytest.raises(chexpert.CsvHeaderError) as e:
        chexpert.check_header(header, "train.csv")
    assert str(e.value) == ("train.csv: missing column(s) 'Edema', 'Fracture'; unknown column(s) 'Patient Name', "
                            "'Notes'; duplicate column(s) 'Age', 'Sex'")
    for empty in (None, []):
        with pytest.raises(chexpert.CsvHeaderError) as e:
            chexpert.check_header(empty, "valid.csv")
        assert str(e.value) == "valid.csv: empty file, expected a header with " + ", ".join(chexpert.CSV_COLUMNS)


def test_trailing_empty_header_cells_and_unknown_columns_pass_only_where_the_format_allows_them():
    cols = list(chexpert.CSV_COLUMNS)
    with pytest.raises(chexpert.CsvHeaderError, match=r"unknown column\(s\) ''$"):
        chexpert.check_header(cols + [""], "train.csv")  # CheXpert's header has no trailing comma
    chexpert.check_columns(cols + ["", " "], "x.csv", cols, allow_trailing_empty=True)  # "a,b,,": a spreadsheet's
    with pytest.raises(chexpert.CsvHeaderError, match=r"unknown column\(s\) ''$"):
        chexpert.check_columns([""] + cols, "x.csv", cols, allow_trailing_empty=True)  # not at the end
    with pytest.raises(chexpert.CsvHeaderError, match=r"unknown column\(s\) 'Notes'$"):
        chexpert.check_columns(cols + ["Notes"], "x.csv", cols)
    chexpert.check_columns(cols + ["Notes"], "x.csv", cols, allow_unknown=True)
    chexpert.check_columns(cols + ["Notes"], "x.csv", cols, known=("Notes",))


@pytest.mark.parametrize("raw,path", [
    ("CheXpert-v1.0-small\\train\\patient00001\\study1\\view1_frontal.jpg",  # a Windows export
     "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"),
    (" ./d//train/./patient00001/study1/view1_frontal.jpg\t", "d/train/patient00001/study1/view1_frontal.jpg"),
    ("d/train/patient00001/study1/view 1.jpg", "d/train/patient00001/study1/view 1.jpg"),
])
def test_paths_are_normalised_to_forward_slashes_without_empty_or_dot_segments(raw, path):
    assert chexpert.normalize_path(raw) == path


@pytest.mark.parametrize("raw,detail", [
    ("", "column 'Path' is empty"), (" \t", "column 'Path' is empty"),
    ("C:\\data\\patient1\\study1\\a.jpg", "'C:\\\\data\\\\patient1\\\\study1\\\\a.jpg' is absolute"),
    ("c:/data/patient1/study1/a.jpg", "is absolute"), ("gs://bucket/patient1/study1/a.jpg", "is absolute"),
    ("/data/patient1/study1/a.jpg", "is absolute; paths must be relative to the input folder"),
    ("d/../../patient1/study1/a.jpg", "Path 'd/../../patient1/study1/a.jpg' contains '..' and could escape"),
])
def test_empty_absolute_and_escaping_paths_are_bad_paths_and_say_why(raw, detail):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.normalize_path(raw)
    assert e.value.reason == "bad_path" and detail in e.value.detail


@pytest.mark.parametrize("over,detail", [
    ({"Path": None}, "column 'Path' is empty"),
    ({"Path": "d/train/somefile.jpg"}, "Path 'd/train/somefile.jpg' is not of the form .../patientNNNNN/studyN/FILE"),
    ({"Sex": "M"}, "column 'Sex' has 'M'; expected Male, Female or Unknown"),
    ({"Age": "sixty"}, "column 'Age' has 'sixty', not a number in ASCII digits"),
    ({"Age": "121"}, "column 'Age' has '121'; expected whole years 0-120"),
    ({"Frontal/Lateral": "Oblique"}, "column 'Frontal/Lateral' has 'Oblique'; expected Frontal or Lateral"),
    ({"AP/PA": "XY"}, "column 'AP/PA' has 'XY'; expected AP, PA, LL, RL or blank"),
    ({"Edema": "2"}, "column 'Edema' has '2'; expected 1.0, 0.0, -1.0 or blank"),
])
def test_a_bad_row_is_rejected_naming_the_column_and_its_value(over, detail):
    with pytest.raises(chexpert.RowError) as e:
        chexpert.parse_row(_row(**over))
    assert e.value.detail == detail


def test_parse_row_keys_the_record_by_the_normalised_path_and_a_blank_sex_is_unknown():
    r = chexpert.parse_row(_row(Path="CheXpert-v1.0-small\\train\\patient00007\\study2\\view1_frontal.jpg", Sex=" "))
    assert r.path == "CheXpert-v1.0-small/train/patient00007/study2/view1_frontal.jpg" and r.sex == "Unknown"
    cells = _row()
    del cells["Sex"]
    assert chexpert.parse_row(cells).sex == "Unknown"


def test_lsr_targets_are_float32_arithmetic_as_the_tf_data_reader_computes_them():
    """The records job and the reader must agree bit for bit (schemas.example_tf.policy_targets
    computes low + draw * (high - low) in float32): the same draws in float64 round otherwise."""
    table = chexpert.policy_matrix({s: "lsr_ones" for s in chexpert.OBSERVATIONS})
    draws = np.stack([chexpert.draws_for(f"p{i}.jpg") for i in range(200)])
    t, _ = chexpert.apply_policy(np.full((200, 14), int(C.UNCERTAIN)), draws, table)
    low, high = np.float32(0.55), np.float32(0.85)
    np.testing.assert_array_equal(t, low + draws * (high - low))
