"""The README's Python examples run, as written, in README order, against tiny models.

Every ```python block of README.md runs in one namespace (later examples use what earlier ones made, as a
reader would), in a folder holding the files the examples name: ``ofa_base.pt`` and ``OFA/utils/BPE`` (a tiny
random OFA checkpoint), ``photo.jpg``, ``clip.mp4`` (3 frames) and ``model.onnx``. ``my_model`` is what the adapt
example writes.
Only two kinds of change are made to the text, and each must still match the README (so a changed example
cannot slip past):

* :data:`SMALLER`: sizes and step counts cut down to seconds on a CPU (e.g. 2000 adaptation steps -> 2);
* :data:`GIVEN`: the names an example uses without defining them (``images``, ``grid``, ``my_backend``...),
  bound to real objects of the right kind.

A block preceded by ``<!-- readme-test: skip REASON -->`` is skipped with that reason (for examples a CPU
cannot run, such as TensorRT). Deprecated names in an example fail the test: the README shows the current API.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s+(.+?)\s*-->")

#: README text -> what runs instead: fewer steps, scenes and pixels; the same calls.
SMALLER = {
    "AdaptConfig(steps=2000)": "AdaptConfig(steps=2, batch_size=2, grid_max=4, wordmap_size=4, target_size=32)",
    "build_or_load_world_model()": "build_or_load_world_model(recipe=TEST_WORLD)",
    "build_or_load_world_model(recipe=WorldRecipe.open_vocabulary())": "build_or_load_world_model(recipe=TEST_WORLD)",
    "SyntheticScenes(64, size=(512, 512)": "SyntheticScenes(2, size=(128, 128)",
    "InputSpec.fixed((512, 683))": "InputSpec.fixed((64, 96))",
}


@dataclass(frozen=True)
class Example:
    line: int  # of the ```python fence in README.md
    code: str
    skip: str | None = None

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def python_examples(text: str) -> list[Example]:
    """The ```python blocks of a Markdown text, with the skip reason of a marker on the line before."""
    lines = text.splitlines()
    examples, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            mark = SKIP_MARK.search(lines[start - 1]) if start else None
            examples.append(Example(start + 1, "\n".join(lines[start + 1:end]) + "\n", mark and mark.group(1)))
            i = end
        i += 1
    return examples


EXAMPLES = python_examples(README.read_text(encoding="utf-8"))


def smaller(code: str) -> str:
    for old, new in SMALLER.items():
        code = code.replace(old, new)
    return code


def test_the_reader_finds_the_blocks_and_skip_marks():
    text = "intro\n```python\na = 1\n```\n<!-- readme-test: skip needs TensorRT -->\n```python\nb = 2\n```\n"
    assert python_examples(text) == [Example(2, "a = 1\n"), Example(6, "b = 2\n", "needs TensorRT")]
    assert len(EXAMPLES) >= 7


def test_every_shortcut_still_matches_the_readme():
    """A README example that changed so that a shortcut no longer applies would run at full size (or not at all):
    the shortcut must be updated with it."""
    text = README.read_text(encoding="utf-8")
    assert [old for old in SMALLER if old not in text] == []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fixed_export, tiny_model_dir):
    """The folder the examples run in, with the files they name."""
    from helpers.export import write_ofa_checkpoint
    from PIL import Image

    root = tmp_path_factory.mktemp("readme")
    ckpt, bpe = write_ofa_checkpoint(tmp_path_factory.mktemp("readme-ofa"))
    shutil.copy(ckpt, root / "ofa_base.pt")
    shutil.copytree(bpe, root / "OFA" / "utils" / "BPE")
    shutil.copy(fixed_export[0], root / "model.onnx")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "photo.jpg")
    from helpers.stream import pan_frames, write_video

    write_video(root / "clip.mp4", pan_frames(3, 48, 64), fps=30.0)  # the video examples' clip (needs [video])
    return root


def given(tiny_model_dir: Path, open_world_recipe) -> dict:
    """The names the examples take as given, as real objects."""
    import torch

    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.runtime.backends.torch import TorchBackend

    adapted = AdaptedModel.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(2, 3, 64, 96, generator=g) * 2 - 1,  # normalised pixels
        "image": np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8),
        "model": adapted.model,
        "grid": torch.randint(0, adapted.model.num_classes, (2, 8, 8), generator=g),  # padded U x V grids
        "sizes": torch.tensor([[8, 5], [3, 7]]),
        "my_backend": TorchBackend.from_file(tiny_model_dir),
        "TEST_WORLD": open_world_recipe,
    }


@pytest.fixture(scope="module")
def results(workdir, tiny_model_dir, open_world, monkeypatch_module) -> dict[int, str | None]:
    """Runs every example in README order: line -> None, or the traceback of its failure."""
    from helpers.world import OPEN_WORLD_TEST_STEPS

    from ifseg_deploy.synthetic.tiny_vlm import WorldRecipe

    # build_or_load_world_model() without a folder looks in $IFSEG_DEPLOY_CACHE: the session's built world model
    monkeypatch_module.setenv("IFSEG_DEPLOY_CACHE", str(open_world.parents[2]))
    monkeypatch_module.chdir(workdir)
    namespace = {"__name__": "readme", **given(tiny_model_dir, WorldRecipe.open_vocabulary(**OPEN_WORLD_TEST_STEPS))}
    out: dict[int, str | None] = {}
    for example in EXAMPLES:
        if example.skip:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                # a deprecated name the example itself uses (the warning points at the example's line)
                warnings.filterwarnings("error", category=DeprecationWarning, module="readme")
                exec(compile(smaller(example.code), str(example), "exec"), namespace)  # noqa: S102
            out[example.line] = None
        except Exception:  # noqa: BLE001 - reported by the example's own test below
            out[example.line] = traceback.format_exc()
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_readme_example_runs(example, results):
    if example.skip:
        pytest.skip(example.skip)
    assert results[example.line] is None, f"the example at {example} fails:\n{results[example.line]}"


def test_the_examples_made_what_they_say(results, workdir):
    """Not only no exception: the files the examples write are there."""
    assert all(v is None for v in results.values())
    assert (workdir / "unadapted_model" / "config.json").is_file()
    assert (workdir / "my_model" / "config.json").is_file()
    assert (workdir / "my_model.onnx").is_file()
