#!/bin/bash
# The GPU check of issue 12, one device call: the shipped phi-2 config against the seed recipe and the
# original one-pair-per-call pipeline loop, on a phi-2-shaped model (microsoft/phi-2's configuration,
# random weights: speed and memory mean something, accuracy does not). Prints one table.
#
# Prepare once, here, in the repository root (the working tree that travels must stay under 64 MiB):
#   make setup && make run                     # converts SmolLM2 once: its tokenizer goes along
#   bash ../shared/gpu/make_carry.sh           # .gpu/: wheels, slim bitsandbytes, tokenizer, phi2_shaped.py
#   cp ../shared/snli/test.jsonl ../shared/snli/validation.jsonl .gpu/
# Try it whole on the CPU first (a 2-layer model, a few pairs, GPUS=0: planned for the CPU; about 4 minutes):
#   LAYERS=2 TRAIN_PAIRS=64 TEST_PAIRS=48 SEED_STEPS=2 SEED_TEST_PAIRS=24 PIPELINE_PAIRS=8 OUT=/tmp/gpucheck GPUS=0 CPUS=2 \
#     SHIPPED_EXTRA="train.batch_tokens=512 eval.batch_tokens=512" bash bench/gpu_check.sh
# Then one device call: carry [".gpu"], command `bash bench/gpu_check.sh`, timeout_s 560.
# Run directories (adapters, eval weights: too big to come back) go to $RUNS; only a few small files go to
# $OUT: gpu.txt, gpu_check.md (the table), steps.txt (each step's exit status), pipeline.json and the logs'
# tails. Each step runs on its own: one that fails is named in steps.txt and the table shows what exists.
set -uo pipefail
LAYERS=${LAYERS:-32}              # phi-2's
TRAIN_PAIRS=${TRAIN_PAIRS:-9842}  # all of SNLI validation (the training pairs here; SNLI train cannot travel)
TEST_PAIRS=${TEST_PAIRS:-0}       # 0: all 4,912 labelled pairs of SNLI test
SEED_STEPS=${SEED_STEPS:-20}      # the seed recipe's optimizer steps (16 pairs each, about 9 pairs/s measured)
SEED_TEST_PAIRS=${SEED_TEST_PAIRS:-1000}
PIPELINE_PAIRS=${PIPELINE_PAIRS:-400}
SHIPPED_EXTRA=${SHIPPED_EXTRA:-}  # more overrides for the shipped config (the CPU try: small budgets)
OUT=${OUT:-/tmp/gpu-check}
RUNS=${RUNS:-/tmp/gpu-check-runs}
GPUS=${GPUS:-1}                   # resources.gpus_per_node of both runs (0: the CPU try)
CPUS=${CPUS:-8}                   # resources.cpus_per_task (the local executor refuses more than the machine has)
mkdir -p "$OUT" "$RUNS"
: > "$OUT/steps.txt"
step() {  # step NAME COMMAND...: run it, keep the tail of its output, record its exit status
  local name=$1; shift
  "$@" > "$RUNS/$name.log" 2>&1
  local status=$?
  tail -n 25 "$RUNS/$name.log" | tee "$OUT/$name.tail.txt"
  echo "$name exit $status" | tee -a "$OUT/steps.txt"
}
if [ -d .gpu/whl ] && ! python3 -c 'import bitsandbytes, submitit' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
model=/tmp/phi2-shaped-$LAYERS
[ -f "$model/config.json" ] || python3 .gpu/phi2_shaped.py "$model" .gpu/tok "$LAYERS"
data="model.name_or_path=$model data.train=.gpu/validation.jsonl data.test=.gpu/test.jsonl resources.gpus_per_node=$GPUS resources.cpus_per_task=$CPUS"

# 1. the shipped config: token budgets and checkpointing from gpu_mem_gb; 2 shards per model (the second
#    reads the eval weights the first wrote)
step shipped python3 -m hpcnli.submit --config jobs/phi2_snli_qlora.yaml --run-dir "$RUNS/shipped" $data \
  data.max_train_examples="$TRAIN_PAIRS" data.max_test_examples="$TEST_PAIRS" eval.num_shards=2 \
  train.checkpoint_every=0 $SHIPPED_EXTRA
# 2. the seed recipe: batch 4 x 4, checkpointing, LoRA dropout 0.05, eval batch 64 pairs
step seed python3 -m hpcnli.submit --config jobs/phi2_snli_seed_recipe.yaml --run-dir "$RUNS/seed" $data \
  data.max_train_examples="$TRAIN_PAIRS" train.max_steps="$SEED_STEPS" data.max_test_examples="$SEED_TEST_PAIRS" \
  eval.num_shards=1 train.checkpoint_every=0
# 3. the original loop: pipeline("text-classification"), one pair per call, bf16
step pipeline python3 -m bench.pipeline_loop "$model" .gpu/test.jsonl --pairs "$PIPELINE_PAIRS" --json "$OUT/pipeline.json"

step table python3 -m bench.gpu_table "$RUNS/shipped" "$RUNS/seed" "$OUT/pipeline.json"
step memory python3 -m bench.memory_estimate "$RUNS/shipped" "$RUNS/seed"
cat "$RUNS/table.log" "$RUNS/memory.log" > "$OUT/gpu_check.md"
