"""The PyTorch backend's reduced precision: bf16 autocast keeps the labels of the exact fp32 path on the trained
synthetic-world model, and the parts that must stay fp32 (LayerNorm, softmax, the refinement) do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifseg_deploy.errors import InputError
from ifseg_deploy.runtime.backends.torch import TorchBackend
from ifseg_deploy.runtime.segmenter import Segmenter
from ifseg_deploy.synthetic.world import SyntheticScenes

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN for CPU bf16")


@pytest.fixture(scope="module")
def scenes():
    return [img for img, _ in SyntheticScenes(6, (256, 256), split="validation")]


def _labels(backend: TorchBackend, images) -> np.ndarray:
    seg = Segmenter(backend)
    return np.stack([r.labels for r in seg(list(images))])


def test_bf16_keeps_the_fp32_labels_on_the_trained_model(demo_report, scenes):
    out, _ = demo_report
    fp32 = _labels(TorchBackend.from_file(out / "model"), scenes)
    bf16_backend = TorchBackend.from_file(out / "model", precision="bf16")
    bf16 = _labels(bf16_backend, scenes)
    agreement = float((fp32 == bf16).mean())
    assert agreement >= 0.99, agreement
    assert bf16_backend.describe()["precision"] == "bf16"


def test_refinement_runs_in_fp32_under_autocast():
    from ifseg_deploy.refine import knn_refine

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 4, 6, 6, generator=g), dim=1)
    features = torch.randn(1, 64, 6, 6, generator=g) + 3.0  # nearly parallel features: bf16 cosines would tie
    exact = knn_refine(probs, features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = knn_refine(probs, features)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, exact)


def test_layer_norm_stays_fp32_on_low_precision_inputs():
    from ifseg_deploy.modeling.layers import LayerNorm

    ln = LayerNorm(8)
    x = (torch.randn(4, 8) * 300).bfloat16()
    expected = torch.nn.functional.layer_norm(x.float(), (8,)).bfloat16()
    assert torch.equal(ln(x), expected)


def test_unsupported_precisions_are_refused_before_loading(tmp_path):
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        TorchBackend.from_file(tmp_path / "nowhere", precision="fp16")
    with pytest.raises(InputError, match="precision must be one of"):
        TorchBackend.from_file(tmp_path / "nowhere", precision="int4")
