#!/usr/bin/env bash
# The GPU tier on a machine with CUDA, in one command (about 5 minutes):
#
#   bash tests/gpu/run.sh [OUT_DIR]
#
# Runs `pytest -m gpu` from this checkout with whatever Python has torch and CUDA, writes the
# log and a JUnit XML to OUT_DIR (default: $OUT, else runs/gpu-tier), and prints the machine.
# Packages the machine lacks can come as wheels in .whl/ (tests/gpu/wheels.sh makes them on a
# machine with a package registry); they are installed into a temporary folder, not the system.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-runs/gpu-tier}}
mkdir -p "$out"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rescue-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/rescue-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RESCUE_EVAL_CACHE=${RESCUE_EVAL_CACHE:-/tmp/rescue-eval-gpu-cache}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} | tee "$out/machine.txt"
"$PY" -m pytest -m gpu tests/gpu -v -p no:cacheprovider --junitxml="$out/gpu-tier.xml" 2>&1 | tee "$out/gpu-tier.log"
exit "${PIPESTATUS[0]}"
