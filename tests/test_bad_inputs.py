"""The "when things go wrong" table: each bad input is refused by `hpcnli.submit` with its message,
before anything runs or is queued, and leaves no run directory behind (README lists these)."""

import fcntl
import json
from pathlib import Path

import pytest

from conftest import ROOT
from hpcnli import submit

SMOKE = str(ROOT / "jobs" / "smoke.yaml")


def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def rows(*objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


GOOD = {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0}

# (case, files to write {name: content}, extra argv (with {tmp} for the temp dir), expected message)
CASES = [
    (
        "misspelt config key",
        {},
        ["train.learning_rat=1e-4"],
        "train.learning_rat: unknown key; valid keys here are: batch_size, batch_tokens, grad_accum, learning_rate",
    ),
    ("wrong type", {}, ["train.batch_size=abc"], "train.batch_size: expected int, got str 'abc'"),
    ("zero shards", {}, ["eval.num_shards=0"], "eval.num_shards: must be > 0, got 0"),
    ("negative shards", {}, ["eval.num_shards=-2"], "eval.num_shards: must be > 0, got -2"),
    (
        "more shards than examples",
        {},
        ["eval.num_shards=25"],
        "eval.num_shards: 25 shards for 24 test examples; use at most 24",
    ),
    (
        "zero CPUs for eval tasks",
        {},
        ["resources.eval_cpus_per_task=0"],
        "resources.eval_cpus_per_task: must be > 0 (or left out: planned), got 0",
    ),
    (
        "bad dtype",
        {},
        ["model.dtype=float8"],
        "model.dtype: 'float8' is not one of ('auto', 'bfloat16', 'float16', 'float32')",
    ),
    (
        "prompt without hypothesis slot",
        {},
        ["task.prompt=Premise: {premise} Answer:"],
        "task.prompt: must contain {hypothesis}",
    ),
    (
        "label word of two tokens",
        {},
        ["task.label_words=[' entailment', ' maybe', ' no']"],
        "task.label_words: ' entailment' is 2 tokens for this tokenizer",
    ),
    ("missing data file", {}, ["data.test={tmp}/nope.jsonl"], "nope.jsonl: no such file; check data.train / data.test"),
    (
        "data file without the expected columns",
        {"cols.jsonl": rows({"text": "a", "y": 1})},
        ["data.test={tmp}/cols.jsonl"],
        "lack premise/hypothesis/label (Hugging Face format) or sentence1/sentence2/gold_label",
    ),
    (
        "string labels in HF format",
        {"str.jsonl": rows(GOOD, {**GOOD, "label": "entailment"})},
        ["data.test={tmp}/str.jsonl"],
        "row 2: label 'entailment' must be an integer 0, 1, 2 (or -1 for none)",
    ),
    (
        "out-of-range label",
        {"range.jsonl": rows(GOOD, {**GOOD, "label": 7})},
        ["data.test={tmp}/range.jsonl"],
        "row 2: label 7 is out of range; use 0 entailment, 1 neutral, 2 contradiction, -1 no gold label",
    ),
    (
        "empty premise",
        {"empty.jsonl": rows(GOOD, {**GOOD, "premise": "  "})},
        ["data.test={tmp}/empty.jsonl"],
        "row 2: empty or missing premise",
    ),
    (
        "a line that is not JSON",
        {"notjson.jsonl": rows(GOOD) + "{premise: oops\n"},
        ["data.test={tmp}/notjson.jsonl"],
        "line 2 is not valid JSON",
    ),
    (
        "a line that is not UTF-8",
        {"latin1.jsonl": rows(GOOD).encode() + '{"premise": "caf\xe9"}\n'.encode("latin-1")},
        ["data.test={tmp}/latin1.jsonl"],
        "line 2 is not UTF-8 text; re-encode the file as UTF-8",
    ),
    (
        "no row with a gold label",
        {"nogold.jsonl": rows({**GOOD, "label": -1})},
        ["data.test={tmp}/nogold.jsonl"],
        "no example with a gold label",
    ),
    ("unknown file type", {"data.txt": "x"}, ["data.test={tmp}/data.txt"], "unknown file type '.txt'"),
    (
        "unknown model offline",
        {},
        ["model.name_or_path=nobody/no-such-model"],
        "model.name_or_path: cannot load 'nobody/no-such-model'",
    ),
    (
        "unknown packaged model",
        {},
        ["model.name_or_path=packaged:gpt-5"],
        "model.name_or_path: unknown packaged model 'gpt-5'; "
        "packaged models: ['smollm2-135m-instruct', 'smollm2-tiny-random']",
    ),
    (
        "LoRA target the model lacks",
        {},
        ["lora.target_modules=[q_proj, qkv_proj]"],
        "lora.target_modules: ['qkv_proj'] not found in the model; its linear layers are",
    ),
    (
        "unwritable output directory",
        {},
        ["--run-dir=/proc/hpcnli-results/run"],
        "cannot create the run directory /proc",
    ),
    (
        "hub dataset offline",
        {},
        ["data.test=hub:stanfordnlp/snli:test"],
        "could not load 'stanfordnlp/snli' split 'test' from the Hugging Face Hub",
    ),
    (
        "sbatch option with a line break",
        {"nl.yaml": 'resources:\n  partition: "gpu\\n#SBATCH --uid=0"\n'},
        [],
        "resources.partition: must not contain a line break",
    ),
    (
        "a section given twice in the YAML",
        {"dup.yaml": "train:\n  batch_size: 4\ntrain:\n  learning_rate: 1e-3\n"},
        [],
        "line 3: key 'train' is given twice in one section (first on line 1); keep one",
    ),
    (
        "a key given twice in a section",
        {"dupkey.yaml": "train:\n  batch_size: 4\n  batch_size: 8\n"},
        [],
        "line 3: key 'batch_size' is given twice in one section (first on line 2)",
    ),
    (
        "a binary config file",
        {"bin.yaml": b"\xff\xfe\x00\x01binary"},
        [],
        "not UTF-8 text; a config is a YAML text file",
    ),
    ("negative weight decay", {}, ["train.weight_decay=-1"], "train.weight_decay: must be >= 0, got -1.0"),
    ("a run name that is a path", {}, ["--name=../../x"], "--name: '../../x' must be letters, digits"),
    ("an absolute run name", {}, ["--name=/etc/x"], "--name: '/etc/x' must be letters, digits"),
    (
        "max_length shorter than the prompt template",
        {},
        ["task.max_length=24"],
        "task.max_length: 24 tokens, but the prompt template alone is",
    ),
    (
        "a LoRA target that is not a linear layer",
        {},
        ["lora.target_modules=[q_proj, input_layernorm]"],
        "lora.target_modules: ['input_layernorm'] are not linear layers (LlamaRMSNorm)",
    ),
    (
        "a model directory without safetensors",
        {"model/config.json": "{}", "model/pytorch_model.bin": "x"},
        ["model.name_or_path={tmp}/model"],
        "/model has no *.safetensors weights; hpcnli loads a model directory",
    ),
    (
        "an empty model directory",
        {"empty/.keep": ""},
        ["model.name_or_path={tmp}/empty"],
        "empty has no config.json and no *.safetensors weights",
    ),
    (
        "processes per node with GPUs",
        {},
        ["resources.gpus_per_node=1", "resources.processes_per_node=2"],
        "resources.processes_per_node: only without GPUs",
    ),
    (
        "a batch too large to split across the processes",
        {},
        ["resources.processes_per_node=4", "train.batch_size=16"],
        "train.batch_size: 4 training processes x batch 16 = 64 pairs per step, but data.train has 32",
    ),
    ("several nodes without Slurm", {}, ["resources.nodes=2"], "resources.nodes: 2 nodes need Slurm (--partition)"),
]


@pytest.mark.parametrize("case,files,extra,message", CASES, ids=[c[0] for c in CASES])
def test_refused_before_anything_runs(tmp_path, capsys, case, files, extra, message):
    for name, content in files.items():
        write(tmp_path / name, content)
    yaml_files = [name for name in files if name.endswith(".yaml")]
    config = str(tmp_path / yaml_files[0]) if yaml_files else SMOKE
    run_dir = tmp_path / "run"
    # --plan-only: a case that is wrongly accepted must not go on to run the pipeline.
    argv = [
        "--plan-only",
        "--config",
        config,
        "--run-dir",
        str(run_dir),
        *[a.replace("{tmp}", str(tmp_path)) for a in extra],
    ]
    assert submit.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not run_dir.exists()


def test_missing_config_file(capsys):
    assert submit.main(["--config", "jobs/nope.yaml"]) == 2
    assert "--config: no file jobs/nope.yaml; the shipped configs are in jobs/" in capsys.readouterr().err


def test_invalid_yaml(tmp_path, capsys):
    assert submit.main(["--config", write(tmp_path / "bad.yaml", "train: [1, 2\n")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_existing_run_directory_needs_resume(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert submit.main(["--config", SMOKE, "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run'} exists; use --resume" in capsys.readouterr().err


def test_resume_of_a_directory_that_is_no_run(tmp_path, capsys):
    assert submit.main(["--resume", str(tmp_path)]) == 2
    assert "no config.yaml there; is it a run directory?" in capsys.readouterr().err


def test_run_directory_in_use(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert submit.main(["--config", SMOKE, "--run-dir", str(run_dir), "--plan-only"]) == 0
    kept = sorted(p.name for p in run_dir.iterdir()) + [".lock"]
    with open(run_dir / ".lock", "a+") as held:  # another submit holds the run
        fcntl.flock(held, fcntl.LOCK_EX)
        assert submit.main(["--resume", str(run_dir)]) == 2
    assert "is in use by another hpcnli.submit; wait for it to end" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(kept)  # nothing computed is lost


def test_force_without_resume(capsys):
    with pytest.raises(SystemExit) as e:
        submit.main(["--force"])
    assert e.value.code == 2 and "--force goes with --resume RUN_DIR" in capsys.readouterr().err


def test_the_console_command_lists_what_it_runs(capsys):
    from hpcnli import cli

    assert cli.main([]) == 2 and cli.main(["train"]) == 2  # no command, or one it does not have
    err = capsys.readouterr().err
    assert err.count("usage: hpcnli COMMAND [ARGS]") == 2 and "hpcnli reduce  (re)write a run's" in err
    assert cli.main(["--help"]) == 0 and "hpcnli status  where a run or a sweep stands" in capsys.readouterr().err


def test_an_eval_task_outside_an_array_job_needs_its_shard(tmp_path, capsys, monkeypatch):
    from hpcnli import evaluate

    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(tmp_path), "--model", "base"])
    assert e.value.code == 2 and "--shard is required outside a Slurm array job" in capsys.readouterr().err
