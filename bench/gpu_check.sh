#!/usr/bin/env bash
# The short GPU acceptance run of issue 10 (serving speed), under 8 minutes by design on one
# H100/H200: engine targets, every optimisation on and off, a profile, the service end to end,
# and a compiled worker's cold start on a warm cache. Writes gpu_check.json and gpu_check.md.
# Then, only with the time the SD 1.5 parts left, the optional SDXL part (issue 15): SDXL base's
# architecture at 1024x1024, OLSS-5 + CFG at batch 1 and 4 (gpu_check_sdxl.json and .md).
#
#   bench/gpu_check.sh [OUT_DIR]      # default: bench/results
#
# The hard limit (GPU_CHECK_TIMEOUT_S, default 540 s) is for the whole script: the SD 1.5 run's
# own time budget (GPU_CHECK_BUDGET_S, 420 s) skips what is left of it before that, and what was
# measured is already on disk. The SDXL part starts only when at least GPU_CHECK_SDXL_MIN_S
# (default 150 s) of the hard limit are left, and gets what is left. GPU_CHECK_SDXL: auto (the
# default, as above), off, or only (the SDXL part alone, with the whole limit).
set -euo pipefail
out_dir="${1:-bench/results}"
mkdir -p "$out_dir"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
limit="${GPU_CHECK_TIMEOUT_S:-540}"
sdxl="${GPU_CHECK_SDXL:-auto}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [[ "$sdxl" != only ]]; then
    timeout "$limit" "$python" -m bench.gpu_latency --gpu-check \
        --time-budget-s "${GPU_CHECK_BUDGET_S:-420}" --out "$out_dir/gpu_check.json"
fi
[[ "$sdxl" == off ]] && exit 0
left=$((limit - SECONDS))
if ((left < ${GPU_CHECK_SDXL_MIN_S:-150})); then
    echo "SDXL part skipped: ${left} s of the ${limit} s limit left" >&2
    exit 0
fi
timeout "$left" "$python" -m bench.gpu_latency --gpu-check --family sdxl \
    --out "$out_dir/gpu_check_sdxl.json"
