"""Cutting a long recording into segments of at most ``max_seconds``, at pauses.

Training data came as segments of ≤ 40 s cut by people (or by the dataset's tooling) at turns and
pauses; a new recording arrives whole. Cutting it in equal pieces would split words and sentences,
so each cut is placed at the quietest stretch inside a search window that ends at the limit:

    pos ──────────────── [ pos + max − search , pos + max ] ── next cut here, never after pos + max

"Quiet" is a per-frame score, lower = quieter: the frame's RMS level in dB (``energy``, always
available), or (``vad``, when the ``silero-vad`` package is installed) that level plus 100 dB ×
Silero VAD's speech probability, so frames VAD hears as speech are never chosen over non-speech, and
energy places the cut inside the pause. Within the window the frames whose score is within
``tolerance`` of the window's minimum form runs; the cut goes to the middle of the longest run
(ties: the later one, which keeps segments long), so it lands inside a pause, not at its edge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.cache_settings import MAX_SECONDS

log = logging.getLogger(__name__)

CUTTERS = ("energy", "vad")
VAD_RATE = 16000  # Silero VAD runs at 16 kHz (512-sample frames)
# dB per unit of speech probability: a frame VAD calls speech is never the quietest
VAD_WEIGHT = 100.0


class CutterError(Exception):
    """A cutter that cannot run here (e.g. ``vad`` without the silero-vad package)."""


@dataclass(frozen=True)
class CutterConfig:
    method: str = "energy"  # energy | vad
    max_seconds: float = MAX_SECONDS  # no segment is longer (the run's segmentation setting)
    search_seconds: float = 10.0  # how far before the limit a pause is looked for
    min_seconds: float = 1.0  # no cut leaves a piece shorter than this (a tail too short to encode)
    hop_seconds: float = 0.01  # energy frame hop (and frame length)
    # moving average of the score: a pause, not one quiet frame inside a word
    smooth_seconds: float = 0.2

    def __post_init__(self):
        if self.method not in CUTTERS:
            raise CutterError(f"unknown cutter {self.method!r}; valid: {', '.join(CUTTERS)}")
        if not 0 < self.search_seconds <= self.max_seconds:
            raise CutterError(
                f"search window {self.search_seconds}s must be in (0, max_seconds={self.max_seconds}]"
            )
        if self.min_seconds * 2 > self.max_seconds:
            raise CutterError(
                f"min_seconds {self.min_seconds} must be at most half of max_seconds {self.max_seconds}"
            )


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(x) < width:
        return x
    pad = width // 2
    xp = np.pad(x, (pad, width - 1 - pad), mode="edge")
    return np.convolve(xp, np.ones(width) / width, mode="valid")


BLOCK_SAMPLES = 1 << 22  # samples per block of energy_score (~4 min at 16 kHz)


def energy_score(x: np.ndarray, rate: int, hop_seconds: float) -> tuple[np.ndarray, float]:
    """(RMS level in dB per frame, frame hop in seconds)."""
    hop = max(1, int(round(hop_seconds * rate)))
    n = len(x) // hop
    rms = np.empty(n)
    # a block of frames at a time: float64 copies of a 3-hour recording would be 2 × 1.4 GB
    step = max(1, BLOCK_SAMPLES // hop)
    for i in range(0, n, step):
        frames = x[i * hop : min(n, i + step) * hop].astype(np.float64).reshape(-1, hop)
        rms[i : i + len(frames)] = np.sqrt((frames**2).mean(axis=1))
    if len(x) > n * hop:  # the last partial frame counts too
        rms = np.append(rms, np.sqrt((x[n * hop :].astype(np.float64) ** 2).mean()))
    return 20 * np.log10(rms + 1e-6), hop / rate


def vad_available() -> bool:
    try:
        import silero_vad  # noqa: F401
    except ImportError:
        return False
    return True


_VAD_MODEL = None


def vad_score(x: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """(Silero VAD speech probability per 32 ms frame, frame hop in seconds); ``x`` at 16 kHz."""
    global _VAD_MODEL
    import torch

    if rate != VAD_RATE:
        raise CutterError(f"the VAD cutter needs {VAD_RATE} Hz audio, not {rate} Hz")
    if _VAD_MODEL is None:
        # silero_vad sets torch's global thread count on import: restore it
        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad
        except ImportError:
            raise CutterError(
                "--cutter vad needs the silero-vad package: pip install silero-vad "
                "(or use --cutter energy)"
            ) from None
        _VAD_MODEL = load_silero_vad()
        torch.set_num_threads(threads)
    with torch.inference_mode():
        probs = _VAD_MODEL.audio_forward(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), VAD_RATE
        )
    return probs[0].numpy().astype(np.float64), 512 / VAD_RATE


def choose_cuts(
    score: np.ndarray, hop: float, duration: float, cfg: CutterConfig, tolerance: float
) -> list[float]:
    """Cut times (seconds, increasing, excluding 0 and ``duration``) such that every piece is ≤
    max_seconds.

    ``score[i]`` describes the frame [i·hop, (i+1)·hop); a cut at a frame's centre. Pure function of
    its inputs, so the same recording is always cut the same way."""
    cuts: list[float] = []
    pos = 0.0
    while duration - pos > cfg.max_seconds:
        hi = min(pos + cfg.max_seconds, duration - cfg.min_seconds)
        lo = max(pos + cfg.min_seconds, pos + cfg.max_seconds - cfg.search_seconds)
        # frames whose centre lies in [lo, hi]
        f_lo = int(np.ceil(lo / hop - 0.5))
        f_hi = int(np.floor(hi / hop - 0.5))
        f_hi = min(f_hi, len(score) - 1)
        if f_hi < f_lo:  # window narrower than a frame: cut at the limit
            cut = hi
        else:
            w = score[f_lo : f_hi + 1]
            quiet = w <= w.min() + tolerance
            # runs of quiet frames: the longest run's middle (ties: the latest run)
            edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
            starts, stops = edges[0::2], edges[1::2]
            lengths = stops - starts
            best = np.flatnonzero(lengths == lengths.max())[-1]
            mid = f_lo + (starts[best] + stops[best] - 1) / 2.0
            cut = (mid + 0.5) * hop
            cut = min(max(cut, lo), hi)
        # rounded down to 0.1 ms (readable output) so rounding never makes a piece longer than the
        # limit
        cuts.append(float(max(np.floor(cut * 1e4) / 1e4, pos + 1e-4)))
        pos = cuts[-1]
    return cuts


@dataclass(frozen=True)
class Levels:
    """A recording's RMS level per frame (dB) and its length: all the energy cutter needs, computed
    block by block from :func:`extract.audio.stream_recording` so the samples are never held."""

    score: np.ndarray
    hop: float  # seconds per frame
    duration: float  # seconds

    @classmethod
    def of_blocks(cls, blocks, rate: int, hop_seconds: float) -> Levels:
        """The frames of the blocks joined, as :func:`energy_score` frames the whole: the samples
        of a frame cut by a block's end wait for the next block."""
        hop = max(1, int(round(hop_seconds * rate)))
        parts, carry, total = [], np.zeros(0, np.float32), 0
        for block in blocks:
            total += len(block)
            x = np.concatenate([carry, block]) if len(carry) else block
            n = len(x) // hop
            if n:
                frames = x[: n * hop].astype(np.float64).reshape(-1, hop)
                parts.append(np.sqrt((frames**2).mean(axis=1)))
            carry = x[n * hop :]
        if len(carry):  # the last partial frame counts too
            parts.append(np.array([np.sqrt((carry.astype(np.float64) ** 2).mean())]))
        rms = np.concatenate(parts) if parts else np.zeros(0)
        return cls(20 * np.log10(rms + 1e-6), hop / rate, total / rate)


def cut_levels(levels: Levels, cfg: CutterConfig) -> list[tuple[float, float]]:
    """:func:`cut_recording` with the energy cutter, from a recording's :class:`Levels`."""
    if cfg.method != "energy":
        raise CutterError(f"cutting from frame levels needs the energy cutter, not {cfg.method!r}")
    if levels.duration <= cfg.max_seconds:
        return [(0.0, levels.duration)]
    return _cuts(levels.score, levels.hop, levels.duration, cfg)


def cut_recording(x: np.ndarray, rate: int, cfg: CutterConfig) -> list[tuple[float, float]]:
    """Segments ``[(start, end), …]`` in seconds covering the whole recording, each at most
    max_seconds."""
    duration = len(x) / rate
    if duration <= cfg.max_seconds:
        return [(0.0, duration)]
    score, hop = energy_score(x, rate, cfg.hop_seconds)
    if cfg.method == "vad":
        # speech probability (×100, on the energy frame grid) dominates; inside non-speech, energy
        # finds the pause
        prob, vad_hop = vad_score(x, rate)
        idx = np.minimum((np.arange(len(score)) * hop / vad_hop).astype(np.int64), len(prob) - 1)
        score = score + VAD_WEIGHT * prob[idx]
    return _cuts(score, hop, duration, cfg)


def _cuts(score: np.ndarray, hop: float, duration: float, cfg: CutterConfig):
    score = _smooth(score, max(1, int(round(cfg.smooth_seconds / hop))))
    # 3 dB: the quiet frames of one pause differ by noise, speech is tens of dB louder
    bounds = [0.0, *choose_cuts(score, hop, duration, cfg, tolerance=3.0), duration]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
