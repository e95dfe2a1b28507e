"""What one extraction will do, decided before any segment is encoded: the configuration, the
planned rows, the loaded encoders, the store's shape and fingerprint (:class:`ExtractPlan`), and the
steps both the single-process path (extract/run.py) and the dask driver (extract/distributed.py)
take around their encode loops: open or resume the store, cut the rows into blocks of batches, and
write the report."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.cache_settings import batch_seconds_for, resolve_dtype
from pipeline.datasets import load_manifest
from pipeline.datasets.pipeline import short_rows
from pipeline.device import resolve_device
from pipeline.fingerprint import compute_fingerprint
from pipeline.manifest import Manifest, Segment, role_text
from pipeline.retries import active_counts
from pipeline.store import CODECS, CacheStore, StoreShape, remove_partial_writes

from .augment import AugmentError, VariantPlan, add_variant_rows, parse_per_class
from .augment import settings as augment_settings
from .config import ExtractConfig, ExtractResult
from .encode import EncodeStats, make_batches
from .encoders import Encoders, check_model_folders, load_encoders
from .segmentation import plan_segments, unite_turns

log = logging.getLogger(__name__)


@dataclass
class ExtractPlan:
    """Everything decided before encoding; what the single-process and the distributed encode loops
    take."""

    cfg: ExtractConfig
    out: Path | str
    manifest: Manifest
    rows: list[Segment]  # planned rows: long segments split, augmented copies appended
    durations: dict[str, float]  # probed seconds per segment id
    enc: Encoders
    shape: StoreShape
    settings: dict  # the store's ``settings`` attribute (CacheSettings.to_attrs)
    digest: str  # the manifest digest
    fingerprint: str
    t0: float  # when the run started (perf_counter)
    progress: bool = True


def make_plan(
    cfg: ExtractConfig, progress: bool = True, *, on_workers: bool = False
) -> ExtractPlan:
    """Read the dataset, plan the rows, load the encoders (on the CPU when dask workers will encode:
    ``on_workers`` or ``cfg.distributed``) and compute the fingerprint. Raises ValueError/StoreError
    with one line for bad settings."""
    t0 = time.perf_counter()
    cfg = replace(cfg, device=str(resolve_device(cfg.device)))
    cfg.cache.check()
    if cfg.codec not in CODECS:
        raise ValueError(f"unknown --codec {cfg.codec!r}; valid: {', '.join(CODECS)}")
    c = cfg.cache
    check_model_folders(c)  # before the dataset is read (or the demo's generated)
    manifest = load_manifest(
        cfg.dataset,
        cfg.data_dir,
        allow_outside_paths=cfg.allow_outside_paths,
        seed=c.seed,
        **cfg.dataset_options,
    )
    if c.units == "turns":  # before the split: a unit over the limit is cut as a long row
        manifest = unite_turns(manifest, c.max_seconds, c.roles)
    rows, durations = plan_segments(manifest, c.max_seconds, workers=max(1, cfg.num_workers))
    variants = variant_plan(c, manifest)
    rows, durations = add_variant_rows(rows, durations, variants, c.max_seconds)
    if c.roles == "prefix":  # after splitting: every piece of a long row keeps its speaker
        rows = [r.with_(text=role_text(r.speaker, r.text)) for r in rows]
    log.info(
        "%s: %d calls, %d segments (%d rows with long segments split and augmented copies), %d manifest issues",
        cfg.dataset,
        len(manifest.calls()),
        len(manifest),
        len(rows),
        len(manifest.issues),
    )
    # distributed: the driver needs only the encoders' identity and sizes; it leaves the GPUs to the
    # workers. The compute dtype is the one the workers' device implies.
    device = "cpu" if on_workers or cfg.distributed else cfg.device
    c_dev = replace(c, dtype=resolve_dtype(c.dtype, cfg.device))
    enc = load_encoders(c_dev, device, trust_remote_code=cfg.trust_remote_code)
    augmentation = augment_settings(
        c.augment, c.variants, c.seed, c.augment_text, variants.per_class
    )
    # the planned texts themselves: a pypinyin with other readings is another cache
    if c.augment_text:
        augmentation["text_digest"] = _texts_digest(rows)
    settings = c.to_attrs(cfg.dataset, enc.facts, augmentation)
    digest = manifest.digest()
    shape = StoreShape(
        n=len(rows),
        audio_frames=enc.facts.audio_frames,
        audio_dim=enc.audio.hidden_size,
        text_tokens=c.max_text_tokens,
        text_dim=enc.text.hidden_size,
        shard_size=cfg.shard_size,
    )
    return ExtractPlan(
        cfg,
        cfg.out_path,
        manifest,
        rows,
        durations,
        enc,
        shape,
        settings,
        digest,
        compute_fingerprint(settings, digest),
        t0,
        progress,
    )


def variant_plan(c, manifest: Manifest) -> VariantPlan:
    """The settings' augmented copies; ``--variants-per-class`` labels checked against the
    dataset's (one line naming the unknown ones, or why the dataset's labels cannot be used)."""
    per_class = parse_per_class(c.variants_per_class)
    if per_class:
        scheme = manifest.scheme
        if scheme.level != "call" or not scheme.base_labels:
            raise AugmentError(
                f"--variants-per-class: {manifest.dataset}'s labels belong to segments or are "
                "scores; it needs one class label per call (use --variants)"
            )
        unknown = sorted(set(per_class) - set(scheme.base_labels))
        if unknown:
            raise AugmentError(
                f"--variants-per-class: no label {', '.join(map(repr, unknown))} in "
                f"{scheme.name}; its labels: {', '.join(scheme.base_labels)}"
            )
    return VariantPlan(c.augment, c.augment_text, c.variants, per_class, c.seed)


def _texts_digest(rows: list[Segment]) -> str:
    h = hashlib.sha256()
    for r in rows:
        if r.audio_of:
            h.update(json.dumps([r.segment_id, r.text], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def open_store(plan: ExtractPlan) -> CacheStore:
    """Open the store to resume it, or create it; call with the store's lock held."""
    cfg, out = plan.cfg, plan.out
    if removed := remove_partial_writes(out):
        log.info("%s: removed %d partial chunk files left by an interrupted run", out, removed)
    return CacheStore.open_or_create(
        out,
        plan.shape,
        plan.rows,
        fingerprint=plan.fingerprint,
        settings=plan.settings,
        manifest_digest=plan.digest,
        codec=cfg.codec,
        overwrite=cfg.overwrite,
        notes=plan.manifest.notes,
        dataset=cfg.dataset,
        label_scheme=plan.manifest.label_scheme,
        storage_options=cfg.storage_options,
        seconds=[plan.durations.get(s.segment_id, np.nan) for s in plan.rows],
        label_scheme_def=plan.manifest.label_scheme_def,
    )


def plan_blocks(plan: ExtractPlan, store: CacheStore) -> list[tuple[range, list[list[int]]]]:
    """(block of rows, its batches) for every block of ``block_shards`` whole shards. Batches never
    cross a block, so a block is a unit that one process can encode and write alone (the distributed
    task)."""
    cfg, rate, max_samples = plan.cfg, plan.enc.policy.input_rate, plan.enc.max_samples
    # planned lengths in input samples (unknown/unreadable files count as the maximum; they fail
    # fast)
    lengths = np.array(
        [
            0  # a text variant: no audio is read (it uses its original's rows)
            if s.audio_of
            else min(
                max_samples,
                int(round(plan.durations.get(s.segment_id, cfg.cache.max_seconds) * rate)),
            )
            for s in plan.rows
        ],
        dtype=np.int64,
    )
    shard_ranges = store.shard_ranges()
    blocks = [
        range(
            shard_ranges[i].start,
            shard_ranges[min(i + cfg.block_shards, len(shard_ranges)) - 1].stop,
        )
        for i in range(0, len(shard_ranges), cfg.block_shards)
    ]
    budget = int(batch_seconds_for(cfg.batch_seconds, cfg.device) * rate)
    return [
        (block, make_batches(lengths, [block], max(budget, max_samples), cfg.max_batch))
        for block in blocks
    ]


def by_file(skipped_rows: list[dict], rows: list[Segment]) -> list[dict]:
    """The summary's skip lines: the rows that failed for one reason in one audio file are one line
    naming the file and the rows (report.json keeps every row under ``skipped``)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in skipped_rows:
        groups.setdefault((rows[r["row"]].audio_path, r["reason"]), []).append(r)
    out = []
    for (audio, reason), items in groups.items():
        sources = list(dict.fromkeys(r["source"] for r in items))
        if len(sources) == 1:
            out.append(items[0])
        else:
            out.append(
                {
                    "source": short_rows(sources),
                    "reason": f"{Path(audio).name}: {reason}",
                    "rows": sources,
                }
            )
    return out


def _record_skip_reasons(store: CacheStore, skipped: dict, done: np.ndarray) -> dict[int, str]:
    """This run's failures into the store; rows done since earlier runs lose their old reason."""
    reasons = {int(i): r for i, r in skipped.items()}
    old = store.skip_reasons()
    stale = {int(i): "" for i in np.flatnonzero((old != "") & done)}
    store.set_skip_reasons({**stale, **reasons})
    store.touch()
    return reasons


def finish_run(
    plan: ExtractPlan,
    store: CacheStore,
    skipped: dict,
    stats: EncodeStats,
    loop_seconds: float,
    extra: dict | None = None,
) -> ExtractResult:
    """Skip reasons into the store, report.json beside the data, the result."""
    out, rows = plan.out, plan.rows
    elapsed = time.perf_counter() - plan.t0
    computed, audio_seconds = stats.computed, stats.audio_seconds
    final_done = store.done()
    reasons = _record_skip_reasons(store, skipped, final_done)
    skipped_rows = [
        {
            "row": i,
            "segment_id": rows[i].segment_id,
            "call_id": rows[i].call_id,
            "source": rows[i].source_row or rows[i].audio_path,
            "reason": r,
        }
        for i, r in sorted(reasons.items())
    ]
    # "rows": every row of a many-row issue
    manifest_issues = [x.to_dict() for x in plan.manifest.issues]
    # one line per bad file (its rows named), as the summary says
    skipped_lines = by_file(skipped_rows, rows)
    report = {
        "store": str(out),
        "fingerprint": plan.fingerprint,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": asdict(plan.cfg),
        "segments_total": len(rows),
        "segments_done": int(final_done.sum()),
        "segments_encoded_this_run": computed,
        "segments_skipped": len(reasons),
        "text_truncated": stats.truncated,
        "audio_seconds_this_run": round(audio_seconds, 3),
        "elapsed_s": round(elapsed, 3),
        "segments_per_s": round(computed / elapsed, 3) if elapsed else None,
        "skipped": skipped_rows,
        "skipped_by_file": skipped_lines,
        "manifest_issues": manifest_issues,
        "warnings": stats.warnings,
        **(extra or {}),
    }
    if (retries := active_counts()) is not None:  # reads and writes of object storage
        # a distributed run adds its workers' (the breakdown stays under "distributed")
        workers = report.get("distributed", {}).get("storage_retries_on_workers", {})
        report["storage_retries"] = {k: v + workers.get(k, 0) for k, v in retries.items()}
    report_path = store.write_text("report.json", json.dumps(report, indent=2, ensure_ascii=False))
    return ExtractResult(
        store=out,
        total=len(rows),
        done=int(final_done.sum()),
        skipped=len(reasons),
        computed=computed,
        audio_seconds=audio_seconds,
        elapsed=elapsed,
        report=report_path,
        issues=skipped_lines
        + [
            {"source": m["where"], "reason": m["reason"]}
            for m in manifest_issues
            if not m["reason"].startswith("warning")
        ],
        loop_seconds=loop_seconds,
        manifest_skipped=sum(
            len(m.get("rows") or [1])
            for m in manifest_issues
            if not m["reason"].startswith("warning")
        ),
    )
