"""Atomic file writes: a reader sees the old file or the whole new one, never half of either."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpcnli.errors import UserFacingError

log = logging.getLogger(__name__)


class RunFileError(UserFacingError, ValueError):
    """A file of a run that is missing or corrupt, named with what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a team on a shared cluster reads each other's reports
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def follow_umask(directory: Path) -> None:
    """Give the files a library wrote in `directory` the umask's modes (safetensors writes them 0600)."""
    for f in Path(directory).rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~_umask())


def disk_full(directory: Path, margin: int = 16 << 20) -> bool:
    """Whether the filesystem of `directory` has (almost) no space left."""
    try:
        return shutil.disk_usage(directory).free < margin
    except OSError:
        return False


@contextmanager
def directory_aside(target: Path) -> Iterator[Path]:
    """Write a directory aside, then rename it into place: readers find the old one or the whole new one.

    The staging directory is this writer's own (a unique name beside the target), so two writers never share
    one or delete each other's files, whatever a lock on a shared filesystem does; the last rename wins. An
    error leaves the target as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".staging"))
    try:
        try:
            yield staging
        except Exception as e:
            if not isinstance(e, OSError) and disk_full(target.parent):
                # torch and safetensors report a full disk in their own words (RuntimeError, SafetensorError):
                # name it as the environment fault it is, so that commands say it in one line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from e
            raise
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
        follow_umask(staging)
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def work_saving_lock(path: Path) -> Iterator[bool]:
    """An exclusive file lock (filelock) that only saves work, so it is skipped where the filesystem has none
    (Lustre mounted without flock answers ENOSYS). Yields whether the lock is held."""
    from filelock import FileLock

    lock = FileLock(path)
    try:
        lock.acquire()
    except OSError as e:
        log.warning("no file lock on %s (%s); going on without it", path, e.strerror or e)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def directory_lock(directory: Path) -> Iterator[bool]:
    """An exclusive lock on a directory itself (fcntl on its descriptor: filelock locks files), so that nothing is
    left behind in it; like work_saving_lock it only saves work and is skipped where there are no locks."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("no lock on %s (%s); going on without it", directory, e.strerror or e)
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")  # JSON, no NaN


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFileError(
            f"{path} is missing; is {Path(path).parent} a run directory made by hpcnli.submit?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path} is corrupt (not valid JSON: {e}); restore it, or start a new run") from None


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
