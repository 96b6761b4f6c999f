"""ONNX export of the inference graph: pixels in, class probabilities (and optionally labels) out.

The exported module is :class:`~ifseg_deploy.runtime.graph.InferenceGraph`, the export-only wrapper of the
model (segment-anything keeps one too): ResNet, encoder with the prompt baked in as constants, surrogate
decoder, tied class head, softmax, the optional kNN refinement and the optional upsample + argmax. It goes
through ``torch.onnx.export(dynamo=True)`` (``torch.export``; the TorchScript exporter is deprecated, and its
tracing bakes grid sizes into slice bounds), then onnxslim, ``onnx.checker``, the metadata, and a parity
check with ONNX Runtime against PyTorch. The file appears at its path only when all of that passed.

Shapes. A fixed-size export is the eager model, traced at one size. A dynamic export traces a copy of the model in
its shape-agnostic mode (:meth:`~ifseg_deploy.modeling.segofa.SegOFA.prepare_for_export`): position tables and
relative biases are resized in the graph for every grid, and the encoder's choice between looking image positions
up (grids of at most 32 x 32 cells that fit the 42 x 42 bucket table, as the official code does) and resizing the
32 x 32 block is a ``Where`` evaluated at run time. The dynamic graph therefore computes the same function as the
eager model for every input size, not an approximation of it (the tests check sizes on both sides of the rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ifseg_deploy.atomic import publish
from ifseg_deploy.errors import BackendError
from ifseg_deploy.runtime.input_spec import InputSpec
from ifseg_deploy.runtime.model_info import INPUT_NAME, LABELS_NAME, PROBS_NAME, ModelInfo, write_metadata
from ifseg_deploy.runtime.open_vocabulary import (
    NAME_IDS_NAME,
    NAME_LENGTHS_NAME,
    PROMPT_IDS_NAME,
    VOCABULARY_INPUTS,
    VocabularyBounds,
    VocabularyFeeds,
)

from .parity import FP32_AGREEMENT, ParityReport, check, compare, ort_probs, torch_reference

log = logging.getLogger(__name__)

#: Opset 17 is the first with a single LayerNormalization op (TensorRT then pins one layer to fp32 instead of
#: a Pow/ReduceMean decomposition); torch's exporter emits at least 18, which TensorRT >= 10.0 parses.
MIN_OPSET = 17
DEFAULT_OPSET = 18
#: protobuf cannot serialise a single file above 2 GiB.
MAX_SINGLE_FILE_BYTES = 2**31 - 2**20
#: Constant folding stops at this size. The relative position biases are computed from small tables into one
#: (heads, cells, cells) tensor per layer; folded, they would store ~1 GB of constants for OFA-Base at
#: 512 x 683 (past the 2 GiB file limit for larger models). Left unfolded, runtimes fold what they choose at
#: load time (ONNX Runtime in memory, TensorRT in the engine) and the file stays the size of the weights.
FOLD_LIMIT_BYTES = 4 * 2**20


class ExportError(BackendError):
    """The export could not produce a valid file (nothing was written at the output path)."""


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    parity: ParityReport | None


def _echo(msg: str) -> None:
    log.info(msg)


def build_graph(adapted: Any, refine: bool = True, labels: bool = False, shape_agnostic: bool = False,
                open_vocabulary: bool = False) -> Any:
    """The export-only wrapper around a copy of the adapted model (fp32, eval mode, CPU); the caller's model is
    left as it was. ``open_vocabulary``: the graph that takes the vocabulary as input (:mod:`.open_vocabulary`)."""
    import copy

    from ifseg_deploy.refine import NO_REFINEMENT, PAPER_REFINEMENT
    from ifseg_deploy.runtime.graph import InferenceGraph

    from .open_vocabulary import OpenVocabularyGraph

    k, iters = PAPER_REFINEMENT if refine else NO_REFINEMENT
    model = copy.deepcopy(adapted.model).float().cpu().eval().prepare_for_export(shape_agnostic)
    graph_type = OpenVocabularyGraph if open_vocabulary else InferenceGraph
    return graph_type(model, k, iters, labels_at_input=labels).eval()


def trace_to_onnx(graph: Any, spec: InputSpec, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """``torch.onnx.export(dynamo=True)`` with the dynamic dimensions of ``spec`` (batch, height, width); an
    :class:`~.open_vocabulary.OpenVocabularyGraph` adds its vocabulary inputs, with M, T and Lt dynamic within
    its ``bounds``."""
    import torch

    # torch.export specialises a dimension whose example is 1, so a dynamic batch is traced with 2.
    batch = 2 if spec.max_batch >= 2 else 1
    example = torch.zeros(batch, 3, *spec.opt_size)
    example.normal_(generator=torch.Generator().manual_seed(0))
    dims: dict[int, Any] = {}
    if spec.max_batch >= 2:
        dims[0] = torch.export.Dim("batch", min=1, max=spec.max_batch)
    dyn_h, dyn_w = spec.dynamic_axes
    if dyn_h:
        dims[2] = torch.export.Dim("height", min=spec.min_size[0], max=spec.max_size[0])
    if dyn_w:
        dims[3] = torch.export.Dim("width", min=spec.min_size[1], max=spec.max_size[1])
    outputs = [PROBS_NAME, LABELS_NAME] if graph.labels_at_input else [PROBS_NAME]
    args: tuple[Any, ...] = (example,)
    names = [INPUT_NAME]
    shapes: dict[str, Any] | None = {INPUT_NAME: dims} if dims else None
    if getattr(graph, "bounds", None) is not None:
        from .open_vocabulary import example_feeds

        bounds = graph.bounds
        examples = example_feeds(graph.feeds)
        args = (example, *(examples[n] for n in VOCABULARY_INPUTS))
        names += list(VOCABULARY_INPUTS)
        n_names = torch.export.Dim("names", min=1, max=bounds.max_names)
        shapes = {INPUT_NAME: dims or None,
                  PROMPT_IDS_NAME: {1: torch.export.Dim("prompt_tokens", min=bounds.min_prompt_tokens,
                                                        max=bounds.max_prompt_tokens)},
                  NAME_IDS_NAME: {0: n_names, 1: torch.export.Dim("name_tokens", min=1, max=bounds.max_name_tokens)},
                  NAME_LENGTHS_NAME: {0: n_names}}
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, opset_version=opset,
                                    input_names=names, output_names=outputs,
                                    dynamic_shapes=shapes, optimize=False, verbose=False)
        _optimize(program)
        program.save(str(path), external_data=False)


def _optimize(program: Any) -> None:
    """The exporter's own graph clean-up (type fixes, constant folding), without folding Resize nodes.

    onnxscript folds constants with ONNX's Python reference kernels; its Resize runs one Python call per output
    element and took most of a minute on the position tables of even a tiny model. onnxslim folds those
    afterwards with onnxruntime, in milliseconds.
    """
    try:
        from onnxscript.optimizer import optimize_ir
    except ImportError:
        program.optimize()
        return
    try:
        optimize_ir(program.model, should_fold=lambda node: False if node.op_type == "Resize" else None)
    except TypeError:  # an onnxscript without should_fold
        program.optimize()


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The exporter logs every stage and each torchvision op it skips; keep that out of the user's console."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        try:
            yield
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)


def simplify(model: Any) -> Any:
    """onnxslim (constant folding, dead-code and shape-op elimination); the input model if it fails."""
    try:
        import onnxslim
    except ImportError:
        warnings.warn("onnxslim is not installed: the graph is not simplified (pip install onnxslim)", stacklevel=2)
        return model
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            return onnxslim.slim(model, size_threshold=FOLD_LIMIT_BYTES)
    except Exception as e:  # noqa: BLE001 - an optimisation: the parity check below still guards the result
        warnings.warn(f"onnxslim failed ({type(e).__name__}: {e}); exporting the unsimplified graph", stacklevel=2)
        return model


def _vocabulary_feeds(graph: Any, adapted: Any, vocabulary: VocabularyBounds | None) -> dict[str, Any]:
    """The vocabulary inputs of the model's own names (empty for a fixed graph); an open-vocabulary graph is
    traced with them."""
    if vocabulary is None:
        return {}
    feeds = VocabularyFeeds(adapted.tokenizer, adapted.prompt, vocabulary.validate())(list(adapted.categories))
    graph.bounds, graph.feeds = vocabulary, feeds
    return feeds


def model_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


def export_onnx(adapted: Any, out: str | Path, spec: InputSpec, *, refine: bool = True, labels: bool = False,
                opset: int = DEFAULT_OPSET, simplify_graph: bool = True, min_agreement: float = FP32_AGREEMENT,
                parity_images: int = 4, overwrite: bool = False, echo: Callable[[str], None] = _echo,
                vocabulary: VocabularyBounds | None = None) -> ExportResult:
    """Export ``adapted`` (an :class:`~ifseg_deploy.model_dir.AdaptedModel`) to ``out``.

    ``vocabulary``: write the open-vocabulary graph (the prompt and the names are inputs, within these bounds;
    :func:`.open_vocabulary.vocabulary_bounds`), with the tokenizer in the metadata. Its parity check feeds it
    the model's own categories and compares with the PyTorch model.

    Raises :class:`ExportError` for an invalid export and :class:`~.parity.ParityError` when ONNX Runtime's
    labels agree with PyTorch's on fewer than ``min_agreement`` of the grid cells; in both cases nothing is
    left at ``out``.
    """
    import onnx

    from ifseg_deploy.version import __version__

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: opset >= {MIN_OPSET} exports LayerNormalization as one op, "
                          "which TensorRT keeps in fp32")
    graph = build_graph(adapted, refine, labels, shape_agnostic=spec.is_dynamic, open_vocabulary=vocabulary is not None)
    spec.validate(min_cells=graph.refine_k)
    feeds = _vocabulary_feeds(graph, adapted, vocabulary)
    if model_bytes(graph) > MAX_SINGLE_FILE_BYTES:
        raise ExportError(f"the model has {model_bytes(graph) / 2**30:.1f} GiB of weights; a single .onnx file "
                          "holds at most 2 GiB (protobuf). Export a smaller model size")
    refinement = (graph.refine_k, graph.refine_iters) if refine else (1, 0)
    preprocessing = adapted.preprocessing

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        raw = staging / "traced.onnx"
        refine_text = f"k={refinement[0]} x{refinement[1]}" if refine else "off"
        vocab_text = f", open vocabulary: {vocabulary.describe()}" if vocabulary is not None else ""
        echo(f"exporting to ONNX ({spec.describe()}, opset {opset}, refinement {refine_text}"
             f"{', labels output' if labels else ''}{vocab_text}) ...")
        try:
            trace_to_onnx(graph, spec, raw, opset)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:2000]}") from e
        model = onnx.load(str(raw))
        if simplify_graph:
            n_before = len(model.graph.node)
            model = simplify(model)
            echo(f"simplified the graph: {n_before} -> {len(model.graph.node)} nodes")
        actual_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
        info = ModelInfo(categories=list(adapted.categories), preprocessing=preprocessing, input=spec,
                         precision="fp32", refinement=refinement,
                         outputs=[PROBS_NAME, LABELS_NAME] if labels else [PROBS_NAME], opset=int(actual_opset),
                         package_version=__version__, prompt=getattr(adapted, "prompt", ""), vocabulary=vocabulary,
                         tokenizer=adapted.tokenizer.to_dict() if vocabulary is not None else None)
        write_metadata(model, info)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:
            raise ExportError(f"the exported graph fails onnx.checker: {e}") from e
        candidate = staging / out.name
        candidate.write_bytes(model.SerializeToString())

        from .inputs import parity_inputs

        inputs, source = parity_inputs(spec, preprocessing, parity_images)
        report = compare(ort_probs(str(candidate), feeds=feeds), torch_reference(adapted.model, refinement), inputs,
                         "onnxruntime fp32 (CPU)", "PyTorch", source)
        echo(report.format())
        check(report, min_agreement)
        publish(candidate, out)
        echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
        return ExportResult(out, info, report)
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
