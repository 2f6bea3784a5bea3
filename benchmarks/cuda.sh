#!/usr/bin/env bash
# Every GPU measurement in one go, on a machine with CUDA: the 224 px throughput (search step vs
# child step, and the fp32 search step of `amp: auto`), the search-step overhead, the gate-reward
# precision under TF32/bf16/fp16, a short end-to-end search with bf16 and torch.compile, and, with
# two or more GPUs, the same search under torchrun with NCCL. BENCHMARKS.md gets the new sections;
# logs and run folders go to OUT (default: runs/cuda).
#
#     bash benchmarks/cuda.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cuda}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
step() {  # name, command...: run, log, keep going on failure
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then echo "   ok in $((SECONDS - t0)) s"; else echo "   FAILED ($?), see $OUT/$name.log"; status=1; fi
    tail -n 4 "$OUT/$name.log"
}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
step throughput "$PY" benchmarks/throughput.py --device cuda
step step_overhead "$PY" benchmarks/step_overhead.py --device cuda
step reward_precision "$PY" benchmarks/reward_precision.py --device cuda --epochs 0 1 3
step search_compile "$PY" -m dsnas search --out "$OUT/search_compile" --set compile=true --set workers=4
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    step search_nccl "$PY" -m torch.distributed.run --nproc-per-node 2 -m dsnas search --out "$OUT/search_nccl" --quiet
else
    echo "== search_nccl: skipped (one GPU; NCCL needs a GPU per rank)"
fi
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
exit $status
