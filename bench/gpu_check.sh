#!/bin/bash
# The GPU check of issue 12, one device call: the shipped phi-2 config against the seed recipe and the
# original one-pair-per-call pipeline loop, on a phi-2-shaped model (microsoft/phi-2's configuration,
# random weights: speed and memory mean something, accuracy does not). Prints one table.
#
# Prepare once, here, in the repository root (the working tree that travels must stay under 64 MiB):
#   make setup && make run                     # converts SmolLM2 once: its tokenizer goes along
#   bash ../shared/gpu/make_carry.sh           # .gpu/: wheels, slim bitsandbytes, tokenizer, phi2_shaped.py
#   cp ../shared/snli/test.jsonl ../shared/snli/validation.jsonl .gpu/
# Try it whole on the CPU first (a 2-layer model, a few pairs; about 4 minutes on 2 cores):
#   LAYERS=2 TRAIN_PAIRS=64 TEST_PAIRS=48 SEED_STEPS=2 SEED_TEST_PAIRS=24 PIPELINE_PAIRS=8 OUT=/tmp/gpucheck \
#     SHIPPED_EXTRA="train.batch_tokens=512 eval.batch_tokens=512" bash bench/gpu_check.sh
# Then one device call: carry [".gpu"], command `bash bench/gpu_check.sh`, timeout_s 560.
# Results: $OUT/gpu_check.md (the table) and $OUT/*.json; copy the table into bench/RESULTS.md.
set -euo pipefail
LAYERS=${LAYERS:-32}              # phi-2's
TRAIN_PAIRS=${TRAIN_PAIRS:-9842}  # all of SNLI validation (the training pairs here; SNLI train cannot travel)
TEST_PAIRS=${TEST_PAIRS:-0}       # 0: all 4,912 labelled pairs of SNLI test
SEED_STEPS=${SEED_STEPS:-20}      # the seed recipe's optimizer steps (16 pairs each, about 9 pairs/s measured)
SEED_TEST_PAIRS=${SEED_TEST_PAIRS:-1000}
PIPELINE_PAIRS=${PIPELINE_PAIRS:-400}
SHIPPED_EXTRA=${SHIPPED_EXTRA:-}  # more overrides for the shipped config (the CPU try: small budgets)
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .gpu/whl ] && ! python3 -c 'import bitsandbytes, submitit' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
model=/tmp/phi2-shaped-$LAYERS
[ -f "$model/config.json" ] || python3 .gpu/phi2_shaped.py "$model" .gpu/tok "$LAYERS"
data="model.name_or_path=$model data.train=.gpu/validation.jsonl data.test=.gpu/test.jsonl"

# 1. the shipped config: token budgets and checkpointing from gpu_mem_gb; 2 shards per model (the second
#    reads the eval weights the first wrote)
python3 -m hpcnli.submit --config jobs/phi2_snli_qlora.yaml --run-dir "$OUT/shipped" $data \
  data.max_train_examples="$TRAIN_PAIRS" data.max_test_examples="$TEST_PAIRS" eval.num_shards=2 \
  train.checkpoint_every=0 $SHIPPED_EXTRA 2>&1 | tail -n 25
# 2. the seed recipe: batch 4 x 4, checkpointing, LoRA dropout 0.05, eval batch 64 pairs
python3 -m hpcnli.submit --config jobs/phi2_snli_seed_recipe.yaml --run-dir "$OUT/seed" $data \
  data.max_train_examples="$TRAIN_PAIRS" train.max_steps="$SEED_STEPS" data.max_test_examples="$SEED_TEST_PAIRS" \
  eval.num_shards=1 train.checkpoint_every=0 2>&1 | tail -n 12
# 3. the original loop: pipeline("text-classification"), one pair per call, bf16
python3 -m bench.pipeline_loop "$model" .gpu/test.jsonl --pairs "$PIPELINE_PAIRS" --json "$OUT/pipeline.json"

python3 -m bench.gpu_table "$OUT/shipped" "$OUT/seed" "$OUT/pipeline.json" | tee "$OUT/gpu_check.md"
python3 -m bench.memory_estimate "$OUT/shipped" "$OUT/seed" | tee -a "$OUT/gpu_check.md"
