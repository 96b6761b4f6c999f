"""Shared fixtures: paths to the team's test data in ../shared and tiny random OFA checkpoints."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN_DIR = SHARED / "segofa_golden"
REAL_BPE_DIR = SHARED / "ofa_bpe"
HF_PORT_KEYS_DIR = SHARED / "hf_port_keys"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "segofa_tiny_random.pt.xz").is_file():
        pytest.skip(f"official SegOFA golden outputs not found at {GOLDEN_DIR} (test data kept outside the repo)")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden_checkpoint(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official code's tiny random SegOFA checkpoint, unpacked once per session."""
    out = tmp_path_factory.mktemp("golden") / "segofa_tiny_random.pt"
    with lzma.open(golden_dir / "segofa_tiny_random.pt.xz") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


@pytest.fixture(scope="session")
def real_bpe_dir() -> Path:
    if not (REAL_BPE_DIR / "encoder.json").is_file():
        pytest.skip(f"real OFA BPE files not found at {REAL_BPE_DIR} (test data kept outside the repo)")
    return REAL_BPE_DIR


@pytest.fixture(scope="session")
def hf_port_keys_dir() -> Path:
    if not (HF_PORT_KEYS_DIR / "state_dict_keys.json").is_file():
        pytest.skip(f"the official HF OFA port's key list not found at {HF_PORT_KEYS_DIR} (test data kept outside "
                    "the repo)")
    return HF_PORT_KEYS_DIR


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: their operations gain nothing from threads, and two threads per process
    oversubscribe a shared 2-core machine (several times slower). Restored at the end."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory: pytest.TempPathFactory):
    """`demo --quick` run once per session: (out folder, report). The folder holds the synthetic world's trained
    model (model/), model.onnx, model.int8.onnx and calibration_images/; treat it as read-only."""
    pytest.importorskip("onnxruntime", reason="the demo exports ONNX: needs the [onnx] extra")
    pytest.importorskip("modelopt", reason="the demo quantizes to INT8: needs the [int8] extra")
    from ifseg_deploy.demo import DemoSettings, run_demo

    root = tmp_path_factory.mktemp("demo")
    report = run_demo(root / "out", DemoSettings.quick(), cache_dir=root / "cache", progress=False,
                      echo=lambda _: None)
    return root / "out", report


# The 16-concept world model at a reduced recipe (60 training steps instead of 700): ~11 s of CPU (20-25 s wall on
# the shared 2-core machine), built once per session. Its image tokens align with all 16 names: alignment mIoU
# 0.836 on 24 held-out 256 px scenes, lowest concept 0.74 (over build seeds 0-4: 0.80-0.84, lowest 0.64-0.74),
# enough for tests that adapt on some names and test on others.
OPEN_WORLD_TEST_STEPS = dict(steps=60, pool_scenes=64, pool_size=160)


@pytest.fixture(scope="session")
def open_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the 16-concept world model's ``ofa_world.pt`` (BPE files beside it), in a session cache."""
    from ifseg_deploy.synthetic.cache import build_or_load_world_model
    from ifseg_deploy.synthetic.tiny_vlm import WorldRecipe

    recipe = WorldRecipe.open_vocabulary(**OPEN_WORLD_TEST_STEPS)
    return build_or_load_world_model(tmp_path_factory.mktemp("open-world-cache"), recipe=recipe, progress=False)
