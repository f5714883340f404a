#!/bin/bash
# Stage 1 of an hpcnli run, for plain sbatch (no Python launcher needed):
#   sbatch slurm/finetune.sh RUN_DIR [CONFIG]
#   sbatch --export=ALL,RUN_DIR=results/my-run,CONFIG=jobs/default.yaml slurm/finetune.sh
# Plans RUN_DIR from CONFIG on first use. Requeue-safe: training resumes from its last checkpoint; 90 s before the
# time limit (--signal, to the batch shell that exec becomes) it checkpoints and requeues itself (run.stages).
# Data parallel: sbatch --nodes=M --ntasks-per-node=N (--gpus-per-node=N on GPUs) starts N x M processes.
# GPUs: add --gpus-per-node=N (one per training process; 1 for an eval task). A run planned with
# resources.gpus_per_node > 0 refuses, in one line, to run where it sees no GPU.
# Every #SBATCH line below is a default; options on the sbatch command line override it.
#SBATCH --job-name=hpcnli-finetune
#SBATCH --partition=gpu
#SBATCH --time=01:00:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --output=%x_%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR2@90
set -euo pipefail
RUN_DIR=${1:-${RUN_DIR:?usage: sbatch slurm/finetune.sh RUN_DIR [CONFIG]}}
CONFIG=${2:-${CONFIG:-jobs/default.yaml}}
PY=${HPCNLI_PYTHON:-python}

"$PY" -m hpcnli.submit --plan-only --config "$CONFIG" --run-dir "$RUN_DIR"  # first job plans the run
if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then  # sbatch --nodes / --ntasks-per-node: one training process per task
  exec srun --kill-on-bad-exit=1 "$PY" -m hpcnli.finetune "$RUN_DIR"
fi
exec "$PY" -m hpcnli.finetune "$RUN_DIR"
