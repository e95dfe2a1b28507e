"""What ``msmtfn-extract`` is asked to do (:class:`ExtractConfig`) and what it reports
(:class:`ExtractResult`).

Light on purpose (no torch): the CLI builds the config before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from pipeline.cache_settings import MAX_BATCH, SHARD_SIZE, CacheSettings, cache_fields
from pipeline.store import is_url

from .augment import AugmentError, parse_augment, parse_per_class
from .text_augment import parse_text_augment


@dataclass(frozen=True, init=False)
class ExtractConfig:
    """One extraction: the dataset, the cache settings (``cache``: what changes the numbers, in the
    fingerprint) and how the work is run (none of the other fields changes the numbers).

    A :class:`CacheSettings` field may also be given by name, ``ExtractConfig(dataset=…, data_dir=…,
    audio_layer=6)``, and ``dataclasses.replace(cfg, audio_layer=6)`` works the same way: it goes
    into ``cache``.
    """

    dataset: str
    data_dir: str
    cache: CacheSettings = CacheSettings()
    out: str | None = None  # default cache/<dataset>.zarr
    device: str = "auto"  # auto: cuda when available
    batch_seconds: float = 0.0  # padded audio seconds per batch; 0 = the device's default
    max_batch: int = MAX_BATCH  # segments per batch at most
    num_workers: int = 2  # decode/resample/tokenise processes (--loader-workers)
    shard_size: int = SHARD_SIZE  # segments per shard file
    block_shards: int = 32  # shards sorted together for length bucketing
    codec: str = "zstd"
    write_threads: int = 0  # shard compression/write threads; 0 = cores (at most 8)
    overwrite: bool = False
    allow_outside_paths: bool = False
    trust_remote_code: bool = False
    dataset_options: dict = field(default_factory=dict)
    # scale-out (extract/distributed.py)
    scheduler: str | None = None  # tcp://host:port of a running dask scheduler
    workers: int = 0  # --dask-workers: a LocalCluster (LocalCUDACluster on cuda) of N workers
    storage_options: dict = field(default_factory=dict)  # fsspec options of a URL --out (s3://…)

    def __init__(self, dataset: str, data_dir: str, cache: CacheSettings | None = None, **kw):
        names = cache_fields()
        chosen = {k: kw.pop(k) for k in list(kw) if k in names}
        cache = replace(cache or CacheSettings(), **chosen)
        cache = replace(
            cache,
            augment=parse_augment(cache.augment),
            augment_text=parse_text_augment(cache.augment_text),
            # one spelling: "A=3,D=1" and "D=1, A=3" are one setting (and one fingerprint)
            variants_per_class=",".join(
                f"{k}={v}" for k, v in sorted(parse_per_class(cache.variants_per_class).items())
            ),
        )
        if (cache.augment or cache.augment_text) and cache.variants < 1:
            raise AugmentError(f"--variants must be at least 1, not {cache.variants}")
        own = {f.name: f for f in fields(self) if f.name not in ("dataset", "data_dir", "cache")}
        unknown = set(kw) - set(own)
        if unknown:
            raise TypeError(f"ExtractConfig got unknown settings: {', '.join(sorted(unknown))}")
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "data_dir", data_dir)
        object.__setattr__(self, "cache", cache)
        for name, f in own.items():
            value = (
                kw[name]
                if name in kw
                else (f.default_factory() if f.default is MISSING else f.default)
            )
            object.__setattr__(self, name, value)

    @property
    def out_path(self) -> Path | str:
        """A local Path, or the URL string of a remote store (fsspec: s3://, gs://, memory://…)."""
        if self.out and is_url(self.out):
            return self.out.rstrip("/")
        return Path(self.out) if self.out else Path("cache") / f"{self.dataset}.zarr"

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler) or self.workers > 0


@dataclass
class ExtractResult:
    store: Path | str  # a local Path or a store URL
    total: int
    done: int
    skipped: int
    computed: int  # rows encoded by this run
    audio_seconds: float
    elapsed: float
    report: Path | str
    issues: list[dict] = field(default_factory=list)
    manifest_skipped: int = 0  # dataset rows left out before extraction (not warnings)
    loop_seconds: float = 0.0  # the encode loop alone, writes flushed (no model load)

    @property
    def segments_per_second(self) -> float:
        return self.computed / self.elapsed if self.elapsed > 0 else float("nan")
