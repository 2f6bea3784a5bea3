#!/usr/bin/env bash
# Every GPU measurement in one go, on a machine with CUDA, most important first:
#   throughput      224 px search step vs child step (bf16), the fp32 search step of `amp: auto`,
#                   and the child step under torch.compile against eager;
#   reward_precision gate rewards under TF32/bf16/fp16 against float64 (the `amp: auto` decision);
#   input_pipeline  synthetic JPEGs through both decoders, fed vs resident steps, ImageNet projection;
#   demo            the default `dsnas search` end to end, then the same with compile=true;
#   step_overhead   search-step time and memory against a child step;
#   latency_lut     a CUDA latency table against end-to-end latency;
#   search_nccl     with two or more GPUs, the demo under torchrun with NCCL.
# Each step has its own time limit and none stops the others; every step is skipped once the
# whole script's DEADLINE (seconds, default 540) would be passed. BENCHMARKS.md gets the new
# sections; logs, run folders and a copy of BENCHMARKS.md go to OUT (default: runs/cuda).
#
#     bash benchmarks/cuda.sh [OUT]
#     REHEARSE=1 bash benchmarks/cuda.sh /tmp/rehearsal   # the same steps, tiny, on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cuda}
PY=${PYTHON:-python}
DEADLINE=${DEADLINE:-540}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
step() {  # name, limit (s), command...: run under its limit, log, keep going on failure
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 20 ]; then echo "== $name: skipped, ${left} s left of the deadline"; status=1; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit $limit s): $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then echo "   ok in $((SECONDS - t0)) s"; else echo "   FAILED (exit $rc) after $((SECONDS - t0)) s, see $OUT/$name.log"; status=1; fi
    tail -n 6 "$OUT/$name.log"
}

if [ "${REHEARSE:-0}" = 1 ]; then  # every step on the CPU at toy sizes, results kept out of BENCHMARKS.md
    DEV=cpu NW=--no-write
    THROUGHPUT=(--batch 2 --reps 2) PRECISION=(--epochs 0 --batches 2 --batch 8) PIPELINE=(--images 48 --batch 8 --steps 2 --workers 2)
    DEMO=(--set epochs=2 --set warmup_epochs=0 --set search_epochs=1 --set train_limit=512 --set test_limit=256)
    OVERHEAD=(--reps 2) LUT=(--archs 2 --batches 1 --backends torch --repeats 3 --warmup 1)
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
    DEV=cuda NW=
    THROUGHPUT=(--compile) PRECISION=(--epochs 0 1 3) PIPELINE=() DEMO=() OVERHEAD=() LUT=(--batches 1 32 --backends torch)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
fi

step throughput 150 "$PY" benchmarks/throughput.py --device $DEV ${THROUGHPUT[@]+"${THROUGHPUT[@]}"} $NW
step reward_precision 90 "$PY" benchmarks/reward_precision.py --device $DEV ${PRECISION[@]+"${PRECISION[@]}"} $NW
step input_pipeline 150 "$PY" benchmarks/input_pipeline.py --device $DEV ${PIPELINE[@]+"${PIPELINE[@]}"} $NW
rm -rf "$OUT/demo" "$OUT/demo_compile" "$OUT/search_nccl"
step demo 60 "$PY" -m dsnas search --out "$OUT/demo" --set device=$DEV ${DEMO[@]+"${DEMO[@]}"}
step demo_compile 120 "$PY" -m dsnas search --out "$OUT/demo_compile" --set device=$DEV --set compile=true ${DEMO[@]+"${DEMO[@]}"}
step step_overhead 45 "$PY" benchmarks/step_overhead.py --device $DEV ${OVERHEAD[@]+"${OVERHEAD[@]}"} $NW
step latency_lut 60 "$PY" benchmarks/latency_lut.py --device $DEV ${LUT[@]+"${LUT[@]}"} $NW
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    step search_nccl 90 "$PY" -m torch.distributed.run --nproc-per-node 2 -m dsnas search --out "$OUT/search_nccl" --quiet
else
    echo "== search_nccl: skipped (fewer than two GPUs; NCCL needs a GPU per rank)"
fi
for run in demo demo_compile; do  # wall time of the two demos, for BENCHMARKS.md
    [ -f "$OUT/$run/metrics.json" ] && "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], 'top1', m['top1'], 'wall_s', m['wall_s'])" "$OUT/$run/metrics.json" "$run"
done
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
echo "total $SECONDS s"
exit $status
