"""TFRecord framing without TensorFlow, over Beam's FileSystems (local, gs://, s3://, ...).

Each record is::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

little-endian, as ``tf.data.TFRecordDataset`` reads it. Beam workers write shards with this
instead of ``tf.io.TFRecordWriter`` so they never import TensorFlow.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's CRC: crc32c rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_record(f: BinaryIO, data: bytes) -> int:
    """Appends one record to an open binary file; returns the bytes written."""
    length = struct.pack("<Q", len(data))
    f.write(length + struct.pack("<I", masked_crc32c(length)))
    f.write(data)
    f.write(struct.pack("<I", masked_crc32c(data)))
    return len(data) + 16
