"""Downloads that never leave a partial or unverified file under the real name.

The bytes go to a temporary file in the destination folder, are verified, and only
then take the real name (os.replace, atomic on one file system). A progress bar in
bytes goes to stderr when stderr is a terminal (never into logs or pipes).
"""
from __future__ import annotations

import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .common import DataError

CHUNK_BYTES = 1 << 20


def download_file(urls, dest, verify: Callable[[str], None], timeout: float = 30.0) -> None:
    """Fetch ``dest.name`` from the first of ``urls`` whose bytes pass ``verify(path)``
    (which raises DataError), and move it to ``dest``. A dead mirror or bad bytes fall
    through to the next URL; when all fail, DataError lists every URL and its reason."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                _fetch(url, f, dest.name, timeout)
            verify(tmp)
            os.replace(tmp, dest)
            return
        except (urllib.error.URLError, http.client.HTTPException, OSError, DataError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))


def _fetch(url: str, f, label: str, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  file=sys.stderr, disable=not stderr_is_terminal()) as bar:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DataError(f"the connection closed after {received} of {total} bytes")


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
