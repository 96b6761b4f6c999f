"""The ``onnxruntime`` backend of :class:`~ifseg_deploy.runtime.segmenter.Segmenter`: an exported .onnx file.

Execution providers are tried in the order TensorRT -> CUDA -> CPU among those this onnxruntime build lists,
and the session reports which of them really loaded (``onnxruntime-gpu`` lists CUDA and TensorRT even on a
machine without their libraries, and silently falls back to the CPU). Everything else (categories,
preprocessing, refinement, accepted sizes, precision) comes from the file's metadata. An open-vocabulary export
(``export --open-vocabulary``) also gets its vocabulary inputs from it: the stored tokenizer turns the names of
:meth:`OrtBackend.set_categories` into new input tensors, with no new session.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...artifacts import check_artifact
from ...errors import BackendError
from ..backend import Backend, require_refinement
from ..model_info import INPUT_NAME, PROBS_NAME, MetadataError, ModelInfo, read_info
from ..open_vocabulary import VOCABULARY_INPUTS, TakesVocabulary
from ..registry import DYNAMIC_INT8
from .ort_providers import CPU_EP, CUDA_EP, TRT_EP, device_id, providers_for
from .ort_session import OrtSessionSettings, release_freed_memory

__all__ = ["CPU_EP", "CUDA_EP", "TRT_EP", "OrtBackend", "OrtSessionSettings"]


class OrtBackend(TakesVocabulary, Backend):
    """An exported ONNX model on ONNX Runtime. Use :meth:`from_file`."""

    name = "onnxruntime"

    def __init__(self, session: Any, info: ModelInfo, path: Path | None = None, session_options: Any = None,
                 settings: OrtSessionSettings | None = None) -> None:
        self.session = session
        self.info = info
        self.path = path
        self.categories = list(info.categories)
        self.preprocessing = info.preprocessing
        self.refinement = tuple(info.refinement)  # type: ignore[assignment]
        self.fixed_input_size = info.input.fixed_size
        self.providers = list(session.get_providers())
        self.device = "cuda" if any(p in (TRT_EP, CUDA_EP) for p in self.providers) else "cpu"
        self.session_options = session_options
        self.settings = settings
        self._trim_after_run = settings is not None and settings.trim_after_load
        inputs = [i.name for i in session.get_inputs()]
        if INPUT_NAME not in inputs or PROBS_NAME not in [o.name for o in session.get_outputs()]:
            raise MetadataError(f"{path or 'the model'} has inputs {inputs}; expected {INPUT_NAME!r} -> "
                                f"{PROBS_NAME!r} (an ifseg-deploy export)")
        shape = session.get_inputs()[0].shape
        # A static batch dimension (exports with max batch 1) takes one image per run.
        self.max_batch = shape[0] if isinstance(shape[0], int) else info.input.max_batch
        if info.open_vocabulary:
            missing = [n for n in VOCABULARY_INPUTS if n not in inputs]
            if missing:
                raise MetadataError(f"{path or 'the model'} says it is an open-vocabulary export but lacks the "
                                    f"inputs {missing}")
        self._init_vocabulary(info, str(path or "this file"))

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | None = None, refinement: tuple[int, int] | None = None,
                  providers: Sequence[str] | None = None, provider_options: dict[str, dict[str, Any]] | None = None,
                  fp16: bool = False, trt_cache_dir: str | Path | None = None, trt_workspace_bytes: int = 1 << 30,
                  threads: int | None = None, session_options: Any = None,
                  settings: OrtSessionSettings | None = None) -> OrtBackend:
        """Open an exported .onnx file; nothing else is needed beside it.

        ``device``: "cpu", "cuda[:N]", "tensorrt" or None/"auto" (see
        :func:`~ifseg_deploy.runtime.backends.ort_providers.providers_for`); ``refinement``, when given, must be the
        one the file was exported with;
        ``providers`` overrides the choice. ``provider_options`` ({provider: {option: value}}) are merged over
        the defaults: for TensorRT an engine cache in ``trt_cache_dir`` (default beside the model),
        ``trt_workspace_bytes``, fp16 when ``fp16`` (with LayerNorm kept in fp32), INT8 for Q/DQ models, and the
        shape profile of a dynamic export; for CUDA the device id. An explicitly asked GPU provider that fails
        to load is an error; with device None/"auto" the session falls back to what works.
        ``settings`` (:class:`OrtSessionSettings`: threads, spinning, optimisation level, memory arena) or just
        ``threads``: the session options, all set explicitly; ``session_options``: a base to set them on.
        """
        import onnxruntime as ort

        path = check_artifact(path, "onnx")
        if settings is None:
            settings = OrtSessionSettings(threads=int(threads) if threads else None)
        elif threads and settings.threads != threads:
            raise ValueError(f"threads={threads} but settings.threads={settings.threads}: give one of them")
        opts = settings.session_options(session_options or ort.SessionOptions())
        wanted = list(providers) if providers else providers_for(device)
        meta_info = read_info(path)
        require_refinement(path, tuple(meta_info.refinement), refinement)
        if meta_info.precision == DYNAMIC_INT8:
            # Its convolution weights are stored as int8 behind DequantizeLinear nodes; onnxruntime keeps those
            # nodes for its Q/DQ fusions and dequantizes per call (10-20% slower on OFA-Base) unless Q/DQ
            # handling is off, when constant folding turns them back into float weights at load.
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        options = cls._provider_options(wanted, meta_info, path, device, fp16, trt_cache_dir, trt_workspace_bytes)
        for p, extra in (provider_options or {}).items():
            options.setdefault(p, {}).update(extra)
        printed = io.StringIO()
        # onnxruntime *prints* "EP Error" and retries without a provider that fails to load; capture that and
        # report it below only if that provider was asked for explicitly.
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(str(path), opts, providers=[(p, options.get(p, {})) for p in wanted])
        got = session.get_providers()
        missing = [p for p in wanted if p not in got]
        if missing:
            detail = printed.getvalue().strip().splitlines()
            raise BackendError(f"onnxruntime could not load {', '.join(missing)} for {path} (loaded: "
                               f"{', '.join(got)}){': ' + detail[1][:300] if len(detail) > 1 else ''}; check the "
                               "CUDA/cuDNN/TensorRT libraries that onnxruntime-gpu needs, or use device='cpu'")
        if settings.trim_after_load:
            release_freed_memory()  # what building the session allocated and freed (see ort_session)
        return cls(session, meta_info, path, opts, settings)

    @staticmethod
    def _provider_options(wanted: Sequence[str], info: ModelInfo, path: Path, device: str | None, fp16: bool,
                          cache_dir: str | Path | None, workspace: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        dev = device_id(device)
        if CUDA_EP in wanted:
            out[CUDA_EP] = {"device_id": dev}
        if TRT_EP in wanted:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            # One folder per model content: the TensorRT EP does not notice a changed model or TensorRT upgrade
            # by itself (microsoft/onnxruntime#22244); a new file gets a new folder.
            cache = Path(cache_dir) if cache_dir else path.parent / f".{path.stem}.ort-trt-cache"
            trt: dict[str, Any] = {
                "device_id": dev, "trt_max_workspace_size": int(workspace),
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache / digest),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                "trt_fp16_enable": bool(fp16), "trt_layer_norm_fp32_fallback": True,
                "trt_int8_enable": info.precision == "int8",
            }
            if info.input.is_dynamic or info.input.max_batch > 1 or info.open_vocabulary:
                shapes = info.profile_shapes()
                for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                    trt[key] = ",".join(f"{name}:{'x'.join(str(d) for d in s[i])}" for name, s in shapes.items())
            out[TRT_EP] = trt
        return out

    # -- Backend ------------------------------------------------------------------------------------------------
    def probs(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) pixels, got {x.shape}")
        if self.fixed_input_size is not None and tuple(x.shape[2:]) != tuple(self.fixed_input_size):
            h, w = self.fixed_input_size
            raise ValueError(f"{self.path or 'this model'} was exported for {h}x{w} inputs only, got "
                             f"{x.shape[2]}x{x.shape[3]}; resize the image or export with --dynamic")
        step = self.max_batch or x.shape[0]
        parts = [self.session.run([PROBS_NAME], {INPUT_NAME: x[i:i + step], **self.vocabulary_feeds})[0]
                 for i in range(0, x.shape[0], step)]
        if self._trim_after_run:  # the first run's planning frees more than it keeps
            self._trim_after_run = False
            release_freed_memory()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.path), "providers": self.providers,
                "precision": self.info.precision, "input": self.info.input.describe(),
                "refinement": list(self.refinement),
                "session": None if self.settings is None else self.settings.describe()}

    def __repr__(self) -> str:
        return (f"OrtBackend({self.path}, {self.info.precision}, {len(self.categories)} categories, providers="
                f"{self.providers})")
