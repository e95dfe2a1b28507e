"""Dataset adapters: each reads a dataset in the form its users have it and returns one
:class:`Manifest`.

``load_manifest(name, data_dir, allow_outside_paths=False, seed=0, **options)`` with ``name`` one of
:data:`DATASETS` (each an :class:`Adapter`; a new dataset is one module that parses its files into
:class:`~pipeline.datasets.pipeline.RawRow` records and passes them to
:func:`~pipeline.datasets.pipeline.to_manifest`, which makes every shared check; its ``load`` is
registered beside it with ``@register_dataset(NAME, scheme=...)``, naming its label scheme once):

- ``marketcalls`` — the released MarketCalls CSVs (see :mod:`pipeline.datasets.marketcalls`);
  options ``csv_path``, ``split_ratios``, ``no_text``;
- ``csv`` — the generic CSV for your own calls (see :mod:`pipeline.datasets.generic_csv`);
  options ``csv_path``, ``label_scheme`` (a built-in name or a custom ``.toml``), ``split_ratios``,
  ``no_text``;
- ``demo`` — a generated smoke dataset in the MarketCalls format (see
  :mod:`pipeline.datasets.demo`); options ``n_calls``, ``use_espeak``;
- ``mosi``, ``mosei`` — CMU-MOSI / CMU-MOSEI, MMSA ``label.csv`` or CMU SDK ``.csd`` form (see
  :mod:`pipeline.datasets.mosi`); options ``label_csv``, ``labels_csd``, ``words_csd``,
  ``audio_dir``,
  ``split_file``, ``split_ratios``;
- ``meld`` — MELD's ``*_sent_emo.csv`` and clips (see :mod:`pipeline.datasets.meld`); options
  ``csv_dir``, ``clips_dir``.

Per-row problems (missing audio, a duplicate segment id, a path escaping the dataset folder, a bad
split value) become ``manifest.issues`` and the row is left out (one missing or refused audio file
named by several rows is one issue naming them, every row in ``Issue.rows``); notes that keep the
row (an empty transcript, a call whose segments disagree on the label) are issues whose reason
starts with ``warning:``. Problems that make the dataset unusable (unknown labels, missing columns,
no CSV, nothing usable) raise :class:`ManifestError` with one line naming the file and the fix.
``manifest.notes`` records where the split came from.
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import Manifest
from ..remote_files import data_root, is_url
from ._common import ManifestError, stratified_split
from .registry import DATASETS, Adapter, register, register_dataset

# isort: split
# importing an adapter registers it (@register_dataset beside its load), in the order --help lists
from . import marketcalls  # noqa: F401

# isort: split
from . import generic_csv  # noqa: F401

# isort: split
from . import demo, mosi  # noqa: F401

# isort: split
from . import meld  # noqa: F401
from .demo import generate_demo


def dataset_options(name: str) -> list[str]:
    """The options an adapter accepts besides data_dir, allow_outside_paths and seed."""
    return DATASETS[name].options


def load_manifest(
    name: str, data_dir: str | Path, *, allow_outside_paths: bool = False, seed: int = 0, **options
) -> Manifest:
    """Read dataset ``name`` from ``data_dir`` into a :class:`Manifest` (see the module
    docstring)."""
    try:
        adapter = DATASETS[name]
    except KeyError:
        raise ManifestError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None
    unknown = sorted(set(options) - set(dataset_options(name)))
    if unknown:
        raise ManifestError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)}; valid: "
            f"{', '.join(dataset_options(name)) or 'none'}"
        )
    if is_url(data_dir) and not adapter.reads_urls:
        raise ManifestError(
            f"--data-dir {data_dir}: the {name} adapter reads a local folder only (the built-in "
            "adapters read URLs); copy the dataset to a local disk"
        )
    data_dir = data_root(data_dir)
    try:
        found = adapter.makes_data_dir or data_dir.is_dir()
    except OSError as e:  # an unreachable endpoint, refused credentials
        raise ManifestError(f"--data-dir {data_dir}: cannot be read ({e})") from None
    if not found:
        raise ManifestError(f"{data_dir}: no such folder (pass the dataset's folder as --data-dir)")
    return adapter.load(data_dir, allow_outside_paths=allow_outside_paths, seed=seed, **options)


__all__ = [
    "DATASETS",
    "Adapter",
    "ManifestError",
    "dataset_options",
    "generate_demo",
    "load_manifest",
    "register",
    "register_dataset",
    "stratified_split",
]
