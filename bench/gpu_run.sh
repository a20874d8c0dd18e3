#!/usr/bin/env bash
# The GPU benchmark run recorded in BENCHMARKS.md: run on a CUDA machine from the repository root, with
# the wheels of zarr, plotly, pyhessian and hessian-eigenthings in .whl/ when they are not installed.
# Writes JSON results into ${OUT:-bench-out}.
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} MODESCAPE_PROGRESS=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
timeout 70 python3 bench/evaluate.py --device cuda --points 256 --repeats 2 --json-out "$OUT/evaluate_cuda.json"
timeout 150 python3 bench/hessian.py --device cuda --json-out "$OUT/hessian_cuda.json"
