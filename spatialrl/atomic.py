"""Writes that a crash cannot leave half done: files by temp file + `os.replace`, folders by write-then-rename.

A reader of state (a resume, a job reading a dataset) sees either the old version or the new one, never a mix:
- `write_text` / `write_json`: the bytes go to a temporary file in the same folder, are flushed to disk, and
  the file is renamed over the target (`os.replace` is atomic on POSIX when both are on one file system).
- `staging_dir(final)` + `publish_dir(staging, final)`: a folder (a checkpoint, `final/`, a dataset) is built
  under a hidden sibling name and renamed into place once complete. An existing `final` is moved aside first
  and deleted only after the new one is in place, so `--overwrite` loses nothing when the new build fails.
  Between the two renames `final` is briefly absent; `recover_dir(final)` puts the old one back when a crash
  landed exactly there.

Floor 0 (tests/test_layout.py): standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace `path` with `data` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def staging_dir(final: str | os.PathLike) -> Path:
    """A new empty hidden sibling of `final` to build into; publish it with `publish_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def publish_dir(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the complete folder `staging` to `final`; an existing `final` is kept until the new one is in."""
    staging, final = Path(staging), Path(final)
    old = None
    if final.exists():
        old = final.parent / f"{OLD_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def recover_dir(final: str | os.PathLike) -> bool:
    """After a crash: when `final` is missing but a moved-aside old copy exists, put it back. True if done."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return False
    olds = sorted(final.parent.glob(f"{OLD_PREFIX}{final.name}-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], final)
    return True


def remove_stale(parent: str | os.PathLike, name: str) -> None:
    """Delete leftovers of interrupted builds of `parent/name` (staging folders and moved-aside old copies)."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for prefix in (STAGING_PREFIX, OLD_PREFIX):
        for p in parent.glob(f"{prefix}{name}-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


__all__ = ["write_bytes", "write_text", "write_json", "staging_dir", "publish_dir", "recover_dir", "remove_stale"]
