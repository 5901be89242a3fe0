"""schemas/example_tf.py, the reader side: it parses what the TF-free writer
(schemas/example.py) encodes, byte for byte as TensorFlow would, and evaluates the
uncertainty policies to the same numbers as schemas/chexpert.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from core import imaging, tfrecord
from schemas import chexpert
from schemas import example as example_lib
from schemas import example_tf
from tests.unit.schemas.test_chexpert import CODES, POLICY_TABLE, _row


@pytest.mark.parametrize("policy,blank,targets,mask", POLICY_TABLE)
def test_reader_evaluates_each_policy_table_as_the_writer(policy, blank, targets, mask):
    table = chexpert.policy_matrix({s: policy for s in chexpert.OBSERVATIONS}, blank)
    codes = np.tile(CODES[:, None], (1, 14))
    draws = np.full((4, 14), 0.5, np.float32)
    t, m = chexpert.apply_policy(codes, draws, table)
    tt, tm = example_tf.policy_targets(tf.constant(codes), tf.constant(draws), table)
    np.testing.assert_array_equal(tt.numpy(), t)
    np.testing.assert_array_equal(tm.numpy(), m)
    np.testing.assert_allclose(tt.numpy()[:, 0], targets, atol=1e-6)


def test_reader_takes_the_labellers_value_for_uncertain_entries_as_the_writer():
    table = chexpert.policy_matrix({s: "self_trained" for s in chexpert.OBSERVATIONS})
    codes = np.tile(CODES[:, None], (1, 14))
    draws = np.full((4, 14), 0.5, np.float32)
    labeller = np.full((4, 14), 0.3, np.float32)
    labeller[:, 7] = chexpert.NO_LABELLER_VALUE
    t, m = chexpert.apply_policy(codes, draws, table, labeller)
    tt, tm = example_tf.policy_targets(tf.constant(codes), tf.constant(draws), table, tf.constant(labeller))
    np.testing.assert_array_equal(tt.numpy(), t)
    np.testing.assert_array_equal(tm.numpy(), m)
    np.testing.assert_allclose(tt.numpy()[:, 0], [0, 0.3, 0, 1], atol=0)


def test_example_round_trip_every_field():
    row = chexpert.parse_row(_row())
    pixels = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    draws = chexpert.draws_for(row.path)
    table = chexpert.policy_matrix(chexpert.resolve_policies())
    targets, mask = chexpert.apply_policy(np.array(row.codes), draws, table)
    for fmt, encoded in [("raw", pixels.tobytes()), ("png", imaging.encode(pixels))]:
        ex = example_lib.to_example(row, encoded=encoded, image_format=fmt, height=12, width=10, draws=draws,
                                    targets=targets, mask=mask)
        f = example_tf.parse(tf.constant(ex))
        assert set(example_tf.FEATURE_SPEC) == set(example_lib.FEATURES) and set(example_lib.FEATURES) <= set(f)
        np.testing.assert_array_equal(f["image"].numpy()[..., 0], pixels)
        assert f["image"].dtype == tf.uint8
        assert f[example_lib.IMAGE_FORMAT].numpy() == fmt.encode()
        assert (f[example_lib.IMAGE_HEIGHT].numpy(), f[example_lib.IMAGE_WIDTH].numpy()) == (12, 10)
        assert f[example_lib.SOURCE_PATH].numpy().decode() == row.path
        assert f[example_lib.PATIENT_ID].numpy() == b"patient00007"
        assert f[example_lib.STUDY_ID].numpy() == b"patient00007/study2"
        assert f[example_lib.PATIENT_SEX].numpy() == b"Female" and f[example_lib.PATIENT_AGE].numpy() == 63
        assert f[example_lib.IMAGE_VIEW].numpy() == b"frontal" and f[example_lib.IMAGE_PROJECTION].numpy() == b"AP"
        np.testing.assert_array_equal(f[example_lib.LABELS_RAW].numpy(), row.codes)
        np.testing.assert_array_equal(f[example_lib.LABELS_DRAW].numpy(), draws)
        np.testing.assert_array_equal(f[example_lib.LABELS_TARGET].numpy(), targets)
        np.testing.assert_array_equal(f[example_lib.LABELS_MASK].numpy(), mask)
        assert f[example_lib.VERSION].numpy() == chexpert.SCHEMA_VERSION


def _tf_proto(features: dict) -> bytes:
    """The same record built with TensorFlow's own protobuf classes."""
    feats = {}
    for key, value in features.items():
        kind = example_lib.FEATURES[key][0]
        if kind == "bytes":
            v = value.encode() if isinstance(value, str) else value
            feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        elif kind == "float":
            feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(value).tolist()))
        else:
            feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.ravel(value)]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=40),
       st.lists(st.integers(-2**63, 2**63 - 1), min_size=14, max_size=14),
       st.lists(st.floats(width=32, allow_nan=False), min_size=14, max_size=14),
       st.sampled_from(["frontal", "lateral", "", "é"]), st.integers(-2**63, 2**63 - 1), st.booleans())
def test_hand_encoder_equals_tensorflows_deterministic_serialization(blob, text, ints, floats, view, age, as_tuple):
    # The view, the age and the codes (as a tuple) take the encoder's cached entries, which
    # must never hand one record another's value; the rest are built per record.
    features = {example_lib.IMAGE_ENCODED: blob, example_lib.SOURCE_PATH: text,
                example_lib.LABELS_RAW: tuple(ints) if as_tuple else ints,
                example_lib.LABELS_DRAW: np.array(floats, np.float32), example_lib.PATIENT_AGE: [age],
                example_lib.IMAGE_HEIGHT: [320], example_lib.IMAGE_VIEW: view}
    assert example_lib.encode(features) == _tf_proto(features)
    parts, size = example_lib.encode_parts(features)
    assert size == sum(map(len, parts)) and b"".join(parts) == example_lib.encode(features)
    # The writer's split: the rest of the record built before the image is decoded.
    rest = {k: v for k, v in features.items() if k != example_lib.IMAGE_ENCODED}
    parts, size = example_lib.with_image(blob, example_lib.encode_rest(rest))
    assert size == sum(map(len, parts)) and b"".join(parts) == example_lib.encode(features)
    with pytest.raises(ValueError, match="image/encoded"):
        example_lib.encode_rest(features)


def test_framing_from_chunks_equals_framing_the_joined_record(tmp_path):
    # The writer frames a record from its chunks (the image never joined): the same bytes as
    # write_record of the joined record, wherever the largest chunk lies, and TF reads them.
    big = bytes(range(256)) * 400
    records = [[b"a"], [big], [b"head", big, b"tail"], [big, b"x", b"y"], [b"x", b"", big], [b"", b""],
               [b"abc", b"defg", b"h"]]
    joined, chunked = str(tmp_path / "joined.tfrecord"), str(tmp_path / "chunked.tfrecord")
    with open(joined, "wb") as f:
        sizes = [tfrecord.write_record(f, b"".join(parts)) for parts in records]
    with open(chunked, "wb") as f:
        assert [tfrecord.write_record_parts(f, parts) for parts in records] == sizes
    assert open(joined, "rb").read() == open(chunked, "rb").read()
    assert [r.numpy() for r in tf.data.TFRecordDataset(chunked)] == [b"".join(p) for p in records]


def test_tfrecord_framing_reads_back_in_tensorflow(tmp_path):
    records = [b"", b"a", bytes(range(256)) * 300]
    path = str(tmp_path / "x.tfrecord")
    with open(path, "wb") as f:
        sizes = [tfrecord.write_record(f, r) for r in records]
    assert sum(sizes) == (tmp_path / "x.tfrecord").stat().st_size
    assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == records


def test_external_keys_round_trip_and_chexpert_records_unchanged():
    """External rows carry their dataset and own labels; a CheXpert record leaves both keys
    out (its bytes are what they were before the keys existed) and parses with the defaults."""
    row = chexpert.parse_row(_row())
    pixels = np.zeros((4, 4), np.uint8)
    draws = chexpert.draws_for(row.path)
    targets, mask = chexpert.apply_policy(np.array(row.codes), draws,
                                          chexpert.policy_matrix(chexpert.resolve_policies()))
    common = dict(encoded=pixels.tobytes(), image_format="raw", height=4, width=4, draws=draws, targets=targets,
                  mask=mask)
    plain = example_lib.to_example(row, **common)
    assert b"source/dataset" not in plain and b"source/labels" not in plain
    f = example_tf.parse(tf.constant(plain))
    assert f[example_lib.SOURCE_DATASET].numpy() == b"chexpert" and f[example_lib.SOURCE_LABELS].numpy() == b""
    ext = example_lib.to_example(row, **common, dataset="nih", source_labels="Cardiomegaly|Effusion")
    f = example_tf.parse(tf.constant(ext))
    assert f[example_lib.SOURCE_DATASET].numpy() == b"nih"
    assert f[example_lib.SOURCE_LABELS].numpy() == b"Cardiomegaly|Effusion"
    # The hand encoder still equals TensorFlow's own serialization with the new keys in.
    assert tf.train.Example.FromString(ext).SerializeToString(deterministic=True) == ext
