"""hpcnli.config: shipped job files, validation messages, key=value overrides, the run hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcnli.config import (
    DTYPES,
    SCORING_MODES,
    ConfigError,
    RunConfig,
    TaskConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    parse_override,
    task_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((ROOT / "jobs").glob("*.yaml"))
TRAIN_KEYS = (
    "batch_size",
    "batch_tokens",
    "grad_accum",
    "learning_rate",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "epochs",
    "max_steps",
    "group_by_length",
    "loss",
    "checkpoint_every",
    "gradient_checkpointing",
    "seed",
    "log_every",
    "eval_every",
    "eval_pairs",
    "keep",
    "early_stopping_patience",
    "log_with",
)


def write_yaml(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems_of(tmp_path: Path, text: str, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(write_yaml(tmp_path, text), list(overrides))
    assert ei.value.problems, "a ConfigError must list at least one problem"
    # The message shows every problem so a user sees them all at once.
    for p in ei.value.problems:
        assert p in str(ei.value)
    return ei.value.problems


# ------------------------------------------------------------------ shipped configs


def test_jobs_folder_has_configs():
    assert JOB_FILES, "jobs/ holds no *.yaml"
    assert any(p.name == "default.yaml" for p in JOB_FILES)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # Every key in the file is a real key and keeps the file's value (nothing silently dropped).
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    as_dict = cfg.to_dict()
    for section, body in data.items():
        if isinstance(body, dict):
            for k, v in body.items():
                got = as_dict[section][k]
                assert got == (list(v) if isinstance(v, (list, tuple)) else v), f"{section}.{k}"
        else:
            assert as_dict[section] == body


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_shipped_config_starts_with_its_launch_command(path: Path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m hpcnli.submit "), first
    assert f"--config jobs/{path.name}" in first, f"{path.name}: first line should launch this very file: {first}"


def test_defaults_validate():
    cfg = load_config(None)
    assert cfg == RunConfig()


# ------------------------------------------------------------------ bad configs


def test_misspelt_key_is_named_with_valid_keys(tmp_path):
    (p,) = problems_of(tmp_path, "train:\n  batch_sise: 16\n")
    assert p.startswith("train.batch_sise: unknown key")
    assert "valid keys here are" in p
    for k in TRAIN_KEYS:
        assert k in p


def test_unknown_top_level_section(tmp_path):
    (p,) = problems_of(tmp_path, "trian:\n  batch_size: 16\n")
    assert p.startswith("trian: unknown key")
    for k in ("model", "quantization", "lora", "data", "task", "train", "eval", "resources"):
        assert k in p


def test_wrong_type_names_key_and_expected_type(tmp_path):
    (p,) = problems_of(tmp_path, 'train:\n  batch_size: "16"\n')
    assert p.startswith("train.batch_size:")
    assert "expected int" in p and "'16'" in p


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  epochs: 1.5\n", "train.epochs"),  # float for int
        ("train:\n  batch_size: true\n", "train.batch_size"),  # bool is not an int
        ("quantization:\n  load_in_4bit: 1\n", "quantization.load_in_4bit"),
        ("lora:\n  target_modules: q_proj\n", "lora.target_modules"),
        ("lora:\n  target_modules: [1, 2]\n", "lora.target_modules"),
        ("resources:\n  extra_sbatch: [a]\n", "resources.extra_sbatch"),
        ("train: 5\n", "train"),
    ],
)
def test_other_wrong_types(tmp_path, text, key):
    (p,) = problems_of(tmp_path, text)
    assert p.startswith(f"{key}:")
    assert "expected" in p


@pytest.mark.parametrize(
    "text, key, expect",
    [
        ("eval:\n  num_shards: 0\n", "eval.num_shards", "must be > 0, got 0"),
        ("train:\n  learning_rate: -1\n", "train.learning_rate", "must be > 0, got -1"),
        ("lora:\n  r: 0\n", "lora.r", "must be > 0, got 0"),
        ("train:\n  batch_size: -2\n", "train.batch_size", "must be > 0, got -2"),
        ("lora:\n  dropout: 1.0\n", "lora.dropout", "[0, 1)"),
        ("data:\n  max_test_examples: -1\n", "data.max_test_examples", "must be >= 0"),
        ("resources:\n  mem_gb: 0\n", "resources.mem_gb", "must be > 0"),
        ("task:\n  max_length: 8\n", "task.max_length", ">= 16"),
        ("train:\n  epochs: 0\n  max_steps: 0\n", "train.epochs / train.max_steps", "max_steps > 0"),
        ("name: ../elsewhere\n", "name", "letters, digits"),
        ("lora:\n  top_layers: -1\n", "lora.top_layers", "must be >= 0"),
        ("data:\n  test: holdout\n", "data.test", "set data.holdout"),
        ("train:\n  loss: mse\n", "train.loss", "not one of ('labels', 'vocab')"),
        (
            "train:\n  batch_tokens: 100\n",
            "train.batch_tokens",
            "cannot hold one prompt of task.max_length 256 tokens; use at least 256, 'auto'",
        ),
        ("eval:\n  batch_tokens: lots\n", "eval.batch_tokens", "'lots' is not a number of tokens or 'auto'"),
        ("eval:\n  batch_tokens: [1]\n", "eval.batch_tokens", "expected int or str, got list [1]"),
        ("train:\n  batch_tokens: true\n", "train.batch_tokens", "expected int or str, got bool True"),
        ("train:\n  gradient_checkpointing: sometimes\n", "train.gradient_checkpointing", "true, false or auto"),
        ("resources:\n  gpu_mem_gb: 0\n", "resources.gpu_mem_gb", "must be > 0 (or left out)"),
    ],
)
def test_impossible_values(tmp_path, text, key, expect):
    (p,) = problems_of(tmp_path, text)
    assert p.startswith(f"{key}:"), p
    assert expect in p


def test_bad_enum_scoring(tmp_path):
    (p,) = problems_of(tmp_path, "task:\n  scoring: foo\n")
    assert p.startswith("task.scoring:") and "'foo'" in p
    for mode in SCORING_MODES:
        assert mode in p


def test_bad_enum_dtype(tmp_path):
    (p,) = problems_of(tmp_path, "model:\n  dtype: float8\n")
    assert p.startswith("model.dtype:") and "'float8'" in p
    for d in DTYPES:
        assert d in p


def test_bad_enum_quant_type_and_scheduler(tmp_path):
    probs = problems_of(tmp_path, "quantization:\n  quant_type: int8\ntrain:\n  lr_scheduler: step\n")
    assert len(probs) == 2
    assert any(p.startswith("quantization.quant_type:") and "nf4" in p for p in probs)
    assert any(p.startswith("train.lr_scheduler:") and "cosine" in p for p in probs)


def test_prompt_without_premise(tmp_path):
    (p,) = problems_of(tmp_path, 'task:\n  prompt: "Hypothesis: {hypothesis}\\nAnswer:"\n')
    assert p == "task.prompt: must contain {premise}"


def test_label_words_needs_three(tmp_path):
    (p,) = problems_of(tmp_path, 'task:\n  label_words: [" yes", " no"]\n')
    assert p.startswith("task.label_words:")
    assert "exactly 3" in p and "got 2" in p


def test_label_words_must_differ(tmp_path):
    (p,) = problems_of(tmp_path, 'task:\n  label_words: [" yes", " yes", " no"]\n')
    assert p == "task.label_words: words must differ"


def test_several_problems_all_reported_at_once(tmp_path):
    text = (
        "eval:\n  num_shards: 0\ntrain:\n  learning_rate: -1\n  batch_sise: 4\nlora:\n  r: 0\ntask:\n  scoring: foo\n"
    )
    probs = problems_of(tmp_path, text)
    assert len(probs) == 5, probs
    for key in ("eval.num_shards", "train.learning_rate", "train.batch_sise", "lora.r", "task.scoring"):
        assert sum(p.startswith(key + ":") for p in probs) == 1, (key, probs)
    assert "5 problem(s)" in str(ConfigError(probs))


def test_type_and_value_problems_reported_together(tmp_path):
    # A type error must not hide value errors elsewhere: the user fixes everything in one go.
    probs = problems_of(tmp_path, 'train:\n  batch_size: "16"\neval:\n  num_shards: 0\n')
    assert len(probs) == 2, probs
    assert probs[0].startswith("train.batch_size:") and "expected int" in probs[0]
    assert probs[1].startswith("eval.num_shards:") and "must be > 0" in probs[1]


def test_scientific_notation_float_in_yaml(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string; a float key must still accept it.
    cfg = load_config(write_yaml(tmp_path, "train:\n  learning_rate: 1e-4\n"))
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    (p,) = problems_of(tmp_path, "train:\n  learning_rate: fast\n")
    assert p.startswith("train.learning_rate:") and "expected float" in p


def test_synthetic_train_size_capped(tmp_path):
    (p,) = problems_of(tmp_path, "data:\n  synthetic_train_size: 5000\n")
    assert p.startswith("data.synthetic_train_size:") and "at most" in p


def test_non_mapping_yaml(tmp_path):
    (p,) = problems_of(tmp_path, "- a\n- b\n")
    assert "expected a mapping" in p and "list" in p
    (p,) = problems_of(tmp_path, "- a\n", overrides=["train.batch_size=4"])
    assert "expected a mapping" in p


def test_invalid_yaml(tmp_path):
    (p,) = problems_of(tmp_path, "train:\n  batch_size: [1, 2\n")
    assert p.startswith("not valid YAML")


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as ei:
        load_config(missing)
    (p,) = ei.value.problems
    assert str(missing) in p and "jobs/" in p


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "# only a comment\n")) == RunConfig()


def test_config_from_dict_none_is_defaults():
    assert config_from_dict(None) == RunConfig()


# ------------------------------------------------------------------ overrides


def test_overrides_apply_with_types(tmp_path):
    cfg = load_config(
        ROOT / "jobs" / "default.yaml",
        [
            "train.learning_rate=1e-4",
            "eval.num_shards=5",
            "train.gradient_checkpointing=true",
            "lora.target_modules=[q_proj, v_proj]",
            "resources.account=proj42",
            "resources.qos=null",
            "name=other",
            "resources.extra_sbatch={gres: 'gpu:1'}",
        ],
    )
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.eval.num_shards == 5
    assert cfg.train.gradient_checkpointing is True
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.resources.account == "proj42"
    assert cfg.resources.qos is None
    assert cfg.name == "other"
    assert cfg.resources.extra_sbatch == {"gres": "gpu:1"}
    # Untouched keys keep the file's values.
    assert cfg.train.batch_size == 16


@pytest.mark.parametrize(
    "prompt",
    [
        TaskConfig.prompt,
        "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
        'Say "{premise}" # then {hypothesis}: yes?',
    ],
)
def test_task_overrides_set_the_prompt_and_label_words_exactly(prompt):
    cfg = load_config(None, task_overrides(prompt, [" True", " Neither", " False"]))
    assert cfg.task.prompt == prompt
    assert cfg.task.label_words == (" True", " Neither", " False")


def test_override_later_wins():
    cfg = load_config(None, ["eval.num_shards=3", "eval.num_shards=7"])
    assert cfg.eval.num_shards == 7


def test_override_type_checked():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["train.batch_size=abc"])
    (p,) = ei.value.problems
    assert p.startswith("train.batch_size:") and "expected int" in p and "'abc'" in p


def test_override_value_checked():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["eval.num_shards=0"])
    assert ei.value.problems == ["eval.num_shards: must be > 0, got 0"]


def test_override_unknown_key():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["train.lr=0.1"])
    (p,) = ei.value.problems
    assert p.startswith("train.lr: unknown key") and "learning_rate" in p


def test_override_through_non_section(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(ROOT / "jobs" / "default.yaml", ["name.x=1"])
    (p,) = ei.value.problems
    assert "'name.x=1'" in p and "name is not a section" in p


def test_override_missing_equals():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["train.batch_size"])
    (p,) = ei.value.problems
    assert "'train.batch_size'" in p and "key=value" in p


def test_all_override_problems_reported_together():
    with pytest.raises(ConfigError) as ei:
        load_config(ROOT / "jobs" / "default.yaml", ["train.batch_size", "eval", "name.x=1"])
    probs = ei.value.problems
    assert len(probs) == 3, probs
    assert "'train.batch_size'" in probs[0] and "'eval'" in probs[1] and "'name.x=1'" in probs[2]


def test_override_through_non_section_without_file():
    # No file: 'name' is not in the data yet, so the override builds a mapping that the type check rejects.
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["name.x=1"])
    (p,) = ei.value.problems
    assert p.startswith("name:") and "expected str" in p


@pytest.mark.parametrize(
    "raw",
    [
        "'; touch x'",
        "my run with spaces",
        '"double quoted"',
        "it's",
        "a # not a comment",
        "$(touch x)",
        "Premise: {premise} Hypothesis: {hypothesis}",  # not valid YAML
        "gpu: a100",  # would be a YAML mapping
        "- a",  # would be a YAML list
        "@at",
        "!!python/object/apply:os.system ['touch x']",
    ],
)
def test_override_strings_stay_verbatim(tmp_path, monkeypatch, raw):
    monkeypatch.chdir(tmp_path)
    assert parse_override(f"resources.constraint={raw}") == (["resources", "constraint"], raw)
    cfg = load_config(None, [f"resources.constraint={raw}"])
    assert cfg.resources.constraint == raw
    assert not (tmp_path / "x").exists()


def test_override_value_may_contain_equals():
    assert parse_override("resources.constraint=a=b") == (["resources", "constraint"], "a=b")


def test_override_empty_value_is_empty_string():
    assert parse_override("resources.account=") == (["resources", "account"], "")


def test_prompt_override_with_colons():
    prompt = "Premise: {premise} Hypothesis: {hypothesis} Answer:"
    cfg = load_config(None, [f"task.prompt={prompt}"])
    assert cfg.task.prompt == prompt


# ------------------------------------------------------------------ hash


def test_hash_stable_within_and_across_processes():
    h = load_config(ROOT / "jobs" / "default.yaml").hash()
    assert h == load_config(ROOT / "jobs" / "default.yaml").hash()
    assert len(h) == 12 and int(h, 16) >= 0
    code = f"from hpcnli.config import load_config; print(load_config({str(ROOT / 'jobs' / 'default.yaml')!r}).hash())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == h


def test_hash_ignores_resources_name_and_output_root():
    base = load_config(None).hash()
    for ov in (
        ["resources.partition=other", "resources.time_min=5", "resources.account=x"],
        ["name=renamed"],
        ["output_root=/elsewhere"],
        ["resources.extra_sbatch={mail-type: END}"],
    ):
        assert load_config(None, ov).hash() == base, ov


@pytest.mark.parametrize(
    "override",
    [
        "train.learning_rate=1e-3",
        "train.seed=1",
        "lora.r=8",
        "task.scoring=head",
        "data.test=other.jsonl",
        "model.name_or_path=some/model",
    ],
)
def test_hash_changes_with_what_determines_predictions(override):
    assert load_config(None, [override]).hash() != load_config(None).hash()


def test_train_defaults_match_documented_keys():
    # Guards TRAIN_KEYS above so the unknown-key test checks the real list.
    import dataclasses

    assert tuple(f.name for f in dataclasses.fields(TrainConfig)) == TRAIN_KEYS


def test_numbers_given_where_text_is_meant_are_kept_as_text(tmp_path):
    """YAML reads `name: 2024` and `account=12345` as numbers; a string field takes them as the text."""
    path = tmp_path / "numbers.yaml"
    path.write_text("name: 2024\nresources:\n  qos: 7\n")
    cfg = load_config(path, ["resources.account=12345"])
    assert (cfg.name, cfg.resources.account, cfg.resources.qos) == ("2024", "12345", "7")


# ------------------------------------------------------------------ what shapes the adapter, pinned hashes

# Today's values, pinned. `hash` and `train_hash_v1` were computed with hpcnli/config.py as of ac0ad14 (before
# it became a package): run files record them, so they must not change. `train_hash` is the schema-derived one.
PINNED_HASHES = {  # job file: (hash, train_hash_v1, train_hash)
    "default.yaml": ("b4aaf1b8f3f8", "54429774771e", "0da6df44a9c8"),
    "snli_cpu.yaml": ("c455b8acacfd", "b94f3a188df4", "2fbff9b23450"),  # with its learning curve since session 8
}

# The keys whose values shape the adapter. Changing this list changes every train_hash: runs trained
# before would look stale on --resume. Each is marked `shapes_adapter=True` beside its field in the schema.
ADAPTER_KEYS = (
    "model.name_or_path",
    "model.revision",
    "model.trust_remote_code",
    "model.dtype",
    "quantization.load_in_4bit",
    "quantization.quant_type",
    "quantization.double_quant",
    "quantization.compute_dtype",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    "lora.top_layers",
    "data.train",
    "data.max_train_examples",
    "data.holdout",
    "data.subset_seed",
    "data.synthetic_train_size",
    "task.scoring",
    "task.prompt",
    "task.label_words",
    "task.max_length",
    "train.batch_size",
    "train.batch_tokens",
    "train.grad_accum",
    "train.learning_rate",
    "train.lr_scheduler",
    "train.warmup_ratio",
    "train.weight_decay",
    "train.max_grad_norm",
    "train.epochs",
    "train.max_steps",
    "train.group_by_length",
    "train.loss",
    "train.gradient_checkpointing",
    "train.seed",
    "train.eval_every",
    "train.eval_pairs",
    "train.keep",
    "train.early_stopping_patience",
    "resources.train_processes",
)
# The fields resources.train_processes is computed from.
TRAIN_PROCESS_FIELDS = {"resources.gpus_per_node": 2, "resources.processes_per_node": 3, "resources.nodes": 2}


@pytest.mark.parametrize("name", sorted(PINNED_HASHES))
def test_hashes_of_shipped_configs_are_pinned(name):
    cfg = load_config(ROOT / "jobs" / name)
    assert (cfg.hash(), cfg.train_hash_v1(), cfg.train_hash()) == PINNED_HASHES[name]


def test_hashes_of_the_defaults_are_pinned():
    cfg = RunConfig()
    assert (cfg.hash(), cfg.train_hash_v1(), cfg.train_hash()) == ("2f1952a3af41", "5cf34a6cdc5b", "775e47e655fa")


def test_adapter_keys_come_from_the_schema():
    assert RunConfig.adapter_keys() == ADAPTER_KEYS


def _leaf_fields(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, key)
        else:
            yield key, f


def test_every_field_says_whether_it_shapes_the_adapter():
    for key, f in _leaf_fields(RunConfig()):
        assert isinstance(f.metadata.get("shapes_adapter"), bool), f"{key}: declare it with setting(shapes_adapter=)"


def _with(cfg: RunConfig, key: str, value) -> RunConfig:
    section, _, name = key.rpartition(".")
    if not section:
        return dataclasses.replace(cfg, **{key: value})
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})


@pytest.mark.parametrize("key", [k for k, _ in _leaf_fields(RunConfig())])
def test_train_hash_changes_exactly_with_the_adapter_keys(key):
    """train_hash uses the schema-derived list: a field changes it if and only if it is marked
    shapes_adapter or resources.train_processes is computed from it."""
    cfg = load_config(ROOT / "jobs" / "default.yaml")
    changed = _with(cfg, key, TRAIN_PROCESS_FIELDS.get(key, "changed"))
    shapes = key in RunConfig.adapter_keys() or key in TRAIN_PROCESS_FIELDS
    assert (changed.train_hash() != cfg.train_hash()) == shapes, key


@pytest.mark.parametrize(
    "override",
    [
        "train.log_every=7",
        "train.checkpoint_every=3",
        "eval.num_shards=5",
        "data.test=other.jsonl",
        "resources.partition=other",
        "name=renamed",
    ],
)
def test_train_hash_ignores_what_does_not_shape_the_adapter(override):
    base = load_config(ROOT / "jobs" / "default.yaml")
    assert load_config(ROOT / "jobs" / "default.yaml", [override]).train_hash() == base.train_hash()


def test_train_hash_v1_hashed_the_log_and_checkpoint_intervals():
    """The flaw train_hash fixes: editing train.log_every, then --resume, retrained the adapter."""
    base = load_config(ROOT / "jobs" / "default.yaml")
    for override in ("train.log_every=7", "train.checkpoint_every=3"):
        assert load_config(ROOT / "jobs" / "default.yaml", [override]).train_hash_v1() != base.train_hash_v1()


@pytest.mark.parametrize(
    "override", ["lora.r=8", "train.learning_rate=1e-4", "data.train=other.jsonl", "resources.processes_per_node=2"]
)
def test_train_hash_changes_with_what_shapes_the_adapter(override):
    base = load_config(ROOT / "jobs" / "default.yaml")
    cfg = load_config(ROOT / "jobs" / "default.yaml", [override])
    assert cfg.train_hash() != base.train_hash() and cfg.train_hash_v1() != base.train_hash_v1()


# ------------------------------------------------------------------ conversion and checks, more cases


@pytest.mark.parametrize(
    "text, expect",
    [
        ("train:\n  learning_rate: true\n", "train.learning_rate: expected float, got bool True"),
        ('train:\n  learning_rate: "0.5"\n', "train.learning_rate: expected float, got str '0.5'"),
        ("train:\n  batch_tokens: 1.5\n", "train.batch_tokens: expected int or str, got float 1.5"),
        ("train:\n  gradient_checkpointing: 1\n", "train.gradient_checkpointing: expected bool or str, got int 1"),
        ("resources:\n  eval_cpus_per_task: true\n", "resources.eval_cpus_per_task: expected int, got bool True"),
    ],
)
def test_no_coercion_beyond_the_documented_rules(tmp_path, text, expect):
    assert problems_of(tmp_path, text) == [expect]


def test_scientific_notation_in_an_optional_float(tmp_path):
    assert load_config(write_yaml(tmp_path, "resources:\n  gpu_mem_gb: 8e1\n")).resources.gpu_mem_gb == 80.0


def test_extra_sbatch_values_are_text(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "resources:\n  extra_sbatch: {nice: 5, mail-type: END}\n"))
    assert cfg.resources.extra_sbatch == {"nice": "5", "mail-type": "END"}


def test_every_check_of_one_field_reports(tmp_path):
    probs = problems_of(tmp_path, 'task:\n  label_words: [" yes", " yes"]\n  prompt: "Answer:"\n')
    assert probs == [
        "task.prompt: must contain {premise}",
        "task.prompt: must contain {hypothesis}",
        "task.label_words: need exactly 3 words (entailment, neutral, contradiction), got 2",
        "task.label_words: words must differ",
    ]


def test_cross_field_problems_with_field_problems(tmp_path):
    probs = problems_of(
        tmp_path,
        "train:\n  epochs: 0\n  max_steps: -1\n  batch_tokens: 8\n"
        "resources:\n  gpus_per_node: 1\n  processes_per_node: 0\n"
        "  extra_sbatch: {'a b': \"x\\ny\"}\n",
    )
    assert probs == [
        "train.max_steps: must be >= 0, got -1",
        "train.epochs / train.max_steps: set epochs > 0 or max_steps > 0",
        "resources.processes_per_node: must be > 0 (or left out: 1), got 0",
        "resources.processes_per_node: only without GPUs; with resources.gpus_per_node > 0 one training process "
        "runs per GPU, so leave processes_per_node out",
        "resources.extra_sbatch: option name 'a b' must be letters, digits and '-' (e.g. mail-type)",
        "resources.extra_sbatch.a b: must not contain a line break",
        "train.batch_tokens: 8 tokens cannot hold one prompt of task.max_length 256 tokens; use at least 256, "
        "'auto' (sized from memory), or leave it out (batch_size pairs)",
    ]


def test_override_of_a_file_with_a_date_is_a_config_error(tmp_path):
    # YAML reads 2024-01-01 as a date; with an override this once crashed copying the data through JSON.
    for overrides in ([], ["eval.num_shards=3"]):
        (p,) = problems_of(tmp_path, "name: 2024-01-01\n", overrides)
        assert p == "name: expected str, got date datetime.date(2024, 1, 1)"
