"""Dataset adapters: each reads a dataset in the form its users have it and returns one :class:`Manifest`.

Per-row problems (missing audio, a duplicate segment id, a path escaping the dataset folder) become
``manifest.issues`` and the row is left out; problems that make the whole dataset unusable (unknown labels,
missing columns, nothing usable) raise :class:`ManifestError` with one line naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..manifest import Manifest
from ._common import ManifestError
from .demo import generate_demo, load_demo
from .generic_csv import load_generic_csv
from .marketcalls import load_marketcalls

DATASETS: dict[str, Callable[..., Manifest]] = {
    "marketcalls": load_marketcalls,
    "csv": load_generic_csv,
    "demo": load_demo,
}


def load_manifest(name: str, data_dir: str | Path, *, allow_outside_paths: bool = False, seed: int = 0,
                  **options) -> Manifest:
    try:
        adapter = DATASETS[name]
    except KeyError:
        raise ManifestError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None
    data_dir = Path(data_dir)
    if name != "demo" and not data_dir.is_dir():
        raise ManifestError(f"{data_dir}: no such folder (pass the dataset's folder as --data-dir)")
    return adapter(data_dir, allow_outside_paths=allow_outside_paths, seed=seed, **options)


__all__ = ["DATASETS", "ManifestError", "generate_demo", "load_manifest"]
