"""The ONNX Runtime backend's session options: every setting reaches the session and the report, and the memory
that building the session freed is handed back to the OS."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend
from ifseg_deploy.runtime.backends.ort_session import OrtSessionSettings


def test_settings_reach_the_session(fixed_export):
    path, _ = fixed_export
    settings = OrtSessionSettings(threads=1, spinning=False, optimization="basic", memory_arena=False)
    backend = OrtBackend.from_file(path, device="cpu", settings=settings)
    opts = backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.enable_cpu_mem_arena is False
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert backend.describe()["session"] == {**settings.describe(), "threads": 1}
    default = OrtBackend.from_file(path, device="cpu", threads=2)
    d = default.describe()["session"]
    assert d["threads"] == 2 and d["optimization"] == "all" and d["memory_arena"] and d["spinning"]
    assert default.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize("kwargs, message", [({"optimization": "max"}, "optimization must be one of"),
                                             ({"threads": 0}, "threads must be >= 1")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OrtSessionSettings(**kwargs)


_CHILD = """
import sys
from ifseg_deploy.runtime.backends.ort_session import release_freed_memory
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
blocks = [bytearray(96 * 1024) for _ in range(3000)]  # below glibc's mmap threshold: on the heap
kept = blocks[9::10]  # what stays alive pins the heap's top, so free() alone cannot shrink it
del blocks
before = rss()
assert release_freed_memory()
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status; malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_os():
    released = float(subprocess.run([sys.executable, "-c", _CHILD], check=True, capture_output=True,
                                    text=True).stdout)
    assert released > 100, released  # of the ~250 MiB freed


def test_the_backend_trims_after_loading_and_after_its_first_run(fixed_export, monkeypatch):
    import numpy as np

    from ifseg_deploy.runtime.backends import onnxruntime as ort_backend

    calls = []
    monkeypatch.setattr(ort_backend, "release_freed_memory", lambda: calls.append(1) or True)
    backend = OrtBackend.from_file(fixed_export[0], device="cpu")
    assert len(calls) == 1
    pixels = np.zeros((1, 3, 64, 96), np.float32)
    backend.probs(pixels)
    backend.probs(pixels)
    assert len(calls) == 2
    no_trim = OrtSessionSettings(trim_after_load=False)
    OrtBackend.from_file(fixed_export[0], device="cpu", settings=no_trim).probs(pixels)
    assert len(calls) == 2


def test_low_memory_reaches_the_session_from_the_command_line(fixed_export):
    """`segment/eval --low-memory`: the ONNX Runtime session runs without the arena and the memory pattern; the
    option is refused for the other backends (it would silently do nothing there)."""
    import click

    from ifseg_deploy.commands.options import load_segmenter

    path, _ = fixed_export
    with load_segmenter(str(path), "onnxruntime", "cpu", False, None, None, None, None, low_memory=True) as seg:
        opts = seg.backend.session.get_session_options()
        assert opts.enable_cpu_mem_arena is False and opts.enable_mem_pattern is False
        assert seg.backend.describe()["session"]["memory_arena"] is False
    with load_segmenter(str(path), "onnxruntime", "cpu", False, None, None, None, None) as seg:
        assert seg.backend.session.get_session_options().enable_cpu_mem_arena is True
    with pytest.raises(click.UsageError, match="goes with --backend onnxruntime"):
        load_segmenter(str(path), "torch", "cpu", False, None, None, None, None, low_memory=True)
