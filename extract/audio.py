"""Audio front end: decode, mix to mono, resample, and validate one segment.

Two sample-rate policies (both recorded in the cache fingerprint):

* ``encoder`` (default): resample every file to the encoder's rate (read from its feature extractor).
* ``paper-8k``: the paper's public code fed 8 kHz phone audio to a 16 kHz HuBERT unresampled. For parity,
  audio is brought to 8 kHz and fed as if it were at the encoder's rate (a 40 s segment → 999 frames).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

RATE_POLICIES = ("encoder", "paper-8k")
PAPER_RATE = 8000


class AudioError(Exception):
    """A segment whose audio cannot be used; the message is the reason shown in the report."""


@dataclass(frozen=True)
class AudioPolicy:
    rate_policy: str       # "encoder" | "paper-8k"
    encoder_rate: int      # the rate the encoder was trained on

    @property
    def input_rate(self) -> int:
        """Rate of the samples handed to the encoder."""
        return PAPER_RATE if self.rate_policy == "paper-8k" else self.encoder_rate

    def __post_init__(self):
        if self.rate_policy not in RATE_POLICIES:
            raise ValueError(f"unknown rate policy {self.rate_policy!r}; valid: {', '.join(RATE_POLICIES)}")


def probe_duration(path: str) -> float | None:
    """Seconds of audio in a file from its header, or None when it cannot be read (reported at extraction)."""
    try:
        info = sf.info(path)
    except Exception:
        return None
    if info.samplerate <= 0:
        return None
    return info.frames / info.samplerate


def load_segment(path: str, start: float | None, end: float | None, rate: int) -> tuple[np.ndarray, list[str]]:
    """Decode [start, end) of ``path`` as mono float32 at ``rate``. Returns (samples, warnings).

    Raises AudioError for what cannot be encoded: unreadable, empty, non-finite samples.
    Silence is kept (the paper found silent stretches informative) but named as a warning.
    """
    warnings: list[str] = []
    if not os.path.isfile(path):
        raise AudioError("audio file not found")
    if os.path.getsize(path) == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            first = 0 if start is None else max(0, int(round(start * sr)))
            last = f.frames if end is None else min(f.frames, int(round(end * sr)))
            if first >= f.frames and f.frames > 0:
                raise AudioError(f"start {start}s is past the end of the file ({f.frames / sr:.2f}s)")
            f.seek(min(first, f.frames))
            data = f.read(frames=max(0, last - first), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except FileNotFoundError:
        raise AudioError("audio file not found") from None
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for corrupt or non-audio files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AudioError(f"cannot decode audio ({msg})") from None
    if data.shape[0] == 0:
        raise AudioError("empty audio (0 samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"audio has {bad} NaN/inf samples")
    if data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    x = np.ascontiguousarray(data[:, 0])
    if sr != rate:
        x = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32, copy=False)
    if not np.any(np.abs(x) > 1e-6):
        warnings.append("silent audio (encoded as is)")
    return x, warnings
