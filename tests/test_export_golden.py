"""Golden-output regression (open_clip's habit): one fixed tiny model and fixed inputs through PyTorch, ONNX
Runtime fp32 and ONNX Runtime INT8, tied together by stated tolerances and to committed reference values.

* PyTorch vs ``tests/data/export_golden.npz``: the probabilities, with and without the kNN refinement, within
  ``GOLDEN_ATOL`` (1e-5). Runs of one build differ by ~3e-8 (1 vs 2 threads); a wrong formula moves them by far
  more (measured: GELU's tanh approximation 7e-5, LayerNorm eps x10 2e-2, 24 refinement rounds instead of 25 1e-3).
* ORT fp32 vs the golden values within 1e-4, and vs PyTorch within 1e-4 with identical labels.
* ORT INT8 vs ORT fp32: labels agree on at least ``TINY_INT8_AGREEMENT`` (75%) of the cells, probabilities
  within 0.25 (max) / 0.03 (mean) absolute. Measured on these inputs (nvidia-modelopt 0.47, onnxruntime 1.24):
  79.2%, 0.183, 0.018; the random tiny model's probabilities are nearly flat (see tests/helpers/export.py).

The golden file is made by ``python tests/helpers/make_export_golden.py`` (PyTorch eager on the CPU, fp32), from
the export tests' fixture model (``tests/helpers/export.py``, seeded random weights) and
:func:`golden_inputs_array`. Regenerate it only when a change of the model's numerics is intended, and say so in
the commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.onnx.quantization")

from helpers.export import FIXED, TINY_INT8_AGREEMENT, ort_run  # noqa: E402

INT8_MAX_ABS = 0.25
INT8_MEAN_ABS = 0.03
GOLDEN_FILE = Path(__file__).parent / "data" / "export_golden.npz"
GOLDEN_ATOL = 1e-5


def golden_inputs_array() -> np.ndarray:
    """Fixed inputs: four seeded normalised images at the export size, half noise, half smooth scenes."""
    from ifseg_deploy.export.inputs import preprocess, synthetic_photos
    from ifseg_deploy.preprocessing import PreprocessConfig

    noise = np.random.default_rng(2024).standard_normal((2, 3, *FIXED)).astype(np.float32).clip(-1, 1)
    scenes = np.stack([preprocess(p, PreprocessConfig(), FIXED) for p in synthetic_photos(2, seed=2024)])
    return np.concatenate([noise, scenes])


def input_fingerprint(x: np.ndarray) -> np.ndarray:
    """[sum, sum of squares] in float64: tells a change of the inputs from a change of the model."""
    x = x.astype(np.float64)
    return np.array([x.sum(), (x * x).sum()])


def reference_probs(torch_reference, x: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch eager probabilities of the fixture model, refined (k=3, 25 rounds) and raw."""
    return {"refined": np.concatenate([torch_reference(v[None]) for v in x]),
            "raw": np.concatenate([torch_reference(v[None], refine=False) for v in x])}


@pytest.fixture(scope="module")
def golden_inputs() -> np.ndarray:
    return golden_inputs_array()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN_FILE.is_file():
        pytest.fail(f"{GOLDEN_FILE} is missing; make it with `python tests/helpers/make_export_golden.py`")
    with np.load(GOLDEN_FILE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def torch_outputs(golden_inputs, torch_reference) -> dict[str, np.ndarray]:
    return reference_probs(torch_reference, golden_inputs)


@pytest.fixture(scope="module")
def outputs(golden_inputs, torch_outputs, fixed_export, int8_export):
    fp32_path, int8_path = fixed_export[0], int8_export[0]
    return {
        **{f"torch_{k}": v for k, v in torch_outputs.items()},
        "fp32": np.concatenate([ort_run(fp32_path, x[None], ["probs"])[0] for x in golden_inputs]),
        "int8": np.concatenate([ort_run(int8_path, x[None], ["probs"])[0] for x in golden_inputs]),
    }


def test_torch_matches_the_committed_golden_values(golden_inputs, golden, torch_outputs):
    np.testing.assert_allclose(input_fingerprint(golden_inputs), golden["inputs_sum_sumsq"], rtol=1e-9,
                               err_msg="the golden inputs changed (synthetic_photos / preprocess), not the model")
    for kind in ("refined", "raw"):
        assert torch_outputs[kind].shape == golden[kind].shape == (4, 5, 4, 6)
        np.testing.assert_allclose(torch_outputs[kind], golden[kind], atol=GOLDEN_ATOL, rtol=0, err_msg=kind)


def test_onnxruntime_fp32_matches_the_committed_golden_values(golden, outputs):
    np.testing.assert_allclose(outputs["fp32"], golden["refined"], atol=1e-4, rtol=0)


def test_outputs_are_probabilities(outputs):
    for name, p in outputs.items():
        assert p.shape == (4, 5, 4, 6), name
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5, err_msg=name)


def test_torch_and_onnxruntime_fp32_agree(outputs):
    np.testing.assert_allclose(outputs["fp32"], outputs["torch_refined"], atol=1e-4, rtol=0)
    assert np.array_equal(outputs["fp32"].argmax(1), outputs["torch_refined"].argmax(1))


def test_int8_stays_within_its_stated_tolerance_of_fp32(outputs):
    diff = np.abs(outputs["int8"] - outputs["fp32"])
    agreement = (outputs["int8"].argmax(1) == outputs["fp32"].argmax(1)).mean()
    print(f"golden INT8 vs fp32: agreement {agreement:.4f}, max abs {diff.max():.4f}, mean abs {diff.mean():.4f}")
    assert agreement >= TINY_INT8_AGREEMENT, agreement
    assert diff.max() <= INT8_MAX_ABS and diff.mean() <= INT8_MEAN_ABS, (diff.max(), diff.mean())
    # ... and the same holds against PyTorch directly (fp32 is the link between the two)
    assert (outputs["int8"].argmax(1) == outputs["torch_refined"].argmax(1)).mean() >= TINY_INT8_AGREEMENT


def test_int8_is_deterministic(golden_inputs, outputs, int8_export):
    again = ort_run(int8_export[0], golden_inputs[:1], ["probs"])[0]
    np.testing.assert_array_equal(again, outputs["int8"][:1])
