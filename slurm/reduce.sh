#!/bin/bash
# Stage 3 of an hpcnli run, for plain sbatch: merge and validate all shards, write the report.
#   sbatch --dependency=afterany:<base array>:<finetuned array> slurm/reduce.sh RUN_DIR
# Exits non-zero, with a report that lists the missing shards, if any shard is missing or invalid.
#SBATCH --job-name=hpcnli-reduce
#SBATCH --partition=gpu
#SBATCH --time=00:30:00
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --output=%x_%j.out
set -euo pipefail
RUN_DIR=${1:-${RUN_DIR:?usage: sbatch slurm/reduce.sh RUN_DIR}}
exec "${HPCNLI_PYTHON:-python}" -m hpcnli.reduce "$RUN_DIR"
