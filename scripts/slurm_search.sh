#!/usr/bin/env bash
# A DSNAS search as a SLURM batch job: one torchrun per node, every rank started with the same
# command line, which starts the run in OUT or resumes it from its last checkpoint. Preempted or at
# its time limit, the job is signalled, the ranks checkpoint the step they reached and stop, and
# the job is requeued; the requeued job resumes where it stopped, with this same script.
#
#   sbatch scripts/slurm_search.sh --config imagenet --data /data/imagenet
#   OUT=runs/my-search GPUS_PER_NODE=4 sbatch --nodes 4 scripts/slurm_search.sh --config imagenet ...
#
# Arguments after the script's name go to `dsnas search`. The run folder must be on storage that
# every node sees; only the global rank 0 writes it.
#SBATCH --job-name=dsnas-search
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

OUT=${OUT:-runs/${SLURM_JOB_NAME:-dsnas-search}-${SLURM_JOB_ID:?run this script with sbatch}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RESTARTS=${RESTARTS:-3}  # torchrun restarts the whole group this often after a worker dies
RDZV_PORT=${RDZV_PORT:-29500}
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

# SIGUSR1 (--signal, before the time limit) or SIGTERM (preemption) reaches this shell: pass it on
# to the ranks as SIGTERM, after which they checkpoint and exit 143, and requeue the job.
signalled=0
trap 'signalled=1; kill -TERM "$launched" 2>/dev/null' USR1 TERM

srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$head:$RDZV_PORT" --rdzv-id "$SLURM_JOB_ID" --max-restarts "$RESTARTS" \
    -m dsnas search --out "$OUT" --resume "$@" &
launched=$!
wait "$launched"
status=$?
while kill -0 "$launched" 2>/dev/null; do  # a trap ends `wait` early: wait again until srun has ended
    wait "$launched"
    status=$?
done

if [ "$signalled" = 1 ]; then
    echo "dsnas-search: signalled; requeueing job $SLURM_JOB_ID to resume $OUT" >&2
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
