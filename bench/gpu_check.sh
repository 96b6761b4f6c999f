#!/usr/bin/env bash
# Everything GPU-side in one command, for one H100/H200 (or any CUDA GPU): about 5-8 minutes.
#
#   bash bench/gpu_check.sh [OUT]          # OUT defaults to gpu-check/; JSON + Markdown of every part land there
#
# 1. the Triton word-map kernel tests, compiled for the GPU (not the CPU interpreter);
# 2. the kernel's time and GB/s against the measured device-to-device copy bandwidth;
# 3. adaptation step time and the share spent making word maps: base preset, batch 16, bf16;
# 4. torch inference fp32 / bf16 / fp16, eager and torch.compile, at 512x683, with peak memory and % of the
#    measured GEMM peak.
# A part that fails is recorded in OUT/summary.md and the others still run; the exit status is that of the worst.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
status=0
summary="$OUT/summary.md"

"$PY" - <<'PY' || { echo "gpu_check: no CUDA GPU visible to torch" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY

{
    echo "# ifseg-deploy GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo unknown)"
    echo "- torch: $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
    echo "- triton: $("$PY" -c 'import triton; print(triton.__version__)' 2>/dev/null || echo 'not installed')"
    echo
} > "$summary"

run() {  # run NAME CMD...: time one part, keep its log, note its outcome
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "- $name: exit $rc after $((SECONDS - t0)) s (log: $name.log)" >> "$summary"
    tail -n 5 "$OUT/$name.log"
    if [[ $rc -ne 0 ]]; then status=$rc; fi
}

unset TRITON_INTERPRET
run kernel-tests "$PY" -m pytest -q tests/test_wordmap_kernel.py
run kernel-bench ifseg-deploy bench --mode kernel --device cuda --batch 16 --classes 150 --out "$OUT/kernel"
run adapt-bench ifseg-deploy bench --mode adapt --preset base --batch 16 --classes 150 --device cuda \
    --warmup 3 --iters 10 --out "$OUT/adapt"
run inference-bench ifseg-deploy bench --preset base --backends torch --precisions fp32,bf16,fp16 \
    --sizes 512x683 --batch 1 --warmup 3 --iters 20 --compile --peak --device cuda --out "$OUT/inference"

{
    echo
    for part in kernel adapt inference; do
        for md in "$OUT/$part"/*.md; do
            [[ -f "$md" ]] || continue
            echo; sed 's/^# /## /' "$md"
        done
    done
} >> "$summary"
echo "wrote $summary"
exit $status
