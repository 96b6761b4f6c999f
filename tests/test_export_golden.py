"""Golden-output regression (open_clip's habit): one fixed tiny model and fixed inputs through PyTorch, ONNX
Runtime fp32 and ONNX Runtime INT8, tied together by stated tolerances.

* PyTorch vs ORT fp32: probabilities within 1e-4, identical labels (the same function, two engines).
* ORT INT8 vs ORT fp32: labels agree on at least ``TINY_INT8_AGREEMENT`` (75%) of the cells, probabilities
  within 0.25 (max) / 0.03 (mean) absolute. Measured on these inputs (nvidia-modelopt 0.47, onnxruntime 1.24):
  79.2%, 0.183, 0.018; the random tiny model's probabilities are nearly flat (see test_export_common).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.onnx.quantization")

from test_export_common import FIXED, TINY_INT8_AGREEMENT, fixed_export, int8_export, ort_run, torch_probs  # noqa: E402

INT8_MAX_ABS = 0.25
INT8_MEAN_ABS = 0.03


@pytest.fixture(scope="module")
def golden_inputs() -> np.ndarray:
    """Fixed inputs: four seeded normalised images at the export size, half noise, half smooth scenes."""
    from ifseg_deploy.export.inputs import preprocess, synthetic_photos

    noise = np.random.default_rng(2024).standard_normal((2, 3, *FIXED)).astype(np.float32).clip(-1, 1)
    pre = {"mean": [0.5] * 3, "std": [0.5] * 3}
    scenes = np.stack([preprocess(p, pre, FIXED) for p in synthetic_photos(2, seed=2024)])
    return np.concatenate([noise, scenes])


@pytest.fixture(scope="module")
def outputs(golden_inputs):
    fp32_path, int8_path = fixed_export()[0], int8_export()[0]
    return {
        "torch": np.concatenate([torch_probs(x[None]) for x in golden_inputs]),
        "fp32": np.concatenate([ort_run(fp32_path, x[None], ["probs"])[0] for x in golden_inputs]),
        "int8": np.concatenate([ort_run(int8_path, x[None], ["probs"])[0] for x in golden_inputs]),
    }


def test_outputs_are_probabilities(outputs):
    for name, p in outputs.items():
        assert p.shape == (4, 5, 4, 6), name
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5, err_msg=name)


def test_torch_and_onnxruntime_fp32_agree(outputs):
    np.testing.assert_allclose(outputs["fp32"], outputs["torch"], atol=1e-4, rtol=0)
    assert np.array_equal(outputs["fp32"].argmax(1), outputs["torch"].argmax(1))


def test_int8_stays_within_its_stated_tolerance_of_fp32(outputs):
    diff = np.abs(outputs["int8"] - outputs["fp32"])
    agreement = (outputs["int8"].argmax(1) == outputs["fp32"].argmax(1)).mean()
    print(f"golden INT8 vs fp32: agreement {agreement:.4f}, max abs {diff.max():.4f}, mean abs {diff.mean():.4f}")
    assert agreement >= TINY_INT8_AGREEMENT, agreement
    assert diff.max() <= INT8_MAX_ABS and diff.mean() <= INT8_MEAN_ABS, (diff.max(), diff.mean())
    # ... and the same holds against PyTorch directly (fp32 is the link between the two)
    assert (outputs["int8"].argmax(1) == outputs["torch"].argmax(1)).mean() >= TINY_INT8_AGREEMENT


def test_int8_is_deterministic(golden_inputs, outputs):
    again = ort_run(int8_export()[0], golden_inputs[:1], ["probs"])[0]
    np.testing.assert_array_equal(again, outputs["int8"][:1])
