"""Planning a run: every check that can be made before anything runs or is queued, then the run directory.

A planned run directory holds `config.yaml` (the resolved config), `test_set.json` (the test set's
example ids in order, and its content hash) and `provenance.json` (code and package versions, and the
output_root the run was planned in); every stage reads them.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
from datetime import datetime
from pathlib import Path

from hpcnli.cluster.commands import partition_limits, partition_problem
from hpcnli.config import MIN_PAIR_TOKENS, RunConfig, save_config
from hpcnli.data.nli import load_split
from hpcnli.errors import UserFacingError
from hpcnli.io import directory_lock, write_json
from hpcnli.model.loading import check_target_modules, check_top_layers, load_tokenizer, model_config
from hpcnli.records import TestManifest
from hpcnli.run import eval_resources, time_plan
from hpcnli.run.memory_plan import plan_memory
from hpcnli.run.paths import RunPaths
from hpcnli.run.state import test_set_changed
from hpcnli.scoring.prompts import format_prompt, label_token_ids, tokenize_prompts

log = logging.getLogger(__name__)


class PlanError(UserFacingError, ValueError):
    """The run cannot start as configured; the message says what to change."""


def check_prompt_length(tokenizer, cfg: RunConfig) -> None:
    """Prompts are cut from the left to task.max_length: a template that fills it would leave every prompt
    without its premise and hypothesis, and the model would score the template's tail alone."""
    empty = format_prompt(cfg.task.prompt, {"premise": "", "hypothesis": ""})
    template = len(tokenizer(empty, add_special_tokens=False).input_ids)
    if template + MIN_PAIR_TOKENS > cfg.task.max_length:
        raise PlanError(
            f"task.max_length: {cfg.task.max_length} tokens, but the prompt template alone is {template}, "
            f"which leaves {max(cfg.task.max_length - template, 0)} for premise and hypothesis; "
            f"use at least {template + 4 * MIN_PAIR_TOKENS}"
        )


def check_model(cfg: RunConfig):
    """Tokenizer, label words and LoRA targets, checked on an empty (meta-device) model; returns the
    tokenizer and the model's configuration."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(cfg)
    label_token_ids(tokenizer, cfg.task.label_words)
    check_prompt_length(tokenizer, cfg)
    config = model_config(cfg)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    check_target_modules(empty, cfg.lora.target_modules)
    check_top_layers(config, cfg.lora.top_layers)
    check_output_layer_untargeted(cfg, empty)
    return tokenizer, config


def check_output_layer_untargeted(cfg: RunConfig, empty) -> None:
    """With train.loss 'labels' the fine-tune narrows the output layer to the 3 label words' rows
    (model.loading.narrow_output_layer), so LoRA on that layer would train nothing the plan promised."""
    if cfg.task.scoring == "head" or cfg.train.loss != "labels":
        return
    output = empty.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in empty.named_modules() if module is output}
    hit = sorted(names & set(cfg.lora.target_modules))
    if hit:
        raise PlanError(
            f"lora.target_modules: {hit[0]} is the output layer, which train.loss 'labels' narrows to the 3 label "
            "words; leave it out, or use train.loss=vocab"
        )


# Above this many pairs the plan takes task.max_length as every prompt's length instead of tokenizing them all.
LENGTH_SCAN_LIMIT = 200_000


def prompt_lengths(tokenizer, cfg: RunConfig, split) -> list[int] | None:
    """Every prompt's length in tokens (what fixed batch_size batches hold at worst), or None for a split too
    big to tokenize while planning."""
    if len(split.examples) > LENGTH_SCAN_LIMIT or not split.examples:
        return None
    return [len(p) for p in tokenize_prompts(tokenizer, cfg, split.examples)]


def provenance() -> dict:
    """Code and package versions at planning time, for the report."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def git(*args):
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    packages: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "evaluate", "submitit"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "packages": packages,
        "planned_on": platform.node(),
        "planned_at": datetime.now().isoformat(timespec="seconds"),
    }


def create_run(cfg: RunConfig, run_dir: Path) -> RunPaths:
    """Validate data and model, then create the run directory: config, test-set manifest, memory plan."""
    train = load_split(cfg, "train")
    test = load_split(cfg, "test")
    if cfg.eval.num_shards > len(test.examples):
        raise PlanError(
            f"eval.num_shards: {cfg.eval.num_shards} shards for {len(test.examples)} test examples; "
            f"use at most {len(test.examples)}"
        )
    processes = cfg.resources.train_processes
    if cfg.train.batch_tokens is None and len(train.examples) < cfg.train.batch_size * processes:
        raise PlanError(
            f"train.batch_size: {processes} training processes x batch {cfg.train.batch_size} = "
            f"{cfg.train.batch_size * processes} pairs per step, but data.train has "
            f"{len(train.examples)}; lower train.batch_size or the processes"
        )
    if len(train.examples) < processes:
        raise PlanError(f"data.train: {len(train.examples)} pairs for {processes} training processes; each needs one")
    if len({e["id"] for e in test.examples}) != len(test.examples):
        raise PlanError(f"data.test: {test.source} has duplicated example ids")
    overlap = train_test_overlap(train.examples, test.examples)
    if overlap == len(test.examples):
        raise PlanError(
            f"data.test: all {overlap} of its pairs are also training pairs (data.train, by premise and hypothesis, "
            "whatever the paths); a test of the fine-tuned model on them measures memory; choose another test set, "
            "or hold test pairs out with data.holdout and data.test: holdout"
        )
    if cfg.train.log_with == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise PlanError(
            "train.log_with: tensorboard needs the tensorboard package in this environment: "
            "pip install 'hpcnli[tensorboard]' (or tensorboard), or set train.log_with: none"
        )
    tokenizer, config = check_model(cfg)
    train_lengths, test_lengths = prompt_lengths(tokenizer, cfg, train), prompt_lengths(tokenizer, cfg, test)
    cfg, memory = plan_memory(cfg, config, train_lengths, max(test_lengths) if test_lengths else cfg.task.max_length)
    memory["time"] = time_plan.estimate(cfg, tokenizer, train.examples, train_lengths)
    cfg, memory["eval_task"] = eval_resources.plan(cfg, memory["eval_weights_bytes"], len(test.examples))
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise PlanError(f"{run_dir} exists; use --resume {run_dir} to complete it, or another name") from None
    except OSError as e:
        raise PlanError(
            f"cannot create the run directory {run_dir} ({e.strerror}); set output_root to a writable directory"
        ) from None
    paths = RunPaths(run_dir)
    save_config(cfg, paths.config)
    # The results index belongs to output_root: a run elsewhere (--run-dir) leaves its directory's files alone.
    root = Path(cfg.output_root).resolve()
    write_json(paths.memory_plan, memory)
    write_json(paths.provenance, {**provenance(), "output_root": str(root) if paths.run_dir.parent == root else None})
    TestManifest(
        schema_version=TestManifest.VERSION,
        source=test.source,
        examples=len(test.examples),
        dropped=test.dropped,
        ids_hash=test.ids_hash,
        content_hash=test.content_hash,
        train_overlap=overlap,
        ids=[e["id"] for e in test.examples],
    ).write(paths.test_manifest)
    log.info(
        "planned %s: %d train examples (%s), %d test examples (%s), %d shards per model",
        run_dir,
        len(train.examples),
        train.source,
        len(test.examples),
        test.source,
        cfg.eval.num_shards,
    )
    return paths


def slurm_problem(cfg: RunConfig) -> str | None:
    """Why Slurm would refuse or never start the run's jobs (sinfo's view of the partition), or None."""
    r = cfg.resources
    why = partition_problem(r.partition)
    if why:
        return why
    limits = partition_limits(r.partition)
    if limits is None:
        return None
    if r.gpus_per_node > limits["gpus"]:
        return (
            f"resources.gpus_per_node: {r.gpus_per_node} GPUs per node, but the nodes of partition "
            f"{r.partition!r} have {limits['gpus']} (sinfo); use at most {limits['gpus']}"
        )
    if r.nodes > limits["nodes"]:
        return (
            f"resources.nodes: {r.nodes} nodes, but partition {r.partition!r} has {limits['nodes']} (sinfo); "
            f"use at most {limits['nodes']}"
        )
    cpus = r.train_processes_per_node * r.cpus_per_task
    if cpus > limits["cpus"]:
        return (
            f"resources.cpus_per_task: {r.train_processes_per_node} training processes per node x "
            f"{r.cpus_per_task} CPUs = {cpus}, but the nodes of partition {r.partition!r} have {limits['cpus']} "
            "CPUs (sinfo); lower cpus_per_task or the processes per node"
        )
    return None


def _pair_key(example: dict) -> tuple[str, str]:
    return (" ".join(example["premise"].split()).casefold(), " ".join(example["hypothesis"].split()).casefold())


def train_test_overlap(train: list[dict], test: list[dict]) -> int:
    """Test pairs that are also training pairs, by content (premise and hypothesis, spacing and case aside)."""
    seen = {_pair_key(e) for e in train}
    return sum(_pair_key(e) in seen for e in test)


def check_resumable(cfg: RunConfig, paths: RunPaths) -> None:
    """Before --resume queues anything: the (possibly edited) config passes the plan's model checks, and
    the test set is still the one the run was planned with."""
    check_model(cfg)
    why = test_set_changed(load_split(cfg, "test"), TestManifest.read(paths.test_manifest))
    if why:
        raise PlanError(why)


def create_once(run_dir: Path, make_run) -> RunPaths:
    """For the sbatch scripts, whose jobs may all start at once: the first calls make_run(), the rest reuse its run.
    Should the lock not hold (a filesystem without locks), a second creator finds the directory and is refused."""
    paths = RunPaths(run_dir)
    try:
        paths.run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PlanError(
            f"cannot create the run directory {run_dir} ({e.strerror}); choose a writable --run-dir or output_root"
        ) from None
    with directory_lock(paths.run_dir.parent):  # a lock file beside the run would be left behind, even when refused
        return paths if paths.config.is_file() else make_run()
