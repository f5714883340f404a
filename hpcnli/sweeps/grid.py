"""A sweep as planned: a grid of recipes (points) times seeds, each point x seed an ordinary run directory.

    results/<sweep>/sweep.json        the plan (records.SweepPlan): base config, grid, seeds, runs, base groups
    results/<sweep>/p00-s0/ ...       one run per point and seed, planned as hpcnli.submit plans a run
    results/<sweep>/report.{md,json}  the comparison (hpcnli.sweeps.compare)

Every run's config is built and checked before any directory is made. Runs whose base-model settings are
equal (config.hashing.base_settings) share one base evaluation: the first of them (the group's owner) scores
the base model, and the others' predictions/base is a link to its shards, which they accept because base
shards record the base hash, not the run's.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from hpcnli.config import ConfigError, RunConfig, load_config, read_yaml
from hpcnli.records import SweepPlan
from hpcnli.run.paths import SWEEP_PLAN, RunPaths
from hpcnli.run.planning import PlanError, create_run, provenance

SEED_KEY = "train.seed"
MAX_RUNS = 1000  # points x seeds: far beyond any sensible sweep, and a typo like lr=1e-5,...x100 is caught
# Keys whose sweeping would make the points incomparable, or compare nothing: key or section -> why.
UNSWEPT = {
    "data": "every point is trained and ranked on the same pairs and scored on the same test pairs",
    "eval": "every point's test pairs are scored alike (eval settings change how, not which recipe)",
    "train.eval_pairs": "every point is ranked on the same held-out pairs",
    SEED_KEY: "seeds are the sweep's other axis: give them with --seeds (or seeds: in a sweep file)",
    "resources": "resources change no result; set them once, as key=value without commas",
    "name": "the sweep names its runs itself",
    "output_root": "the sweep's runs live in its own directory",
}


def _unswept_reason(key: str) -> str | None:
    for prefix, why in UNSWEPT.items():
        if key == prefix or key.startswith(prefix + "."):
            return why
    return None


def split_values(raw: str) -> list[str]:
    """`3e-4,1e-3` -> ["3e-4", "1e-3"]: commas outside brackets and quotes separate values (Hydra's multirun
    syntax); a value wholly in quotes loses them, so `'a, b'` is one value."""
    values, depth, quote, current = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += ch
    values.append(current)
    return [v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v for v in values]


def value_text(value) -> str:
    """A YAML value as override text (parse_override reads it back to the same value)."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Sweep:
    """What the user asked for: a base config, overrides every point gets, the grid and the seeds."""

    name: str
    config: str
    overrides: tuple[str, ...]
    grid: dict[str, list[str]]  # dotted key -> values as override text, in the order given
    seeds: tuple[int, ...]

    @classmethod
    def from_cli(cls, config: str, items: list[str], seeds: str, name: str | None) -> Sweep:
        """`key=a,b` items are swept, `key=a` items are overrides for every point."""
        grid: dict[str, list[str]] = {}
        fixed = []
        for item in items:
            if "=" not in item:
                raise PlanError(
                    f"{item!r}: write a swept key as key=value1,value2 (e.g. train.learning_rate=3e-4,1e-3)"
                )
            key, raw = item.split("=", 1)
            values = split_values(raw)
            if len(values) > 1:
                if key in grid:
                    raise PlanError(f"{key}: swept twice; give all its values once, separated by commas")
                grid[key.strip()] = values
            else:
                fixed.append(f"{key}={values[0]}")
        return cls(
            name or Path(config).stem.replace("_", "-") + "-sweep", config, tuple(fixed), grid, parse_seeds(seeds)
        )

    @classmethod
    def from_file(cls, path: str) -> Sweep:
        """A sweep file (jobs/sweeps/*.yaml): name, config (relative to the repository root, as on the command
        line), overrides (a mapping), grid (key -> list of values), seeds (a list)."""
        data = read_yaml(Path(path), path)
        if not isinstance(data, dict):
            raise PlanError(f"{path}: expected a mapping with config, grid and seeds")
        unknown = sorted(set(data) - {"name", "config", "overrides", "grid", "seeds"})
        if unknown:
            raise PlanError(
                f"{path}: unknown key(s) {', '.join(unknown)}; a sweep file has name, config, overrides, grid, seeds"
            )
        grid, overrides = data.get("grid") or {}, data.get("overrides") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise PlanError(
                f"{path}: grid: map each swept key to a list of values, e.g. train.learning_rate: [3.0e-4, 1.0e-3]"
            )
        if not isinstance(overrides, dict):
            raise PlanError(f"{path}: overrides: a mapping of key: value applied to every point")
        seeds = data.get("seeds")
        if not isinstance(seeds, list):
            raise PlanError(f"{path}: seeds: a list of training seeds, e.g. [0, 1]")
        if "config" not in data:
            raise PlanError(f"{path}: config: name the base run config, e.g. jobs/snli_cpu.yaml")
        return cls(
            str(data.get("name") or Path(path).stem.replace("_", "-")),
            str(data["config"]),
            tuple(f"{k}={value_text(v)}" for k, v in overrides.items()),
            {str(k): [value_text(v) for v in values] for k, values in grid.items()},
            parse_seeds(",".join(str(s) for s in seeds)),
        )

    def points(self) -> list[dict]:
        """Every combination of the grid's values: [{"point": "p00", "settings": {key: value text}}]."""
        combos = itertools.product(*self.grid.values())
        return [{"point": f"p{i:02d}", "settings": dict(zip(self.grid, c))} for i, c in enumerate(combos)]


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise PlanError(f"--seeds: {text!r} must be integers separated by commas, e.g. 0,1,2") from None
    if len(seeds) < 2:
        raise PlanError(
            f"--seeds: {text!r} gives {len(seeds)} seed(s); a sweep needs at least 2 to tell a recipe from seed noise"
        )
    if len(set(seeds)) != len(seeds):
        raise PlanError(f"--seeds: {text!r} repeats a seed; each seed once")
    return seeds


def check_grid(sweep: Sweep) -> None:
    """Refusals that need no config: an empty grid, a key that cannot be swept, a value given twice."""
    if not sweep.grid:
        raise PlanError(
            "the grid is empty: sweep at least one key over two or more values, e.g. train.learning_rate=3e-4,1e-3 "
            "(for one recipe over seeds, sweep a key over its one value and another)"
        )
    for key, values in sweep.grid.items():
        why = _unswept_reason(key)
        if why:
            raise PlanError(f"{key}: cannot be swept: {why}")
        if len(values) < 2:
            raise PlanError(f"{key}: swept over {len(values)} value(s); give two or more, or set it once as key=value")
        if len(set(values)) != len(values):
            raise PlanError(f"{key}: the value(s) {sorted({v for v in values if values.count(v) > 1})} are given twice")
    for item in sweep.overrides:
        if item.split("=", 1)[0].strip() == SEED_KEY:
            raise PlanError(f"{SEED_KEY}: {UNSWEPT[SEED_KEY]}")
    runs = len(sweep.points()) * len(sweep.seeds)
    if runs > MAX_RUNS:
        raise PlanError(f"the sweep has {runs} runs (points x seeds); at most {MAX_RUNS}: narrow the grid")


def run_name(point: str, seed: int) -> str:
    return f"{point}-s{seed}"


def point_configs(sweep: Sweep, partition: list[str]) -> list[tuple[dict, int, RunConfig]]:
    """Every point x seed's config, built and checked; all problems at once, each naming its point."""
    check_grid(sweep)
    out, problems, seen = [], [], set()
    for point in sweep.points():
        settings = [f"{k}={v}" for k, v in point["settings"].items()]
        for seed in sweep.seeds:
            name = f"name={sweep.name}-{run_name(point['point'], seed)}"
            try:
                cfg = load_config(sweep.config, [*sweep.overrides, *settings, f"{SEED_KEY}={seed}", name, *partition])
            except ConfigError as e:
                if not Path(sweep.config).is_file():
                    raise PlanError(str(e)) from None
                text = ", ".join(settings)
                problems += [f"point {point['point']} ({text}): {p}" for p in e.problems if p not in seen]
                seen.update(e.problems)  # a problem every point has (a misspelt key) is said once
                continue
            out.append((point, seed, cfg))
    if problems:
        raise PlanError("\n".join(problems))
    check_comparable([cfg for _, _, cfg in out])
    return out


def check_comparable(cfgs: list[RunConfig]) -> None:
    """The points must be ranked on held-out pairs and scored on the same test pairs."""
    first = cfgs[0]
    if first.data.holdout <= 0 or first.train.eval_every <= 0:
        raise PlanError(
            "a sweep ranks recipes on held-out pairs, never on the test file: set data.holdout (pairs set aside, "
            f"e.g. 800) and train.eval_every (e.g. 50, or {first.train.max_steps or 'train.max_steps'} for the end "
            "of training only)"
        )
    if first.data.test == "holdout":
        raise PlanError("data.test: 'holdout' would score the pairs the sweep selects on; use a test file")


@dataclass(frozen=True)
class SweepPaths:
    sweep_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "sweep_dir", Path(self.sweep_dir).resolve())

    @property
    def plan(self) -> Path:
        return self.sweep_dir / SWEEP_PLAN

    def run(self, name: str) -> RunPaths:
        return RunPaths(self.sweep_dir / name)

    @property
    def logs(self) -> Path:
        return self.sweep_dir / "logs"

    @property
    def ledger(self) -> Path:
        """The sweep's own submissions (run.ledger): its reduce jobs; each run's jobs are in the run's ledger."""
        return self.sweep_dir / "submissions.json"

    @property
    def submitit_folder(self) -> Path:
        """submitit's folder for the sweep's own jobs (its fine-tune arrays and its reduce)."""
        return self.logs / "%j"

    @property
    def report_md(self) -> Path:
        return self.sweep_dir / "report.md"

    @property
    def report_json(self) -> Path:
        return self.sweep_dir / "report.json"

    def plot(self, name: str) -> Path:
        return self.sweep_dir / name


def is_sweep(directory: str | Path) -> bool:
    return (Path(directory) / SWEEP_PLAN).is_file()


def slurm_jobs(planned: list[tuple[dict, int, RunConfig]]) -> int:
    """Jobs the sweep puts in the queue at once (each array task counts, as for Slurm's MaxJobCount): a fine-tune
    and a fine-tuned eval array per run, a base eval array per base group, and the sweep's reduce."""
    groups = {cfg.base_hash(): cfg.eval.num_shards for _, _, cfg in planned}
    return sum(1 + cfg.eval.num_shards for _, _, cfg in planned) + sum(groups.values()) + 1


def create_sweep(sweep: Sweep, sweep_dir: Path, planned: list[tuple[dict, int, RunConfig]]) -> SweepPaths:
    """Make the sweep directory and plan its runs (point_configs checked their configs); a run that fails its
    plan (data, model) removes the sweep directory again: nothing was computed in it."""
    paths = SweepPaths(sweep_dir)
    try:
        paths.sweep_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise PlanError(f"{sweep_dir} exists; use --resume {sweep_dir} to complete it, or another --name") from None
    try:
        runs: list[dict] = []
        owners: dict[str, str] = {}
        for point, seed, cfg in planned:
            name = run_name(point["point"], seed)
            run = create_run(cfg, paths.sweep_dir / name)
            owner = owners.setdefault(cfg.base_hash(), name)
            if owner != name:  # the group's owner scores the base model; this run reads its shards
                run.shard_dir("base").parent.mkdir(parents=True, exist_ok=True)
                paths.run(owner).shard_dir("base").mkdir(parents=True, exist_ok=True)
                run.shard_dir("base").symlink_to(Path("..", "..", owner, "predictions", "base"))
            runs.append({"run": name, "point": point["point"], "seed": seed, "base_owner": owner})
        SweepPlan(
            schema_version=SweepPlan.VERSION,
            name=sweep.name,
            config=sweep.config,
            overrides=list(sweep.overrides),
            grid=sweep.grid,
            seeds=list(sweep.seeds),
            points=sweep.points(),
            runs=runs,
            base_groups=dict(owners),
            provenance=provenance(),
        ).write(paths.plan)
    except BaseException:
        shutil.rmtree(paths.sweep_dir, ignore_errors=True)
        raise
    return paths
