"""The ``tensorrt`` backend of :class:`~ifseg_deploy.runtime.segmenter.Segmenter`: a TensorRT engine with pycuda.

Device and pinned host buffers are allocated once for the largest shape of the engine's profile, their
addresses bound to the execution context once, and every call copies in and out asynchronously on one stream
(TensorRT 10: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). An engine is only run
after its sidecar vouches for it (:mod:`ifseg_deploy.runtime.engine_file`): built by ifseg-deploy, intact, and
for this TensorRT version and GPU. This module loads engines and never builds one: building takes minutes and
is the export stage's job (``ifseg-deploy export --format tensorrt``, :mod:`ifseg_deploy.export.trt_build`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...devices import cuda_index
from ...errors import BackendError, UsageError
from ..backend import Backend, require_refinement
from ..engine_file import EngineEnvironment, EngineFileError, check_environment, read_engine
from ..model_info import INPUT_NAME, PROBS_NAME, ModelInfo
from ..open_vocabulary import TakesVocabulary

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)


class TensorRTUnavailableError(BackendError):
    """TensorRT (or pycuda, or a CUDA GPU) is missing."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailableError` saying how to get it."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"TensorRT is not installed ({e}). On a Jetson it comes with JetPack (python3-libnvinfer); on an x86 "
            "host: pip install 'ifseg-deploy[trt]'. Without TensorRT, export --format onnx and build the engine "
            "on the device") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailableError(f"TensorRT {tensorrt.__version__} is too old; ifseg-deploy needs TensorRT >= 10")
    return tensorrt


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise TensorRTUnavailableError(f"pycuda is not installed ({e}): pip install pycuda") from None
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise TensorRTUnavailableError("no CUDA GPU is visible")
    except cuda.Error as e:
        raise TensorRTUnavailableError(f"CUDA is not usable here: {e}") from None
    return cuda


def device_environment(device_index: int = 0) -> EngineEnvironment:
    """This machine's TensorRT version, GPU name and compute capability (the machine half of an
    :class:`EngineKey`), queried from TensorRT and CUDA."""
    version = import_tensorrt().__version__
    cuda = import_pycuda()
    dev = cuda.Device(device_index)
    major, minor = dev.compute_capability()
    return EngineEnvironment(str(version), str(dev.name()), f"{major}.{minor}")


class TensorRTBackend(TakesVocabulary, Backend):
    """A TensorRT engine. Use :meth:`from_file`. An engine of an open-vocabulary export takes new names through
    :meth:`set_categories` within its profile's bounds (new input shapes, no rebuild)."""

    name = "tensorrt"

    def __init__(self, plan: bytes, info: ModelInfo, device_index: int = 0, path: Path | None = None) -> None:
        import_tensorrt()  # a clear error where TensorRT is missing
        import tensorrt as trt

        cuda = import_pycuda()
        self.info, self.path = info, path
        self.categories = list(info.categories)
        self.preprocessing = info.preprocessing
        self.refinement = tuple(info.refinement)  # type: ignore[assignment]
        self.fixed_input_size = info.input.fixed_size
        self.device = f"cuda:{device_index}"
        self._init_vocabulary(info, str(path or "this engine"))  # before any CUDA state: a bad tokenizer raises
        self._cuda = cuda
        self._ctx = cuda.Device(device_index).retain_primary_context()
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime: trt.Runtime | None = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineFileError(f"TensorRT could not deserialize {path or 'the engine'} (see its error above)")
            self._engine: trt.ICudaEngine | None = engine
            context = engine.create_execution_context()
            self._context: trt.IExecutionContext | None = context
            self._stream = cuda.Stream()
            self._buffers: dict[str, tuple[Any, np.ndarray]] = {}
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            wanted = [INPUT_NAME, *self.vocabulary_feeds]
            if any(n not in names for n in wanted) or PROBS_NAME not in self._outputs:
                raise EngineFileError(f"engine tensors {names}: expected {', '.join(wanted)} -> {PROBS_NAME!r}")
            for name in names:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                count = int(np.prod(self._max_shape(name)))
                host = cuda.pagelocked_empty(count, dtype)
                device_mem = cuda.mem_alloc(max(1, host.nbytes))
                self._buffers[name] = (device_mem, host)
                # Bound once: the addresses stay valid for every later call.
                context.set_tensor_address(name, int(device_mem))
        finally:
            self._ctx.pop()

    def _max_shape(self, name: str) -> tuple[int, ...]:
        inputs = self.info.profile_shapes()
        batch, _, h, w = inputs[INPUT_NAME][2]
        if name in inputs:
            return tuple(inputs[name][2])
        if name == PROBS_NAME:
            vocabulary = self.info.vocabulary
            classes = len(self.info.categories) if vocabulary is None else vocabulary.max_names
            return (batch, classes, -(-h // 16), -(-w // 16))
        return (batch, h, w)  # labels

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | int | None = None,
                  refinement: tuple[int, int] | None = None,
                  environment: EngineEnvironment | None = None) -> TensorRTBackend:
        """Open ``model.engine``, checked against its sidecar and the machine it is to run on.

        The checks run before TensorRT is even imported: the sidecar is present and well-formed, the plan matches
        the sidecar's SHA-256, and the TensorRT version, GPU name and compute capability it was built with are
        those of ``environment`` (default: this machine, as TensorRT and CUDA report it). A failed check raises
        :class:`~ifseg_deploy.runtime.engine_file.CorruptEngineError` or
        :class:`~ifseg_deploy.runtime.engine_file.StaleEngineError` saying what differs; the plan is never
        deserialized. ``refinement``, when given, must be the one the engine was exported with.
        """
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            raise UsageError(f"{path} is an ONNX file; the tensorrt backend runs engines, and building one takes "
                             "minutes. Build it once on this device: `ifseg-deploy export --model "
                             f"{path} --format tensorrt --out model.engine` (or "
                             "ifseg_deploy.export.trt_build.build_or_load), then load model.engine")
        index = cuda_index(device)
        plan, record = read_engine(path)  # present, sidecar, checksum: no TensorRT needed
        here = environment if environment is not None else device_environment(index)
        check_environment(path, record["key"], here)
        info = ModelInfo.from_props(record["metadata"], str(path))
        require_refinement(path, tuple(info.refinement), refinement)
        return cls(plan, info, index, path)

    # -- Backend ------------------------------------------------------------------------------------------------
    def probs(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) pixels, got {x.shape}")
        spec = self.info.input
        if not spec.accepts(x.shape[2], x.shape[3]):
            raise ValueError(f"{x.shape[2]}x{x.shape[3]} is outside this engine's profile ({spec.describe()}); "
                             "rebuild it with a wider --min-size/--max-size")
        step = spec.max_batch
        parts = [self._run(x[i:i + step]) for i in range(0, x.shape[0], step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, x: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        context = self._context
        if context is None:
            raise RuntimeError("this TensorRT backend was closed")
        self._ctx.push()
        try:
            for name, value in ((INPUT_NAME, x), *self.vocabulary_feeds.items()):
                d_in, h_in = self._buffers[name]
                h_in[:value.size] = value.ravel()
                cuda.memcpy_htod_async(d_in, h_in[:value.size], self._stream)
                if not context.set_input_shape(name, tuple(value.shape)):
                    raise RuntimeError(f"TensorRT refused the shape {value.shape} of input {name!r}")
            dims = context.get_tensor_shape(PROBS_NAME)
            out_shape = tuple(int(dims[i]) for i in range(len(dims)))
            if not context.execute_async_v3(self._stream.handle):
                raise RuntimeError("TensorRT execution failed (see its error above)")
            d_out, h_out = self._buffers[PROBS_NAME]
            n = int(np.prod(out_shape))
            cuda.memcpy_dtoh_async(h_out[:n], d_out, self._stream)
            self._stream.synchronize()
            return h_out[:n].reshape(out_shape).astype(np.float32, copy=True)
        finally:
            self._ctx.pop()

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            for d_mem, _ in self._buffers.values():
                d_mem.free()
            self._buffers.clear()
            self._context = self._engine = self._runtime = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.path), "device": self.device,
                "precision": self.info.precision, "input": self.info.input.describe(),
                "refinement": list(self.refinement)}
