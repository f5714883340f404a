"""One live run per run directory: a second submit to a run in progress is refused."""

from __future__ import annotations

import fcntl
from typing import IO

from hpcnli.cluster.commands import live_jobs
from hpcnli.errors import UserFacingError
from hpcnli.run.ledger import SubmissionLedger
from hpcnli.run.paths import RunPaths


class RunLocked(UserFacingError, RuntimeError):
    pass


def lock_is_held(paths: RunPaths) -> bool:
    """Whether another process holds the run's lock now (a submit, or a stage it started), without waiting."""
    if not paths.lock.is_file():
        return False
    with open(paths.lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


class RunLock:
    """An exclusive flock while this process works on the run, plus a check for queued Slurm jobs.

    Stage processes inherit the locked file (fileno()), so the lock holds until the last of them ends. That is
    why this one lock is fcntl's own and not the filelock package's (whose descriptor is private): the others
    (io.work_saving_lock) are filelock's.
    """

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = file = open(self.paths.lock, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise RunLocked(
                f"{self.paths.run_dir} is in use by another hpcnli.submit; wait for it to end or start a new run"
            ) from None
        live = live_jobs([str(j) for j in SubmissionLedger(self.paths).job_ids()])
        if live:
            self.__exit__()
            raise RunLocked(
                f"{self.paths.run_dir} has Slurm jobs still queued or running ({', '.join(live)}); "
                f"wait for them (python -m hpcnli.status {self.paths.run_dir}) or scancel them"
            )
        return self

    def fileno(self) -> int:
        assert self._file is not None, "RunLock.fileno() outside its with block"
        return self._file.fileno()

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
