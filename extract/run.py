"""Stage 1: dataset → manifest → planned rows → frozen encoders in length-bucketed batches → cache store.

Resume is built in: rows whose ``done`` flag is set are never recomputed. Batches are a fixed function of the
planned rows (not of what is left), so a resumed run computes every row in the same batch as an uninterrupted
run would, and the store comes out bit for bit the same.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.datasets import load_manifest
from pipeline.fingerprint import compute_fingerprint
from pipeline.lock import StoreLock
from pipeline.manifest import Segment
from pipeline.store import CODECS, CacheStore, StoreShape, is_url, remove_partial_writes

from .audio import RATE_POLICIES, AudioError, AudioPolicy, load_segment
from .augment import AugmentError, Augmenter, add_variant_rows, parse_augment
from .augment import settings as augment_settings
from .encoders import AudioEncoder, EncoderSpec, TextEncoder, resolve_dtype
from .segmentation import plan_segments
from .writer import ShardWriter

log = logging.getLogger(__name__)

PAPER_AUDIO_MODEL = "TencentGameMate/chinese-hubert-base"
PAPER_TEXT_MODEL = "hfl/chinese-roberta-wwm-ext"


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str
    data_dir: str
    out: str | None = None                  # default cache/<dataset>.zarr
    audio_model: str = PAPER_AUDIO_MODEL
    text_model: str = PAPER_TEXT_MODEL
    audio_revision: str | None = None
    text_revision: str | None = None
    audio_layer: int = -1                   # HF hidden_states index; -1 = last
    text_layer: int = -1
    device: str = "cpu"
    dtype: str = "auto"                     # compute dtype: float16 on CUDA, float32 on CPU
    max_seconds: float = 40.0               # longer segments are split into equal pieces
    rate_policy: str = "encoder"            # encoder | paper-8k
    audio_pool: int = 0                     # frames averaged per stored row; 0 = 2 (encoder) / 1 (paper-8k)
    max_text_tokens: int = 199
    batch_seconds: float = 0.0              # padded audio seconds per batch; 0 = 1280 on CUDA, 160 on CPU
    max_batch: int = 64                     # segments per batch at most
    num_workers: int = 2                    # decode/resample/tokenise processes
    shard_size: int = 16                    # segments per shard file
    block_shards: int = 32                  # shards sorted together for length bucketing
    codec: str = "zstd"
    write_threads: int = 0                  # shard compression/write threads; 0 = cores (at most 8)
    overwrite: bool = False
    allow_outside_paths: bool = False
    trust_remote_code: bool = False
    seed: int = 0                           # for a dataset's generated split and the augmentation draws
    augment: tuple = ()                     # audio augmentations for training rows (extract/augment.py)
    variants: int = 1                       # augmented copies per training row and augmentation
    dataset_options: dict = field(default_factory=dict)
    # scale-out (extract/distributed.py); none of these changes the numbers, so none is in the fingerprint
    scheduler: str | None = None            # tcp://host:port of a running dask scheduler
    workers: int = 0                        # >0: a LocalCluster (LocalCUDACluster on cuda) of this many workers
    storage_options: dict = field(default_factory=dict)   # fsspec options of a URL --out (s3://…)

    @property
    def out_path(self) -> Path | str:
        """A local Path, or the URL string of a remote store (fsspec: s3://, gs://, memory://…)."""
        if self.out and is_url(self.out):
            return self.out.rstrip("/")
        return Path(self.out) if self.out else Path("cache") / f"{self.dataset}.zarr"

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler) or self.workers > 0

    def __post_init__(self):
        object.__setattr__(self, "augment", parse_augment(self.augment))
        if self.augment and self.variants < 1:
            raise AugmentError(f"--variants must be at least 1, not {self.variants}")

    @property
    def pool(self) -> int:
        return self.audio_pool or (1 if self.rate_policy == "paper-8k" else 2)


@dataclass
class ExtractResult:
    store: Path | str                       # a local Path or a store URL
    total: int
    done: int
    skipped: int
    computed: int                           # rows encoded by this run
    audio_seconds: float
    elapsed: float
    report: Path | str
    issues: list[dict] = field(default_factory=list)
    manifest_skipped: int = 0               # dataset rows left out before extraction (not warnings)
    loop_seconds: float = 0.0               # the encode loop alone, writes flushed (no model load)

    @property
    def segments_per_second(self) -> float:
        return self.computed / self.elapsed if self.elapsed > 0 else float("nan")


# --------------------------------------------------------------------------- loader
class SegmentSource(torch.utils.data.Dataset):
    """Decodes, resamples, normalises and tokenises one planned row; runs in DataLoader workers."""

    def __init__(self, rows: list[Segment], rate: int, max_samples: int, min_samples: int, feature_extractor,
                 text_encoder: TextEncoder, augmenter: Augmenter | None = None):
        self.rows, self.rate, self.max_samples, self.min_samples = rows, rate, max_samples, min_samples
        self.augmenter = augmenter
        self.fe = feature_extractor
        self.tokenize = text_encoder.tokenize

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        seg = self.rows[i]
        item = {"row": i, "warnings": []}
        try:
            x, warnings = load_segment(seg.audio_path, seg.start, seg.end, self.rate)
            if seg.variant != "orig":
                x = self.augmenter(x, self.rate, seg)
                if len(x) > self.max_samples:   # a slowed-down copy of a full-length segment: cut, as planned
                    x = x[: self.max_samples]
            item["warnings"] += warnings
            if len(x) < self.min_samples:
                raise AudioError(f"too short ({len(x)} samples at {self.rate} Hz; the encoder needs "
                                 f"{self.min_samples})")
            if len(x) > self.max_samples:
                item["warnings"].append(f"{(len(x) - self.max_samples) / self.rate:.3f}s longer than planned; "
                                        "end cut")
                x = x[: self.max_samples]
            wave = self.fe(x, sampling_rate=self.fe.sampling_rate, return_tensors="np")["input_values"][0]
            item["wave"] = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        except AudioError as e:
            item["error"] = str(e)
            return item
        if not seg.text.strip():
            item["warnings"].append("empty transcript (encoded as special tokens only)")
        item["ids"], item["truncated"] = self.tokenize(seg.text)
        return item


def _collate(items):
    return items


def make_batches(lengths: np.ndarray, blocks: list[range], budget: int, max_batch: int) -> list[list[int]]:
    """Length-bucketed batches: within each block of rows, longest first, filled up to ``budget`` padded
    samples and ``max_batch`` rows. Depends only on the planned lengths, never on what is already done."""
    batches: list[list[int]] = []
    for block in blocks:
        order = sorted(block, key=lambda i: (-lengths[i], i))
        cur: list[int] = []
        for i in order:
            padded = (len(cur) + 1) * max(lengths[cur[0]] if cur else 0, lengths[i])
            if cur and (padded > budget or len(cur) >= max_batch):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    return batches


# --------------------------------------------------------------------------- main
def build_settings(cfg: ExtractConfig, audio: AudioEncoder, text: TextEncoder, policy: AudioPolicy,
                   dtype: str, audio_frames: int) -> dict:
    """Everything that changes the cached numbers (the fingerprint), in readable form."""
    return {
        "dataset": cfg.dataset,
        "audio": {"model": cfg.audio_model, "revision": cfg.audio_revision, "weights": audio.weights_hash,
                  "layer": cfg.audio_layer, "rate_policy": cfg.rate_policy, "input_rate": policy.input_rate,
                  "encoder_rate": audio.sampling_rate, "pool": cfg.pool, "frames": audio_frames,
                  "normalize": bool(getattr(audio.feature_extractor, "do_normalize", False))},
        "text": {"model": cfg.text_model, "revision": cfg.text_revision, "weights": text.weights_hash,
                 "tokenizer": text.tokenizer_hash, "layer": cfg.text_layer, "max_tokens": cfg.max_text_tokens},
        "compute_dtype": dtype,
        "store_dtype": "float16",
        "segmentation": {"max_seconds": cfg.max_seconds, "long_segments": "equal pieces"},
        "augmentation": augment_settings(cfg.augment, cfg.variants, cfg.seed),
    }


def extract(cfg: ExtractConfig, progress: bool = True, client=None) -> ExtractResult:
    """Encode ``cfg.dataset`` into ``cfg.out``. With ``cfg.scheduler``/``cfg.workers`` (or a dask ``client``) the
    encoding fans out to dask workers (extract/distributed.py); the store comes out the same."""
    t0 = time.perf_counter()
    if cfg.rate_policy not in RATE_POLICIES:
        raise ValueError(f"unknown --rate-policy {cfg.rate_policy!r}; valid: {', '.join(RATE_POLICIES)}")
    if cfg.codec not in CODECS:
        raise ValueError(f"unknown --codec {cfg.codec!r}; valid: {', '.join(CODECS)}")
    out = cfg.out_path
    manifest = load_manifest(cfg.dataset, cfg.data_dir, allow_outside_paths=cfg.allow_outside_paths, seed=cfg.seed,
                             **cfg.dataset_options)
    rows, durations = plan_segments(manifest, cfg.max_seconds, workers=max(1, cfg.num_workers))
    rows, durations = add_variant_rows(rows, durations, cfg.augment, cfg.variants, cfg.max_seconds)
    log.info("%s: %d calls, %d segments (%d rows with long segments split and augmented copies), %d manifest issues",
             cfg.dataset, len(manifest.calls()), len(manifest), len(rows), len(manifest.issues))

    dtype = resolve_dtype(cfg.dtype, cfg.device)
    # distributed: the driver needs only the encoders' identity and sizes; it leaves the GPUs to the workers
    device = "cpu" if client is not None or cfg.distributed else cfg.device
    audio = AudioEncoder(EncoderSpec(cfg.audio_model, cfg.audio_revision, cfg.audio_layer), device, dtype,
                         pool=cfg.pool, trust_remote_code=cfg.trust_remote_code)
    text = TextEncoder(EncoderSpec(cfg.text_model, cfg.text_revision, cfg.text_layer), device, dtype,
                       max_tokens=cfg.max_text_tokens, trust_remote_code=cfg.trust_remote_code)
    policy = AudioPolicy(cfg.rate_policy, audio.sampling_rate)
    max_samples = int(round(cfg.max_seconds * policy.input_rate))
    audio_frames = int(audio.frames(max_samples)[0]) // cfg.pool
    settings = build_settings(cfg, audio, text, policy, dtype, audio_frames)
    digest = manifest.digest()
    fingerprint = compute_fingerprint(settings, digest)
    shape = StoreShape(n=len(rows), audio_frames=audio_frames, audio_dim=audio.hidden_size,
                       text_tokens=cfg.max_text_tokens, text_dim=text.hidden_size, shard_size=cfg.shard_size)
    with StoreLock(out, storage_options=cfg.storage_options):
        if client is not None or cfg.distributed:
            from .distributed import extract_distributed   # dask is imported only when asked for

            return extract_distributed(cfg, out, manifest, rows, durations, audio, text, policy, shape, settings,
                                       digest, fingerprint, max_samples, t0, progress, client=client)
        return _extract_into(cfg, out, manifest, rows, durations, audio, text, policy, shape, settings, digest,
                             fingerprint, max_samples, t0, progress)


def open_store(cfg: ExtractConfig, out, manifest, rows, shape, settings, digest, fingerprint) -> CacheStore:
    """Open the store to resume it, or create it; call with the store's lock held."""
    if removed := remove_partial_writes(out):
        log.info("%s: removed %d partial chunk files left by an interrupted run", out, removed)
    return CacheStore.open_or_create(out, shape, rows, fingerprint=fingerprint, settings=settings,
                                     manifest_digest=digest, codec=cfg.codec, overwrite=cfg.overwrite,
                                     notes=manifest.notes, dataset=cfg.dataset, label_scheme=manifest.label_scheme,
                                     storage_options=cfg.storage_options)


def plan_blocks(cfg: ExtractConfig, store: CacheStore, rows, durations, policy: AudioPolicy, max_samples: int,
                ) -> list[tuple[range, list[list[int]]]]:
    """(block of rows, its batches) for every block of ``block_shards`` whole shards. Batches never cross a
    block, so a block is a unit that one process can encode and write alone (the distributed task)."""
    # planned lengths in input samples (unknown/unreadable files count as the maximum; they fail fast)
    lengths = np.array([min(max_samples, int(round(durations.get(s.segment_id, cfg.max_seconds) * policy.input_rate)))
                        for s in rows], dtype=np.int64)
    shard_ranges = store.shard_ranges()
    blocks = [range(shard_ranges[i].start, shard_ranges[min(i + cfg.block_shards, len(shard_ranges)) - 1].stop)
              for i in range(0, len(shard_ranges), cfg.block_shards)]
    budget = int((cfg.batch_seconds or (1280.0 if cfg.device.startswith("cuda") else 160.0)) * policy.input_rate)
    return [(block, make_batches(lengths, [block], max(budget, max_samples), cfg.max_batch)) for block in blocks]


@dataclass
class EncodeStats:
    """What an encode loop reports besides the rows it wrote (small: it travels back from dask workers)."""
    warnings: list[dict] = field(default_factory=list)
    truncated: int = 0
    audio_seconds: float = 0.0
    computed: int = 0


def encode_batches(loader, rows, todo: np.ndarray, audio: AudioEncoder, text: TextEncoder, writer: ShardWriter,
                   input_rate: int, bar=None) -> EncodeStats:
    """Encode every batch the loader yields and hand the rows still to do to ``writer`` (which does not wait)."""
    st = EncodeStats()
    for items in loader:
        ok = [it for it in items if "error" not in it]
        for it in items:
            for w in it["warnings"]:
                st.warnings.append({"row": it["row"], "segment_id": rows[it["row"]].segment_id, "warning": w})
            if "error" in it and todo[it["row"]]:
                writer.skip(it["row"], it["error"])
        if ok:
            a_hidden, a_len = audio.encode([it["wave"] for it in ok])
            t_hidden, t_len = text.encode([it["ids"] for it in ok])
            keep = [j for j, it in enumerate(ok) if todo[it["row"]]]
            a_np = a_hidden[keep].to(torch.float16).cpu().numpy()
            t_np = t_hidden[keep].to(torch.float16).cpu().numpy()
            writer.put([ok[j]["row"] for j in keep], a_np, a_len[keep], t_np, t_len[keep])
            st.truncated += sum(1 for j in keep if ok[j]["truncated"])
            st.audio_seconds += float(sum(len(ok[j]["wave"]) for j in keep)) / input_rate
            st.computed += len(keep)
        if bar is not None:
            bar.update(sum(1 for it in items if todo[it["row"]]))
            bar.set_postfix(skipped=len(writer.skipped), refresh=False)
    return st


def _extract_into(cfg, out, manifest, rows, durations, audio, text, policy, shape, settings, digest, fingerprint,
                  max_samples, t0, progress) -> ExtractResult:
    store = open_store(cfg, out, manifest, rows, shape, settings, digest, fingerprint)
    done = store.done()
    todo = ~done
    log.info("%s: %d of %d segments already done; %d to encode", out, int(done.sum()), len(rows), int(todo.sum()))
    batches = [b for _, bs in plan_blocks(cfg, store, rows, durations, policy, max_samples) for b in bs
               if todo[b].any()]

    source = SegmentSource(rows, policy.input_rate, max_samples, audio.min_samples(), audio.feature_extractor, text,
                           Augmenter(cfg.augment, cfg.seed) if cfg.augment else None)
    loader = torch.utils.data.DataLoader(
        source, batch_sampler=batches, collate_fn=_collate, num_workers=cfg.num_workers,
        prefetch_factor=4 if cfg.num_workers else None, persistent_workers=False)

    writer = ShardWriter(store, todo, write_threads=cfg.write_threads)
    t_loop = time.perf_counter()
    bar = tqdm(total=int(todo.sum()), unit="seg", desc="extract", disable=not progress, smoothing=0.1)
    try:
        stats = encode_batches(loader, rows, todo, audio, text, writer, policy.input_rate, bar)
        writer.close()
        loop_seconds = time.perf_counter() - t_loop
    finally:
        bar.close()
        writer.close(raise_errors=False)  # on Ctrl-C or an error: keep every shard already complete
    return finish_run(cfg, out, store, rows, manifest, fingerprint, writer.skipped, stats, t0, loop_seconds)


def finish_run(cfg: ExtractConfig, out, store: CacheStore, rows, manifest, fingerprint: str, skipped: dict,
               stats: EncodeStats, t0: float, loop_seconds: float, extra: dict | None = None) -> ExtractResult:
    """Skip reasons into the store, report.json beside the data, the result."""
    elapsed = time.perf_counter() - t0
    computed, audio_seconds, truncated, warnings = stats.computed, stats.audio_seconds, stats.truncated, stats.warnings

    # skip reasons: this run's failures; rows done since earlier runs lose their old reason
    final_done = store.done()
    reasons = {int(i): r for i, r in skipped.items()}
    old = store.skip_reasons()
    stale = {int(i): "" for i in np.flatnonzero((old != "") & final_done)}
    store.set_skip_reasons({**stale, **reasons})
    store.touch()

    skipped_rows = [{"row": i, "segment_id": rows[i].segment_id, "call_id": rows[i].call_id,
                     "source": rows[i].source_row or rows[i].audio_path, "reason": r}
                    for i, r in sorted(reasons.items())]
    manifest_issues = [{"where": x.where, "reason": x.reason} for x in manifest.issues]
    report = {
        "store": str(out), "fingerprint": fingerprint, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": asdict(cfg),
        "segments_total": len(rows), "segments_done": int(final_done.sum()),
        "segments_encoded_this_run": computed, "segments_skipped": len(reasons),
        "text_truncated": truncated, "audio_seconds_this_run": round(audio_seconds, 3),
        "elapsed_s": round(elapsed, 3),
        "segments_per_s": round(computed / elapsed, 3) if elapsed else None,
        "skipped": skipped_rows, "manifest_issues": manifest_issues, "warnings": warnings,
        **(extra or {}),
    }
    report_path = store.write_text("report.json", json.dumps(report, indent=2, ensure_ascii=False))
    return ExtractResult(store=out, total=len(rows), done=int(final_done.sum()), skipped=len(reasons),
                         computed=computed, audio_seconds=audio_seconds, elapsed=elapsed, report=report_path,
                         issues=skipped_rows + [{"source": m["where"], "reason": m["reason"]} for m in manifest_issues
                                                if not m["reason"].startswith("warning")],
                         loop_seconds=loop_seconds,
                         manifest_skipped=sum(1 for m in manifest_issues if not m["reason"].startswith("warning")))
