"""Moved to ``tests/helpers/ofa.py``; this name stays only for test files being reworked on another branch
(test_adapt.py, test_bench.py) and goes when they import ``helpers.ofa``."""

from helpers.ofa import tiny_config, write_fairseq_checkpoint  # noqa: F401
