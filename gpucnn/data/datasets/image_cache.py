"""The cache of decoded image folders: one uint8 .npz file per (folder, decoding settings)
in a cache folder (default: :func:`default_cache_dir`), so that a second run reads the
images at once instead of decoding them again.

A file is named ``<folder name>-<key>.npz``; the key hashes every image file's path, size
and modification time and the decoding settings asked for (channels, image size), so a
changed folder gets a new file. Besides the arrays gpucnn.data.datasets.folder decodes, each
file records its ``source`` (the image folder's absolute path) and the ``settings`` asked
for, which is what :func:`list_cache`, :func:`clear_cache` and the pruning read:

    write_cache(path, arrays, folder, channels, image_size)  # then prunes stale files
    for entry in list_cache(default_cache_dir()): print(entry.source, entry.images)
    clear_cache(default_cache_dir(), folder="photos")        # or every file: folder=None

scripts/image_cache.py is the command line (``list``, ``clear [FOLDER]``). A file's
modification time is its last use: a read touches it.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from ...fileio import atomic_output

__all__ = ["CACHE_FORMAT", "CacheEntry", "default_cache_dir", "cache_key", "cache_path", "read_cache",
           "write_cache", "prune_cache", "list_cache", "clear_cache"]

CACHE_FORMAT = 1  # in the key: a new format decodes again (the source/settings entries are extra, not new)
_NAME = re.compile(r"^(?P<folder>.+)-(?P<key>[0-9a-f]{20})\.npz$")  # <folder name>-<key[:20]>.npz
_METADATA = ("source", "settings")  # the entries this module adds to the decoded arrays


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gpucnn/images, else ~/.cache/gpucnn/images: a per-user folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpucnn" / "images"


def _settings(channels, image_size) -> str:
    """The decoding settings asked for (None: chosen from the images), as one JSON string."""
    return json.dumps({"channels": channels, "image_size": list(image_size) if image_size else None})


def cache_key(folder: Path, paths: list, channels, image_size) -> str:
    """sha256 hex of the cache format, ``folder``'s absolute path, every file's (relative
    path, size, modification time) and the settings asked for."""
    stats = []
    for rel in paths:
        info = os.stat(folder / rel)
        stats.append([rel, info.st_size, info.st_mtime_ns])
    settings = {"format": CACHE_FORMAT, "folder": str(folder.resolve()), "files": stats,
                "channels": channels, "image_size": list(image_size) if image_size else None}
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()


def cache_path(cache_dir, folder: Path, key: str) -> Path:
    """The cache file of ``folder`` under ``key``: ``cache_dir/<folder name>-<key[:20]>.npz``."""
    return Path(cache_dir) / f"{folder.resolve().name}-{key[:20]}.npz"


def read_cache(path: Path, n: int) -> dict | None:
    """The arrays of the cache file ``path`` when it holds ``n`` images, else None (absent,
    damaged or another size: decode again). A hit touches the file: its modification time
    is its last use."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            cached = {k: archive[k] for k in archive.files if k not in _METADATA}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    if len(cached.get("images", ())) != n:
        return None
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves
        pass
    return cached


def write_cache(path: Path, arrays: dict, folder: Path, channels, image_size) -> list[Path]:
    """Write ``arrays`` (what gpucnn.data.datasets.folder decoded) to ``path`` atomically, with
    ``folder``'s absolute path and the settings asked for, then prune: every other cache
    file in the same folder made from the same image folder with the same settings asked
    for (``channels``, ``image_size``; None counts as its own setting) is stale, a decode of
    an older state of the folder, and is deleted. Files of other folders, and of the same
    folder decoded with other settings (``--channels 1`` beside the default), are kept:
    one file per (folder, channels, image size). Returns the deleted files; raises OSError
    when ``path`` cannot be written (nothing is pruned then)."""
    source = str(folder.resolve())
    with atomic_output(path, suffix=".npz") as f:
        np.savez(f, **arrays, source=np.asarray(source), settings=np.asarray(_settings(channels, image_size)))
    return prune_cache(path, source, channels, image_size)


def prune_cache(keep: Path, source: str, channels, image_size) -> list[Path]:
    """Delete the cache files beside ``keep`` made from ``source`` with the same settings
    asked for (see :func:`write_cache`); returns them. A file that cannot be deleted stays."""
    keep = Path(keep)
    settings = _settings(channels, image_size)
    removed = []
    for path in sorted(keep.parent.glob(f"{glob.escape(Path(source).name)}-*.npz")):
        if path.name == keep.name or not _NAME.match(path.name):
            continue
        entry = _read_entry(path)
        if entry is None or entry.source != source or entry.settings != settings:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One cache file: ``source`` (the image folder's absolute path; None for a file written
    before gpucnn recorded it), ``images`` (files in the folder, ``unreadable`` of them not
    decodable), ``shape`` (C, H, W) of the decoded images, ``bytes`` on disk, ``last_used``
    (seconds since the epoch), ``settings`` (JSON of the settings asked for, or None)."""
    path: Path
    source: str | None
    images: int
    unreadable: int
    shape: tuple
    bytes: int
    last_used: float
    settings: str | None = None


def _read_entry(path: Path) -> CacheEntry | None:
    """The CacheEntry of ``path``, or None when it is not a readable cache file. Reads the
    small entries only (not the images)."""
    try:
        info = path.stat()
        with np.load(path, allow_pickle=False) as archive:
            if "ok" not in archive.files or "images" not in archive.files:
                return None
            ok = archive["ok"]  # (N,) bool: one byte per file
            channels, size = int(archive["channels"]), tuple(int(v) for v in archive["image_size"])
            source = str(archive["source"]) if "source" in archive.files else None
            settings = str(archive["settings"]) if "settings" in archive.files else None
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile):
        return None
    return CacheEntry(path, source, len(ok), int(len(ok) - ok.sum()), (channels, *size), info.st_size,
                      info.st_mtime, settings)


def _cache_files(cache_dir) -> list[Path]:
    """The files in ``cache_dir`` named as cache files are (``<name>-<20 hex digits>.npz``);
    a folder that does not exist holds none. Temporary files (``.tmp-*``) are not listed."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if _NAME.match(p.name) and p.is_file())


def list_cache(cache_dir) -> list[CacheEntry]:
    """Every cache file in ``cache_dir``, the most recently used first. A file named like
    a cache file that cannot be read is listed with ``images`` -1 (clear removes it); a
    readable .npz that is not a cache file is left out."""
    entries = []
    for path in _cache_files(cache_dir):
        entry = _read_entry(path)
        if entry is None:
            if _is_other_npz(path):
                continue
            info = path.stat()
            entry = CacheEntry(path, None, -1, 0, (), info.st_size, info.st_mtime)
        entries.append(entry)
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def _is_other_npz(path: Path) -> bool:
    """True when ``path`` is a readable zip without the cache's arrays (someone else's file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "ok.npy" not in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def clear_cache(cache_dir, folder=None) -> list[CacheEntry]:
    """Delete the cache files in ``cache_dir``: all of them, or with ``folder`` only those
    made from that image folder (compared as absolute paths; the folder need not exist any
    more). Returns the deleted entries. Raises OSError when a file cannot be deleted."""
    source = None if folder is None else str(Path(folder).resolve())
    removed = []
    for entry in list_cache(cache_dir):
        if source is None or entry.source == source:
            entry.path.unlink(missing_ok=True)
            removed.append(entry)
    return removed
