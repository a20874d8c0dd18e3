#!/usr/bin/env bash
# The GPU set in one call (issue 13): evaluator, surface, Hessian and a curve epoch, each under its own
# timeout (7.5 minutes at most in all), then one summary table. Run from the repository root:
#
#   bash bench/gpu_run.sh                 # on a CUDA machine: the full sizes recorded in BENCHMARKS.md
#   bash bench/gpu_run.sh --cpu           # the same parts at small sizes on the CPU (a rehearsal; timeouts
#                                         # x3 for a busy 2-core machine): checks that the script still runs
#   bash bench/gpu_run.sh [--cpu] PART... # only some of: evaluate surface hessian curve surface-autotune
#
# Wheels of zarr, plotly, pyhessian, hessian-eigenthings, loss-landscapes in .whl/ are installed first when
# present (a bare GPU machine without an index). JSON results go to ${OUT:-bench-out}; the surface part
# uses the compiled path (torch.compile, bf16, channels_last, a chunk of points per compiled call).
set -u
CPU=0 S=1  # S: the timeouts' factor (3 for the CPU rehearsal, which may share a busy machine)
if [ "${1:-}" = "--cpu" ]; then CPU=1 S=3; shift; fi
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} MODESCAPE_PROGRESS=0 PYTHONUNBUFFERED=1
# a compile cache of this run's own: a shared one can hold a half-written kernel of a concurrent compile
# (outside $OUT, which only holds results)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/modescape-inductor-$$}
if [ $CPU -eq 1 ]; then
  DEV=cpu
  echo "device: cpu (rehearsal at small sizes; $(nproc) cores)"
  SURFACE="--model cnn --grid 5 --precision bf16 --channels-last --compile --warmup --rounds 1 --block 8
           --ref-points 4 --skip-ll --skip-ref --json-out $OUT/surface.json"
  EVALUATE="--device cpu --points 8 --repeats 1 --json-out $OUT/evaluate.json"
  HESSIAN="--device cpu --models mlp --max-iter 10 --repeats 1 --no-resnet-trace --json-out $OUT/hessian.json"
  CURVE="--device cpu --parts curve --repeats 1 --points 5 --scale 0.1 --json-out $OUT/curve.json"
else
  DEV=cuda
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  # ResNet-20, 51 x 51 on 10,000 CIFAR-shaped inputs (issue 13's GPU target: 10 s)
  SURFACE="--model resnet --model-args depth=20 --data random-cifar --data-args n_train=10000,n_test=10
           --device cuda --precision bf16 --channels-last --compile --batch-size 10000 --warmup --ref-points 8
           --skip-ll --json-out $OUT/surface.json"
  EVALUATE="--device cuda --points 256 --repeats 2 --json-out $OUT/evaluate.json"
  HESSIAN="--device cuda --no-resnet-trace --json-out $OUT/hessian.json"
  CURVE="--device cuda --parts curve --repeats 2 --scale 5 --json-out $OUT/curve.json"
fi
$PY -c "import torch; print('torch', torch.__version__)"
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(evaluate surface hessian curve)
: > "$OUT/parts.tsv"
for part in "${parts[@]}"; do
  echo "== $part"
  t0=$(date +%s%N)
  case $part in
    evaluate) timeout $((60 * S)) $PY bench/evaluate.py $EVALUATE ;;
    surface) timeout $((150 * S)) $PY bench/surface.py $SURFACE ;;
    surface-autotune) timeout $((300 * S)) $PY bench/surface.py $SURFACE --compile-mode max-autotune-no-cudagraphs ;;
    hessian) timeout $((150 * S)) $PY bench/hessian.py $HESSIAN ;;
    curve) timeout $((90 * S)) $PY bench/connect.py $CURVE ;;
    *) echo "unknown part $part (use evaluate, surface, hessian, curve, surface-autotune)"; false ;;
  esac
  rc=$?
  printf '%s\t%s\t%s\n' "$part" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$OUT/parts.tsv"
done
$PY bench/gpu_summary.py "$OUT" "$DEV"
