"""The test suite: ``tests/unit`` (contracts and the TF-free kit: no TensorFlow, no Beam;
``make test-fast``), then one folder per layer (``pipeline``, ``serving``, ``trainer``,
``webdemo``), each mirroring its package's modules. Support modules (fixture data, the fault
harness, child-process probes) live here at the top."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project root
