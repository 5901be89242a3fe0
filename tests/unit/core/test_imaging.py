"""pipeline/imaging.py: every input format, every failure reason, resize modes, encodings."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
from PIL import Image, ImageOps

from core import fingerprint, imaging
from pipeline import example_builder
from schemas.chexpert import RowError
from tests import images


def _reason(data: bytes, name: str = "x.jpg") -> str:
    with pytest.raises(RowError) as e:
        imaging.decode(data, name)
    assert name in e.value.detail  # every message names the file
    return e.value.reason


def test_jpeg_png_and_rgb_decode_to_uint8_gray():
    g = images.gradient()
    np.testing.assert_array_equal(imaging.decode(images.png_bytes(g)), g)
    assert np.abs(imaging.decode(images.jpeg_bytes(g)).astype(int) - g).max() <= 8
    rgb = np.stack([g, g, g], axis=-1)
    out = imaging.decode(images.png_bytes(rgb))
    assert out.shape == g.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, g)  # equal channels: luma is the channel


def test_16_bit_png_is_stretched_not_rejected():
    g12 = images.gradient(dtype=np.uint16, maxval=4095)  # 12 bits used, as detectors do
    out = imaging.decode(images.png_bytes(g12))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone: contrast kept


def test_dicom_monochrome1_is_inverted_and_windowed():
    arr = images.gradient(dtype=np.uint16, maxval=4000)
    m2 = imaging.decode(images.dicom_bytes(arr), "a.dcm")
    m1 = imaging.decode(images.dicom_bytes(arr, photometric="MONOCHROME1"), "b.dcm")
    assert m2[0, 0] == 0 and m2[-1, -1] == 255
    assert m1[0, 0] == 255 and m1[-1, -1] == 0  # inverted
    win = imaging.decode(images.dicom_bytes(arr, window=(1000, 500)), "c.dcm")
    # Everything above centre + width/2 = 1250 saturates after windowing.
    assert (win == 255).mean() > 0.6 and win[0, 0] == 0


def test_dicom_windowed_by_a_voi_lut_sequence_shows_the_lut():
    """A VOI LUT (a table, not WindowCenter/Width) is applied: here a step at 2000."""
    import pydicom
    from pydicom.dataset import Dataset

    arr = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(images.dicom_bytes(arr)))
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new((0x0028, 0x3006), "US", [0 if v < 2000 else 1000 for v in range(4096)])  # LUT Data
    ds.VOILUTSequence = [lut]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    np.testing.assert_array_equal(imaging.decode(buf.getvalue(), "lut.dcm"), np.where(arr >= 2000, 255, 0))


def test_bad_inputs_get_their_reasons():
    g = images.gradient(200, 200)
    jpg = images.jpeg_bytes(g)
    assert _reason(b"") == "empty_file"
    assert _reason(jpg[: len(jpg) // 2]) == "truncated_image"
    assert _reason(b"this is a text file, not a radiograph\n" * 20) == "not_an_image"
    assert _reason(images.dicom_bytes(images.gradient(dtype=np.uint16), compressed=True), "d.dcm") == "dicom_unreadable"
    assert _reason(b"\x00" * 128 + b"DICM" + b"\x00" * 50, "e.dcm") == "dicom_unreadable"


def test_decompression_bomb_is_refused_before_decoding():
    big = Image.new("L", (10000, 9000))  # 90 Mpx > MAX_PIXELS; compresses to a few KB

    buf = io.BytesIO()
    big.save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000
    assert _reason(buf.getvalue(), "bomb.png") == "image_too_large"


@pytest.mark.parametrize("mode", imaging.RESIZE_MODES)
def test_resize_modes_give_square_uint8(mode):
    out = imaging.resize(images.gradient(80, 40), 32, mode)
    assert out.shape == (32, 32) and out.dtype == np.uint8


def test_pad_keeps_the_whole_film_and_crop_keeps_the_centre():
    tall = np.full((80, 40), 200, np.uint8)
    padded = imaging.resize(tall, 40, "pad")
    assert padded[:, 0].max() == 0 and padded[20, 20] == 200  # black side borders
    cropped = imaging.resize(tall, 40, "crop")
    assert cropped.min() == 200  # no border at all


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_lossless_encodings_round_trip(encoding):
    g = images.gradient(32, 32)
    data = imaging.encode(g, encoding)
    back = np.frombuffer(data, np.uint8).reshape(32, 32) if encoding == "raw" else imaging.decode(data)
    np.testing.assert_array_equal(back, g)


def test_jpeg_draft_decodes_large_files_at_reduced_scale_with_the_same_result_shape():
    big = np.asarray(Image.fromarray(images.gradient(64, 64)).resize((2400, 2000)))
    out = imaging.preprocess(images.jpeg_bytes(big, 90), "big.jpg", 320)
    assert out.shape == (320, 320)
    ref = imaging.resize(np.asarray(Image.open(io.BytesIO(images.jpeg_bytes(big, 90)))), 320)
    assert np.abs(out.astype(int) - ref).mean() < 3  # draft changes pixels only slightly
    # Reduced, but never below the target: 1/4 scale here (500x600), not 1/8 (250x300 < 320).
    assert imaging.decode(images.jpeg_bytes(big, 90), "big.jpg", draft_size=320).shape == (500, 600)


# --- Odd inputs that used to pass silently --------------------------------------------------


def _marked(h: int = 64, w: int = 48) -> np.ndarray:
    """A dark image with one bright corner block: every rotation and flip looks different."""
    arr = np.full((h, w), 40, np.uint8)
    arr[:16, :12] = 230
    return arr


def _with_orientation(arr: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_exif_orientation_6_jpeg_is_turned_upright():
    data = _with_orientation(_marked(), 6, "JPEG")  # "rotate 90 clockwise to display"
    out = imaging.decode(data, "phone.jpg")
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    assert out.shape == (48, 64) and not np.array_equal(out.shape, imaging.decode(images.jpeg_bytes(_marked())).shape)
    np.testing.assert_array_equal(out, upright)
    assert out[:12, -16:].mean() > 200 and out[:12, :16].mean() < 60  # the bright corner went top-right


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(orientation):
    data = _with_orientation(_marked(), orientation, "PNG")
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(imaging.decode(data, "o.png"), want)


def test_nan_and_infinite_pixels_are_refused_not_blackened():
    ramp = images.gradient(64, 64).astype(np.float32) / 255
    for bad in (np.nan, np.inf, -np.inf):
        arr = ramp.copy()
        arr[10, 20] = bad
        assert _reason(images.float_tiff_bytes(arr), "f.tif") == "nonfinite_pixels"
        assert _reason(images.dicom_bytes(arr), "f.dcm") == "nonfinite_pixels"
        # A VOI window would clip infinity to its top value: refused before the window.
        assert _reason(images.dicom_bytes(arr, window=(0.5, 0.5)), "w.dcm") == "nonfinite_pixels"
    out = imaging.decode(images.float_tiff_bytes(ramp), "ok.tif")  # finite floats are stretched
    assert out.min() == 0 and out.max() == 255
    assert imaging.decode(images.dicom_bytes(ramp), "ok.dcm").max() == 255


def test_images_under_the_minimum_side_are_refused_from_the_header():
    side = imaging.MIN_SIDE
    assert _reason(images.png_bytes(np.zeros((1, 1), np.uint8)), "dot.png") == "image_too_small"
    assert _reason(images.jpeg_bytes(images.gradient(side - 1, 400)), "strip.jpg") == "image_too_small"
    assert _reason(images.dicom_bytes(images.gradient(16, 16, np.uint16, 4000)), "tiny.dcm") == "image_too_small"
    # The DICOM header decides before any pixel is read: the pixel data here is cut short.
    cut = images.dicom_bytes(images.gradient(8, 400, np.uint16, 4000))[:-100]
    assert _reason(cut, "cut.dcm") == "image_too_small"
    assert imaging.decode(images.png_bytes(images.gradient(side, side)), "ok.png").shape == (side, side)


def test_dicom_over_the_pixel_cap_is_refused_from_its_header():
    # Rows x Columns over the cap with only a few bytes of pixel data: refused for its size,
    # before the (short) pixel data is touched.
    data = images.dicom_bytes(images.gradient(64, 64, np.uint16, 4000))
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = 10000, 9000
    buf = io.BytesIO()
    ds.save_as(buf)
    assert _reason(buf.getvalue(), "huge.dcm") == "image_too_large"


def test_multi_frame_dicom_gives_its_first_frame():
    frames = np.stack([images.gradient(64, 48, np.uint16, 4000), np.zeros((64, 48), np.uint16)])
    out = imaging.decode(images.dicom_bytes(frames), "cine.dcm")
    np.testing.assert_array_equal(out, imaging.decode(images.dicom_bytes(frames[0]), "one.dcm"))


def _whole_image_stretch(arr: np.ndarray) -> np.ndarray:
    """The conversion as it was before strips: whole-image float64, min..max to 0..255."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def test_strip_conversion_is_bit_identical_to_the_whole_image_conversion(monkeypatch):
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    monkeypatch.setattr(imaging, "_STRIP_PIXELS", 1000)  # many strips, the last one short
    rng = np.random.default_rng(0)
    u16 = rng.integers(100, 3900, (301, 97)).astype(np.uint16)
    i32 = rng.integers(-5000, 70000, (301, 97)).astype(np.int32)
    buf = io.BytesIO()
    Image.fromarray(i32).save(buf, format="TIFF")
    pil_cases = {"u16.png": (images.png_bytes(u16), u16), "i32.tif": (buf.getvalue(), i32),
                 "f.tif": (images.float_tiff_bytes(i32 / 7.0), (i32 / 7.0).astype(np.float32))}
    for name, (data, arr) in pil_cases.items():
        np.testing.assert_array_equal(imaging.decode(data, name), _whole_image_stretch(arr), err_msg=name)
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for window in (None, (1500, 900)):
            for rescale in (None, (2, -100)):
                data = images.dicom_bytes(u16, photometric=photometric, window=window, rescale=rescale)
                ds = pydicom.dcmread(io.BytesIO(data))
                want = apply_modality_lut(ds.pixel_array, ds)
                want = apply_voi_lut(want, ds, index=0) if window else want
                want = want.max() - want if photometric == "MONOCHROME1" else want
                np.testing.assert_array_equal(imaging.decode(data, "d.dcm"), _whole_image_stretch(want),
                                              err_msg=f"{photometric} {window} {rescale}")


# --- Links out of the dataset ----------------------------------------------------------------


@pytest.mark.parametrize("memo", [None, {}], ids=["resolved each time", "folder resolved once"])
def test_a_link_out_of_the_dataset_folder_is_refused(tmp_path, memo):
    root, outside = tmp_path / "in", tmp_path / "secret"
    study = root / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1"
    study.mkdir(parents=True)
    outside.mkdir()
    (outside / "id_rsa.jpg").write_bytes(b"not for the records")
    (study / "view1_frontal.jpg").write_bytes(b"x")
    (study / "view2_frontal.jpg").symlink_to(outside / "id_rsa.jpg")  # the file is a link out
    (study / "view3_frontal.jpg").symlink_to(study / "view1_frontal.jpg")  # a link that stays inside
    (root / "CheXpert-v1.0-small" / "train" / "patient00002").symlink_to(outside)  # a folder link out
    (outside / "study1").mkdir()
    (outside / "study1" / "view1_frontal.jpg").write_bytes(b"y")
    (study / "view4_frontal.jpg").symlink_to(tmp_path / "gone.jpg")  # dangling, out

    def check(rel: str) -> str | None:
        name = f"CheXpert-v1.0-small/train/{rel}"
        try:
            imaging.refuse_link_outside(os.path.join(str(root), name), name, memo)
        except RowError as e:
            assert e.detail.startswith(name + ": ") and "not followed" in e.detail
            return e.reason
        return None

    assert check("patient00001/study1/view1_frontal.jpg") is None
    assert check("patient00001/study1/view3_frontal.jpg") is None
    assert check("patient00001/study1/view2_frontal.jpg") == "link_outside_dataset"
    assert check("patient00002/study1/view1_frontal.jpg") == "link_outside_dataset"
    assert check("patient00001/study1/view4_frontal.jpg") == "link_outside_dataset"
    assert check("patient00001/study1/missing.jpg") is None  # missing: the reader's missing_file


def test_a_dataset_folder_that_is_itself_a_link_is_followed(tmp_path):
    # The dataset on another disk, linked into the input folder (or --input_dir naming a link).
    real = tmp_path / "disk2" / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1"
    real.mkdir(parents=True)
    (real / "view1_frontal.jpg").write_bytes(b"x")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "CheXpert-v1.0-small").symlink_to(tmp_path / "disk2" / "CheXpert-v1.0-small")
    name = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    imaging.refuse_link_outside(os.path.join(str(tmp_path / "in"), name), name)
    imaging.refuse_link_outside("gs://bucket/data/" + name, name)  # object stores have no links
    imaging.refuse_link_outside(name, name)  # no dataset root (score --input_pattern): nothing to leave


def test_an_rgba_png_decodes_to_the_same_gray_as_its_gray_png():
    """A few NIH ChestX-ray14 PNGs are RGBA (the gray level in R, G and B, alpha 255): they
    decode, and preprocess, to exactly the pixels of the same film saved as gray."""
    y, x = np.mgrid[0:48, 0:40]
    gray = ((x * 5 + y * 3) % 256).astype(np.uint8)
    encoded = {}
    for mode in ("L", "RGBA"):
        buf = io.BytesIO()
        Image.fromarray(gray, "L").convert(mode).save(buf, format="PNG")
        encoded[mode] = buf.getvalue()
    assert Image.open(io.BytesIO(encoded["RGBA"])).mode == "RGBA"
    assert np.array_equal(imaging.decode(encoded["RGBA"], "a.png"), gray)
    assert np.array_equal(imaging.preprocess(encoded["RGBA"], "a.png", 32), imaging.preprocess(encoded["L"], "b.png", 32))


def _linked_tree(tmp_path) -> tuple[str, list[str]]:
    """A dataset root with links of every kind (folder and file, inside and out, chained,
    relative, dangling, the dataset folder itself a link), and names to look up in it."""
    disk = tmp_path / "disk2" / "CheXpert-v1.0-small"
    (disk / "train" / "patient1" / "study1").mkdir(parents=True)
    (disk / "train" / "patient1" / "study2").mkdir()
    (tmp_path / "outside" / "study1").mkdir(parents=True)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "CheXpert-v1.0-small").symlink_to(disk)
    train = disk / "train"
    for study in ("study1", "study2"):
        (train / "patient1" / study / "view1_frontal.jpg").write_bytes(b"x")
    (train / "patient2").symlink_to(train / "patient1")  # a folder link inside
    (train / "patient3").symlink_to(tmp_path / "outside")  # a folder link out
    (train / "patient4").symlink_to("patient2")  # a relative link to a link
    (train / "patient1" / "study3").symlink_to("../patient3/study1")  # a nested link out
    (train / "patient1" / "study1" / "view2_lateral.jpg").symlink_to("view1_frontal.jpg")
    (train / "patient1" / "study1" / "view3_frontal.jpg").symlink_to(tmp_path / "gone.jpg")  # dangling
    names = [f"CheXpert-v1.0-small/train/patient{p}/study{s}/{v}"
             for p in (1, 2, 3, 4, 5) for s in (1, 2, 3) for v in ("view1_frontal.jpg", "view2_lateral.jpg",
                                                                    "view3_frontal.jpg", "missing.jpg")]
    return str(tmp_path / "in"), names


def test_the_memoised_link_check_resolves_every_path_as_realpath_does(tmp_path):
    # The writer's check resolves each folder once per shard (imaging._real_file): on a tree
    # with links of every kind (folder and file, inside and out, chained, relative, dangling,
    # the dataset folder itself a link), every path must resolve as os.path.realpath does,
    # with one memo shared by all of them in any order, as a shard's files share it.
    root, names = _linked_tree(tmp_path)
    memo: dict[str, str] = {}
    folder = os.path.join(root, "CheXpert-v1.0-small")
    for name in names + names[::-1]:
        path = os.path.join(root, name)
        assert imaging._real_file(path, folder, memo) == os.path.realpath(path), name
    outcomes = {}
    for name in names:
        try:
            imaging.refuse_link_outside(os.path.join(root, name), name)  # no memo: realpath itself
            outcomes[name] = None
        except RowError as e:
            outcomes[name] = e.reason
    assert outcomes[names[0]] is None and "link_outside_dataset" in outcomes.values()
    for name in names:  # the memo gives the same verdicts as realpath on each file
        try:
            imaging.refuse_link_outside(os.path.join(root, name), name, memo)
            assert outcomes[name] is None, name
        except RowError as e:
            assert outcomes[name] == e.reason, name


def test_the_writers_one_lstat_read_gives_the_general_paths_verdicts_and_bytes(tmp_path):
    # read_plain_file (the writer's path for every image) must read exactly the files the
    # general path (refuse_link_outside, refuse_non_file, read) reads, refuse the same ones
    # with the same reason, and hand every link or missing file to the general path (None).
    root, names = _linked_tree(tmp_path)
    disk = tmp_path / "disk2" / "CheXpert-v1.0-small" / "train" / "patient1" / "study2"
    os.mkfifo(disk / "fifo.jpg")
    (disk / "folder.jpg").mkdir()
    (tmp_path / "outside" / "study1" / "view1_frontal.jpg").write_bytes(b"secret")  # behind a folder link out
    names += [f"CheXpert-v1.0-small/train/patient{p}/study2/{v}" for p in (1, 2) for v in ("fifo.jpg", "folder.jpg")]
    memo: dict[str, str] = {}
    seen = set()
    for name in names + names[::-1]:
        path = os.path.join(root, name)
        try:
            imaging.refuse_link_outside(path, name)
            imaging.refuse_non_file(path, name)
            want = open(path, "rb").read() if os.path.exists(path) else None
        except RowError as e:
            want = e.reason
        try:
            got = imaging.read_plain_file(path, name, memo)
            if got is not None:  # the bytes, and the stat of the file they were read from
                assert fingerprint.stat_text(got[1]) == fingerprint.file_stat(path), name
                got = got[0]
        except RowError as e:
            got = e.reason
        if os.path.islink(path) or not os.path.lexists(path) or not stat.S_ISREG(os.lstat(path).st_mode):
            assert got is None, name  # the general path decides (a FIFO, a folder: after its stat)
        else:
            assert got == want, name
        seen.add(got if isinstance(got, str) or got is None else "bytes")
        # The writer's read (this path, then the general one) gives the general path's verdict,
        # and a refusal carries the stat of what it found (the next run's change detector).
        try:
            data, file_stat = example_builder.read_image_and_stat(path, name, memo)
            assert data == want and file_stat == fingerprint.file_stat(path), name
        except RowError as e:
            assert e.reason == (want if isinstance(want, str) else "missing_file"), name
            assert e.file_stat == fingerprint.file_stat(path), name
    assert seen == {None, "bytes", "link_outside_dataset"}
    assert imaging.read_plain_file("gs://b/CheXpert-v1.0-small/x.jpg", "CheXpert-v1.0-small/x.jpg", memo) is None


@pytest.mark.parametrize("length", [0, 1, 4096, 65536, 200_001])
def test_the_writers_read_gets_every_byte_whatever_size_lstat_said(tmp_path, length):
    # read_plain_file reads size+1 bytes (the size from its lstat) and then finds the end; a
    # file that grew or shrank after the lstat must still be read whole, never cut short.
    path = tmp_path / "f.jpg"
    data = os.urandom(length)
    path.write_bytes(data)
    for told in sorted({0, 1, length // 2, max(length - 1, 0), length, length + 1, length + 70_000}):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert imaging._read_all(fd, told) == data, told
        finally:
            os.close(fd)
