"""schemas/nih.py: NIH ChestX-ray14's header as shipped, its findings mapped to CheXpert's
observations, its rows and its official split; neither TensorFlow nor Beam."""

from __future__ import annotations

import pytest

from schemas import chexpert, external, nih

C = chexpert.Code
SHIPPED = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
           "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
SAMPLE = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y")
ROW = "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143"


def _row(line: str = ROW, header: str = SHIPPED) -> external.ExternalRow:
    columns = nih.header_columns(header.split(","), "Data_Entry_2017.csv")
    return nih.parse_row(external.cells_of(columns, line.split(",")))


def _codes(**by_slug) -> tuple[int, ...]:
    return tuple(int(by_slug.get(s, C.NEGATIVE if s in nih.LABELLED_OBSERVATIONS else C.BLANK))
                 for s in chexpert.OBSERVATIONS)


def test_mapping_documents_every_nih_label_and_every_chexpert_observation_once():
    labels = [label for label, _ in nih.MAPPING if label is not None]
    slugs = [slug for _, slug in nih.MAPPING if slug is not None]
    assert sorted(labels) == sorted(nih.LABELS) and len(labels) == len(set(labels)) == 15
    assert sorted(slugs) == sorted(chexpert.OBSERVATIONS) and len(slugs) == len(set(slugs))
    assert all(label or slug for label, slug in nih.MAPPING)  # no empty line
    assert nih.LABELLED_OBSERVATIONS == ("no_finding", "cardiomegaly", "edema", "consolidation", "pneumonia",
                                         "atelectasis", "pneumothorax", "pleural_effusion")


# Every NIH finding alone: its observation positive, the other mapped ones negative, the
# observations NIH does not label blank.
@pytest.mark.parametrize("finding,slug", [
    ("Atelectasis", "atelectasis"), ("Cardiomegaly", "cardiomegaly"), ("Effusion", "pleural_effusion"),
    ("Infiltration", None), ("Mass", None), ("Nodule", None), ("Pneumonia", "pneumonia"),
    ("Pneumothorax", "pneumothorax"), ("Consolidation", "consolidation"), ("Edema", "edema"),
    ("Emphysema", None), ("Fibrosis", None), ("Pleural_Thickening", None), ("Hernia", None),
])
def test_each_finding_maps_to_its_observation_or_to_none(finding, slug):
    row = _row(ROW.replace("Cardiomegaly", finding))
    assert row.findings == (finding,)
    assert row.codes == _codes(**({slug: C.POSITIVE} if slug else {}))
    assert row.codes[chexpert.OBSERVATION_INDEX["no_finding"]] == C.NEGATIVE  # a finding is a finding
    assert row.codes[chexpert.OBSERVATION_INDEX["fracture"]] == C.BLANK  # never a negative NIH did not state


def test_no_finding_is_positive_no_finding_and_negative_for_the_mapped_seven():
    row = _row(ROW.replace("Cardiomegaly", "No Finding"))
    assert row.findings == ("No Finding",)
    assert row.codes == _codes(no_finding=C.POSITIVE)
    assert sum(c == C.NEGATIVE for c in row.codes) == 7 and sum(c == C.BLANK for c in row.codes) == 6


def test_a_pipe_list_sets_each_finding_and_keeps_the_originals():
    row = _row(ROW.replace("Cardiomegaly", "Effusion|Mass|Cardiomegaly|Effusion"))
    assert row.findings == ("Cardiomegaly", "Effusion", "Mass")  # NIH's order, each once
    assert row.codes == _codes(cardiomegaly=C.POSITIVE, pleural_effusion=C.POSITIVE)
    assert nih.parse_findings(" Pleural Thickening | hernia ") == ("Pleural_Thickening", "Hernia")


@pytest.mark.parametrize("text", ["Cardiomegaly|Lung Lesion", "Effusions", "", "Mass||Nodule", "No Finding|Mass",
                                  "Cardiomegaly,Edema"])
def test_an_unknown_or_malformed_finding_list_is_bad_label(text):
    with pytest.raises(chexpert.RowError) as e:
        nih.parse_findings(text)
    assert e.value.reason == "bad_label" and "Finding Labels" in e.value.detail


def test_the_row_fields():
    row = _row("00030805_003.png,Nodule,3,30805,079Y,F,AP,2500,2048,0.168,0.168")
    assert row == external.ExternalRow(
        dataset="nih", path="00030805_003.png", patient_id="00030805", study_id="00030805/003", sex="Female", age=79,
        view="frontal", projection="AP", codes=_codes(), findings=("Nodule",))


@pytest.mark.parametrize("text,years", [("58", 58), ("058Y", 58), ("058y", 58), ("0", 0), ("120", 120),
                                        ("011M", 0), ("018M", 1), ("020D", 0), ("003W", 0), (" 58 ", 58)])
def test_ages_in_years_or_as_dicom_age_strings(text, years):
    assert nih.parse_age(text) == years


@pytest.mark.parametrize("text", ["", "414", "121Y", "58 years", "-1", "Y", "58X", "\uff15\uff18", "5.5"])
def test_a_bad_age_is_bad_age(text):
    with pytest.raises(chexpert.RowError) as e:
        nih.parse_age(text)
    assert e.value.reason == "bad_age"


@pytest.mark.parametrize("field,value,reason", [
    (0, "images/00000001_000.png", "bad_path"), (0, "", "bad_path"), (0, "00000001_000.txt", "bad_path"),
    (0, "../00000001_000.png", "bad_path"),
    (2, "x", "bad_id"), (3, "", "bad_id"), (3, "-1", "bad_id"),
    (4, "old", "bad_age"), (5, "X", "bad_sex"), (6, "LLD", "bad_view"), (6, "", "bad_view"),
])
def test_a_row_that_does_not_fit_says_why(field, value, reason):
    cells = ROW.split(",")
    cells[field] = value
    with pytest.raises(chexpert.RowError) as e:
        _row(",".join(cells))
    assert e.value.reason == reason


def test_blank_gender_is_unknown_and_lateral_positions_are_lateral():
    assert _row(ROW.replace(",M,", ",,")).sex == "Unknown"
    assert _row(ROW.replace(",PA,", ",LL,")).view == "lateral"


@pytest.mark.parametrize("header", [
    SHIPPED, SHIPPED.rstrip(","), SAMPLE, SAMPLE + ",",
    SHIPPED.replace("[Width,Height]", "[Width, Height]").replace("[x,y]", "[x, y]"),  # as the README spells it
    "\ufeff" + SHIPPED,
])
def test_the_header_as_shipped_and_as_the_sample_spells_it(header):
    columns = nih.header_columns(header.split(","), "Data_Entry_2017.csv")
    assert [c for c in columns if c] == list(nih.CSV_COLUMNS)


def test_a_header_quoted_back_together_reads_the_same():
    cells = SHIPPED.split(",")[:7] + ["OriginalImage[Width,Height]", "OriginalImagePixelSpacing[x, y]"]
    assert nih.header_columns(cells, "x.csv") == nih.CSV_COLUMNS


@pytest.mark.parametrize("line", [ROW, ROW + ",", ROW + ",  "])
def test_rows_with_or_without_the_trailing_comma(line):
    for header in (SHIPPED, SHIPPED.rstrip(",")):
        assert _row(line, header).codes == _codes(cardiomegaly=C.POSITIVE)


@pytest.mark.parametrize("line", [ROW + ",7", ",".join(ROW.split(",")[:-1])])
def test_a_row_with_another_number_of_cells_is_bad_row(line):
    with pytest.raises(chexpert.RowError) as e:
        _row(line)
    assert e.value.reason == "bad_row"


def test_a_header_that_is_not_nih_names_the_problem():
    with pytest.raises(chexpert.CsvHeaderError, match="missing column.*'Finding Labels'.*unknown column.*'Path'"):
        nih.header_columns(["Image Index", "Path"] + SHIPPED.split(",")[2:], "Data_Entry_2017.csv")
    with pytest.raises(chexpert.CsvHeaderError, match="empty file"):
        nih.header_columns([], "sample_labels.csv")
    with pytest.raises(chexpert.CsvHeaderError, match="unknown column.*'Path'"):
        nih.header_columns(list(chexpert.CSV_COLUMNS), "train.csv")


def test_the_official_split_lists():
    train_val = nih.parse_image_list("00000001_000.png\r\n00000001_001.png\n\n", nih.TRAIN_VAL_LIST)
    test = nih.parse_image_list("00000003_000.png\n", nih.TEST_LIST)
    assert train_val == {"00000001_000.png", "00000001_001.png"}
    assert nih.official_splits(train_val, test) == {
        "00000001_000.png": "train_val", "00000001_001.png": "train_val", "00000003_000.png": "test"}
    with pytest.raises(ValueError, match="test_list.txt line 2"):
        nih.parse_image_list("00000003_000.png\nimages/00000004_000.png\n", nih.TEST_LIST)
    with pytest.raises(ValueError, match="1 image.*both.*00000001_000.png"):
        nih.official_splits(train_val, test | {"00000001_000.png"})
