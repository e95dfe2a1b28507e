"""Datasets and recordings at fsspec URLs (``s3://``, ``gs://``, ``az://``; ``http(s)://`` read only),
so that dask workers and a predicting host need no shared filesystem.

A URL dataset folder is a ``upath.UPath``, which the adapters use as they use a local ``Path``
(``/``, ``glob``, ``is_file``, ``read_bytes``); a segment's ``audio_path`` is then the object's
URL, and every reader opens it through :func:`opened`, which streams it in ranged reads (one
segment's bytes at a time, never the whole object). Credentials and endpoints come from the store's
options (``MSMTFN_STORAGE_OPTIONS``, ``--storage-options``) or the cloud SDK's own variables
(``AWS_*``), on the driver and on every worker alike.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def is_url(path) -> bool:
    """An fsspec URL (s3://, gs://, memory://…). Local paths, and file:// URLs, take the local code
    path. (The one test for stores, datasets and recordings alike.)"""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _options() -> dict:
    from .store import resolve_storage_options

    return resolve_storage_options()


def data_root(data_dir):
    """A dataset folder as the adapters read it: a ``Path``, or for a URL a ``UPath`` carrying the
    storage options."""
    if isinstance(data_dir, Path) or not is_url(data_dir):
        return Path(data_dir)
    from upath import UPath

    return UPath(str(data_dir).rstrip("/"), **_options())


def is_remote(path) -> bool:
    """A location (str, Path or UPath) that lives behind fsspec."""
    return is_url(path) or (not isinstance(path, Path) and hasattr(path, "fs"))


@contextlib.contextmanager
def opened(path: str):
    """The file to hand to soundfile or PyAV: a local path as it is, a URL as an open binary file
    (fsspec's ranged, block-cached reads: seeking to a segment reads only its bytes)."""
    if not is_url(path):
        yield path
        return
    import fsspec

    with fsspec.open(str(path), "rb", **_options()) as f:
        yield f


def file_identity(path: str) -> list:
    """What the fingerprint knows of a recording: its size and modification time (local; as
    ``os.stat`` gives them), or its size and ETag (an object; its modification time where the store
    gives no ETag); ``["missing"]`` when it cannot be read."""
    if not is_url(path):
        try:
            st = os.stat(path)
        except OSError:
            return ["missing"]
        return [st.st_size, st.st_mtime_ns]
    import fsspec

    try:
        fs, inner = fsspec.url_to_fs(str(path), **_options())
        info = fs.info(inner)
    except (OSError, ValueError):
        return ["missing"]
    tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
    return [int(info.get("size") or 0), str(tag or "")]


def file_size(path: str) -> int | None:
    """Bytes in a recording (a local file or an object), or None when there is none."""
    if not is_url(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    import fsspec

    try:
        fs, inner = fsspec.url_to_fs(str(path), **_options())
        info = fs.info(inner)
    except (OSError, ValueError):
        return None
    return int(info.get("size") or 0) if info.get("type", "file") == "file" else None


def glob_urls(pattern: str) -> list[str]:
    """The objects a URL glob (``s3://bucket/calls/*.wav``) names, as URLs, sorted; a URL without
    wildcards names itself when it exists."""
    import fsspec

    fs, inner = fsspec.url_to_fs(pattern, **_options())
    proto = pattern.partition("://")[0]
    if not any(c in inner for c in "*?["):
        return [pattern] if fs.isfile(inner) else []
    return sorted(f"{proto}://{p}" for p in fs.glob(inner) if fs.isfile(p))


def file_sizes(folder) -> dict[str, int]:
    """{name: bytes} of the files in a folder (a ``Path`` or a URL folder's ``UPath``) from one
    listing, {} when there is none: an object store answers one LIST per 1,000 names, not a HEAD
    per file."""
    if not is_remote(folder):
        try:
            with os.scandir(folder) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file()}
        except OSError:
            return {}
    try:
        listing = folder.fs.ls(folder.path, detail=True)
    except (OSError, ValueError):
        return {}
    return {
        e["name"].rstrip("/").rpartition("/")[2]: int(e.get("size") or 0)
        for e in listing
        if e.get("type") == "file"
    }


def located(path) -> str:
    """A file found in a dataset folder as a segment records it: the absolute local path (links
    resolved), or the object's URL."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def absolute(path: str) -> str:
    """A recording's location as a segment records it: an absolute local path, or the URL."""
    return str(path) if is_url(path) else os.path.abspath(path)
