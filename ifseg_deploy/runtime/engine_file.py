"""The TensorRT engine file format: a plan plus a sidecar that lets a stale or broken engine be refused.

An engine only runs correctly with the TensorRT version and the GPU (name, compute capability) that built
it ("Version tag does not match", NVIDIA/TensorRT#2105 and many more), and it encodes the ONNX model, the
precision, the shape profile and the builder options. :class:`EngineKey` holds all of them; ``model.engine``
(the plan, loadable by ``trtexec --loadEngine`` too) sits beside ``model.engine.json`` with the key, the
plan's SHA-256 and size, and the model's metadata. Reading checks every part: a truncated or altered plan is
refused as corrupt, one built elsewhere or from another model as stale, each with a message saying what
differs and what to do. Nothing here imports TensorRT, so all of it is tested on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ifseg_deploy.artifacts import ArtifactError, check_artifact, incomplete_message
from ifseg_deploy.atomic import publish, write_staged

SIDECAR_FORMAT = "ifseg-deploy/tensorrt-engine"
SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".json"
#: Which key fields describe the machine (a mismatch means "rebuild on this device") rather than the model.
ENVIRONMENT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")


class EngineFileError(ArtifactError, RuntimeError):
    """An engine that must not be run."""


#: The name of :class:`EngineFileError` before the engine file format moved into the runtime.
EngineCacheError = EngineFileError


class CorruptEngineError(EngineFileError):
    """The plan or its sidecar is missing, truncated, unreadable or does not match its checksum."""


class StaleEngineError(EngineFileError):
    """A valid plan for another TensorRT version, GPU, model, precision, profile or builder setting."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two builds with equal keys are interchangeable."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100)
    precision: str  # fp32 | fp16 | int8
    #: (min, opt, max) NCHW shapes of the input
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    #: builder settings that change the plan (fp32 pins, optimisation level, workspace, ...), as sorted pairs
    builder: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def create(cls, onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
               precision: str, profile: Any, builder: dict[str, Any] | None = None) -> EngineKey:
        prof = tuple(tuple(int(d) for d in s) for s in profile)
        if len(prof) != 3:
            raise ValueError(f"profile needs (min, opt, max) shapes, got {profile!r}")
        opts = tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in (builder or {}).items()))
        return cls(onnx_sha256, str(tensorrt_version), str(gpu_name), str(compute_capability), precision,
                   prof, opts)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = [list(s) for s in self.profile]
        d["builder"] = {k: json.loads(v) for k, v in self.builder}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineKey:
        return cls.create(d["onnx_sha256"], d["tensorrt_version"], d["gpu_name"], d["compute_capability"],
                          d["precision"], d["profile"], d.get("builder") or {})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def file_name(self) -> str:
        """Readable and unique (jetson-inference names its cache files by the same parts)."""
        lo, _, hi = self.profile
        shape = f"{lo[2]}x{lo[3]}" if lo[2:] == hi[2:] else f"{lo[2]}x{lo[3]}-{hi[2]}x{hi[3]}"
        cc = self.compute_capability.replace(".", "")
        return f"{self.precision}.{shape}.b{hi[0]}.trt{self.tensorrt_version}.sm{cc}.{self.digest()[:16]}.engine"

    def differences(self, other: EngineKey) -> list[str]:
        """What differs, as "field: this -> other" lines."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]} -> {theirs[k]}" for k in mine if mine[k] != theirs[k]]


@dataclass(frozen=True)
class EngineEnvironment:
    """The machine an engine is to run on: the half of an :class:`EngineKey` that must match there.

    :func:`ifseg_deploy.runtime.backends.tensorrt.device_environment` queries the real one (it needs TensorRT and
    CUDA); tests and tools that only check an engine file give one explicitly.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100)


def check_environment(path: str | Path, key: EngineKey, environment: EngineEnvironment) -> None:
    """:class:`StaleEngineError` naming every field of :data:`ENVIRONMENT_FIELDS` where the engine's key and
    ``environment`` differ (checked in that order: TensorRT version, GPU name, compute capability)."""
    diffs = [f"{k}: engine {getattr(key, k)} / this machine {getattr(environment, k)}" for k in ENVIRONMENT_FIELDS
             if str(getattr(key, k)) != str(getattr(environment, k))]
    if diffs:
        raise StaleEngineError(f"{path} was built with another TensorRT or GPU:\n  " + "\n  ".join(diffs)
                               + "\nTensorRT engines only run where they were built; rebuild it on this "
                               "device from the ONNX file (`ifseg-deploy export --format tensorrt --model "
                               "model.onnx --out ...`)")


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_engine(path: str | Path, plan: bytes, key: EngineKey, metadata: dict[str, str] | None = None) -> Path:
    """Write the plan and its sidecar so that a failure or kill at any point leaves either the old pair (intact
    and loadable), the new pair, or a pair :func:`read_engine` refuses; never a partial plan under ``path`` and
    never a sidecar vouching for a plan it does not describe.

    Both files are written and fsynced under hidden temporary names beside ``path`` first. Then the old sidecar
    is removed, the plan renamed into place, and the sidecar last (the sidecar holds the plan's checksum).
    """
    path = Path(path)
    side = sidecar_path(path)
    record = {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "key": key.to_dict(),
        "key_digest": key.digest(), "engine_sha256": hashlib.sha256(plan).hexdigest(), "engine_bytes": len(plan),
        "metadata": metadata or {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    staged_plan = write_staged(path, plan)
    try:
        staged_side = write_staged(side, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    except BaseException:
        staged_plan.unlink(missing_ok=True)
        raise
    # From here on only renames: until the new sidecar is in place, nothing vouches for the new plan.
    side.unlink(missing_ok=True)
    publish(staged_plan, path)
    publish(staged_side, side)
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of ``path``, checked for form (not yet against the plan)."""
    side = sidecar_path(path)
    if not side.is_file():
        raise CorruptEngineError(f"{path} has no {side.name} beside it: it was not built by ifseg-deploy, or its "
                                 "build did not finish; build it with `ifseg-deploy export --format tensorrt`")
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
        if record.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {record.get('format')!r}")
        if int(record.get("format_version", 0)) > SIDECAR_VERSION:
            raise CorruptEngineError(f"{side} was written by a newer ifseg-deploy; upgrade the package")
        record["key"] = EngineKey.from_dict(record["key"])
        if record["key"].digest() != record["key_digest"]:
            raise ValueError("key digest does not match the key")
        int(record["engine_bytes"])
        str(record["engine_sha256"])
    except CorruptEngineError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptEngineError(f"{side} is corrupt ({type(e).__name__}: {e}); delete {path} and rebuild it"
                                 ) from None
    return record


def read_engine(path: str | Path, expected: EngineKey | None = None,
                environment: EngineEnvironment | None = None) -> tuple[bytes, dict[str, Any]]:
    """The verified plan and its sidecar record.

    Checks, in this order: the plan exists and is not empty, its sidecar is present and well-formed, the plan
    matches the sidecar's size and SHA-256; then ``expected``, the full key it must have (cache lookups), and
    ``environment``, the machine it is to run on (only :data:`ENVIRONMENT_FIELDS` must match, for an engine
    file given by path). Raises :class:`CorruptEngineError` or :class:`StaleEngineError`, FileNotFoundError
    for a missing plan; never returns a plan it has not checked. Nothing here needs TensorRT.
    """
    try:
        path = check_artifact(path, "engine")
    except FileNotFoundError:
        if not sidecar_path(path).is_file():
            raise
        raise CorruptEngineError(f"{path} is missing beside its sidecar {sidecar_path(path).name}; rebuild it"
                                 ) from None
    except ArtifactError as e:
        raise CorruptEngineError(str(e)) from None
    record = read_sidecar(path)
    key: EngineKey = record["key"]
    try:
        plan = path.read_bytes()
    except OSError as e:
        raise CorruptEngineError(f"cannot read {path}: {e}") from None
    want = int(record["engine_bytes"])
    if len(plan) < want:
        raise CorruptEngineError(incomplete_message(
            path, "engine", f"{sidecar_path(path).name} records {want:,} bytes (truncated)"))
    if len(plan) != want or hashlib.sha256(plan).hexdigest() != record["engine_sha256"]:
        raise CorruptEngineError(f"{path} ({len(plan):,} bytes) does not match the checksum in "
                                 f"{sidecar_path(path).name} ({want:,} bytes): modified after it was built; "
                                 "rebuild it")
    if expected is not None and key != expected:
        raise StaleEngineError(f"{path} was built for something else:\n  " + "\n  ".join(key.differences(expected))
                               + "\nit will not be run; rebuild it")
    if environment is not None:
        check_environment(path, key, environment)
    return plan, record
