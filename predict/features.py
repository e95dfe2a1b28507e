"""The run's encoders, rebuilt from its cache settings, and the features of new segments.

A trained run only makes sense on features made exactly like its training cache. ``config.json`` of
a run records the cache's settings (the store's ``settings`` attribute, docs/cache-format.md:
encoder ids, revisions, weight hashes, layers, rate policy, pooling, max lengths, compute dtype,
segmentation); :class:`RunEncoders` reads them back with ``CacheSettings.from_attrs``, loads the
encoders with extract's own loader and recomputes the same attribute for what it loaded, and refuses
(one line, naming what differs) when the weights or the tokenizer are not the ones the run was
trained on — whatever ``--audio-model``/``--text-model`` points at. Segments are decoded, normalised
and tokenised by extract's ``SegmentSource`` and encoded by ``AudioEncoder``/``TextEncoder`` in
length-bucketed batches, then rounded to float16 like the store, so a segment's features equal what
``msmtfn-extract`` writes for it (to float16 rounding where CPU BLAS sums in another order for
another batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from extract import SegmentSource, encode_loader, load_encoders, make_batches, make_loader
from pipeline.cache_settings import (
    MAX_BATCH,
    CacheSettings,
    batch_seconds_for,
    encoder_identity,
    resolve_dtype,
)
from pipeline.fingerprint import diff_settings
from pipeline.manifest import Segment
from pipeline.memory import release_freed_memory

log = logging.getLogger(__name__)


class ModelMismatch(Exception):
    """The given encoders are not the ones the run was trained on."""


@dataclass
class SegmentFeatures:
    """One encoded segment: float16 hidden states cut to their valid rows."""

    audio: np.ndarray  # (audio_len, Da) float16
    text: np.ndarray  # (text_len, Dt) float16
    warnings: list[str]
    text_truncated: bool


def run_settings(meta: dict, run_dir) -> dict:
    try:
        settings = meta["cache"]["settings"]
        settings["audio"]["weights"], settings["text"]["weights"]  # noqa: B018 — KeyError if not extract's
    except (KeyError, TypeError):
        raise ModelMismatch(
            f"{run_dir}/config.json: no encoder settings of the training cache (cache.settings); "
            "is this a msmtfn-train run folder?"
        ) from None
    return settings


def trained_from(run_dir, recorded_out: str | None) -> Path | None:
    """The folder a run was trained from, when its recorded ``--out`` was relative and the run still
    sits at that relative place under it (``/home/a/proj`` for ``/home/a/proj/runs/x`` trained with
    ``--out runs/x``)."""
    if not recorded_out or Path(recorded_out).is_absolute():
        return None
    rel, here = Path(recorded_out).parts, Path(run_dir).resolve().parts
    return Path(*here[: -len(rel)]) if rel and here[-len(rel) :] == rel else None


def locate_model(recorded: str, base: Path | None) -> str | None:
    """A local encoder folder recorded relative to where the cache was made
    (``cache/tiny-encoders/...``) that does not exist from here but does under the folder the run
    was trained from; None otherwise. Safe to guess: the loaded weights are checked against the
    run's hashes all the same."""
    if base is None or Path(recorded).is_absolute() or Path(recorded).exists():
        return None
    there = base / recorded
    return str(there) if there.is_dir() else None


def run_tokenizer(meta: dict, run_dir, text_model: str | None = None):
    """(tokenizer, max tokens) of the run's text encoder, hash-checked against the run's cache:
    what maps a cache's text rows back to words (``--explain --cache``). Raises ModelMismatch."""
    from extract.encoders import EncoderLoadError, load_tokenizer, tokenizer_hash

    settings = meta.get("cache", {}).get("settings", {})
    try:
        chosen, facts = CacheSettings.from_attrs(settings)
    except (KeyError, TypeError, ValueError):
        raise ModelMismatch(f"{run_dir}/config.json records no text encoder") from None
    base = trained_from(run_dir, meta.get("train", {}).get("out"))
    where = text_model or locate_model(chosen.text_model, base) or chosen.text_model
    try:
        tok = load_tokenizer(where, None if text_model else chosen.text_revision)
    except (EncoderLoadError, OSError, ValueError) as e:
        raise ModelMismatch(f"{run_dir}: cannot load the run's tokenizer ({e})") from None
    if facts.tokenizer and tokenizer_hash(tok) != facts.tokenizer:
        raise ModelMismatch(f"{run_dir}: {where}'s tokenizer is not the one the run's cache used")
    return tok, chosen.max_text_tokens


class RunEncoders:
    """Audio and text encoders exactly as the run's cache was extracted (or refused)."""

    def __init__(
        self,
        settings: dict,
        *,
        device: str = "cpu",
        dtype: str = "run",
        audio_model: str | None = None,
        text_model: str | None = None,
        trust_remote_code: bool = False,
        run_dir: str = "run",
        base: Path | None = None,
    ):
        """``base``: the folder the run was trained from (:func:`trained_from`), where relative
        encoder folders are looked for when they are not found from the working directory."""
        run_dtype = settings.get("compute_dtype", "float32")
        if dtype == "run":
            # float16 on CPU is slow and partly unsupported: compute in float32 there (stored as
            # float16 anyway)
            dtype = (
                run_dtype
                if not (run_dtype == "float16" and not device.startswith("cuda"))
                else "float32"
            )
        dtype = resolve_dtype(dtype, device)
        if dtype != run_dtype:
            log.warning(
                "encoders compute in %s; the run's cache was extracted in %s (features differ at float16 "
                "rounding)",
                dtype,
                run_dtype,
            )
        chosen, _ = CacheSettings.from_attrs(settings)
        audio_model = audio_model or locate_model(chosen.audio_model, base)
        text_model = text_model or locate_model(chosen.text_model, base)
        # where the models are read from may differ (their hashes are checked below)
        self.cfg = replace(
            chosen,
            dtype=dtype,
            audio_model=audio_model or chosen.audio_model,
            text_model=text_model or chosen.text_model,
            audio_revision=None if audio_model else chosen.audio_revision,
            text_revision=None if text_model else chosen.text_revision,
        )
        self.device = device
        try:
            enc = load_encoders(self.cfg, device, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelMismatch(
                f"{run_dir}: cannot load the run's encoders ({first}); pass local copies with "
                "--audio-model/--text-model"
            ) from None
        self.audio, self.text, self.policy, self.max_samples = (
            enc.audio,
            enc.text,
            enc.policy,
            enc.max_samples,
        )
        self.audio_frames = enc.facts.audio_frames
        # augmentation is training-only: this attribute is compared without it (FREE_KEYS)
        mine = self.cfg.to_attrs(settings.get("dataset", ""), enc.facts, {"variants": []})
        self.settings = mine
        self._check_identity(settings, mine, run_dir)
        self.min_samples = self.audio.min_samples()

    @staticmethod
    def _check_identity(run: dict, mine: dict, run_dir) -> None:
        diffs = diff_settings(encoder_identity(run), encoder_identity(mine))
        if diffs:
            names = {
                "audio.weights": "audio encoder weights",
                "text.weights": "text encoder weights",
                "text.tokenizer": "tokenizer",
            }
            what = "; ".join(
                f"{names.get(d.split(':')[0], d.split(':')[0])} ({d.split(': ', 1)[1]})"
                for d in diffs[:4]
            )
            raise ModelMismatch(
                f"{run_dir}/config.json: the encoders loaded ({mine['audio']['model']}, "
                f"{mine['text']['model']}) are not the ones this run was trained on: {what}; pass "
                "the run's encoders with --audio-model/--text-model"
            )

    @property
    def max_seconds(self) -> float:
        return self.cfg.max_seconds

    def encode(
        self,
        segments: list[Segment],
        *,
        batch_seconds: float = 0.0,
        max_batch: int = MAX_BATCH,
        num_workers: int = 0,
    ) -> list[SegmentFeatures | str]:
        """Features of each segment, or the reason it cannot be encoded (unreadable, too short)."""
        source = SegmentSource.for_encoders(segments, self)
        rate = self.policy.input_rate
        # an open end (to the end of the recording) counts as the longest, as extraction's plan
        # counts it
        lengths = np.array(
            [
                self.max_samples
                if s.end is None
                else min(self.max_samples, int(round((s.end - (s.start or 0.0)) * rate)))
                for s in segments
            ],
            dtype=np.int64,
        )
        budget = int(batch_seconds_for(batch_seconds, self.device) * rate)
        batches = make_batches(
            lengths, [range(len(segments))], max(budget, self.max_samples), max_batch
        )
        loader = make_loader(source, batches, num_workers)
        out: list[SegmentFeatures | str | None] = [None] * len(segments)
        for batch in encode_loader(loader, self.audio, self.text):
            for it in batch.items:
                if "error" in it:
                    out[it["row"]] = it["error"]
            for j, it in enumerate(batch.kept):
                out[it["row"]] = SegmentFeatures(
                    audio=batch.audio[j, : batch.audio_len[j]].copy(),
                    text=batch.text[j, : batch.text_len[j]].copy(),
                    warnings=it["warnings"],
                    text_truncated=it["truncated"],
                )
            release_freed_memory()  # batches of changing shapes: keep the heap from growing
        return out
