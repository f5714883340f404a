#!/usr/bin/env bash
# A separate venv with EleutherAI lm-evaluation-harness, for the side-by-side row of
#   python -m bench.eval_speed --lm-eval bench/.venv-lmeval/bin/lm_eval
# The harness is not a dependency of hpcnli; nothing here touches the project's own venv.
set -euo pipefail
VENV=${VENV:-$(dirname "$0")/.venv-lmeval}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU wheel first (on this machine kind's disk): a plain `torch` would fetch a CUDA build of several GB.
"$VENV/bin/python" -m pip install -q torch==2.13.0
# transformers as in the project's venv: the packaged model's directory was saved by it.
"$VENV/bin/python" -m pip install -q "lm_eval[hf]==0.4.13" "transformers==5.24.0"
"$VENV/bin/lm_eval" --help >/dev/null && echo "lm_eval $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lm_eval"))') in $VENV"
