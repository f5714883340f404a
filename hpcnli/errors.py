"""What every command does with an error: one line naming what to change, exit status 2.

Every mistake a user can make, and every fault of the environment hpcnli can name (a full disk, a
read-only directory, Ctrl-C), is a `UserFacingError` or is turned into one line here. A traceback
means a bug in hpcnli itself.
"""

from __future__ import annotations

import errno
import sys


class UserFacingError(Exception):
    """An error whose message says what to change; commands print it on one line and exit 2."""


class Interrupted(Exception):
    """SIGTERM (scancel, kill, a session's end), raised like Ctrl-C's KeyboardInterrupt so cleanup runs."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into Interrupted in this process, so `finally` blocks (stopping child stages) run."""
    import signal

    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


ENVIRONMENT_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


WRITE_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # faults only a write meets


def run_command(name: str, work) -> int:
    """Call work() and turn the errors a user can act on into one line on stderr and exit status 2.
    Returns work()'s exit status (0 when it returns something else)."""
    after = "; files already written are kept"
    try:
        status = work()
        return status if isinstance(status, int) else 0
    except UserFacingError as e:
        print(f"{name}: {e}", file=sys.stderr)
    except (KeyboardInterrupt, Interrupted) as e:
        why = f" ({e})" if str(e) else ""
        print(f"{name}: interrupted{why}{after}", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in ENVIRONMENT_FAULTS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        verb = "cannot write" if e.errno in WRITE_FAULTS else "cannot read or write"  # EACCES: either
        print(f"{name}: {verb}{where}: {ENVIRONMENT_FAULTS[e.errno]}{after}", file=sys.stderr)
    return 2
