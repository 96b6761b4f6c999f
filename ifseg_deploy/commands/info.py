"""``ifseg-deploy info``: the model presets and which optional parts (CUDA, ONNX Runtime, TensorRT...) work."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command(short_help="Model presets and which optional parts (CUDA, ONNX Runtime, TensorRT...) work.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--no-params",
    is_flag=True,
    help="Skip counting parameters of each preset (that builds each model on the meta device).",
)
def info(as_json: bool, no_params: bool) -> None:
    """Show model presets and which optional parts (torch, CUDA, Triton, ONNX, ONNX Runtime,
    TensorRT Model Optimizer, TensorRT, pycuda) are installed and usable."""
    from ..envinfo import collect

    report = collect(with_params=not no_params)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=False))
    else:
        click.echo(format_report(report))


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.1f}M"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_report(report: dict[str, Any]) -> str:
    """Human-readable form of :func:`ifseg_deploy.envinfo.collect`'s report."""
    py = report["python"]
    lines = [
        f"ifseg-deploy {report['ifseg_deploy']['version']}",
        f"python {py['version']} ({py['executable']}) on {py['platform']}",
        "",
        "Model presets",
        *_preset_lines(report),
        "",
        "Optional parts",
    ]
    rows: list[list[str]] = []
    notes: list[str] = []
    for name, c in report["components"].items():
        rows.append([name, _component_status(name, c), c.get("purpose", "")])
        if name == "torch" and c["status"] == "installed":
            notes += _cuda_notes(c)
        if name == "onnxruntime" and c["status"] == "installed":
            notes += _provider_notes(c)
    lines += _table(rows)
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def _preset_lines(report: dict[str, Any]) -> list[str]:
    if report.get("presets_error"):
        return [f"  unavailable: {report['presets_error']}"]
    if not report["presets"]:
        return ["  (none registered)"]
    rows = [["name", "d_model", "ffn_dim", "heads", "enc", "dec", "resnet", "params"]]
    for name, p in report["presets"].items():
        layers = p.get("resnet_layers")
        resnet = p.get("resnet_type") or ""
        if layers:
            resnet = f"{resnet} ({','.join(str(x) for x in layers)})".strip()
        rows.append([name, str(p.get("d_model")), str(p.get("ffn_dim")), str(p.get("heads")),
                     str(p.get("encoder_layers")), str(p.get("decoder_layers")), resnet,
                     _fmt_params(p.get("approx_params"))])
    lines = _table(rows)
    for n, p in report["presets"].items():
        if p.get("approx_params_error"):
            lines.append(f"  params of {n}: {p['approx_params_error']}")
    return lines


def _component_status(name: str, c: dict[str, Any]) -> str:
    status = c["status"]
    if status == "installed":
        shown = c.get("version") or "installed (version unknown)"
        if c.get("distribution") and c["distribution"] != name:
            shown += f" ({c['distribution']})"
        return shown
    if status == "error":
        return f"error: {c.get('error')}"
    return "not installed"


def _cuda_notes(c: dict[str, Any]) -> list[str]:
    if "cuda_error" in c:
        return [f"  CUDA: error: {c['cuda_error']}"]
    if c.get("cuda_available"):
        return [f"  CUDA device {d['index']}: {d['name']} (compute capability {d['compute_capability']})"
                for d in c.get("devices", [])]
    build = f"CUDA {c['cuda_build']} build" if c.get("cuda_build") else "CPU-only build"
    return [f"  CUDA: not available (torch is a {build})"]


def _provider_notes(c: dict[str, Any]) -> list[str]:
    if "providers_error" in c:
        return [f"  onnxruntime providers: error: {c['providers_error']}"]
    notes = ["  onnxruntime providers listed: " + ", ".join(c.get("providers_listed", []))]
    if c.get("providers_usable") is not None:
        notes.append("  onnxruntime providers usable: " + (", ".join(c["providers_usable"]) or "none"))
        for p, why in c.get("providers_unusable", {}).items():
            notes.append(f"    {p}: not usable ({why})")
    if c.get("providers_note"):
        notes.append(f"  onnxruntime providers usable: {c['providers_note']}")
    return notes
