"""What ``ifseg-deploy bench`` (inference mode) is asked to measure: the settings, their parsing and their checks.
Nothing heavy is imported here: the command line reads its choices from this module.

The backend names are the runtime registry's and the precisions those of an export, plus the benchmark's own
``int8-dynamic``: the CPU INT8 format (``export --precision int8-dynamic``). It is ONNX Runtime's own dynamic
quantization of the MatMul/Gemm weights (activations quantized at run time), which its CPU provider runs with
integer kernels, with the convolution weights stored as int8 too (computed in float). The toolkit's Q/DQ INT8
(TensorRT Model Optimizer) is laid out for TensorRT; ORT's CPU provider runs its quantized ops in float plus the
Q/DQ nodes. The two side by side show what INT8 can give on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ifseg_deploy.devices import DeviceError, parse_device, torch_device
from ifseg_deploy.errors import UsageError
from ifseg_deploy.runtime.registry import BACKEND_NAMES, DYNAMIC_INT8, PRECISIONS, TORCH_PRECISIONS

#: Every precision a benchmark row can have: an export's, the torch backend's autocast ones, and ONNX Runtime's
#: dynamic INT8.
BENCH_PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys((*PRECISIONS, *TORCH_PRECISIONS, DYNAMIC_INT8)))
#: The kNN refinement of the paper (k, iterations), and none.
REFINEMENT, NO_REFINEMENT = (3, 25), (1, 0)
Echo = Callable[[str], None]
Size = tuple[int, int]


class BenchUsageError(UsageError):
    """Impossible options (the message says what to give instead)."""


@dataclass
class InferenceSettings:
    out: str
    models: list[str] = field(default_factory=list)
    preset: str | None = None
    categories: list[str] | None = None
    bpe_dir: str | None = None
    seed: int = 0
    backends: list[str] = field(default_factory=lambda: list(BACKEND_NAMES))
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    sizes: list[Size] | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    warmup: int = 5
    iters: int = 20
    calib_images: str | None = None
    calib_max: int = 8
    threads: int | None = None
    device: str = "auto"
    dataset: str | None = None
    root: str | None = None
    limit: int = 16
    refine: bool = True
    plot: bool = True
    profile: bool = False
    compile: bool = False  # also a torch.compile'd twin of every torch row
    peak: bool = False  # measure the GEMM peak of each data type: every row's share of it
    ort_low_memory: bool = False  # ONNX Runtime rows without the memory arena (OrtSessionSettings.low_memory)
    command: str | None = None

    @property
    def refinement(self) -> tuple[int, int]:
        return REFINEMENT if self.refine else NO_REFINEMENT

    def check(self) -> None:
        """Refuse impossible numbers and unknown names (:class:`BenchUsageError`)."""
        for name, value in (("--iters", self.iters), ("--calib-max", self.calib_max), ("--limit", self.limit)):
            if value < 1:
                raise BenchUsageError(f"{name} must be >= 1")
        if self.warmup < 0:
            raise BenchUsageError("--warmup must be >= 0")
        bad = [b for b in self.backends if b not in BACKEND_NAMES]
        bad += [p for p in self.precisions if p not in BENCH_PRECISIONS]
        if bad:
            raise BenchUsageError(f"unknown backend/precision {bad}")


def bench_device(text: str | None) -> str:
    """``--device`` as the benchmark uses it: "cpu" or "cuda:N" (auto: CUDA when PyTorch sees a GPU)."""
    try:
        dev = parse_device(text)
    except DeviceError:
        dev = None
    if dev is None or dev.tensorrt:  # the TensorRT rows are chosen with --backends, not with the device
        raise BenchUsageError(f"--device must be cpu, cuda, cuda:N or auto (got {text!r})")
    try:
        return str(torch_device(text))
    except DeviceError as e:  # a GPU this machine lacks
        raise BenchUsageError(str(e)) from None


def parse_list(text: str, allowed: Sequence[str] | None = None, what: str = "value") -> list[str]:
    """``"a, b,c"`` -> ["a", "b", "c"] (order kept, duplicates dropped); ValueError for names not in ``allowed``."""
    items = list(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
    if not items:
        raise ValueError(f"no {what} given")
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}")
    return items


def parse_ints(text: str, what: str = "value") -> list[int]:
    """``"1,4"`` -> [1, 4]; every value must be a positive integer."""
    out = []
    for x in parse_list(text, what=what):
        try:
            v = int(x)
        except ValueError:
            raise ValueError(f"{what} {x!r} is not an integer") from None
        if v < 1:
            raise ValueError(f"{what} must be >= 1 (got {v})")
        out.append(v)
    return out


