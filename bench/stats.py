"""Latency statistics of timed calls and their ratios to the baseline's."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

#: The latency figures every timed row carries (milliseconds), plus throughput (images per second).
LATENCY_KEYS = ("mean_ms", "p50_ms", "p90_ms", "p99_ms")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method), ``q`` in [0, 100]."""
    if not values:
        raise ValueError("no values")
    xs = sorted(float(v) for v in values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(times_ms: Sequence[float], images_per_call: int) -> dict[str, Any]:
    """mean / p50 / p90 / p99 / min / max / std of per-call times, and throughput = images per call / mean."""
    if not times_ms:
        raise ValueError("no timed runs")
    mean = statistics.fmean(times_ms)
    return {
        "mean_ms": mean,
        "p50_ms": percentile(times_ms, 50),
        "p90_ms": percentile(times_ms, 90),
        "p99_ms": percentile(times_ms, 99),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "std_ms": statistics.pstdev(times_ms) if len(times_ms) > 1 else 0.0,
        "throughput_ips": images_per_call / (mean / 1e3) if mean > 0 else None,
        "runs": len(times_ms),
        "times_ms": [float(t) for t in times_ms],
    }


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return float(value) / float(base)


def ratios_to_baseline(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Every figure of a stats dict divided by the baseline's (``value / baseline``: below 1 is faster for
    latencies, above 1 is more throughput), plus:

    * ``speedup`` = baseline mean / row mean (how many times faster than the baseline);
    * ``speedup_paired_median`` = median over rounds of baseline_i / row_i. Rounds are interleaved, so each
      pair saw the same machine load; this is the figure that drifting load disturbs least.
    """
    out: dict[str, Any] = {k: _ratio(row.get(k), base.get(k)) for k in (*LATENCY_KEYS, "throughput_ips")}
    out["speedup"] = _ratio(base.get("mean_ms"), row.get("mean_ms"))
    pairs = [b / r for b, r in zip(base.get("times_ms") or [], row.get("times_ms") or []) if r > 0]
    out["speedup_paired_median"] = statistics.median(pairs) if pairs else None
    return out
