"""``ifseg-deploy bench``: the harness's arithmetic, its report files (JSON / Markdown / PNG) on a tiny model, the
adapt and kernel modes, and the command line's options and errors. No assertion here is about speed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers.ofa import tiny_config

from ifseg_deploy.bench.models import random_adapted_model
from ifseg_deploy.bench.settings import parse_ints, parse_list
from ifseg_deploy.bench.stats import latency_stats, percentile, ratios_to_baseline
from ifseg_deploy.cli import cli
from ifseg_deploy.synthetic.world import DEFAULT_CATEGORIES

SIZE = "64x64"
BF16_CPU = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# -- arithmetic ---------------------------------------------------------------------------------------------------
def test_percentiles_match_numpy_linear_interpolation():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.5]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_stats_and_throughput():
    st = latency_stats([100.0, 200.0, 300.0, 400.0], images_per_call=4)
    assert st["mean_ms"] == 250.0
    assert st["p50_ms"] == 250.0
    assert st["p90_ms"] == pytest.approx(370.0)
    assert st["p99_ms"] == pytest.approx(397.0)
    assert st["min_ms"] == 100.0 and st["max_ms"] == 400.0
    assert st["throughput_ips"] == pytest.approx(4 / 0.25)  # 4 images per 250 ms call
    assert st["runs"] == 4 and st["times_ms"] == [100.0, 200.0, 300.0, 400.0]


def test_ratios_to_baseline():
    base = latency_stats([100.0, 120.0, 80.0], 1)
    row = latency_stats([50.0, 40.0, 40.0], 1)
    r = ratios_to_baseline(row, base)
    assert r["mean_ms"] == pytest.approx(row["mean_ms"] / base["mean_ms"])
    assert r["p90_ms"] == pytest.approx(row["p90_ms"] / base["p90_ms"])
    assert r["throughput_ips"] == pytest.approx(row["throughput_ips"] / base["throughput_ips"])
    assert r["speedup"] == pytest.approx(100.0 / (130.0 / 3))
    # per-round pairs: 100/50, 120/40, 80/40 -> median 2
    assert r["speedup_paired_median"] == pytest.approx(statistics.median([2.0, 3.0, 2.0]))
    same = ratios_to_baseline(base, base)
    assert same["speedup"] == 1.0 and same["speedup_paired_median"] == 1.0 and same["mean_ms"] == 1.0


def test_cpu_split_arithmetic():
    from ifseg_deploy.bench.system import cpu_split

    # all, busy (without steal), steal, own user, own kernel, unused
    split = cpu_split((1000, 400, 10, 100, 50, 0), (1200, 550, 30, 180, 70, 0))
    assert split == {"all": 200.0, "other": 50.0, "steal": 20.0, "self_user": 80.0, "self_kernel": 20.0}
    assert cpu_split(None, (1, 2, 3, 4, 5, 0)) is None


def test_list_parsing():
    assert parse_list("torch, onnxruntime,torch", ("torch", "onnxruntime"), "backend") == ["torch", "onnxruntime"]
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        parse_list("torch,tensorflow", ("torch",), "backend")
    assert parse_ints("1, 4") == [1, 4]
    with pytest.raises(ValueError, match=">= 1"):
        parse_ints("0")
    with pytest.raises(ValueError, match="not an integer"):
        parse_ints("two")


# -- the harness on a tiny model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_model_dir(tmp_path_factory) -> Path:
    """A random-weight model of a tiny architecture, adapted (nominally) to the synthetic world's 8 names, so
    that ``--dataset synthetic`` accepts it."""
    out = tmp_path_factory.mktemp("bench") / "model"
    random_adapted_model(tiny_config(0), list(DEFAULT_CATEGORIES), seed=1).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def inference_run(world_model_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("modelopt.onnx.quantization")
    out = tmp_path_factory.mktemp("bench_out")
    args = ["bench", "--model", str(world_model_dir), "--backends", "torch,onnxruntime,tensorrt", "--precisions",
            "fp32,fp16,int8,int8-dynamic,bf16", "--sizes", SIZE, "--batch", "1,2", "--warmup", "1", "--iters",
            "2", "--calib-max", "2", "--threads", "1", "--device", "cpu", "--dataset", "synthetic", "--limit", "2",
            "--profile", "--peak", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out, result.output, args


def _rows(report, **match):
    return [r for r in report["rows"] if all(r[k] == v for k, v in match.items())]


def test_inference_json_has_every_figure(inference_run):
    out, _, _ = inference_run
    report = json.loads((out / "bench.json").read_text())
    assert report["schema"] == "ifseg-deploy/bench-inference/1"
    assert report["settings"]["threads"] == 1 and report["settings"]["ort_intra_op_threads"] == 1
    assert report["settings"]["iters"] == 2 and report["settings"]["sizes"] == [[64, 64]]
    for key in ("date", "cpu", "cpu_count", "load_average_1_5_15", "torch"):
        assert key in report["machine"]
    # 2 batches x 3 backends x 5 precisions
    assert len(report["rows"]) == 30
    measured = [r for r in report["rows"] if r["status"] == "ok"]
    bf16 = {("torch", "bf16")} if BF16_CPU else set()
    assert {(r["backend"], r["precision"]) for r in measured} == {
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "int8-dynamic"), *bf16}
    flops = report["flops"]["64x64"]
    assert min(flops[k] for k in ("resnet", "encoder", "decoder", "head_refine")) > 0
    assert sum(flops[k] for k in ("resnet", "encoder", "decoder", "head_refine")) == pytest.approx(flops["total"])
    peak = report["peak_gflops"]
    assert peak["fp32"] > 0 and peak["int8"] > 0 and peak["threads"] == 1 and peak["fp16"] is None
    for r in measured:
        for part in ("model", "e2e"):
            st = r[part]
            assert len(st["times_ms"]) == 2
            assert st["mean_ms"] > 0 and st["p50_ms"] <= st["p99_ms"] and st["throughput_ips"] > 0
            assert st["throughput_ips"] == pytest.approx(r["batch"] / (st["mean_ms"] / 1e3))
            assert r["ratio"][part]["speedup"] > 0
        assert r["memory"]["rss_peak_mb"] > 0 and r["memory"]["rss_first_call_mb"] is not None
        assert r["gflops_per_s"] == pytest.approx(flops["total"] * r["batch"] / r["model"]["mean_ms"] * 1e-6)
        dtype = {"int8-dynamic": "int8"}.get(r["precision"], r["precision"])
        assert r["compute_dtype"] == dtype and r["share_of_peak"] == pytest.approx(r["gflops_per_s"] / peak[dtype])
        assert r["agreement"]["label_agreement"] is not None
        assert 0 <= r["accuracy"]["mIoU"] <= 1 and r["accuracy"]["images"] == 2
        cpu = r["cpu"]
        assert set(cpu) == {"other_processes_cores", "steal_cores", "own_cores", "own_kernel_share"}
        assert all(v is None or v >= 0 for v in cpu.values())
    for base in _rows(report, baseline=True):
        assert (base["backend"], base["precision"]) == ("torch", "fp32")
        assert base["ratio"]["model"]["speedup"] == 1.0 and base["ratio"]["e2e"]["mean_ms"] == 1.0
        assert base["agreement"]["label_agreement"] == 1.0
        assert base["accuracy"]["pixel_agreement_with_baseline"] == 1.0
    # the ORT fp32 export computes what PyTorch does
    for r in _rows(report, backend="onnxruntime", precision="fp32"):
        assert r["agreement"]["max_abs_prob_diff"] < 1e-3
    # what cannot run on a CPU is skipped, with the reason
    for backend, precision, why in (("torch", "fp16", "CUDA"), ("torch", "int8", "Q/DQ"),
                                    ("onnxruntime", "fp16", "TensorRT"), ("tensorrt", "fp32", "GPU"),
                                    ("torch", "int8-dynamic", "own CPU"), ("onnxruntime", "bf16", "autocast")):
        for r in _rows(report, backend=backend, precision=precision):
            assert r["status"] == "skipped" and why in r["reason"]


def test_inference_markdown_and_plot(inference_run):
    out, output, _ = inference_run
    md = (out / "bench.md").read_text()
    assert "| backend | precision | input | batch | model-only ms |" in md
    assert "| torch (baseline) | fp32 | 64x64 | 1 |" in md and "| onnxruntime | int8 | 64x64 | 2 |" in md
    assert "skipped: fp16 needs a CUDA GPU" in md
    assert "Accuracy on 2 image(s) of `synthetic`" in md
    assert "threads: torch 1, onnxruntime intra-op 1" in md
    assert "| 64x64 | " in md.split("Model FLOPs per image")[1] and "Measured GEMM peak" in md
    assert "% int8)" in md and "% fp32)" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "bench.png").exists()
        assert "matplotlib is not installed" in output
    else:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --profile: the dominant operators of each measured variant
    prof = (out / "profile.md").read_text()
    assert "## torch fp32 64x64 batch 1 (torch.profiler" in prof
    assert "## onnxruntime int8 64x64 batch 1 (onnxruntime" in prof
    report = json.loads((out / "bench.json").read_text())
    assert len(report["profiles"]) == 4 + BF16_CPU and all(p["ops"] for p in report["profiles"])
    # exports were made into OUT/exports, with the records that let the next run reuse them
    assert sorted(p.name for p in (out / "exports").glob("*.onnx")) == [
        "fp32_64x64_b2.onnx", "int8-dynamic_64x64_b2.onnx", "int8_64x64_b2.onnx"]


def test_flops_per_stage_scale_with_the_input(world_model_dir):
    """Convolutions cost exactly 4x at twice the side; attention grows faster than the pixels, the text part
    slower. A stage read from the wrong module would break one of these."""
    from ifseg_deploy.bench.flops import count_flops
    from ifseg_deploy.runtime.backends.torch import TorchBackend

    backend = TorchBackend.from_file(world_model_dir)
    small, large = count_flops(backend, (64, 64)), count_flops(backend, (128, 128))
    assert large["resnet"] == 4 * small["resnet"] > 0
    assert small["encoder"] < large["encoder"] < 16 * small["encoder"]
    assert large["decoder"] > 4 * small["decoder"] > 0
    assert large["total"] == pytest.approx(sum(large[k] for k in ("resnet", "encoder", "decoder", "head_refine")))


def test_compile_adds_a_twin_of_every_torch_row(world_model_dir):
    from ifseg_deploy.bench.variants import plan_rows

    rows = plan_rows([(64, 64)], [1], ["torch", "onnxruntime"], ["fp32", "bf16"], "cpu", world_model_dir, True)
    names = sorted(r.name for r in rows if r.backend == "torch")
    assert names == ["torch bf16", "torch bf16 compiled", "torch fp32", "torch fp32 compiled"]
    assert not any(r.compiled for r in rows if r.backend != "torch")


def test_exports_are_reused_and_given_files_are_used(inference_run, world_model_dir):
    out, _, _ = inference_run
    fp32 = out / "exports" / "fp32_64x64_b2.onnx"
    runner = CliRunner()
    # the same model directory again: the export is reused, not redone
    result = runner.invoke(cli, ["bench", "--model", str(world_model_dir), "--backends", "onnxruntime", "--precisions",
                                 "fp32", "--sizes", SIZE, "--batch", "1,2", "--warmup", "0", "--iters", "1",
                                 "--threads", "1", "--device", "cpu", "--no-plot", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"reusing {fp32}" in result.output
    # a given .onnx file is used as is; its fixed size is the default size
    out2 = out.parent / "given"
    result = runner.invoke(cli, ["bench", "--model", str(world_model_dir), "--model", str(fp32), "--backends",
                                 "onnxruntime", "--precisions", "fp32", "--warmup", "0", "--iters", "1", "--threads",
                                 "1", "--no-plot", "--out", str(out2)])
    assert result.exit_code == 0, result.output
    report = json.loads((out2 / "bench.json").read_text())
    ort = _rows(report, backend="onnxruntime")[0]
    assert ort["source"] == str(fp32) and ort["size"] == [64, 64] and ort["status"] == "ok"
    assert not (out2 / "exports").exists()


def test_preset_builds_a_random_model(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--preset", "tiny", "--backends", "torch", "--precisions", "fp32",
                                      "--sizes", "32x48", "--warmup", "0", "--iters", "1", "--threads", "1",
                                      "--no-plot", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    conf = json.loads((tmp_path / "model" / "config.json").read_text())
    assert conf["metadata"]["random_weights"]["preset"] == "tiny"
    assert conf["categories"] == list(DEFAULT_CATEGORIES)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["model"]["random_weights"]["preset"] == "tiny"
    assert [r["size"] for r in report["rows"]] == [[32, 48]]
    assert "random weights" in " ".join(report["notes"])
    assert not (tmp_path / "bench.png").exists()


def test_accuracy_compares_each_image_with_the_baseline(world_model_dir):
    """mIoU per variant and the share of pixels it labels as the baseline did, image by image. The variant here
    is the model without the kNN refinement, listed before the baseline."""
    from ifseg_deploy.bench.quality import accuracy
    from ifseg_deploy.bench.variants import Loaded, Row
    from ifseg_deploy.evaluation.evaluate import evaluate
    from ifseg_deploy.evaluation.registry import get_dataset
    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.runtime.backends.torch import TorchBackend
    from ifseg_deploy.runtime.segmenter import Segmenter

    adapted = AdaptedModel.from_pretrained(world_model_dir)
    backends = {"paper": TorchBackend(adapted, "cpu", (3, 25)), "none": TorchBackend(adapted, "cpu", (1, 0))}
    size = (48, 48)
    rows = [Row("torch", "fp32", size, 1, key=("none",)), Row("torch", "fp32", size, 1, baseline=True, key=("paper",))]
    loaded = {(k,): Loaded(b, 0.0, None, k) for k, b in backends.items()}
    dataset = get_dataset("synthetic", None, num_scenes=3)
    acc = accuracy(rows, loaded, dataset, limit=3, echo=lambda m: None)

    segs = {k: Segmenter(b, short_side=48) for k, b in backends.items()}
    same = pixels = 0
    for i in range(3):
        image, _ = dataset.load(i)
        a, b = segs["paper"](image).labels, segs["none"](image).labels
        same, pixels = same + int((a == b).sum()), pixels + a.size
    assert 0 < same < pixels  # the two differ somewhere (else this test could not tell)
    variant = acc[(("none",), size)]
    assert variant["pixel_agreement_with_baseline"] == same / pixels
    assert acc[(("paper",), size)]["pixel_agreement_with_baseline"] == 1.0
    assert variant["images"] == 3 and variant["dataset"] == "synthetic"
    assert variant["mIoU"] == evaluate(segs["none"], dataset, progress=False)["mIoU"]


# -- the other modes ----------------------------------------------------------------------------------------------
def test_mode_adapt_reports_samples_per_second_and_data_share(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--mode", "adapt", "--preset", "tiny", "--classes", "4", "--batch",
                                      "1", "--iters", "1", "--warmup", "0", "--threads", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "adapt.json").read_text())
    r = report["result"]
    assert report["mode"] == "adapt" and r["preset"] == "tiny" and r["classes"] == 4 and r["batch"] == 1
    assert r["samples_per_s"] > 0 and 0 < r["data_share"] < 1
    assert set(r["phase_ms"]) == {"data", "forward", "backward", "optimizer"}
    md = (tmp_path / "adapt.md").read_text()
    assert "| samples/s | step ms | data share |" in md


def test_mode_kernel_reports_each_implementation(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--mode", "kernel", "--classes", "4", "--batch", "1", "--iters",
                                      "1", "--warmup", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "kernel.json").read_text())
    res = report["result"]["results"]
    assert {"triton", "torch", "torch.compile", "official"} <= set(res)
    # measured against the benchmark's float64 composition, not against itself
    assert res["torch"]["status"] == "ok" and 0 < res["torch"]["max_abs_diff_fwd"] < 1e-5
    assert res["official"]["status"] == "ok"
    assert "| implementation | status |" in (tmp_path / "kernel.md").read_text()


# -- command-line errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--preset", "tiny", "--model", "."], "either --preset"),
    ([], "give --model"),
    (["--preset", "tiny", "--backends", "torch,tensorflow"], "unknown backend 'tensorflow'"),
    (["--preset", "tiny", "--precisions", "fp8"], "unknown precision 'fp8'"),
    (["--preset", "tiny", "--sizes", "big"], "HEIGHTxWIDTH"),
    (["--preset", "tiny", "--batch", "0"], ">= 1"),
    (["--model", ".", "--bpe-dir", "."], "--bpe-dir goes with --preset"),
    (["--model", ".", "-c", "a, b"], "--categories goes with --preset"),
    (["--preset", "tiny", "--root", "."], "--root goes with --dataset"),
    (["--mode", "adapt", "--model", "."], "give --preset, not --model"),
    (["--preset", "tiny", "--device", "tpu"], "--device must be"),
    (["--preset", "tiny", "--dataset", "nonesuch"], "unknown dataset"),
])
def test_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["bench", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_model_errors(tmp_path, world_model_dir):
    runner = CliRunner()
    # an exported file without the model directory: no baseline
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    result = runner.invoke(cli, ["bench", "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not an adapted-model directory" in result.output
    # a model whose categories are not the dataset's
    result = runner.invoke(cli, ["bench", "--preset", "tiny", "-c", "cat, dog", "--dataset", "synthetic",
                                 "--backends", "torch", "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "do not match" in result.output


def test_gpu_check_script_parses_and_refuses_without_a_gpu(tmp_path):
    """The one-command GPU check cannot run here; it must still be valid bash and say why it stops."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: run the script itself")
    result = subprocess.run(["bash", str(script), str(tmp_path / "gpu")], capture_output=True, text=True,
                            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr, result.stderr
