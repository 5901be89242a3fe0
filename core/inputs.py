"""Listing the image files a scoring command names: ``trainer.predict``'s arguments and
``pipeline.score``'s ``--input_pattern``, one function for both.

TF-free and Beam-free at import: Beam's FileSystems is imported only to match a remote
(``gs://...``) pattern.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable

from core import imaging


def list_inputs(items: Iterable[str], *, patterns: bool = False) -> list[str]:
    """The files ``items`` name, sorted, each once.

    A folder names the image files below it (by suffix, ``imaging.IMAGE_SUFFIXES``). Any
    other item is, with ``patterns``, a glob (``**`` matches folders recursively; only files
    are taken) or a remote pattern matched by Beam's FileSystems; without it, a file path
    taken as given, so that a missing file reaches the caller's failure report.

    Args:
        items: paths, folders, or (with ``patterns``) glob patterns.
        patterns: read items that are not folders as patterns (``pipeline.score``).

    Returns:
        Sorted, distinct paths; empty when nothing matches.
    """
    out: set[str] = set()
    for item in items:
        if "://" in item and patterns:
            from apache_beam.io.filesystems import FileSystems

            out.update(m.path for m in FileSystems.match([item])[0].metadata_list)
        elif os.path.isdir(item):
            for root, _, files in os.walk(item):
                out.update(os.path.join(root, f) for f in files if f.lower().endswith(imaging.IMAGE_SUFFIXES))
        elif patterns:
            out.update(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        else:
            out.add(item)
    return sorted(out)
