"""Helpers of the test suite, in one place: tiny BPE vocabularies (:mod:`.bpe`) and OFA checkpoints
(:mod:`.ofa`), the export tests' model and exports (:mod:`.export`), the import reader of the architecture test
(:mod:`.imports`) and the child process of the atomic-write tests (``interrupted_write.py``). Session fixtures
built from them live in ``tests/conftest.py``."""
