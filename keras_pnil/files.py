"""Atomic writes: readers (and a resumed run) never see half a file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path


def _mode(path: Path) -> int:
    """The permissions the file should have: its current ones, else what `open` would give a new file."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Writes `data` to `path` through a uniquely named temporary file in the same directory.

    The temporary name is unique per writer (two writers of one file cannot
    clobber each other's half-written copy) and its content reaches the disk
    (`fsync`) before the rename, so a crash leaves the old file or the new one.
    A failure (full disk, read-only folder) raises an OSError naming `path`
    and leaves any earlier file there as it was.
    """
    path, tmp = Path(path), None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, _mode(path))  # mkstemp makes owner-only files; results are for everyone to read
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink()
    return path


def atomic_write_text(path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, value) -> Path:
    """`value` as indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(value, indent=2))


def read_json(path):
    """The JSON value in `path`."""
    return json.loads(Path(path).read_text())


def check_writable(directory) -> Path:
    """Creates `directory` if needed and proves a file can be written there, or raises an OSError naming it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(err.errno, f"cannot write to {directory}: {err.strerror or err}") from None
    return directory


@contextlib.contextmanager
def exclusive(directory, what: str = "results"):
    """Holds an exclusive lock on `directory` (a `.lock` file in it) while the block runs.

    A second process asking for the same folder gets an OSError at once, naming the
    process that holds it, instead of both writing half of the results.
    """
    path = Path(directory) / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OSError(errno.EBUSY, f"{directory} is in use: {holder} is writing {what} there; wait for it to "
                                   "finish or write elsewhere") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # still locked: nobody waits for it (the lock is never waited for)
        handle.close()
