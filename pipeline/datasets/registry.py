"""The dataset registry: each adapter module registers its ``load`` with :func:`register_dataset`, naming the
dataset and its label scheme once, beside the function (lhotse's decorator registries are the example)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..manifest import Manifest

COMMON_PARAMETERS = ("data_dir", "allow_outside_paths", "seed", "dataset")


@dataclass(frozen=True)
class Adapter:
    """What the registry knows of a dataset.

    ``load(data_dir, *, allow_outside_paths, seed, **options) -> Manifest`` reads it (its keyword
    parameters besides those three are the dataset's options); ``label_scheme`` is the scheme its labels
    are in (the default one where an option chooses); ``makes_data_dir`` is True for a dataset that
    generates its folder rather than reading an existing one; ``reads_urls`` for one whose folder may be
    a URL (``s3://bucket/prefix``, pipeline/remote_files.py).
    """

    name: str
    load: Callable[..., Manifest]
    label_scheme: str
    makes_data_dir: bool = False
    reads_urls: bool = False

    @property
    def options(self) -> list[str]:
        parameters = inspect.signature(self.load).parameters
        return [p for p in parameters if p not in COMMON_PARAMETERS]


DATASETS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Add a dataset to :data:`DATASETS` (``--dataset NAME``, ``load_manifest(NAME, ...)``)."""
    DATASETS[adapter.name] = adapter
    return adapter


def register_dataset(
    name: str, *, scheme: str, makes_data_dir: bool = False, reads_urls: bool = False
) -> Callable[[Callable[..., Manifest]], Callable[..., Manifest]]:
    """Decorator: add ``load`` to :data:`DATASETS` as dataset ``name`` (``--dataset NAME``,
    ``load_manifest(NAME, ...)``) whose labels are in label scheme ``scheme``; ``load`` is returned as is."""

    def add(load: Callable[..., Manifest]) -> Callable[..., Manifest]:
        register(Adapter(name, load, scheme, makes_data_dir, reads_urls))
        return load

    return add


def registered_scheme(dataset: str) -> str:
    """The label scheme dataset ``dataset`` registered with."""
    return DATASETS[dataset].label_scheme
