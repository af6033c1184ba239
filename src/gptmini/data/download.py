"""Fetch the corpus, from an offline mirror when one is set, and verify its sha256.

The mirror is named by the environment variable ``GPTMINI_DATA_MIRROR``: a file,
a directory, or a ``file://`` URL of either. It is checked before the network.
Nothing is written unless the bytes match the expected hash.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gptmini.core import paths
from gptmini.core.atomic import atomic_path
from gptmini.core.config import Params
from gptmini.core.hashing import sha256_file
from gptmini.core.progress import progress_bar
from gptmini.core.stage import StageError

MIRROR_ENV = "GPTMINI_DATA_MIRROR"
_CHUNK = 1 << 20


class DownloadError(StageError):
    """The corpus could not be fetched, or its bytes do not match the expected hash."""


def _local_path(location: str) -> Path:
    if location.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
    return Path(location).expanduser()


def find_in_mirror(mirror: str, url: str, sha256: str) -> Path:
    """Return the mirror file whose hash matches: the file itself, or, in a directory,
    the file named like the URL first, then any other file."""
    root = _local_path(mirror)
    if root.is_file():
        candidates = [root]
    elif root.is_dir():
        named = root / Path(urllib.parse.urlparse(url).path).name
        others = sorted(p for p in root.iterdir() if p.is_file() and p != named)
        candidates = ([named] if named.is_file() else []) + others
    else:
        raise DownloadError(f"{MIRROR_ENV}={mirror}: no such file or directory")
    for path in candidates:
        if sha256_file(path) == sha256:
            return path
    raise DownloadError(f"{MIRROR_ENV}={mirror}: no file with sha256 {sha256} "
                        f"(checked {len(candidates)} file(s))")


def _fetch(url: str, dest: Path, timeout: float) -> None:
    if url.startswith("file://"):
        shutil.copyfile(_local_path(url), dest)
        return
    request = urllib.request.Request(url, headers={"User-Agent": "gptmini"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = response.length
        with progress_bar(total=total, unit="B", unit_scale=True, desc="download") as bar:
            received = 0
            while block := response.read(_CHUNK):
                out.write(block)
                received += len(block)
                bar.update(len(block))
        if total is not None and received != total:
            raise DownloadError(f"{url}: truncated body ({received} of {total} bytes)")


def download(url: str, sha256: str, dest: str | Path, *, mirror: str | None = None,
             timeout: float = 60.0) -> str:
    """Place the verified corpus at `dest` and return where it came from."""
    dest = Path(dest)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    with atomic_path(dest) as tmp:
        if mirror:
            source = find_in_mirror(mirror, url, sha256)
            shutil.copyfile(source, tmp)
            origin = f"mirror:{source}"
        else:
            try:
                _fetch(url, tmp, timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DownloadError(f"could not fetch {url}: {reason} "
                                    f"(set {MIRROR_ENV} to a local copy to work offline)") from None
            got = sha256_file(tmp)
            if got != sha256:
                raise DownloadError(f"{url}: sha256 mismatch: expected {sha256}, got {got}")
            origin = url
    return origin


def fetch_corpus(params: Params) -> str:
    """The download stage: the verified corpus at ``data/raw/input.txt``; where it came from."""
    origin = download(params.data.url, params.data.sha256, paths.CORPUS)
    print(f"{paths.CORPUS}: sha256 {params.data.sha256} verified, from {origin}")
    return origin
