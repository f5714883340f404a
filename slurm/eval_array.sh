#!/bin/bash
# Stage 2 of an hpcnli run, one array task per shard, for plain sbatch:
#   sbatch --array=0-1 slurm/eval_array.sh RUN_DIR base|finetuned [CONFIG]
#   sbatch --array=0-1 --dependency=afterok:<finetune job> slurm/eval_array.sh RUN_DIR finetuned
# The array must cover 0..eval.num_shards-1 of the run's config; the shard is SLURM_ARRAY_TASK_ID.
# GPUs: add --gpus-per-node=N (one per training process; 1 for an eval task). A run planned with
# resources.gpus_per_node > 0 refuses, in one line, to run where it sees no GPU.
# Every #SBATCH line below is a default; options on the sbatch command line override it.
#SBATCH --job-name=hpcnli-eval
#SBATCH --partition=gpu
#SBATCH --time=01:00:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --array=0-1
#SBATCH --output=%x_%A_%a.out
set -euo pipefail
RUN_DIR=${1:-${RUN_DIR:?usage: sbatch --array=0-N slurm/eval_array.sh RUN_DIR base|finetuned [CONFIG]}}
MODEL=${2:-${MODEL:-base}}
CONFIG=${3:-${CONFIG:-jobs/default.yaml}}
PY=${HPCNLI_PYTHON:-python}

"$PY" -m hpcnli.submit --plan-only --config "$CONFIG" --run-dir "$RUN_DIR"  # first job plans the run
exec "$PY" -m hpcnli.evaluate "$RUN_DIR" --model "$MODEL"
