"""Atomic file and folder writes, so a crash never leaves a half-written result behind. What they leave has
the permissions the umask gives (0644 files, 0755 folders under the usual 022), like any other write: the
temp files they start from are private (0600/0700) until renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from detrigger.errors import DetriggerError


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON via a temp file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse early (before any work) to clobber an existing non-empty folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DetriggerError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DetriggerError(f"output folder {out} already exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _follow_umask(tmp)
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "x")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _follow_umask(folder: Path) -> None:
    """Give a finished folder and everything in it the umask's modes: mkdtemp makes 0700 and some writers
    (safetensors) 0600 files, which a serving user or a shared folder could not read."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _umask() -> int:
    """The process umask (read by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `path.lock` (an OS file lock) so that concurrent processes build a cached artefact once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        yield


def read_config(path: str | Path | None) -> dict[str, Any]:
    """The JSON object of a config file (empty without one); one DetriggerError naming the file otherwise."""
    if not path:
        return {}
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DetriggerError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(given, dict):
        raise DetriggerError(f"{path}: expected a JSON object")
    return given
