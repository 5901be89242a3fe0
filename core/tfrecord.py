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
    return _mask(google_crc32c.value(data))


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_record(f: BinaryIO, data: bytes) -> int:
    """Appends one record to an open binary file; returns the bytes written."""
    return write_record_parts(f, [data])


def write_record_parts(f: BinaryIO, parts: list) -> int:
    """``write_record`` of ``b"".join(parts)`` without that join: the largest chunk (a
    record's ~100 KB image) is never copied; the small chunks before and after it are
    joined (with the header and the footer) into one write each. Returns the bytes written."""
    lengths = list(map(len, parts))
    size = sum(lengths)
    big = lengths.index(max(lengths)) if parts else 0
    before, data, after = b"".join(parts[:big]), parts[big] if parts else b"", b"".join(parts[big + 1:])
    crc = google_crc32c.extend(google_crc32c.extend(google_crc32c.value(before), data), after)
    length = struct.pack("<Q", size)
    f.write(length + struct.pack("<I", masked_crc32c(length)) + before)
    f.write(data)
    f.write(after + struct.pack("<I", _mask(crc)))
    return size + 16


class CorruptRecordError(IOError):
    """A TFRecord whose length or data checksum does not match."""


def read_records(f: BinaryIO, name: str = "shard"):
    """Yields each record's bytes from an open TFRecord file, verifying both CRCs."""
    offset = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise CorruptRecordError(f"{name}: truncated record header at byte {offset}")
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != length_crc:
            raise CorruptRecordError(f"{name}: bad length checksum at byte {offset}")
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4 or struct.unpack("<I", footer)[0] != masked_crc32c(data):
            raise CorruptRecordError(f"{name}: bad or truncated record at byte {offset}")
        offset += length + 16
        yield data
