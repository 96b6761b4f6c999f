"""How the ONNX Runtime backend sets up its session: every option that changes speed or memory is set explicitly
(not left to the library's defaults, which change between releases) and reported by ``describe()``.

Memory: building a session (graph optimisation, constant folding, pre-packing the weights) allocates several
times the file's size and frees most of it again; glibc keeps those freed pages in the process. Measured on the
tiny preset's 512x512 export (74 MiB): +425 MiB RSS after creating the session, +109 MiB after handing the
freed pages back with ``malloc_trim`` (:func:`release_freed_memory`), which the backend does after creating the
session and after the first run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import asdict, dataclass
from typing import Any

#: --optimization names -> onnxruntime.GraphOptimizationLevel member names
OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class OrtSessionSettings:
    """The session options the backend sets. ``threads``: intra-op threads (None: onnxruntime's choice, one per
    physical core); ``spinning``: whether idle pool threads spin (fast hand-off; a benchmark that interleaves
    engines turns it off so a spinning pool does not take the cores from the next one); ``memory_arena``:
    onnxruntime's CPU arena (keeps the activations' memory between runs; off = less resident memory, slightly
    more allocation work per run)."""

    threads: int | None = None
    spinning: bool = True
    optimization: str = "all"
    memory_arena: bool = True
    memory_pattern: bool = True
    trim_after_load: bool = True

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got "
                             f"{self.optimization!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def session_options(self, base: Any = None) -> Any:
        """An ``onnxruntime.SessionOptions`` with these settings (over ``base`` when given)."""
        import onnxruntime as ort

        opts = base or ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[self.optimization])
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops: a parallel executor only adds
        opts.inter_op_num_threads = 1                           # threads that compete with the intra-op pool
        if self.threads is not None:
            opts.intra_op_num_threads = int(self.threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.enable_cpu_mem_arena = self.memory_arena
        opts.enable_mem_pattern = self.memory_pattern
        opts.log_severity_level = 3
        return opts

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def low_memory(cls, threads: int | None = None, spinning: bool = True) -> OrtSessionSettings:
        """No arena and no memory pattern: a run's activations go back to the OS when it ends instead of staying
        in the arena (OFA-Base at 512x512: ~0.6 GiB resident between runs; the peak during a run is the same),
        at a cost in time measured in bench/README.md (fp32 as fast, int8-dynamic ~7% slower)."""
        return cls(threads=threads, spinning=spinning, memory_arena=False, memory_pattern=False)


def release_freed_memory() -> bool:
    """Hand memory that the process freed back to the OS (glibc's ``malloc_trim``); False where there is no
    glibc (musl, macOS, Windows), where it is not needed in the same way."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
