#!/usr/bin/env bash
# Every GPU measurement in one go, on a machine with CUDA, most important first:
#   throughput       224 px search step vs child step (bf16), the fp32 search step of `amp: auto`,
#                    then the child step under torch.compile against eager;
#   reward_precision gate rewards under fp32/TF32/bf16/fp16 against float64 (decides `amp: auto`
#                    and runtime.TF32);
#   channels_last    search and child steps with the former NCHW channel shuffle and the current one;
#   input_pipeline   GPU JPEG decoding against queued kernels, both decoders, fed vs resident steps;
#   determinism      what `deterministic: true` costs, and whether steps repeat bitwise with it;
#   demo             the default `dsnas search` end to end;
#   step_overhead    search-step time and memory against a child step;
#   latency_lut      a CUDA latency table against end-to-end latency;
#   demo_compile     the demo with compile=true;
#   search_nccl      with two or more GPUs, the demo under torchrun with NCCL.
#
# Results: two files in OUT (default runs/cuda), so that a GPU host which hands back only a few
# plain files hands back everything. results.tar holds every step's log and files (run folders
# without checkpoints, BENCHMARKS.md as the steps left it), appended as each step ends, so a step
# that dies or is stopped loses only itself; summary.txt has one line per step and its figures.
# Everything else goes to a scratch folder, deleted at the end.
#
# Time plan: the whole script ends within DEADLINE seconds (default 470, about 8 minutes of GPU
# time). Each step runs under its own limit, sized from the estimate written beside it for an
# H100-class GPU with 16 CPU cores (each step spends ~8 s starting Python and importing torch),
# and never past the deadline; a step that would start with under MIN_LEFT s left (default 20)
# is skipped. The estimates add up to about 455 s.
#
# The CPU rehearsal runs every step at toy sizes under limits of its own, two to four times what
# each took on a shared 2-core machine (620 s in all, at a load average of 9), and a deadline of
# 1200 s.
#
#     bash benchmarks/cuda.sh [OUT]
#     REHEARSE=1 bash benchmarks/cuda.sh /tmp/rehearsal   # the same steps, tiny, on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cuda}
PY=${PYTHON:-python3}
REHEARSE=${REHEARSE:-0}
[ "$REHEARSE" = 1 ] && DEADLINE=${DEADLINE:-1200} || DEADLINE=${DEADLINE:-470}
MIN_LEFT=${MIN_LEFT:-20}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsnas-cuda.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
ARCHIVE=$OUT/results.tar SUMMARY=$OUT/summary.txt
rm -f "$ARCHIVE" "$SUMMARY"
tar -cf "$ARCHIVE" -T /dev/null  # an empty archive that every step appends to
status=0

say() { echo "$*" | tee -a "$SUMMARY"; }

step() {  # name, limit on the GPU (s), limit in the CPU rehearsal (s), command...
    local name=$1 limit=$2; shift 2
    [ "$REHEARSE" = 1 ] && limit=$1
    shift
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt "$MIN_LEFT" ]; then say "== $name: skipped, ${left} s left before the deadline"; status=1; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    mkdir -p "$WORK/$name"
    echo "== $name (limit $limit s): $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=5 "$limit" "$@" >"$WORK/$name/log.txt" 2>&1 || rc=$?
    local took=$((SECONDS - t0))
    case $rc in
        0) say "== $name: ok in $took s (limit $limit s)" ;;
        124|137) say "== $name: STOPPED at its limit of $limit s"; status=1 ;;
        *) say "== $name: FAILED (exit $rc) after $took s"; status=1 ;;
    esac
    # the figures: JSON lines and table rows the step printed, else the end of its log
    { grep -E '^(\{|\| )' "$WORK/$name/log.txt" | tail -n 12 || tail -n 4 "$WORK/$name/log.txt"; } | cut -c1-300 | sed 's/^/   /' | tee -a "$SUMMARY"
    tar -rf "$ARCHIVE" -C "$WORK" --exclude='*.pt' "$name"
    tar -uf "$ARCHIVE" BENCHMARKS.md  # again only once a step has written a section (newer than the copy)
}

if [ "$REHEARSE" = 1 ]; then  # every step on the CPU at toy sizes, results kept out of BENCHMARKS.md
    DEV=cpu NW=--no-write
    THROUGHPUT=(--batch 2 --reps 2) PRECISION=(--epochs 0 --batches 2 --batch 8) CLAST=(--batch 2 --reps 1)
    PIPELINE=(--images 32 --batch 4 --steps 1 --workers 2) DETERMINISM=(--batch 2 --reps 1 --steps 1)
    DEMO=(--set epochs=2 --set warmup_epochs=0 --set search_epochs=1 --set train_limit=512 --set test_limit=256)
    OVERHEAD=(--reps 2 --batch 2)
    LUT=(--archs 2 --batches 1 --backends torch --threads 1 --repeats 3 --warmup 1 --fit-children 4 --holdout 2
         --user-repeats 3 --user-warmup 1)
else
    DEV=cuda NW=
    THROUGHPUT=(--compile --reps 20) PRECISION=(--epochs 0 1 3) CLAST=(--reps 20)
    PIPELINE=(--images 4096 --steps 12) DETERMINISM=() DEMO=() OVERHEAD=(--reps 20 --json)
    LUT=(--archs 12 --batches 1 32 --backends torch --repeats 30 --warmup 5 --fit-children 24 --holdout 8
         --user-repeats 30 --user-warmup 5)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"
fi
"$PY" -c "import sys, torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count()); sys.exit(0 if torch.cuda.is_available() or \
sys.argv[1] == 'cpu' else 'no CUDA device')" "$DEV" 2>&1 | tee -a "$SUMMARY" || exit 2
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

# Estimates (s) for an H100-class GPU. throughput: start 8 + two 224 px supernets and their cost
# tables 10 + 23 bf16 search/child step pairs at batch 256 (~0.1 s a pair) 3 + 23 fp32 pairs
# (~0.3 s) 7 + compiling the child's training step 60 + 21 compiled steps 2 = 90.
step throughput 140 180 "$PY" benchmarks/throughput.py --device $DEV ${THROUGHPUT[@]+"${THROUGHPUT[@]}"} $NW
# reward_precision: start and data 10 + 3 warm-up epochs of 187 steps (width 0.25, 28 px, batch 64,
# ~15 ms a step) 9 + 3 points x 24 batches x 7 backward passes (float64 ones slowest, ~0.1 s) 10 = 30.
step reward_precision 75 150 "$PY" benchmarks/reward_precision.py --device $DEV ${PRECISION[@]+"${PRECISION[@]}"} $NW
# channels_last: start 8 + a 28 px and a 224 px supernet with cost tables 6 + 22 rounds of 4 steps
# at 28 px, batch 256 (~20 ms a step) 2 + the same at 224 px, batch 128 bf16 (~60 ms) 6 = 22.
step channels_last 60 150 "$PY" benchmarks/channels_last.py --device $DEV ${CLAST[@]+"${CLAST[@]}"} $NW
# input_pipeline: start 8 + 4,505 synthetic JPEGs on 16 cores (~27 ms each on one core) 8 + crops
# through both decoders with 0 and 16 workers (1,024 + 2,048 images each) 12 + decoder parity and
# stream-order check 3 + two supernets 10 + 4 x 26 fed and resident steps at batch 256 (fp32 search
# ~0.3 s, bf16 child ~0.1 s) and 4 loader starts 35 = 76.
step input_pipeline 110 240 "$PY" benchmarks/input_pipeline.py --device $DEV ${PIPELINE[@]+"${PIPELINE[@]}"} $NW
# determinism: start 8 + two 224 px supernets 10 + 22 rounds of 4 steps at batch 128 (fp32 search
# ~0.15 s, bf16 child ~0.05 s) 9 + 4 repeat runs of 5 + 5 steps with state copies 6 = 33.
step determinism 60 180 "$PY" benchmarks/determinism.py --device $DEV ${DETERMINISM[@]+"${DETERMINISM[@]}"} $NW
# demo: start 8 + 13 epochs of 93 steps, launch-bound (~15 ms a step) 18 + 13 evaluations of
# 4,000 images 3 + results, plot and TensorBoard 4 = 33.
step demo 75 180 "$PY" -m dsnas search --quiet --out "$WORK/demo/run" --set device=$DEV ${DEMO[@]+"${DEMO[@]}"}
# step_overhead: start 8 + a 28 px and a 224 px supernet 6 + 2 x 23 step pairs (launch-bound at
# these batches, ~25 ms a step) 3 + peak memory 1 = 18.
step step_overhead 50 150 "$PY" benchmarks/step_overhead.py --device $DEV ${OVERHEAD[@]+"${OVERHEAD[@]}"} $NW
# latency_lut: start 8 + per batch size (1, 32) 83 parts and 32 fitted and held-out children, 35
# calls each, at ~0.1-1 ms a part and ~2-5 ms a child 3-8 + building 32 children 3 + two separate
# processes timing 14 children, 35 calls each 2 x (start 8 + 2) = 26-31 per batch size = 60-70.
step latency_lut 90 240 "$PY" benchmarks/latency_lut.py --device $DEV ${LUT[@]+"${LUT[@]}"} $NW
# demo_compile: the demo 33 + compiling the finetune child's training step 50 = 83 (last: its
# figure matters least, and it may find the deadline near).
step demo_compile 110 180 "$PY" -m dsnas search --quiet --out "$WORK/demo_compile/run" --set device=$DEV --set compile=true ${DEMO[@]+"${DEMO[@]}"}
if [ "$gpus" -ge 2 ]; then
    # search_nccl: the demo on two ranks, 33 + process-group start 10 = 43.
    step search_nccl 90 90 "$PY" -m torch.distributed.run --nproc-per-node 2 -m dsnas search --quiet --out "$WORK/search_nccl/run"
else
    say "== search_nccl: skipped (fewer than two GPUs; NCCL needs a GPU per rank)"
fi
for run in demo demo_compile search_nccl; do  # the runs' results, for BENCHMARKS.md
    m=$WORK/$run/run/metrics.json
    [ -f "$m" ] && "$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], 'top1', m['top1'], \
'wall_s', m['wall_s'], 'precision', m['precision'], 'mflops', m['mflops'])" "$m" "$run" | tee -a "$SUMMARY"
done
say "total $SECONDS s of a $DEADLINE s deadline; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
