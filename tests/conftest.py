"""Session fixtures shared by the test files: the team's test data in ../shared, tiny random models and their
exports, the synthetic world models and one demo run. Each is built once per session, in pytest's temporary
folders, the first time a test asks for it. The plain helpers they are built with live in ``tests/helpers/``."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
import torch
from helpers.world import FAST_WORLD_STEPS, OPEN_WORLD_TEST_STEPS

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


# -- tiny random models and the export tests' files (read-only: copy before changing one) ---------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random adapted-model directory for ``helpers.ofa.TINY_CATEGORIES`` (the paper's preprocessing)."""
    from helpers.ofa import TINY_CATEGORIES, write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), TINY_CATEGORIES, seed=3)


@pytest.fixture(scope="session")
def tiny_model_dir_32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same categories, other weights, and a 32-pixel short side saved in the model (fast CLI runs)."""
    from helpers.ofa import TINY_CATEGORIES, write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model-32"), TINY_CATEGORIES, seed=5, short_side=32)


@pytest.fixture(scope="session")
def export_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export tests' model (helpers.export.CATEGORIES, 1 + 1 layers, small ResNet) as a model directory."""
    from helpers.export import write_model_dir

    return write_model_dir(tmp_path_factory.mktemp("export-model"))


@pytest.fixture(scope="session")
def torch_reference(export_model_dir: Path):
    """``torch_reference(x, refine=True)``: eager PyTorch probabilities of the export tests' model."""
    from helpers.export import TorchReference

    return TorchReference(export_model_dir)


@pytest.fixture(scope="session")
def fixed_export(export_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(fixed 64x96 .onnx with a labels output, batch up to 2, made by the CLI; what the CLI printed)."""
    pytest.importorskip("onnxruntime")
    from helpers.export import export_fixed

    return export_fixed(export_model_dir, tmp_path_factory.mktemp("fixed-export") / "fixed.onnx")


@pytest.fixture(scope="session")
def dynamic_export(export_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dynamic 32x32 .. 544x544 .onnx, batch up to 2, made through the Python API."""
    pytest.importorskip("onnxruntime")
    from helpers.export import export_dynamic

    return export_dynamic(export_model_dir, tmp_path_factory.mktemp("dynamic-export") / "dynamic.onnx")


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 unlabeled photo-like PNGs of assorted sizes."""
    from helpers.export import write_calibration_images

    return write_calibration_images(tmp_path_factory.mktemp("calibration") / "calib")


@pytest.fixture(scope="session")
def int8_export(fixed_export, calibration_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(the fixed export quantized to INT8 with entropy calibration, the lines export_model printed)."""
    pytest.importorskip("modelopt.onnx.quantization")
    from helpers.export import export_int8

    return export_int8(fixed_export[0], calibration_dir, tmp_path_factory.mktemp("int8-export") / "fixed.int8.onnx")


# -- the synthetic world -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fast_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(``ofa_world.pt`` of the reduced 8-concept world model, the cache folder it lives in)."""
    from ifseg_deploy.synthetic.cache import build_or_load_world_model
    from ifseg_deploy.synthetic.tiny_vlm import WorldRecipe

    cache = tmp_path_factory.mktemp("world-cache")
    return build_or_load_world_model(cache, recipe=WorldRecipe(**FAST_WORLD_STEPS), progress=False), cache


@pytest.fixture(scope="session")
def demo_report(fast_world, tmp_path_factory: pytest.TempPathFactory):
    """`demo --quick` run once per session: (out folder, report). The folder holds the synthetic world's trained
    model (model/), model.onnx, model.int8.onnx and calibration_images/; treat it as read-only."""
    pytest.importorskip("onnxruntime", reason="the demo exports ONNX: needs the [onnx] extra")
    pytest.importorskip("modelopt", reason="the demo quantizes to INT8: needs the [int8] extra")
    from ifseg_deploy.demo import DemoSettings, run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    report = run_demo(out, DemoSettings.quick(), cache_dir=fast_world[1], progress=False, echo=lambda _: None)
    return out, report


@pytest.fixture(scope="session")
def open_world_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(``ofa_world.pt`` of the reduced 16-concept world model (BPE files beside it), the cache folder it lives
    in: `demo --open-vocabulary --quick` finds it there)."""
    from ifseg_deploy.synthetic.cache import build_or_load_world_model
    from ifseg_deploy.synthetic.tiny_vlm import WorldRecipe

    cache = tmp_path_factory.mktemp("open-world-cache")
    recipe = WorldRecipe.open_vocabulary(**OPEN_WORLD_TEST_STEPS)
    return build_or_load_world_model(cache, recipe=recipe, progress=False), cache


@pytest.fixture(scope="session")
def open_world(open_world_cache: tuple[Path, Path]) -> Path:
    """Path of the 16-concept world model's ``ofa_world.pt`` (BPE files beside it), in a session cache."""
    return open_world_cache[0]
