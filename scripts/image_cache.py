#!/usr/bin/env python
"""List or clear the cache of decoded image folders (train.py --dataset FOLDER fills it).

    python scripts/image_cache.py list                  # one line per cache file
    python scripts/image_cache.py clear shapes          # the files made from ./shapes
    python scripts/image_cache.py clear                 # every cache file
    python scripts/image_cache.py list --cache-dir DIR  # a cache chosen with train.py --cache-dir

A changed folder is decoded again at its next run, and that run deletes the folder's
stale file (one file is kept per folder and decoding settings); clearing is only needed
for folders you no longer use.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import ArgumentParser  # noqa: E402
from gpucnn.data.datasets.image_cache import clear_cache, default_cache_dir, list_cache  # noqa: E402


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="image_cache.py", description=__doc__.strip(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    cache_dir = argparse.ArgumentParser(add_help=False)
    cache_dir.add_argument("--cache-dir", metavar="DIR", default=argparse.SUPPRESS,
                           help=f"the cache folder, as given to train.py --cache-dir (default: {default_cache_dir()})")
    p.add_argument("--cache-dir", metavar="DIR", default=None, help=argparse.SUPPRESS)
    commands = p.add_subparsers(dest="command", metavar="{list,clear}", required=True)
    commands.add_parser("list", parents=[cache_dir], help="one line per cache file: the image folder it was "
                        "made from, images, decoded shape (and the flags asked for), size on disk, last use")
    clear = commands.add_parser("clear", parents=[cache_dir], help="delete every cache file, or those of one folder")
    clear.add_argument("folder", nargs="?", metavar="FOLDER",
                       help="delete only the files made from this image folder (it need not exist any more)")
    return p


def size_on_disk(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def describe(entry) -> list[str]:
    """The columns of one cache file's line."""
    used = "last used " + datetime.datetime.fromtimestamp(entry.last_used).strftime("%Y-%m-%d %H:%M")
    if entry.images < 0:
        return ["(damaged: clear deletes it)", "", "", size_on_disk(entry.bytes), used, entry.path.name]
    source = entry.source or "(folder not recorded: clear without FOLDER deletes it)"
    if entry.source and not os.path.isdir(entry.source):
        source += " (gone)"
    images = f"{entry.images} images" + (f", {entry.unreadable} unreadable" if entry.unreadable else "")
    return [source, images, f"{'x'.join(map(str, entry.shape))} {asked(entry.settings)}",
            size_on_disk(entry.bytes), used, entry.path.name]


def asked(settings: str | None) -> str:
    """The train.py flags a cache file was decoded with: "(auto)" when the images chose."""
    settings = json.loads(settings) if settings else {}
    flags = [f"--channels {settings['channels']}"] if settings.get("channels") else []
    flags += [f"--image-size {'x'.join(map(str, settings['image_size']))}"] if settings.get("image_size") else []
    return f"({' '.join(flags) or 'auto'})"


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        p.refuse(f"--cache-dir {cache_dir}: expected a folder, got a file; give the folder train.py --cache-dir used")
    if args.command == "list":
        entries = list_cache(cache_dir)
        if not entries:
            print(f"no cache files in {cache_dir}")
            return 0
        rows = [describe(e) for e in entries]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) if i in (0, 1, 2) else cell.rjust(w) if i == 3 else cell
                            for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        print(f"{len(entries)} cache file{'s' * (len(entries) > 1)}, "
              f"{size_on_disk(sum(e.bytes for e in entries))} in {cache_dir}")
        return 0
    try:
        removed = clear_cache(cache_dir, args.folder)
    except OSError as exc:
        print(f"error: could not delete {exc.filename} ({exc.strerror}); nothing after it was deleted",
              file=sys.stderr)
        return 1
    of = f" made from {Path(args.folder).resolve()}" if args.folder else ""
    if not removed:
        print(f"no cache files{of} in {cache_dir}" + (" (image_cache.py list shows what is there)" if of else ""))
        return 0
    print(f"deleted {len(removed)} cache file{'s' * (len(removed) > 1)}{of} "
          f"({size_on_disk(sum(e.bytes for e in removed))}) from {cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
