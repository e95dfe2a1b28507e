"""How a run's training segments were made, so that new recordings are cut the same way.

A model trained on 3-second utterances and applied to 40-second pieces sees inputs it never saw, and
answers them with confidence. Training records a :class:`SegmentProfile` of its training rows in the
run's ``config.json`` (``cache.segmentation``); ``msmtfn-predict`` reads it to choose how new
recordings are cut, and warns when the segments it made are far from the training's lengths.

- ``policy = "rows"``: the dataset gave each segment as a timed row of a longer recording (the
  generic CSV with ``start``/``end``, MOSI/MOSEI utterances in one file per video); predict cuts a
  new recording by its transcript's rows.
- ``policy = "pauses"``: each segment was its own file or recording (MarketCalls' segment files,
  MELD's clips, whole recordings split into equal pieces at ``max_seconds``); predict cuts at
  pauses, pieces of at most the training's 95th-percentile length.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

POLICIES = ("rows", "pauses")
# extraction's equal pieces of a row over max_seconds: "<segment id>#<i>"
_PIECE = re.compile(r"#\d+$")


@dataclass(frozen=True)
class SegmentProfile:
    policy: str  # "rows" | "pauses"
    max_seconds: float  # the cache's segment limit
    count: int  # training segments measured
    p5: float  # their length in seconds: 5th, 50th and 95th percentile
    p50: float
    p95: float

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict | None) -> SegmentProfile | None:
        """The profile a run recorded, or None for a run made before profiles were recorded."""
        if not record:
            return None
        try:
            return cls(
                str(record["policy"]),
                float(record["max_seconds"]),
                int(record["count"]),
                float(record["p5"]),
                float(record["p50"]),
                float(record["p95"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def pause_limit(self) -> float:
        """The longest piece predict's pause cutter makes: the training's 95th percentile (up to 0.1
        s above it), within the cache's limit, and never under 2 s (a cut needs room for a search
        window)."""
        return float(min(self.max_seconds, max(2.0, math.ceil(self.p95 * 10) / 10)))

    def describe(self) -> str:
        return f"{self.count} segments, {self.p5:.1f}–{self.p95:.1f} s (5–95 %), median {self.p50:.1f} s"

    def far_outside(self, lengths) -> str | None:
        """A warning when segments of these lengths (one recording's) lie far from the training's:
        their median under half the training's 5th percentile or over twice its 95th; else None."""
        lengths = np.asarray(lengths, dtype=np.float64)
        if not len(lengths) or not self.count:
            return None
        m = float(np.median(lengths))
        if m < self.p5 / 2:
            side = "shorter"
        elif m > self.p95 * 2:
            side = "longer"
        else:
            return None
        return (
            f"segments far {side} than training's (median {m:.1f} s; training {self.p5:.1f}–{self.p95:.1f} s, "
            "5–95 %)"
        )


def profile_rows(
    table: dict, seconds: np.ndarray, rows, max_seconds: float
) -> SegmentProfile | None:
    """The profile of the store rows ``rows`` (a run's original training segments) from the store's
    ``table`` and per-row ``seconds`` (CacheStore.segment_seconds); None when no row's length is
    known."""
    rows = np.asarray(list(rows), dtype=np.int64)
    if not len(rows):
        return None
    start = np.asarray(table["start"], dtype=np.float64)[rows]
    end = np.asarray(table["end"], dtype=np.float64)[rows]
    ids = np.asarray(table["segment_id"], dtype=object)[rows]
    timed = (np.isfinite(start) | np.isfinite(end)) & np.array(
        [not _PIECE.search(str(i)) for i in ids]
    )
    # timed rows of shared recordings: several rows cut from one file by their start/end
    sources = np.asarray(table["source_path"], dtype=object)[rows]
    shared = (
        {s for s, n in zip(*np.unique(sources[timed].astype(str), return_counts=True)) if n > 1}
        if timed.any()
        else set()
    )
    from_rows = timed & np.isin(sources.astype(str), list(shared))
    secs = np.asarray(seconds, dtype=np.float64)[rows]
    secs = secs[np.isfinite(secs) & (secs > 0)]
    if not len(secs):
        return None
    p5, p50, p95 = (float(np.percentile(secs, q)) for q in (5, 50, 95))
    return SegmentProfile(
        "rows" if from_rows.mean() > 0.5 else "pauses",
        float(max_seconds),
        int(len(secs)),
        round(p5, 3),
        round(p50, 3),
        round(p95, 3),
    )
