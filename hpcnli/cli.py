"""The `hpcnli` console command: `hpcnli submit|sweep|status|reduce ...`, the same as `python -m hpcnli.<command>`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "submit": "plan a run and execute it here or on Slurm",
    "sweep": "plan a sweep of recipes x seeds and compare them",
    "status": "where a run or a sweep stands",
    "reduce": "(re)write a run's or a sweep's report from its files",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  hpcnli {name:<7} {what}" for name, what in COMMANDS.items())
        print(f"usage: hpcnli COMMAND [ARGS]   (hpcnli COMMAND --help for its arguments)\n{usage}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from hpcnli.errors import raise_on_sigterm

    raise_on_sigterm()
    return importlib.import_module(f"hpcnli.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
