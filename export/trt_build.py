"""TensorRT engine build from an exported ONNX file (TensorRT >= 10 Python API), through the engine cache.

Kept thin: parse, one optimization profile from the file's metadata, a workspace cap, the network's typing, a
timing cache, progress output, ``build_serialized_network``. fp16 engines are built strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) from the FP16 ONNX of :mod:`.fp16`, whose Cast nodes say what
stays fp32; an fp32 .onnx is converted to it first. INT8 (Q/DQ) engines keep the weakly typed build: FP16 and INT8
builder flags, with LayerNorm/Softmax/Pow/... pinned to fp32 by precision constraints. Builds take minutes
on a Jetson, so progress is printed as TensorRT reports phases, with a heartbeat in between. "Could not find
any implementation" usually means out of memory there (NVIDIA/TensorRT#3355, #4258), and the error says so.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ifseg_deploy.errors import BackendError
from ifseg_deploy.runtime.backends.tensorrt import (
    TensorRTUnavailableError,
    device_environment,
    import_pycuda,
    import_tensorrt,
)
from ifseg_deploy.runtime.engine_file import EngineEnvironment, EngineKey, sha256_file
from ifseg_deploy.runtime.model_info import ModelInfo
from ifseg_deploy.runtime.registry import DYNAMIC_INT8

from .engine_cache import EngineCache

__all__ = ["BuildOptions", "EngineBuildError", "TensorRTUnavailableError", "build_engine", "build_or_load",
           "device_environment", "engine_for", "import_pycuda", "import_tensorrt"]

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)
Echo = Callable[[str], None]

#: 1 GiB: what a Jetson with 8 GB of memory shared by CPU and GPU can spare (ultralytics' Jetson default).
DEFAULT_WORKSPACE = 1 << 30
HEARTBEAT_SECONDS = 30.0


class EngineBuildError(BackendError):
    """TensorRT could not build an engine."""


@dataclass
class BuildOptions:
    """Builder settings; every field is part of the engine key."""

    precision: str = "fp16"  # fp32 | fp16 | int8 (int8 needs a Q/DQ model)
    workspace_bytes: int = DEFAULT_WORKSPACE
    optimization_level: int | None = None  # TensorRT's default (3) when None
    pin_fp32: bool = True  # int8 (weakly typed) builds: LayerNorm/Softmax/Pow/... pinned to fp32

    @property
    def strongly_typed(self) -> bool:
        """fp16 engines take their types from the FP16 ONNX file (no FP16 flag, no precision constraints)."""
        return self.precision == "fp16"

    def key_options(self) -> dict[str, Any]:
        from .fp16 import FP32_LAYER_OPS, FP32_LAYER_TYPES, FP32_OP_TYPES, RECIPE_VERSION

        pins = [list(FP32_OP_TYPES), list(FP32_LAYER_TYPES), [list(p) for p in FP32_LAYER_OPS]]
        # The network's typing is part of the key: an engine of the earlier pinned fp16 build is never reused.
        return {"workspace_bytes": self.workspace_bytes, "optimization_level": self.optimization_level,
                "network": "strongly_typed" if self.strongly_typed else "weakly_typed",
                "fp16_recipe": RECIPE_VERSION if self.strongly_typed else None,
                "fp32_pins": pins if self.pin_fp32 and self.precision == "int8" else None}


def engine_key(onnx_path: str | Path, info: ModelInfo, options: BuildOptions, env: EngineEnvironment) -> EngineKey:
    return EngineKey.create(sha256_file(onnx_path), env.tensorrt_version, env.gpu_name, env.compute_capability,
                            options.precision, info.input.shapes(), options.key_options())


def check_precision(info: ModelInfo, precision: str) -> None:
    if info.precision == DYNAMIC_INT8 or precision == DYNAMIC_INT8:
        raise EngineBuildError(f"{DYNAMIC_INT8} is ONNX Runtime's CPU format (MatMulInteger), which TensorRT does "
                               "not run; build the engine from the fp32 export (fp32/fp16) or the Q/DQ int8 one")
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if precision == "int8" and info.precision != "int8":
        raise EngineBuildError("an INT8 engine needs the Q/DQ INT8 ONNX (export --format onnx --precision int8 "
                               "--calib-images DIR); TensorRT's implicit calibrators are deprecated")
    if info.precision == "int8" and precision != "int8":
        raise EngineBuildError(f"this ONNX file is INT8 (Q/DQ); build it with --precision int8, not {precision}")
    if info.precision == "fp16" and precision != "fp16":
        raise EngineBuildError(f"this ONNX file is fp16 (its types are fixed in the graph); build it with "
                               f"--precision fp16, or build {precision} from the fp32 export")


def _logger(echo: Echo) -> trt.ILogger:
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                echo(f"TensorRT {severity.name.lower()}: {msg}")
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


def _progress(echo: Echo) -> trt.IProgressMonitor:
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:  # top-level phases only: the nested ones would flood a console
                with self.lock:
                    echo(f"  TensorRT: {phase_name} ({num_steps} step(s))")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Progress()


def _operation(layer: trt.ILayer) -> str | None:
    """The operation name of an elementwise, unary or reduce layer (None for other kinds)."""
    import tensorrt as trt

    # network.get_layer returns the ILayer base class; TensorRT's own samples re-class it to reach ``.op``.
    kind = layer.type
    if kind == trt.LayerType.ELEMENTWISE:
        layer.__class__ = trt.IElementWiseLayer
        return typing.cast(trt.IElementWiseLayer, layer).op.name
    if kind == trt.LayerType.UNARY:
        layer.__class__ = trt.IUnaryLayer
        return typing.cast(trt.IUnaryLayer, layer).op.name
    if kind == trt.LayerType.REDUCE:
        layer.__class__ = trt.IReduceLayer
        return typing.cast(trt.IReduceLayer, layer).op.name
    return None


def pin_fp32_layers(network: trt.INetworkDefinition, fp32_nodes: set[str]) -> int:
    """Precision constraints on the layers :func:`.fp16.keep_fp32` selects; returns how many were pinned."""
    import tensorrt as trt

    from .fp16 import keep_fp32

    floats = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        op = _operation(layer)
        if not keep_fp32(kind, op, layer.name, fp32_nodes):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(t.dtype in floats for t in outputs):
            continue  # integer layers (shape arithmetic) carry no precision to pin
        layer.precision = trt.float32
        for j, t in enumerate(outputs):
            if t.dtype in floats:
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _int8_flags(network: trt.INetworkDefinition, config: trt.IBuilderConfig, options: BuildOptions,
                onnx_path: str | Path, echo: Echo) -> None:
    """Weakly typed INT8: TensorRT picks fp16 where allowed (the scales come from the Q/DQ nodes), with the
    precision-sensitive layers pinned to fp32."""
    import onnx
    import tensorrt as trt

    from .fp16 import fp32_node_names

    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.INT8)
    if options.pin_fp32:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        nodes = fp32_node_names(onnx.load(str(onnx_path), load_external_data=False))
        echo(f"keeping {pin_fp32_layers(network, nodes)} layer(s) in fp32 (LayerNorm, Softmax, Pow, ...)")


def build_engine(onnx_path: str | Path, info: ModelInfo, options: BuildOptions,
                 timing_cache: Path | None = None, echo: Echo = log.info) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (the plan bytes)."""
    import_tensorrt()  # a clear error where TensorRT is missing
    import tensorrt as trt

    check_precision(info, options.precision)
    if options.strongly_typed and info.precision != "fp16":
        raise EngineBuildError(f"a strongly typed fp16 build needs the FP16 ONNX, not a {info.precision} one "
                               "(build_or_load converts an fp32 file first)")
    logger = _logger(echo)
    builder = trt.Builder(logger)
    # explicit batch is the only mode in TensorRT 10; strongly typed: every tensor keeps its ONNX type
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if options.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors[:10]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    if options.optimization_level is not None:
        config.builder_optimization_level = int(options.optimization_level)
    # One profile over every input: the pixels' sizes and, for an open-vocabulary graph, M, T and Lt of its
    # vocabulary inputs, min/opt/max from the metadata bounds.
    shapes = info.profile_shapes()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise EngineBuildError(f"unexpected network input {name!r}; expected {', '.join(map(repr, shapes))}")
        lo, opt, hi = shapes[name]
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(profile)

    if options.precision in ("fp16", "int8") and not builder.platform_has_fast_fp16:
        echo("warning: this GPU has no fast fp16; the engine may be slower than fp32")
    if options.precision == "int8":
        _int8_flags(network, config, options, onnx_path, echo)
    # strongly typed (fp16): no precision flag may be set; fp32: none is

    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _progress(echo)

    vocabulary = f" ({info.vocabulary.describe()})" if info.vocabulary is not None else ""
    typing_note = ", strongly typed" if options.strongly_typed else ""
    echo(f"building a {options.precision}{typing_note} TensorRT {trt.__version__} engine for "
         f"{info.input.describe()}{vocabulary}, "
         f"workspace {options.workspace_bytes / 2**20:.0f} MiB; this takes minutes on a Jetson ...")
    start = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            echo(f"  still building ({time.monotonic() - start:.0f} s) ...")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        done.set()
        beat.join()
    if plan is None:
        raise EngineBuildError("TensorRT could not build the engine (see its errors above). On a Jetson, \"Could "
                               "not find any implementation\" or a tactic memory request above the available "
                               "memory means it ran out of memory: lower --workspace, close other programs, or "
                               "export a smaller --max-size")
    echo(f"built in {time.monotonic() - start:.0f} s ({plan.nbytes / 2**20:.1f} MiB)")
    if timing_cache is not None:
        from ifseg_deploy.atomic import atomic_write_bytes

        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_or_load(onnx_path: str | Path, info: ModelInfo, options: BuildOptions, cache: EngineCache,
                  device_index: int = 0, rebuild: bool = False, echo: Echo = log.info
                  ) -> tuple[bytes, EngineKey, Path]:
    """The cached engine for this model, precision, profile and machine, built first if absent or stale."""
    check_precision(info, options.precision)
    env = device_environment(device_index)
    key = engine_key(onnx_path, info, options, env)
    if not rebuild:
        hit = cache.load(key)
        if hit is not None:
            echo(f"using the cached engine {cache.path_for(key)}")
            return hit[0], key, cache.path_for(key)
    tc = cache.timing_cache_path(env.tensorrt_version, env.compute_capability, env.gpu_name)
    tc.parent.mkdir(parents=True, exist_ok=True)
    with _typed_source(onnx_path, info, options, tc.parent, echo) as (source, source_info):
        plan = build_engine(source, source_info, options, tc, echo)
    path = cache.store(key, plan, _engine_metadata(info, options))
    return plan, key, path


@contextlib.contextmanager
def _typed_source(onnx_path: str | Path, info: ModelInfo, options: BuildOptions, scratch: Path,
                  echo: Echo) -> Iterator[tuple[Path, ModelInfo]]:
    """The file to build from: an fp32 .onnx for an fp16 engine is converted to the FP16 ONNX first (in a
    temporary folder under ``scratch``, removed after the build)."""
    if not (options.strongly_typed and info.precision == "fp32"):
        yield Path(onnx_path), info
        return
    from .fp16 import Fp16MissingError, convert_fp16

    with tempfile.TemporaryDirectory(prefix=".fp16-", dir=scratch) as tmp:
        echo(f"converting {Path(onnx_path).name} to FP16 ONNX for the strongly typed build (export --precision "
             "fp16 makes a file checked against fp32 on ONNX Runtime) ...")
        try:
            result = convert_fp16(onnx_path, Path(tmp) / "model.fp16.onnx")
        except Fp16MissingError as e:
            raise EngineBuildError(f"{e}; or export the FP16 .onnx where it is installed (export --precision fp16) "
                                   "and build the engine from that file") from None
        yield result.path, result.info


def _engine_metadata(info: ModelInfo, options: BuildOptions) -> dict[str, str]:
    """The ONNX metadata, with the engine's precision, for the sidecar (the runtime reads it from there)."""
    props = info.to_props()
    props["ifseg.precision"] = options.precision
    return props


def engine_for(onnx_path: str | Path, precision: str | None = None, *, cache_dir: str | Path | None = None,
               device: str | int | None = None, rebuild: bool = False, workspace_bytes: int = DEFAULT_WORKSPACE,
               echo: Echo = log.info) -> Path:
    """The engine file for an exported .onnx on this GPU, from the engine cache (built first if absent or stale:
    minutes on a Jetson). ``precision`` fp16 by default, int8 for a Q/DQ file. Returns the cached engine's path;
    load it with the tensorrt backend (its sidecar is beside it)."""
    from ifseg_deploy.devices import cuda_index
    from ifseg_deploy.runtime.model_info import read_info

    info = read_info(onnx_path)
    prec = precision or ("int8" if info.precision == "int8" else "fp16")
    options = BuildOptions(prec, workspace_bytes)
    return build_or_load(onnx_path, info, options, EngineCache(cache_dir), cuda_index(device), rebuild, echo)[2]
