"""Run one artifact write of ifseg-deploy in this process with a file-size limit, so that it is cut part-way.

``python interrupted_write.py SCENARIO MODE LIMIT_BYTES ARGS_JSON`` (used by ``test_atomic_writes.py``).

The limit is RLIMIT_FSIZE: the kernel refuses to let any file of this process grow past LIMIT_BYTES, whatever
code does the writing (our helpers, PIL, safetensors' Rust writer, a plain ``open``), so the test does not
depend on how the write is implemented. Everything the scenario needs is imported and loaded first; only
the write itself runs under the limit.

* MODE ``fail``: a write past the limit raises OSError(EFBIG, "File too large"), as a full disk does, and the
  code's error handling runs (Python ignores SIGXFSZ).
* MODE ``kill``: SIGXFSZ gets its default action back, so the kernel terminates the process inside the write,
  and no Python code (no ``except``, no ``finally``) runs after it: what SIGKILL or a power cut leaves.

The parent checks what is on disk afterwards.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path

Write = Callable[[], object]


def segment_labels(image: str, model: str, out: str) -> Write:
    """`ifseg-deploy segment` writing labels/NAME.png over a previous run's file."""
    import ifseg_deploy.commands.segment  # noqa: F401  (its imports happen before the limit)
    import ifseg_deploy.runtime.segmenter  # noqa: F401
    import ifseg_deploy.runtime.visualize  # noqa: F401
    from ifseg_deploy.cli import cli

    return lambda: cli.main(["segment", image, "--model", model, "--out", out, "--no-progress"],
                            prog_name="ifseg-deploy", standalone_mode=False)


def onnx_commit(staged: str, out: str) -> Write:
    """The export's last step: a finished, checked .onnx file from its hidden work folder published at --out."""
    from ifseg_deploy.atomic import publish

    return lambda: publish(Path(staged), Path(out))


def engine(path: str, plan_bytes: int) -> Write:
    """A TensorRT plan and its sidecar written over an existing pair (the bytes are opaque: no TensorRT)."""
    from ifseg_deploy.runtime.engine_file import EngineKey, write_engine

    key = EngineKey.create("cd" * 32, "10.3.0", "Orin", "8.7", "fp16", [[1, 3, 64, 96]] * 3)
    plan = os.urandom(plan_bytes)
    return lambda: write_engine(path, plan, key, {"ifseg.precision": "fp16"})


def model_dir(source: str, target: str) -> Write:
    """An adapted-model directory saved over an existing one (``save_pretrained(..., overwrite=True)``)."""
    import safetensors.torch  # noqa: F401

    from ifseg_deploy.model_dir import AdaptedModel

    adapted = AdaptedModel.from_pretrained(source)
    return lambda: adapted.save_pretrained(target, overwrite=True)


def large_file(path: str, nbytes: int) -> Write:
    """``atomic_write_bytes`` of a large payload (the parent sends SIGKILL while it is being written)."""
    from ifseg_deploy.atomic import atomic_write_bytes

    data = bytes(range(256)) * (nbytes // 256)
    return lambda: atomic_write_bytes(path, data)


SCENARIOS: dict[str, Callable[..., Write]] = {
    "segment-labels": segment_labels, "onnx-commit": onnx_commit, "engine": engine, "model-dir": model_dir,
    "large-file": large_file,
}


def limit_file_size(nbytes: int, mode: str) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGXFSZ kill must not leave a core file behind
    if mode == "kill":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    elif mode != "fail":
        raise SystemExit(f"unknown mode {mode!r}")
    if nbytes > 0:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def main() -> None:
    scenario, mode, nbytes, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    write = SCENARIOS[scenario](**args)
    limit_file_size(nbytes, mode)
    print("writing", flush=True)  # stdout is a pipe: the limit applies to files only
    write()
    print("finished", flush=True)


if __name__ == "__main__":
    main()
