"""Image-free adaptation: the artificial data, the training loop, checkpoints, resumption and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.bpe import write_tiny_bpe
from helpers.ofa import tiny_config, write_fairseq_checkpoint

from ifseg_deploy.adapt import AdaptationInterrupted, AdaptConfig, adapt
from ifseg_deploy.adapt.data import ArtificialMaps
from ifseg_deploy.adapt.trainer import cosine_factor
from ifseg_deploy.cli import cli
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.tokenizer import OFATokenizer

CATS = ["floor", "wall", "person"]


def fast_config(**kw) -> AdaptConfig:
    # An 8x8 word-map grid keeps CPU steps at tens of milliseconds; the paper's 32x32 is the default.
    base = dict(steps=12, batch_size=2, lr=3e-3, wordmap_size=8, grid_max=8, target_size=64, checkpoint_every=5,
                log_every=2, seed=3)
    return AdaptConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapt")
    write_tiny_bpe(root / "BPE")
    rows = OFATokenizer.from_dir(root / "BPE").num_embeddings
    cfg = tiny_config(rows, d_model=32, ffn_dim=64, heads=2, encoder_layers=1, decoder_layers=1)
    return write_fairseq_checkpoint(root / "ofa_random.pt", cfg, seed=11)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return AdaptedModel.from_pretrained(path).model.state_dict()


def crash_at(n: int):
    """An ``on_step`` callback that dies at step ``n`` without saving, as a killed process would."""
    def on_step(step: int, info: dict) -> None:
        if step == n:
            raise RuntimeError(f"simulated crash at step {step}")
    return on_step


# -- artificial data ------------------------------------------------------------------------------------------
def test_grid_sizes_are_uniform_over_1_to_32():
    maps = ArtificialMaps(num_classes=5, grid_max=32, seed=0)
    _, sizes = maps.sample(32 * 400)
    for axis in (0, 1):
        counts = torch.bincount(sizes[:, axis] - 1, minlength=32).double()
        assert sizes[:, axis].min() == 1 and sizes[:, axis].max() == 32
        expected = counts.sum() / 32
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 61.1  # chi-square, 31 degrees of freedom, p = 0.001


def test_every_class_is_drawn_and_classes_are_uniform():
    maps = ArtificialMaps(num_classes=171, grid_max=32, seed=1)
    grid, sizes = maps.sample(64)
    used = torch.cat([grid[b, : sizes[b, 0], : sizes[b, 1]].flatten() for b in range(64)])
    counts = torch.bincount(used, minlength=171).double()
    assert (counts > 0).all() and grid.max() < 171
    expected = counts.sum() / 171
    assert ((counts - expected) ** 2 / expected).sum().item() < 240  # chi-square, 170 dof, p ~ 0.0003


def test_streams_are_seeded_and_ranks_take_slices_of_one_global_batch():
    one = ArtificialMaps(7, seed=5)
    ranks = [ArtificialMaps(7, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):  # the ranks stay in step with the 1-process stream, draw after draw
        grid, sizes = one.sample(4)
        parts = [m.sample(4) for m in ranks]
        assert all(p[0].shape == (2, 32, 32) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), grid)
        assert torch.equal(torch.cat([p[1] for p in parts]), sizes)
    assert not torch.equal(ArtificialMaps(7, seed=6).sample(4)[0], ArtificialMaps(7, seed=5).sample(4)[0])
    with pytest.raises(ValueError, match="divisible"):
        ranks[0].sample(3)
    with pytest.raises(ValueError, match="outside"):
        ArtificialMaps(7, rank=2, world_size=2)


def test_cosine_schedule_without_warmup():
    f = cosine_factor(2000)
    assert f(0) == 1.0 and abs(f(1000) - 0.5) < 1e-12 and f(2000) == 0.0


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps"), (dict(grid_max=40), "grid_max"), (dict(dropout=1.0), "dropout"),
    (dict(precision="fp8"), "precision"), (dict(lr=0), "lr"), (dict(batch_size=3), "divisible"),
])
def test_out_of_range_options(kw, message):
    with pytest.raises(ValueError, match=message):
        AdaptConfig(**kw).validate(world_size=2)


# -- the loop ---------------------------------------------------------------------------------------------------
def test_short_adaptation_lowers_the_loss_and_saves_a_loadable_model(ckpt, tmp_path):
    out = tmp_path / "model"
    result = adapt(ckpt, CATS, out, fast_config(steps=250, batch_size=4, log_every=10), progress=False)
    assert result.out_dir == out and result.steps_done == 250
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 251, 10))
    first = sum(r["loss"] for r in records[:3]) / 3  # about ln 3: chance for three classes
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert first > 0.9 and last < 0.7 * first, (first, last)
    assert records[-1]["lr"] == 0.0  # cosine to zero
    conf = json.loads((out / "adapt_config.json").read_text())
    assert conf["config"]["steps"] == 250 and conf["categories"] == CATS
    loaded = AdaptedModel.from_pretrained(out)
    assert loaded.categories == CATS and loaded.metadata["steps"] == 250
    assert not (tmp_path / "model.partial").exists()


def test_crashed_run_resumes_to_identical_weights(ckpt, tmp_path):
    cfg = fast_config()
    adapt(ckpt, CATS, tmp_path / "straight", cfg, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash at step 8"):
        adapt(ckpt, CATS, tmp_path / "resumed", cfg, progress=False, on_step=crash_at(8))
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / "resumed.partial" / "checkpoint.pt").is_file()  # saved at step 5
    adapt(ckpt, CATS, tmp_path / "resumed", cfg, progress=False, resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


def test_on_step_sees_every_step_with_the_logged_loss_and_lr(ckpt, tmp_path):
    seen: list[tuple[int, dict]] = []
    adapt(ckpt, CATS, tmp_path / "m", fast_config(steps=6, log_every=3), progress=False,
          on_step=lambda step, info: seen.append((step, info)))
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(i["loss"], torch.Tensor) and isinstance(i["grad_norm"], torch.Tensor) for _, i in seen)
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "m" / "metrics.jsonl").read_text().splitlines())}
    assert sorted(records) == [3, 6]
    for step, info in seen:
        assert info["lr"] == pytest.approx(3e-3 * cosine_factor(6)(step))  # the rate after the schedule's update
        if step in records:
            assert float(info["loss"]) == records[step]["loss"] and info["lr"] == records[step]["lr"]
            assert float(info["grad_norm"]) == records[step]["grad_norm"]


def test_the_throughput_benchmark_trains_with_the_trainers_step(ckpt, tmp_path):
    """``bench --mode adapt`` times the trainer's TrainStep (optimizer, clipping, scaler, cosine schedule): from the
    same start model, config and data seed it ends with the trainer's weights, bit for bit."""
    from ifseg_deploy.bench.adapt_throughput import train_and_time

    cfg = fast_config(steps=4, dropout=0.0, drop_path=0.0)  # dropout masks come from the global generator
    adapt(ckpt, CATS, tmp_path / "m", cfg, progress=False)
    trained = _weights(tmp_path / "m")
    model = AdaptedModel.unadapted_from_ofa(ckpt, CATS, seed=cfg.seed).model
    start = {k: v.clone() for k, v in model.state_dict().items()}
    phases = train_and_time(model, cfg, torch.device("cpu"), warmup=1, steps=3)
    assert set(phases) == {"data", "forward", "backward", "optimizer"} and all(v > 0 for v in phases.values())
    timed = model.state_dict()
    assert sum(not torch.equal(trained[k], start[k]) for k in trained) > 10  # training moved the weights
    for k in trained:
        assert torch.equal(timed[k], trained[k]), k


def test_paths_and_resume_are_checked(ckpt, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        adapt(ckpt, CATS, out, fast_config(), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        adapt(ckpt, CATS, tmp_path / "other", fast_config(), progress=False, resume=True)
    with pytest.raises(RuntimeError):
        adapt(ckpt, CATS, tmp_path / "x", fast_config(), progress=False, on_step=crash_at(6))
    with pytest.raises(FileExistsError, match="--resume"):
        adapt(ckpt, CATS, tmp_path / "x", fast_config(), progress=False)
    with pytest.raises(ValueError, match="different config"):
        adapt(ckpt, CATS, tmp_path / "x", fast_config(lr=2e-3), progress=False, resume=True)
    with pytest.raises(ValueError, match="different categories"):
        adapt(ckpt, ["floor", "wall"], tmp_path / "x", fast_config(), progress=False, resume=True)


def test_bad_categories_are_refused_before_anything_is_written(ckpt, tmp_path):
    from ifseg_deploy.checkpoints.errors import CheckpointError

    for cats in ([], ["wall", "Wall"]):
        with pytest.raises(CheckpointError):
            adapt(ckpt, cats, tmp_path / "m", fast_config(), progress=False)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ifseg_deploy", "adapt", *args]


def test_ctrl_c_saves_and_resume_finishes_identically(ckpt, tmp_path):
    common = ["--checkpoint", str(ckpt), "-c", ", ".join(CATS), "--steps", "60", "--batch-size", "2", "--lr", "1e-3",
              "--grid-max", "8", "--wordmap-size", "8", "--target-size", "64", "--checkpoint-every", "1000",
              "--log-every", "1", "--seed", "3", "--quiet"]
    out = tmp_path / "m"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*common, "--out", str(out)), env=env, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "m.partial" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and (tmp_path / "m.partial" / "checkpoint.pt").is_file()
    assert not out.exists()
    done = subprocess.run(_cli(*common, "--out", str(out), "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    straight = subprocess.run(_cli(*common, "--out", str(tmp_path / "s")), env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    a, b = _weights(out), _weights(tmp_path / "s")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_interrupt_flag_in_process(ckpt, tmp_path, monkeypatch):
    """The loop stops between steps when the signal flag is raised and says how to resume."""
    import ifseg_deploy.adapt.trainer as trainer

    real_sample = ArtificialMaps.sample
    calls = {"n": 0}

    def sample_then_interrupt(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_sample(self, batch)

    monkeypatch.setattr(trainer.ArtificialMaps, "sample", sample_then_interrupt)
    with pytest.raises(AdaptationInterrupted, match="step 4/12.*--resume"):
        adapt(ckpt, CATS, tmp_path / "m", fast_config(), progress=False)
    state = torch.load(tmp_path / "m.partial" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(ckpt, tmp_path):
    """Two gloo processes (2 samples each) end with the weights of one process on the same 4-sample batches:
    same data (one seeded stream, sliced per rank), gradients averaged by DDP. Dropout and drop path are off,
    since their masks are drawn per rank."""
    args = ["--checkpoint", str(ckpt), "-c", ", ".join(CATS), "--steps", "3", "--batch-size", "4", "--lr", "3e-3",
            "--dropout", "0", "--drop-path", "0", "--precision", "fp32", "--grid-max", "8", "--wordmap-size", "8",
            "--target-size", "32", "--checkpoint-every", "3", "--log-every", "1", "--seed", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "ifseg_deploy", "adapt", *args, "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    single = CliRunner().invoke(cli, ["adapt", *args, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    assert json.loads((tmp_path / "ddp" / "adapt_config.json").read_text())["world_size"] == 2
    assert AdaptedModel.from_pretrained(tmp_path / "ddp").categories == CATS

    ddp, one = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    start = AdaptedModel.unadapted_from_ofa(ckpt, CATS, seed=3).model.state_dict()
    assert ddp.keys() == one.keys()
    # Key biases (k_proj.bias, pos_k_linear.bias) add the same amount to every logit of a query's softmax: their
    # exact gradient is zero, the computed one is rounding noise, and Adam scales that noise up to lr-sized steps.
    compared = [k for k in one if one[k].is_floating_point() and not re.search(r"k_(proj|linear)\.bias$", k)]
    assert len(compared) > 50
    moved = max((one[k] - start[k]).abs().max().item() for k in compared)
    gap = {k: (ddp[k] - one[k]).abs().max().item() for k in compared}
    worst = max(gap, key=gap.get)
    assert moved > 1e-3  # training moved the weights: a data or gradient mismatch shows at this scale
    assert gap[worst] < 1e-5, (worst, gap[worst])  # fp32 reduction-order noise (measured: 2e-6)
