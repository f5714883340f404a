"""Plain data (parsed YAML with the overrides applied) -> RunConfig: each value converted to its field's
type, then every field's checks and each section's cross_checks run. All problems are reported at once.

The conversion is written here rather than left to pydantic (installed, through transformers): the rules
YAML configs need are stricter than pydantic's lax mode in some places and looser than its strict mode
in others (see `convert`), and its strict mode refuses a mapping for a dataclass, so each rule would be a
validator of our own on every field anyway."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import unicodedata
from typing import Any

from hpcnli.config.checks import ConfigError, checks_of
from hpcnli.config.schema import RunConfig

_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _WrongType(Exception):
    """A value not of its field's type; the text is the message after "key: "."""


def _is(value: Any, tp: type) -> bool:
    """isinstance, except that a bool is no int or float (YAML `true` where a number is meant is a mistake)."""
    return isinstance(value, tp) and (tp is bool or not isinstance(value, bool))


def convert(value: Any, tp: Any) -> Any:
    """`value` as the annotation `tp` takes it, or _WrongType. Beyond isinstance: a bool is never a number;
    "16" is no int and "0.5" no float, but 1e-4 is a float (PyYAML, YAML 1.1, reads it as a string); a
    number is text where text is meant (`name: 2024`); sbatch option values are all text."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None
            return convert(value, options[0])
        if any(_is(value, a) for a in options):  # int | str, bool | str: the value as it is
            return value
        raise _WrongType(f"expected {' or '.join(a.__name__ for a in options)}, got {type(value).__name__} {value!r}")
    if origin is tuple:  # tuple[str, ...]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise _WrongType(f"expected a list of strings, got {value!r}")
    if origin is dict:  # dict[str, str]
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        raise _WrongType(f"expected a mapping of option names to values, got {value!r}")
    if tp not in (int, float, str, bool):
        raise TypeError(f"unsupported annotation {tp}")
    if tp is float and (_is(value, int) or (isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()))):
        value = float(value)
    if tp is float and _is(value, float) and not math.isfinite(value):  # .inf, .nan, 1e400
        raise _WrongType(f"expected a finite number, got {value!r}")
    if tp is str and (_is(value, int) or _is(value, float)):
        return str(value)
    if _is(value, tp):
        return value
    raise _WrongType(f"expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _look_alike(key: Any) -> str:
    """Why a key that reads like a valid one is unknown: characters outside ASCII (a Cyrillic a, a no-break
    space) that look like the ones meant."""
    odd = [c for c in str(key) if ord(c) > 127 or (c.isspace() and c != " ")]
    if not odd:
        return ""
    named = ", ".join(f"{c!r} U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in dict.fromkeys(odd))
    return f" (it holds {named}, not ASCII; retype it)"


def _key(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """An instance of `cls` from a mapping; a key with a problem keeps its default, so that the checks
    after it raise no false alarms."""
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
        return cls()
    names = [f.name for f in dataclasses.fields(cls)]
    problems += [
        f"{_key(prefix, k)}: unknown key{_look_alike(k)}; valid keys here are: {', '.join(names)}"
        for k in data
        if k not in names
    ]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in (n for n in names if n in data):
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], data[name], _key(prefix, name), problems)
            continue
        try:
            kwargs[name] = convert(data[name], hints[name])
        except _WrongType as e:
            problems.append(f"{_key(prefix, name)}: {e}")
    return cls(**kwargs)


def _check(section: Any, prefix: str, problems: list[str]) -> None:
    """Each field's checks (a field left out, None, is not checked), then the section's cross_checks."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check(value, _key(prefix, f.name), problems)
        elif value is not None:
            problems += [f"{_key(prefix, f.name)}: {m}" for check in checks_of(f) if (m := check(value))]
    problems += section.cross_checks() if hasattr(section, "cross_checks") else []


def config_from_dict(data: Any, source: str = "config") -> RunConfig:
    problems: list[str] = []
    cfg = _build(RunConfig, {} if data is None else data, "", problems)
    _check(cfg, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg
