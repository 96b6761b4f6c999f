"""Markdown tables and the PNG plot of benchmark reports (the JSON is the source of truth; these render it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _f2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cpu(c: dict[str, Any]) -> str:
    others = (c.get("other_processes_cores") or 0) + (c.get("steal_cores") or 0)
    if c.get("own_cores") is None:
        return "-"
    return f"{_f2(c.get('own_cores'))} ({_pct(c.get('own_kernel_share'), 0)}) / {others:.2f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _loads(x: list[float] | None) -> str:
    return "-" if not x else " / ".join(str(v) for v in x)


def header_lines(report: dict[str, Any]) -> list[str]:
    m, st = report["machine"], report.get("settings", {})
    load = m.get("load_average_1_5_15")
    lines = [
        f"- date: {m['date']}",
        f"- machine: {m['cpu']}, {m['cpu_count']} core(s), {m.get('memory_gib')} GiB"
        + (f", GPU {m['gpu']} (compute capability {m.get('gpu_compute_capability')})" if m.get("gpu") else ", no GPU")
        + (f"; load average {_loads(st.get('load_average_at_start'))} at the start of the timing, "
           f"{_loads(load)} at the end (1 / 5 / 15 min)" if load else ""),
        f"- software: python {m['python']}, torch {m['torch']}, onnxruntime {m.get('onnxruntime') or '-'}, "
        f"nvidia-modelopt {m.get('modelopt') or '-'}, tensorrt {m.get('tensorrt') or '-'}",
    ]
    if "refinement" in st:
        spin = "" if "ort_spinning" not in st else f" (spinning {'on' if st['ort_spinning'] else 'off'})"
        lines.append(f"- device {st['device']}; threads: torch {st['threads']}, onnxruntime intra-op "
                     f"{st['ort_intra_op_threads']}{spin}; {st['warmup']} warm-up + {st['iters']} timed rounds, "
                     f"interleaved; kNN refinement k={st['refinement'][0]} x{st['refinement'][1]}")
    elif "threads" in st:
        lines.append(f"- device {st['device']}; torch threads {st['threads']}; {st['warmup']} warm-up + "
                     f"{st['iters']} timed iterations")
    if st.get("calibration"):
        lines.append(f"- INT8 calibration: {st['calibration']}")
    lines.append(f"- command: `{report['command']}`")
    return lines


def inference_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = ["# ifseg-deploy bench: inference", ""] + header_lines(report) + [""]
    model = report.get("model", {})
    if model.get("random_weights"):
        rw = model["random_weights"]
        lines += [f"Model: random weights of preset `{rw['preset']}` ({rw['categories']} categories, tokenizer: "
                  f"{rw['tokenizer']}, seed {rw['seed']}).", ""]
    else:
        lines += [f"Model: `{model.get('dir')}`.", ""]
    lines += [
        "Latency in ms (mean / p50 / p90 / p99 over the timed rounds); `x` = speedup over PyTorch eager fp32 of the "
        "same size and batch in the same run (mean ratio; median of per-round ratios in brackets).",
        "",
        "| backend | precision | input | batch | model-only ms | model x | end-to-end ms | e2e x | img/s (e2e) "
        "| MiB load + 1st call (process peak) | labels = fp32 | mIoU | cores: own (kernel share) / others |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}"
        head = f"| {r['backend']}{' (baseline)' if r['baseline'] else ''} | {r['precision']} | {size} | {r['batch']} "
        if r["status"] != "ok":
            lines.append(head + f"| {r['status']}: {r['reason']} | | | | | | | | |")
            continue
        mo, e2 = r["model"], r["e2e"]
        ratio = r.get("ratio") or {}
        rm, re_ = ratio.get("model") or {}, ratio.get("e2e") or {}
        mem = r.get("memory") or {}
        agr = r.get("agreement") or {}
        acc = r.get("accuracy") or {}
        lat = lambda st: " / ".join(_ms(st[k]) for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms"))  # noqa: E731
        agree = "-" if r["baseline"] else _pct(agr.get("label_agreement"))
        if agr and agr.get("baseline_distinct_labels") == 1 and not r["baseline"]:
            agree += " (1 label)"
        miou = "-" if acc.get("mIoU") is None else f"{acc['mIoU']:.3f}"
        lines.append(
            head + f"| {lat(mo)} | {_x(rm.get('speedup'))} ({_x(rm.get('speedup_paired_median'))}) | {lat(e2)} "
            f"| {_x(re_.get('speedup'))} ({_x(re_.get('speedup_paired_median'))}) | {e2['throughput_ips']:.2f} "
            f"| {_mb(mem.get('rss_load_mb'))} + {_mb(mem.get('rss_first_call_mb'))} ({_mb(mem.get('rss_peak_mb'))}) "
            f"| {agree} | {miou} "
            f"| {_cpu(r.get('cpu') or {})} |")
    acc_rows = [r for r in rows if r.get("accuracy")]
    if acc_rows:
        a0 = acc_rows[0]["accuracy"]
        lines += ["", f"Accuracy on {a0['images']} image(s) of `{a0['dataset']}` (each image at its own size, as "
                      "`ifseg-deploy eval`):", "",
                  "| backend | precision | input | mIoU | mAcc | aAcc | pixels = fp32 labels |",
                  "|---|---|---|---|---|---|---|"]
        seen = set()
        for r in acc_rows:
            k = (r["backend"], r["precision"], tuple(r["size"]))
            if k in seen:
                continue
            seen.add(k)
            a = r["accuracy"]
            f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(f"| {r['backend']} | {r['precision']} | {r['size'][0]}x{r['size'][1]} | {f(a['mIoU'])} "
                         f"| {f(a['mAcc'])} | {f(a['aAcc'])} | {_pct(a['pixel_agreement_with_baseline'])} |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot_inference(report: dict[str, Any], path: str | Path) -> str | None:
    """Bar chart of mean latency (model-only and end-to-end, p90 as whiskers) per measured row, with the speedup
    over the baseline. Returns None when written, or a note saying why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return "no PNG plot: matplotlib is not installed (pip install 'ifseg-deploy[bench]')"
    rows = [r for r in report["rows"] if r["status"] == "ok" and "model" in r]
    if not rows:
        return "no PNG plot: no row was measured"
    labels = [f"{r['backend']} {r['precision']}\n{r['size'][0]}x{r['size'][1]} b{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    w = 0.38
    for off, key, name in ((-w / 2, "model", "model-only"), (w / 2, "e2e", "end-to-end")):
        means = [r[key]["mean_ms"] for r in rows]
        err = [[0 for _ in rows], [r[key]["p90_ms"] - r[key]["mean_ms"] for r in rows]]
        err[1] = [max(0.0, e) for e in err[1]]
        bars = ax.bar([x + off for x in xs], means, w, yerr=err, capsize=3, label=name)
        for b, r in zip(bars, rows):
            sp = ((r.get("ratio") or {}).get(key) or {}).get("speedup_paired_median")
            if sp is not None and not r["baseline"]:
                ax.annotate(f"{sp:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("latency per call, ms (mean; whisker: p90)")
    m = report["machine"]
    dev = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    ax.set_title(f"ifseg-deploy bench on {dev}\nlabels: speedup over PyTorch eager fp32 in the same run (median of "
                 "per-round ratios)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return None


def adapt_markdown(report: dict[str, Any]) -> str:
    r = report["result"]
    lines = ["# ifseg-deploy bench: adaptation throughput", ""] + header_lines(report) + [
        "",
        f"Preset `{r['preset']}` (random weights), {r['classes']} classes, batch {r['batch']}, {r['steps']} timed "
        f"steps on {r['device_name']} ({r['precision']}, word-map kernel `{r['kernel']}`, loss `{r['loss']}`, "
        f"{r['torch_threads']} torch thread(s)).",
        "",
        "| samples/s | step ms | data share | " + " | ".join(f"{k} ms" for k in r["phase_ms"]) + " |",
        "|---|---|---|" + "---|" * len(r["phase_ms"]),
        f"| {r['samples_per_s']:.2f} | {_ms(r['step_ms'])} | {_pct(r['data_share'], 1)} | "
        + " | ".join(_ms(v) for v in r["phase_ms"].values()) + " |",
        "",
        "data = category grids + word-map embeddings + 512x512 targets, made on the model's device each step.",
    ]
    return "\n".join(lines) + "\n"


def kernel_markdown(report: dict[str, Any]) -> str:
    r = report["result"]
    c = r["config"]
    lines = ["# ifseg-deploy bench: word-map kernel", ""] + header_lines(report) + [
        "",
        f"B={c['batch']} M={c['classes']} d={c['dim']} {c['dtype']} on {r['device']} (torch {r['torch']}, triton "
        f"{r['triton']}). Mode: {r['mode']}.",
        "",
        "| implementation | status | max abs diff fwd | max rel diff grads | fwd us | fwd+bwd us | GB/s | x vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in r["results"].items():
        if e.get("status") != "ok":
            lines.append(f"| {name} | {e.get('status')} | | | | | | |")
            continue
        us = lambda v: "-" if v is None else f"{v * 1e3:.1f}"  # noqa: E731
        lines.append(f"| {name} | ok | {e['max_abs_diff_fwd']:.3g} | {max(e['max_rel_diff_grads']):.2g} "
                     f"| {us(e.get('ms_fwd'))} | {us(e.get('ms_fwd_bwd'))} | "
                     f"{'-' if e.get('gbps_fwd') is None else format(e['gbps_fwd'], '.0f')} "
                     f"| {_x(e.get('speedup_vs_torch_fwd'))} |")
    if "copy" in r:
        lines.append(f"| copy (reference) | ok | | | {r['copy']['ms'] * 1e3:.1f} | | {r['copy']['gbps']:.0f} | |")
    lines += ["", f"Bytes: {r['bytes_formula']}"]
    return "\n".join(lines) + "\n"
