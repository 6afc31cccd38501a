"""Atomic writes: readers (and a resumed run) never see half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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
