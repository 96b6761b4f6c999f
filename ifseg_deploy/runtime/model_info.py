"""The self-description stored in an exported ONNX file's ``metadata_props`` (and beside a TensorRT engine).

Everything a runtime needs besides the graph: category names, preprocessing, refinement, accepted input sizes,
precision; for an open-vocabulary export also the bounds of its vocabulary inputs and the tokenizer (so new names
are tokenized from the file alone). The ONNX Runtime backend reads it, so the .onnx file alone is a deployable
model.
Values are strings (ONNX's rule); structured ones are JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import check_artifact, incomplete
from ..errors import ArtifactError
from ..preprocessing import PreprocessConfig
from ..refine import PAPER_REFINEMENT
from .input_spec import InputSpec, SpecError
from .open_vocabulary import VOCABULARY_INPUTS, VocabularyBounds
from .registry import PRECISIONS

FORMAT = "ifseg-deploy/onnx"
FORMAT_VERSION = 1
PREFIX = "ifseg."

INPUT_NAME = "pixels"
PROBS_NAME = "probs"
LABELS_NAME = "labels"


class MetadataError(ArtifactError):
    """An ONNX file without (or with broken) ifseg-deploy metadata."""


@dataclass
class ModelInfo:
    """What the exported graph is and how to feed it."""

    categories: list[str]
    preprocessing: PreprocessConfig
    input: InputSpec
    precision: str = "fp32"
    refinement: tuple[int, int] = PAPER_REFINEMENT  # (k, iterations); (1, 0) = none
    outputs: list[str] = field(default_factory=lambda: [PROBS_NAME])
    opset: int = 18
    package_version: str = ""
    prompt: str = ""
    #: e.g. the calibration of an INT8 model, the parity report of the export
    extra: dict[str, Any] = field(default_factory=dict)
    #: an open-vocabulary export (``export --open-vocabulary``): the bounds of its vocabulary inputs, and the
    #: tokenizer that makes them (:meth:`~ifseg_deploy.tokenizer.OFATokenizer.to_dict`); None for a fixed graph
    vocabulary: VocabularyBounds | None = None
    tokenizer: dict[str, Any] | None = None

    @property
    def open_vocabulary(self) -> bool:
        """Whether the graph takes the vocabulary as input (any names) instead of having it built in."""
        return self.vocabulary is not None

    def __post_init__(self) -> None:
        self.preprocessing = PreprocessConfig.from_dict(self.preprocessing)

    def profile_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape of every graph input: a TensorRT optimization profile, the largest buffers."""
        shapes = {INPUT_NAME: self.input.shapes()}
        if self.vocabulary is not None:
            shapes.update({name: self.vocabulary.shapes(name) for name in VOCABULARY_INPUTS})
        return shapes

    def to_props(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "categories": self.categories,
            "preprocessing": self.preprocessing.to_dict(),
            "input": self.input.to_dict(),
            "precision": self.precision,
            "refinement": {"k": self.refinement[0], "iterations": self.refinement[1]},
            "outputs": self.outputs,
            "opset": self.opset,
            "package_version": self.package_version,
            "prompt": self.prompt,
            "extra": self.extra,
        }
        if self.vocabulary is not None:
            values["vocabulary"] = self.vocabulary.to_dict()
            values["tokenizer"] = self.tokenizer
        return {PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the model") -> ModelInfo:
        if props.get(PREFIX + "format") != FORMAT:
            raise MetadataError(f"{source} has no ifseg-deploy metadata (metadata_props {PREFIX}format is "
                                f"{props.get(PREFIX + 'format')!r}); export it with `ifseg-deploy export`")
        try:
            version = int(props[PREFIX + "format_version"])
            if version > FORMAT_VERSION:
                raise MetadataError(f"{source} was written by a newer ifseg-deploy (metadata format {version}); "
                                    "upgrade the package")

            def j(key: str) -> Any:
                return json.loads(props[PREFIX + key])

            refinement = j("refinement")
            info = cls(
                categories=[str(c) for c in j("categories")],
                preprocessing=PreprocessConfig.from_dict(j("preprocessing")),
                input=InputSpec.from_dict(j("input")),
                precision=props[PREFIX + "precision"],
                refinement=(int(refinement["k"]), int(refinement["iterations"])),
                outputs=[str(o) for o in j("outputs")],
                opset=int(props[PREFIX + "opset"]),
                package_version=props.get(PREFIX + "package_version", ""),
                prompt=props.get(PREFIX + "prompt", ""),
                extra=dict(j("extra")) if PREFIX + "extra" in props else {},
                vocabulary=VocabularyBounds.from_dict(j("vocabulary")) if PREFIX + "vocabulary" in props else None,
                tokenizer=dict(j("tokenizer")) if PREFIX + "vocabulary" in props else None,
            )
        except MetadataError:
            raise
        except (KeyError, TypeError, ValueError, SpecError) as e:
            raise MetadataError(f"{source} has incomplete or broken ifseg-deploy metadata ({type(e).__name__}: "
                                f"{e})") from None
        if info.open_vocabulary and not info.tokenizer:
            raise MetadataError(f"{source}: an open-vocabulary export without its tokenizer ({PREFIX}tokenizer)")
        if info.precision not in PRECISIONS or not info.categories:
            raise MetadataError(f"{source}: bad metadata (precision {info.precision!r}, "
                                f"{len(info.categories)} categories)")
        return info


def write_metadata(model: Any, info: ModelInfo) -> None:
    """Replace the ifseg-deploy entries of an ``onnx.ModelProto``'s metadata_props (others are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in keep + sorted(info.to_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: Any, source: str = "the model") -> ModelInfo:
    """From an ``onnx.ModelProto``."""
    return ModelInfo.from_props({p.key: p.value for p in model.metadata_props}, source)


def load_onnx(path: str | Path) -> Any:
    """The ``onnx.ModelProto`` of an .onnx file, without external weights (only the graph and metadata are
    needed to describe it). A missing, empty, truncated or non-ONNX file raises
    :class:`~ifseg_deploy.artifacts.ArtifactError` ("... is not a complete ONNX file"), not protobuf's
    ``DecodeError``."""
    import onnx
    from google.protobuf.message import DecodeError

    p = check_artifact(path, "onnx")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except DecodeError as e:
        raise incomplete(p, "onnx", f"protobuf cannot decode it ({e})") from None
    # Protobuf reads a file cut between two fields (or a few stray bytes) as a valid but partial message.
    if model.ir_version <= 0 or not model.HasField("graph") or not len(model.graph.node):
        raise incomplete(p, "onnx", "it holds no model graph")
    return model


def read_info(path: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of an exported .onnx file (see :func:`load_onnx` for what is refused)."""
    return read_metadata(load_onnx(path), str(path))
