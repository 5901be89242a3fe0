"""Shim so Beam runners can ship the packages with `--setup_file ./setup.py`.

All metadata lives in setup.cfg; Dataflow (and the portable runners' staging) still
looks for a setup.py, so this file only calls setuptools.
"""
import setuptools

setuptools.setup()
