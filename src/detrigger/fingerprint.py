"""Content fingerprints of file inputs: caches and bench cells are keyed by what a file holds, never by
where it lies, so an edited data file or model folder is never served from a cache."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

CHUNK = 1 << 20


def content_id(path: str | Path) -> str:
    """`sha256:<hex>` of a file's bytes, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = tuple((str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in files)
    return _digest(path, stats)


@lru_cache(maxsize=64)
def _digest(path: Path, stats: tuple[tuple[str, int, int], ...]) -> str:
    """Hash once per (path, names, sizes, mtimes): a rewritten file changes its mtime, so it is hashed again."""
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(name.encode() + b"\0")
        with open(path / name if path.is_dir() else path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()
