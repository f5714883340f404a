"""The words the schema declares its fields with: `setting()`, and the checks that sit beside each field.

A check takes a field's value (never None: a field left out is not checked) and returns what is wrong
with it, the text after "key: " in the message, or None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hpcnli.errors import UserFacingError

Check = Callable[[Any], "str | None"]


class ConfigError(UserFacingError, ValueError):
    """Every problem found in a config, one per line, each naming the key to change."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    shapes_adapter: bool,
    check: Check | tuple[Check, ...] = (),
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A field of the schema: its default, whether its value shapes the trained adapter (so that
    RunConfig.train_hash covers it) and the checks its value must pass."""
    checks = check if isinstance(check, tuple) else (check,)
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"shapes_adapter": shapes_adapter, "checks": checks}
    )


def shapes_adapter(f: dataclasses.Field) -> bool:
    return f.metadata["shapes_adapter"]


def checks_of(f: dataclasses.Field) -> tuple[Check, ...]:
    return f.metadata["checks"]


def _note(note: str) -> str:
    return f" ({note})" if note else ""


def above(limit: float, note: str = "") -> Check:
    """`must be > 0, got -2`; a note says what leaving the key out means."""
    return lambda v: None if v > limit else f"must be > {limit}{_note(note)}, got {v}"


def at_least(limit: float, note: str = "") -> Check:
    return lambda v: None if v >= limit else f"must be >= {limit}{_note(note)}, got {v}"


def fraction(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def one_of(choices: tuple) -> Check:
    return lambda v: None if v in choices else f"{v!r} is not one of {choices}"


def either(a: str, b: str) -> Check:
    return lambda v: None if v in (a, b) else f"{v!r} is not {a!r} or {b!r}"


def require(ok: Callable[[Any], Any], message: str | Callable[[Any], str]) -> Check:
    """`message` (a text, or a function of the value that gives it) where `ok(value)` is false."""
    return lambda v: None if ok(v) else (message(v) if callable(message) else message)


# Values that become `#SBATCH --key=value` lines: a line break would start a new line of the script.
one_line = require(lambda v: not any(c in v for c in "\r\n"), "must not contain a line break")
