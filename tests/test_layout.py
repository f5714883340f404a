"""The package's layers, checked from its import statements: no circle, and no import upwards.

python tests/test_layout.py      # prints every module's layer and what it imports
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpcnli"

# Lowest first. A module may import modules of its own layer or of any layer below, never above.
LAYERS = [
    ("foundations", ["hpcnli.errors", "hpcnli.io", "hpcnli.logs", "hpcnli.data.*", "hpcnli.cluster.*"]),
    ("schema", ["hpcnli.config", "hpcnli.config.*", "hpcnli.run.paths", "hpcnli.records"]),
    ("model", ["hpcnli.model.*"]),
    ("scoring and reporting", ["hpcnli.scoring.*", "hpcnli.report.*"]),
    ("run state", ["hpcnli.run.*", "hpcnli.sweeps.*"]),
    ("stages", ["hpcnli.finetune", "hpcnli.evaluate", "hpcnli.reduce"]),
    ("launchers", ["hpcnli.launch.*"]),
    ("commands", ["hpcnli.submit", "hpcnli.sweep", "hpcnli.status", "hpcnli.cli"]),
]


def module_names() -> list[str]:
    names = []
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" or "metrics" in parts:  # metrics/: an `evaluate` metric module, not imported
            continue
        names.append(".".join(parts))
    return names


def layer_of(module: str) -> int:
    """A module named exactly goes in that layer; otherwise in the layer whose `package.*` holds it."""
    matches = [i for i, (_, patterns) in enumerate(LAYERS) if module in patterns]
    matches = matches or [
        i for i, (_, patterns) in enumerate(LAYERS) for p in patterns if p.endswith(".*") and module.startswith(p[:-1])
    ]
    if len(matches) != 1:
        raise AssertionError(f"{module} is in {len(matches)} layers of tests/test_layout.py; give it exactly one")
    return matches[0]


def imports_of(module: str, known: set[str]) -> set[str]:
    """hpcnli modules that `module` imports, at the top or inside functions."""
    tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found - {module}


def graph() -> dict[str, set[str]]:
    known = set(module_names())
    return {m: imports_of(m, known) for m in sorted(known)}


def test_every_module_has_one_layer():
    for m in module_names():
        layer_of(m)


def test_no_import_reaches_up_a_layer():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph().items()
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


def test_no_import_circle():
    g, done, path = graph(), set(), []

    def visit(m: str) -> None:
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m) :] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(g[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in g:
        visit(m)


def test_submitit_and_slurm_variables_stay_at_the_edge():
    """Only the Slurm launcher imports submitit; only JobEnvironment reads SLURM_* variables."""
    for m in module_names():
        text = (PACKAGE.parent / (m.replace(".", "/") + ".py")).read_text()
        if m != "hpcnli.launch.slurm":
            assert "import submitit" not in text, m
        if m != "hpcnli.cluster.env":
            assert "SLURM_" not in text.replace("SLURM_CONF", ""), m


if __name__ == "__main__":
    for i, (name, _) in enumerate(LAYERS):
        print(f"{i} {name}")
        for m, deps in graph().items():
            if layer_of(m) == i:
                print(f"    {m:<24} <- " + ", ".join(sorted(d.removeprefix("hpcnli.") for d in deps)))
    sys.exit(0)
