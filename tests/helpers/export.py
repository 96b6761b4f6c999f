"""The export tests' tiny model and its exports, as plain functions that build into a folder; ``conftest.py``
makes each once per session (fixtures ``export_model_dir``, ``fixed_export``, ``dynamic_export``,
``calibration_dir``, ``int8_export``), ``make_export_golden.py`` builds the model on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bpe import write_tiny_bpe
from .ofa import tiny_config, write_fairseq_checkpoint

CATEGORIES = ["floor", "wall", "person", "sky", "road"]
FIXED = (64, 96)
DYNAMIC = {"min": (32, 32), "opt": (64, 96), "max": (544, 544)}

#: INT8 label agreement required of the tiny model. Its random weights give nearly flat probabilities (median
#: top-1/top-2 gap 0.05), so 8-bit activations flip ~18% of the cells (measured 81.7%, entropy and max
#: calibration alike); a trained model's confident predictions are held to the 95% default.
TINY_INT8_AGREEMENT = 0.75


def write_ofa_checkpoint(root: Path) -> tuple[Path, Path]:
    """The fixture OFA checkpoint (1 encoder + 1 decoder layer, small ResNet, seed 11) and its BPE folder."""
    from ifseg_deploy.tokenizer import OFATokenizer

    bpe = root / "BPE"
    write_tiny_bpe(bpe, layout="fairseq")
    cfg = tiny_config(OFATokenizer.from_dir(bpe).num_embeddings, resnet_type="resnet-mini", resnet_width=16,
                      encoder_layers=1, decoder_layers=1)
    return write_fairseq_checkpoint(root / "ofa_tiny.pt", cfg, seed=11), bpe


def write_model_dir(root: Path) -> Path:
    """The fixture checkpoint for :data:`CATEGORIES`, saved as an (unadapted) adapted-model directory."""
    from ifseg_deploy.model_dir import AdaptedModel

    ckpt, bpe = write_ofa_checkpoint(root / "ckpt")
    return AdaptedModel.unadapted_from_ofa(ckpt, CATEGORIES, bpe_dir=bpe).save_pretrained(root / "model")


def export_fixed(model_dir: Path, out: Path) -> tuple[Path, str]:
    """Through the CLI: fixed 64x96, batch up to 2, labels output. Returns the file and the command's output."""
    from click.testing import CliRunner

    from ifseg_deploy.cli import cli

    result = CliRunner().invoke(cli, ["export", "--model", str(model_dir), "--input-size", "64x96",
                                      "--max-batch", "2", "--labels", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def export_dynamic(model_dir: Path, out: Path) -> Path:
    """Through the Python API: dynamic 32x32 .. 544x544 (grids 2x2 .. 34x34), batch up to 2."""
    from ifseg_deploy.export.onnx_export import export_onnx
    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.runtime.input_spec import InputSpec

    spec = InputSpec.dynamic(DYNAMIC["min"], DYNAMIC["opt"], DYNAMIC["max"], max_batch=2)
    return export_onnx(AdaptedModel.from_pretrained(model_dir), out, spec, echo=lambda _: None).path


def write_calibration_images(d: Path) -> Path:
    """12 unlabeled photo-like PNGs of assorted sizes (calibration reads folders of arbitrary images)."""
    from PIL import Image

    from ifseg_deploy.export.inputs import synthetic_photos

    d.mkdir(parents=True)
    for i, size in enumerate([(360, 480), (480, 360), (300, 500)] * 4):
        Image.fromarray(synthetic_photos(1, seed=100 + i, size=size)[0]).save(d / f"photo_{i:02d}.png")
    return d


def export_int8(fixed: Path, calibration: Path, out: Path) -> tuple[Path, list[str]]:
    """The fixed export quantized (entropy calibration) through the Python API, and what it printed."""
    from ifseg_deploy.export.pipeline import export_model

    lines: list[str] = []
    export_model(fixed, out, precision="int8", calib_images=calibration,
                 reduced_agreement_threshold=TINY_INT8_AGREEMENT, echo=lines.append)
    return out, lines


class TorchReference:
    """The reference of the export tests: the adapted model's InferenceGraph in eager PyTorch."""

    def __init__(self, model_dir: Path) -> None:
        from ifseg_deploy.model_dir import AdaptedModel

        self.model = AdaptedModel.from_pretrained(model_dir).model.eval()

    def __call__(self, x: np.ndarray, refine: bool = True) -> np.ndarray:
        import torch

        from ifseg_deploy.runtime.graph import InferenceGraph

        graph = InferenceGraph(self.model, *((3, 25) if refine else (1, 0))).eval()
        with torch.no_grad():
            return graph(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def ort_run(path: Path, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(outputs, {"pixels": np.ascontiguousarray(x, dtype=np.float32)})
