"""pipeline.shards: a record's shard is a function of its key alone, in every process; TF-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tests
from pipeline import shards

KEYS = ["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg",
        "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "a", "x/y.jpg"]
# Pinned: the shard of a key never changes between releases (a rebuild compares byte for byte
# with the last one), interpreters or hash seeds. A different number here is a format change.
PINNED = [675, 241, 880]


def _in_child(hash_seed: str) -> list[int]:
    code = f"import json; from pipeline import shards; print(json.dumps([shards.shard_of(k, 1000) for k in {KEYS!r}]))"
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=tests.ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tests.ROOT, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def test_a_records_shard_is_the_same_in_every_process_whatever_its_hash_seed():
    here = [shards.shard_of(k, 1000) for k in KEYS]
    assert [here[i] for i in (0, 3, 4)] == PINNED
    # Python's own hash() of a str differs between these two children.
    assert _in_child("1") == _in_child("2") == here
    assert len(set(here)) == len(KEYS)  # 1000 shards: five keys land apart, so the test can see a change


def test_shards_are_used_evenly_and_names_sort_in_shard_order():
    counts = [0] * 8
    for i in range(8000):
        counts[shards.shard_of(f"patient{i:05d}/study1/view1_frontal.jpg", 8)] += 1
    assert min(counts) > 900 and max(counts) < 1100
    names = [shards.shard_name("train", i, 12) for i in range(12)]
    assert names == sorted(names) and names[3] == "train-00003-of-00012.tfrecord"
    assert shards.shard_name("train", 0, 1, tag="u1") == "train-u1-00000-of-00001.tfrecord"
