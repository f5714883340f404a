"""Run configuration: frozen dataclasses filled from `jobs/*.yaml` plus `key=value` overrides.

Validation collects every problem before anything runs and names the YAML key to change.

    schema.py   the sections and their fields; each field carries its checks and says whether it shapes
                the adapter (`setting`); checks of several fields are each section's `cross_checks`
    checks.py   `setting`, the checks fields use, ConfigError
    hashing.py  RunConfig.hash / train_hash (derived from the schema) / train_hash_v1
    build.py    plain data -> RunConfig: type conversion, then the checks
    files.py    YAML files (duplicate keys refused), key=value overrides, load_config, save_config
"""

from hpcnli.config.build import config_from_dict
from hpcnli.config.checks import ConfigError
from hpcnli.config.files import apply_overrides, load_config, parse_override, read_yaml, save_config, task_overrides
from hpcnli.config.schema import (
    DTYPES,
    LOSSES,
    MIN_PAIR_TOKENS,
    PREFIX_CHUNK_BATCHES,
    SCHEDULERS,
    SCORING_MODES,
    DataConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    QuantizationConfig,
    ResourcesConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "DTYPES",
    "LOSSES",
    "MIN_PAIR_TOKENS",
    "PREFIX_CHUNK_BATCHES",
    "SCHEDULERS",
    "SCORING_MODES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LoraConfig",
    "ModelConfig",
    "QuantizationConfig",
    "ResourcesConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "task_overrides",
]
