"""Transcripts of new recordings: from a CSV of timed utterances or from a speech recognition model.

Both give timed pieces of text ``(start, end, text)`` per recording; :func:`assign_text` hands each
piece to the segment it overlaps most (ties: the earlier segment), so an utterance that straddles a
cut is not counted twice, and joins a segment's pieces in time order. Cuts are placed in pauses
(predict/segmenter.py), so a piece rarely straddles one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.datasets._common import ManifestError, read_csv, seconds

log = logging.getLogger(__name__)

REQUIRED = ("call_id", "start", "end", "text")


class TranscriptError(Exception):
    """A transcript source that cannot be used at all (one line naming the file and the fix)."""


@dataclass(frozen=True)
class Piece:
    start: float
    end: float
    text: str
    speaker: str = ""  # a speaker column (agent, customer, …); "" = not given


def read_transcript_csv(path: str | Path) -> dict[str, list[Piece]]:
    """``call_id,start,end,text[,speaker]`` (call_id = the recording's file stem; other columns are ignored;
    header names case-insensitive; UTF-8 or GB18030). As in the extract CSV, an empty ``start`` is
    the beginning and an empty ``end`` the end of the recording (``end`` = inf here). Returns pieces
    by call id, in time order."""
    path = Path(path)
    issues: list = []
    try:  # the adapters' one CSV reader (UTF-8 or GB18030, header case-insensitive)
        fields, table, _ = read_csv(path, issues)
    except ManifestError as e:
        raise TranscriptError(f"{e}; check --transcripts") from None
    for issue in issues:
        log.warning("%s: %s", issue.where, issue.reason)
    missing = [c for c in REQUIRED if c not in fields]
    if missing:
        raise TranscriptError(
            f"{path}: missing column {', '.join(missing)} (found: {', '.join(fields) or 'none'}); "
            f"the transcripts CSV needs {','.join(REQUIRED)}"
        )
    out: dict[str, list[Piece]] = {}
    bad = []
    for line, row in table:
        raw_start, raw_end = row["start"], row["end"]
        start = seconds(raw_start) if raw_start else 0.0
        end = seconds(raw_end) if raw_end else math.inf
        if start is None or end is None or end < start:
            bad.append(line)
            continue
        if row["call_id"]:
            piece = Piece(start, end, row["text"], row.get("speaker", "").strip())
            out.setdefault(row["call_id"], []).append(piece)
    if bad:
        log.warning(
            "%s: %d rows without valid start/end seconds are ignored (lines %s)",
            path,
            len(bad),
            ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else ""),
        )
    return {cid: sorted(p, key=lambda x: (x.start, x.end)) for cid, p in out.items()}


def assign_text(pieces: list[Piece], bounds: list[tuple[float, float]]) -> list[str]:
    """The text of each segment ``bounds[i] = (start, end)``: the pieces whose largest overlap is
    with it.

    A piece overlapping no segment (past the end of the audio) goes to the nearest one, so no words
    are lost; a zero-length piece (a word timestamp) counts as overlapping the segment that contains
    it."""
    texts: list[list[str]] = [[] for _ in bounds]
    if not bounds:
        return []
    starts = np.array([b[0] for b in bounds])
    ends = np.array([b[1] for b in bounds])
    for p in sorted(pieces, key=lambda x: (x.start, x.end)):
        if not p.text:
            continue
        # empty end: the recording's
        end = p.end if math.isfinite(p.end) else max(float(ends.max()), p.start)
        overlap = np.minimum(ends, end) - np.maximum(starts, p.start)
        if end <= p.start:  # a point: the segment containing it
            overlap = np.where((starts <= p.start) & (p.start < ends), 1.0, -np.inf)
        if overlap.max() <= 0:
            mid = (p.start + end) / 2
            i = int(np.argmin(np.maximum(starts - mid, 0) + np.maximum(mid - ends, 0)))
        else:
            i = int(np.argmax(overlap))  # first maximum: ties go to the earlier segment
        texts[i].append(p.text)
    return [" ".join(t) for t in texts]


# ------------------------------------------------------------------------------------------ speech
# recognition
class AsrTranscriber:
    """``transformers.pipeline("automatic-speech-recognition", model, return_timestamps=True)`` over
    a whole recording (chunked by 30 s windows inside the pipeline); chunk timestamps →
    :class:`Piece`."""

    RATE = 16000

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        chunk_seconds: float = 30.0,
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ):
        from transformers import pipeline

        check_asr_model(model)
        try:
            self.pipe = pipeline(
                "automatic-speech-recognition",
                model=model,
                device=torch_device(device),
                trust_remote_code=trust_remote_code,
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TranscriptError(
                f"--asr {model}: cannot load the speech recognition model ({first}); give a hub "
                "id or a local folder, or use --transcripts CSV"
            ) from None
        self.model, self.chunk_seconds, self.batch_size = model, chunk_seconds, batch_size
        fe = getattr(self.pipe, "feature_extractor", None)
        self.rate = int(getattr(fe, "sampling_rate", self.RATE) or self.RATE)

    def __call__(self, x: np.ndarray, rate: int) -> list[Piece]:
        """Timed pieces of the recording ``x`` (mono float32 at ``rate`` Hz)."""
        duration = len(x) / rate
        if rate != self.rate:  # the model's own rate; soxr, as extract resamples
            import soxr

            x = soxr.resample(x, rate, self.rate, quality="HQ").astype(np.float32, copy=False)
        out = self.pipe(
            {"raw": x, "sampling_rate": self.rate},
            return_timestamps=True,
            chunk_length_s=self.chunk_seconds,
            batch_size=self.batch_size,
        )
        return pieces_from_chunks(
            out.get("chunks") or [], duration, fallback_text=out.get("text", "")
        )


def check_asr_model(model: str) -> None:
    """Refuse at once, in one line, a speech recognition model that cannot load: a folder that is
    not a model folder, or a hub id that is neither in the local Hugging Face cache nor downloadable
    (offline, or the hub unreachable: transformers would retry for half a minute first)."""
    from huggingface_hub import constants, try_to_load_from_cache

    from extract.encoders import hub_reachable
    from extract.paths import InputPathError, looks_like_path, require_model_folder

    if Path(model).expanduser().exists() or looks_like_path(model):
        try:
            require_model_folder(model, "--asr")
        except InputPathError as e:
            raise TranscriptError(f"{e}; or use --transcripts CSV") from None
        return
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return  # in the local cache: loads without the network
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        why = (
            "downloads are off (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else f"{constants.ENDPOINT} cannot be reached"
        )
        raise TranscriptError(
            f"--asr {model}: not in the local Hugging Face cache and {why}; download it where "
            f"there is internet (`hf download {model} --local-dir DIR`), copy DIR here and pass "
            "--asr DIR, or use --transcripts CSV"
        )


def torch_device(device: str):
    import torch

    return torch.device(device)


def pieces_from_chunks(chunks: list[dict], duration: float, fallback_text: str = "") -> list[Piece]:
    """ASR pipeline chunks ``{"timestamp": (start, end), "text": …}`` → pieces. A missing start
    follows the previous chunk; a missing end (the last chunk, cut off) runs to the end of the
    recording."""
    pieces: list[Piece] = []
    prev_end = 0.0
    for ch in chunks:
        ts = ch.get("timestamp") or (None, None)
        start = ts[0] if ts[0] is not None else prev_end
        end = ts[1] if len(ts) > 1 and ts[1] is not None else duration
        start, end = float(min(max(start, 0.0), duration)), float(min(max(end, start), duration))
        text = (ch.get("text") or "").strip()
        if text:
            pieces.append(Piece(start, end, text))
        prev_end = end
    # a model without timestamps: the whole text over the recording
    if not pieces and fallback_text.strip():
        pieces.append(Piece(0.0, duration, fallback_text.strip()))
    return pieces


def channel_speakers(channels: int, customer: int | None) -> list[str]:
    """The speaker of each channel of a recording: customer and agent where the customer's channel
    is known, else left/right (two channels) or ``channel N``."""
    if customer is not None and 0 <= customer < channels:
        return ["customer" if k == customer else "agent" for k in range(channels)]
    if channels == 2:
        return ["left", "right"]
    return [f"channel {k}" for k in range(channels)]


def transcribe_channels(asr, channels: list, rate: int, speakers: list[str]) -> list[Piece]:
    """Each channel through the speech recognizer on its own, its pieces named by that channel's
    speaker, merged in time order (at equal starts, channel order)."""
    pieces = [
        Piece(p.start, p.end, p.text, who)
        for x, who in zip(channels, speakers)
        for p in asr(x, rate)
    ]
    return sorted(pieces, key=lambda p: p.start)  # stable: ties keep channel order
