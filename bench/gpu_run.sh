#!/usr/bin/env bash
# GPU benchmark runs recorded in BENCHMARKS.md: run on a CUDA machine from the repository root, with
# the wheels of zarr, plotly, pyhessian and hessian-eigenthings in .whl/ when they are not installed.
#
#   bash bench/gpu_run.sh [evaluate] [hessian] [surface] [surface-autotune]   (default: hessian surface)
#
# Writes JSON results into ${OUT:-bench-out}. Each part has its own timeout so that one slow part
# leaves time for the rest (at most 6.5 minutes for the default parts, plus the machine's start).
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} MODESCAPE_PROGRESS=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
RESNET="--model resnet --model-args depth=20 --data random-cifar --data-args n_train=10000,n_test=10 --device cuda
        --bf16 --channels-last --batch-size 10000 --warmup --ref-points 8 --skip-ll"
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(hessian surface)
for part in "${parts[@]}"; do
  echo "== $part"
  case $part in
    evaluate) timeout 70 python3 bench/evaluate.py --device cuda --points 256 --repeats 2 --json-out "$OUT/evaluate_cuda.json" ;;
    hessian) timeout 240 python3 bench/hessian.py --device cuda --no-resnet-trace --json-out "$OUT/hessian_cuda.json" ;;
    # ResNet-20, 51 x 51 on 10,000 CIFAR-shaped inputs (issue 3's GPU target: under 30 s)
    surface) timeout 150 python3 bench/surface.py $RESNET --compile --profile 8 --json-out "$OUT/surface_resnet20_compile.json" ;;
    surface-autotune) timeout 300 python3 bench/surface.py $RESNET --compile-mode max-autotune-no-cudagraphs \
                        --json-out "$OUT/surface_resnet20_autotune.json" ;;
    *) echo "unknown part $part" ;;
  esac
done
