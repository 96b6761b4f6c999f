"""The command line: --help, --version, `info` (text and JSON), and the environment probes behind `info`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ifseg_deploy import __version__, envinfo
from ifseg_deploy.cli import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_explains_pipeline(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for word in ("adapt", "export", "segment", "bench", "info"):
        assert word in result.output
    # every pipeline command that exists is listed among the commands
    commands = result.output.split("Commands:")[1]
    for name in ("adapt", "demo", "eval", "export", "info", "inspect", "segment"):
        assert f"  {name} " in commands, name


def test_version_matches_package(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ifseg-deploy {__version__}"


def test_python_dash_m_runs_cli(tmp_path):
    # from a directory other than the repository: the installed package must be found, not the source tree
    proc = subprocess.run(
        [sys.executable, "-m", "ifseg_deploy", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ifseg-deploy {__version__}"


def test_import_is_light():
    # importing the package (and the CLI module) must not import torch
    code = "import sys, ifseg_deploy, ifseg_deploy.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_info_text(runner):
    result = runner.invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    assert "Model presets" in result.output
    assert "Optional parts" in result.output
    assert "torch" in result.output
    from ifseg_deploy.presets import PRESETS

    for name in PRESETS:
        assert name in result.output


def test_info_json(runner):
    result = runner.invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ifseg_deploy"]["version"] == __version__

    from ifseg_deploy.presets import PRESETS

    assert report["presets_error"] is None
    assert set(report["presets"]) == set(PRESETS)
    for name, row in report["presets"].items():
        cfg = PRESETS[name]
        for field in ("d_model", "ffn_dim", "heads", "encoder_layers", "decoder_layers"):
            assert row[field] == getattr(cfg, field)
        assert row["resnet_layers"] == list(cfg.resnet_layers)

    components = report["components"]
    for name in ("torch", "triton", "onnx", "onnxruntime", "modelopt", "tensorrt", "pycuda"):
        assert name in components
        assert components[name]["status"] in {"installed", "not installed", "error"}

    import torch

    t = components["torch"]
    assert t["status"] == "installed"
    assert t["version"] == torch.__version__
    assert t["cuda_available"] == torch.cuda.is_available()
    assert len(t["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_info_reports_missing_part_as_not_installed(runner):
    # TensorRT has no wheel for this CPU development machine; where it is installed this check has no subject
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    report = json.loads(runner.invoke(cli, ["info", "--json", "--no-params"]).output)
    assert report["components"]["tensorrt"]["status"] == "not installed"
    assert report["components"]["tensorrt"]["version"] is None
    text = runner.invoke(cli, ["info", "--no-params"]).output
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("tensorrt"))
    assert "not installed" in line


def test_broken_part_is_an_error_not_a_crash(tmp_path, monkeypatch, runner):
    # a package that is present but cannot load its native library (the usual TensorRT failure on a machine
    # without libnvinfer) is reported with the reason, and `info` still succeeds
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(
        'raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)

    entry = envinfo.probe_components(test_providers=False)["tensorrt"]
    assert entry["status"] == "error"
    assert "libnvinfer" in entry["error"]

    result = runner.invoke(cli, ["info", "--no-params"])
    assert result.exit_code == 0, result.output
    assert "error: OSError: libnvinfer.so.10" in result.output


def test_onnxruntime_listed_vs_usable(tmp_path, monkeypatch, capsys):
    """onnxruntime-gpu lists CUDA/TensorRT providers whose libraries are missing; a session asked for one
    falls back to CPU. The probe must count a provider as usable only when a session really runs on it. This
    checks the probe's classification with a stand-in `onnxruntime` module that behaves that way (the real
    package is an optional extra, not installed on the test machine)."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text(
        textwrap.dedent(
            """
            __version__ = "0.0-standin"
            def get_available_providers():
                return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                        "CPUExecutionProvider"]
            def set_default_logger_severity(level):
                pass
            class SessionOptions:
                log_severity_level = 2
            class InferenceSession:
                def __init__(self, model, sess_options=None, providers=()):
                    assert isinstance(model, bytes)
                    if providers[0] == "TensorrtExecutionProvider":
                        # what onnxruntime-gpu 1.2x/1.3x prints (to stdout) before falling back to CPU
                        print("*************** EP Error ***************")
                        print("EP Error /src/onnxruntime_pybind_state.cc:729 void Register(Opts&) Please "
                              "install TensorRT libraries")
                        print(" when using ['TensorrtExecutionProvider']")
                    if providers[0] == "OpenVINOExecutionProvider":
                        raise RuntimeError("libopenvino.so: cannot open shared object file")
                    self._providers = ["CPUExecutionProvider"]  # anything but CPU falls back to CPU
                def get_providers(self):
                    return self._providers
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    from ifseg_deploy.runtime.backends import ort_providers

    monkeypatch.setattr(ort_providers, "_tiny_model", lambda: b"\x08\x08")

    entry = envinfo.probe_onnxruntime()
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    assert entry["status"] == "installed"
    assert len(entry["providers_listed"]) == 4
    assert entry["providers_usable"] == ["CPUExecutionProvider"]
    unusable = entry["providers_unusable"]
    assert unusable["TensorrtExecutionProvider"] == (
        "fell back to CPUExecutionProvider: Please install TensorRT libraries"
    )
    assert unusable["CUDAExecutionProvider"] == "fell back to CPUExecutionProvider"
    assert "libopenvino" in unusable["OpenVINOExecutionProvider"]
    # what onnxruntime printed was caught: `info --json` output stays valid JSON
    out, err = capsys.readouterr()
    assert "EP Error" not in out + err


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs onnx and onnxruntime (the [onnx] extra)",
)
def test_onnxruntime_probe_real():
    entry = envinfo.probe_onnxruntime()
    assert entry["status"] == "installed"
    assert "CPUExecutionProvider" in entry["providers_usable"]
    assert set(entry["providers_usable"]) <= set(entry["providers_listed"])


def test_presets_import_failure_is_reported(monkeypatch, runner):
    # `info` must still work, and say why, if the preset table cannot be imported
    monkeypatch.setitem(sys.modules, "ifseg_deploy.presets", None)  # makes `import` raise ImportError
    report = json.loads(runner.invoke(cli, ["info", "--json", "--no-params"]).output)
    assert report["presets"] == {}
    assert "ifseg_deploy.presets" in report["presets_error"]
    result = runner.invoke(cli, ["info", "--no-params"])
    assert result.exit_code == 0
    assert "unavailable: cannot import ifseg_deploy.presets" in result.output


def _pyproject_packages() -> tuple[list[str], dict[str, str]]:
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    st = data["tool"]["setuptools"]
    return st["packages"], st.get("package-dir", {})


def test_every_package_directory_is_listed_in_pyproject():
    """pyproject.toml lists packages explicitly (so that kernels/, export/, bench/ install inside the
    namespace). An editable install finds a new subpackage anyway, but a wheel would silently leave it out:
    keep the list complete."""
    packages, package_dir = _pyproject_packages()
    roots = {"ifseg_deploy": REPO / "ifseg_deploy"}
    roots.update({name: REPO / folder for name, folder in package_dir.items()})
    found = set()
    for name, root in roots.items():
        for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            if d.name == "__pycache__" or any(part.startswith(".") for part in d.relative_to(REPO).parts):
                continue
            if any(d.glob("*.py")):
                rel = d.relative_to(root).parts
                found.add(".".join((name, *rel)))
    missing = sorted(found - set(packages))
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    for name, folder in package_dir.items():
        assert name.startswith("ifseg_deploy."), name
        assert (REPO / folder).is_dir(), folder
