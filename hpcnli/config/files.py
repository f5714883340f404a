"""Reading a config: the YAML file (a key given twice is refused with its line numbers), then
`key=value` overrides from the command line; and writing the resolved config next to a run."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hpcnli.config.build import config_from_dict
from hpcnli.config.checks import ConfigError
from hpcnli.config.schema import RunConfig


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (["train", "learning_rate"], 0.0001); values are YAML scalars."""
    if "=" not in item:
        raise ConfigError([f"override {item!r}: write it as key=value, e.g. train.max_steps=10"], "command line")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:  # e.g. "Premise: {premise} ..." or "@x": not YAML, so plain text
        value = raw
    if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
        value = raw  # only [a, b] / {k: v} are collections; "gpu: a100" or "- x" stay text
    if isinstance(value, str) or value is None:
        value = raw  # keep strings verbatim (YAML would eat quotes, '#' comments, etc.)
        if raw.lower() in ("null", "none", "~"):
            value = None
    return key.strip().split("."), value


def task_overrides(prompt: str, label_words) -> list[str]:
    """Overrides that set task.prompt and task.label_words to exactly these values.

    The prompt goes in as it is: parse_override keeps text verbatim, so quoting it would put the
    quotes (and backslash escapes) into the prompt.
    """
    return [f"task.prompt={prompt}", f"task.label_words={json.dumps(list(label_words))}"]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with the overrides applied in order (a later one wins); every problem at once."""
    data = copy.deepcopy(data)
    problems = []
    for item in overrides:
        try:
            path, value = parse_override(item)
        except ConfigError as e:
            problems += e.problems
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
        else:
            node[path[-1]] = value
    if problems:
        raise ConfigError(problems, "command line")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    [
                        f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one section "
                        f"(first on line {seen[key] + 1}); keep one"
                    ]
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent, index):
        """No aliases: a 1 KB file of nested aliases expands to billions of values (a "YAML bomb")."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                [
                    f"line {event.start_mark.line + 1}: alias *{event.anchor}: configs take no YAML aliases; "
                    "write the value out"
                ]
            )
        return super().compose_node(parent, index)


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; a larger file is no config


def read_yaml(path: Path, source: str) -> Any:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,} (see jobs/*.yaml)"], source
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["not UTF-8 text; a config is a YAML text file (see jobs/*.yaml)"], source) from None
    except OSError as e:
        raise ConfigError([f"cannot read it ({e.strerror})"], source) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(e.problems, source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults when path is None) and apply `key=value` overrides."""
    data: Any = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError([f"--config: no file {path}; the shipped configs are in jobs/"], source)
        data = read_yaml(path, source) or {}
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(["top level: expected a mapping of sections"], source)
        data = apply_overrides(data, list(overrides))
    return config_from_dict(data, source)


def save_config(cfg: RunConfig, path: Path) -> None:
    from hpcnli.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
