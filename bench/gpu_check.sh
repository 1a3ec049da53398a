#!/usr/bin/env bash
# The short GPU acceptance run of issue 10 (serving speed), under 8 minutes by design on one
# H100/H200: engine targets, every optimisation on and off, a profile, the service end to end,
# and a compiled worker's cold start on a warm cache. Writes gpu_check.json and gpu_check.md,
# both saved after every part. Then, only with the time the SD 1.5 parts left, the optional SDXL
# part (issue 15): SDXL base's architecture at 1024x1024, OLSS-5 + CFG at batch 1 and 4
# (gpu_check_sdxl.json and .md).
#
#   PYTHON=/path/to/venv/bin/python bench/gpu_check.sh [OUT_DIR]   # default: bench/results
#
# PYTHON must have a CUDA build of torch (the default is python3 on PATH).
# The hard limit (GPU_CHECK_TIMEOUT_S, default 540 s) is for the whole script: the SD 1.5 run's
# own time budget (GPU_CHECK_BUDGET_S, 420 s) skips the parts that would start after it, and what
# was measured is already on disk. The SDXL part starts only when at least GPU_CHECK_SDXL_MIN_S
# (default 150 s) of the hard limit are left, whether or not the SD 1.5 part failed, and its own
# budget ends 30 s before the limit. GPU_CHECK_SDXL: auto (the default, as above), off, or only
# (the SDXL part alone, with the whole limit). The exit status is the first failed part's.
# On an H200 (2026-12-04, the plan before compile moved up) everything before the cold start took
# 318 s, which the run's 340 s limit then cut. Of it, from the run's own load, warm-up and level
# times: compile at batch 1 96 s of warm-up, the service about 105 s (two worker starts of 33 to
# 35 s), the six switches' loads and warm-ups 29 s plus their timed calls.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${1:-$root/bench/results}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
cd "$root"  # python -m bench.gpu_latency: bench/ and devtools/ are not in the installed package
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
limit="${GPU_CHECK_TIMEOUT_S:-540}"
sdxl="${GPU_CHECK_SDXL:-auto}"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "$python has no CUDA build of torch (set PYTHON)" >&2
    exit 2
}
if [[ "$sdxl" != only ]]; then
    timeout "$limit" "$python" -m bench.gpu_latency --gpu-check \
        --time-budget-s "${GPU_CHECK_BUDGET_S:-420}" --out "$out_dir/gpu_check.json" || {
        status=$?
        echo "SD 1.5 part ended with status $status" >&2
    }
fi
[[ "$sdxl" == off ]] && exit "$status"
left=$((limit - SECONDS))
if ((left < ${GPU_CHECK_SDXL_MIN_S:-150})); then
    echo "SDXL part skipped: ${left} s of the ${limit} s limit left" >&2
    exit "$status"
fi
timeout "$left" "$python" -m bench.gpu_latency --gpu-check --family sdxl \
    --time-budget-s "$((left - 30))" --out "$out_dir/gpu_check_sdxl.json" || {
    rc=$?
    echo "SDXL part ended with status $rc" >&2
    ((status)) || status=$rc
}
exit "$status"
