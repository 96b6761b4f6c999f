"""What the machine is and does while a benchmark runs: host memory of this process (RSS and its peak), CPU
time by kind (this process, other processes, the hypervisor) and a description of the machine."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
from typing import Any


# -- host memory --------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process (MiB), where /proc is available."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0: ``5`` into /proc/self/clear_refs), so
    the next :func:`peak_rss_mb` is the peak since now. False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak RSS (MiB) since the last successful :func:`reset_peak_rss` (VmHWM), else since the process started
    (``getrusage``)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there
            kb //= 1024
    return kb / 1024


# -- machine ------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Where and when: date, CPU model, core count, load averages, memory, GPU (if torch sees one)."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": load_average(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_compute_capability"] = ".".join(str(x) for x in torch.cuda.get_device_capability(0))
    for mod in ("onnxruntime", "onnx", "modelopt", "tensorrt"):
        info[mod] = _version(mod)
    # settings that change CPU timings: the allocator (glibc malloc's mmap / trim thresholds, a preloaded
    # jemalloc / tcmalloc) and the OpenMP / MKL thread pools
    info["env"] = {k: v for k, v in sorted(os.environ.items())
                   if k.startswith(("MALLOC_", "OMP_", "MKL_", "KMP_", "GOMP_")) or k == "LD_PRELOAD"}
    return info


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    dist = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime"), "modelopt": ("nvidia-modelopt",),
            "tensorrt": ("tensorrt", "tensorrt-cu12")}.get(module, (module,))
    for d in dist:
        try:
            return version(d)
        except PackageNotFoundError:
            continue
    return None


# -- contention -----------------------------------------------------------------------------------------------------
def cpu_jiffies() -> tuple[int, int, int, int, int, int] | None:
    """(all jiffies of all CPUs, busy jiffies, steal jiffies, this process's user jiffies, its kernel jiffies,
    unused 0) from /proc, or None where /proc is missing. See :func:`cpu_split`."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    fields += [0] * (8 - len(fields))
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    steal = fields[7]
    return total, total - idle - steal, steal, int(own[11]), int(own[12]), 0  # utime, stime: fields 14, 15


CPU_KEYS = ("all", "other", "steal", "self_user", "self_kernel")


def cpu_split(start: tuple[int, ...] | None, end: tuple[int, ...] | None) -> dict[str, float] | None:
    """Jiffies between two :func:`cpu_jiffies` readings: ``all`` (every CPU, busy or idle), ``other`` (busy in
    other processes), ``steal`` (taken by the hypervisor), ``self_user`` / ``self_kernel`` (this process). Sum
    over calls; ``other / all * cores`` = cores other processes kept busy; ``self_kernel / (self_user +
    self_kernel)`` = the share of this process's CPU time spent in the kernel (page faults of fresh memory...)."""
    if start is None or end is None:
        return None
    d_all, d_busy, d_steal, d_user, d_sys, _ = (e - s for s, e in zip(start, end))
    return {"all": float(d_all), "other": float(max(0, d_busy - d_user - d_sys)), "steal": float(d_steal),
            "self_user": float(d_user), "self_kernel": float(d_sys)}
