"""Planning: the manifest's segments → the store's rows, splitting any segment longer than the
maximum.

A segment over ``max_seconds`` is cut into equal pieces of at most ``max_seconds`` (never silently
truncated); its transcript is shared out over the pieces in proportion to time, at whitespace where
there is any (the datasets give no word timings). Row order is call by call, segments in order, so a
call's rows are contiguous.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

from pipeline.manifest import Manifest, Segment

from .audio import probe_duration


def split_text(text: str, parts: int) -> list[str]:
    if parts == 1:
        return [text]
    words = text.split()
    if len(words) >= parts:  # whitespace-separated language: split between words
        k = len(words)
        return [
            " ".join(words[round(i * k / parts) : round((i + 1) * k / parts)]) for i in range(parts)
        ]
    k = len(text)  # Chinese and other unsegmented text: split between characters
    return [text[round(i * k / parts) : round((i + 1) * k / parts)] for i in range(parts)]


def plan_segments(
    manifest: Manifest, max_seconds: float, workers: int = 8
) -> tuple[list[Segment], dict[str, float]]:
    """Returns (rows, durations by segment_id). Unreadable files keep one row; extraction reports
    them."""
    paths = sorted({s.audio_path for s in manifest.segments})
    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1) * 2)) as ex:
        file_dur = dict(zip(paths, ex.map(probe_duration, paths)))
    rows: list[Segment] = []
    durations: dict[str, float] = {}
    for segs in manifest.calls().values():
        out: list[Segment] = []
        for s in segs:
            fd = file_dur.get(s.audio_path)
            if fd is None:
                out.append(s)
                continue
            start = s.start or 0.0
            end = fd if s.end is None else min(s.end, fd)
            dur = max(0.0, end - start)
            n = max(1, math.ceil(dur / max_seconds - 1e-9))
            if n == 1:
                out.append(s)
                durations[s.segment_id] = dur
                continue
            step = dur / n
            for i, txt in enumerate(split_text(s.text, n)):
                piece = s.with_(
                    segment_id=f"{s.segment_id}#{i}",
                    start=start + i * step,
                    end=start + (i + 1) * step if i < n - 1 else end,
                    text=txt,
                )
                out.append(piece)
                durations[piece.segment_id] = piece.end - piece.start
        rows.extend(seg.with_(index=i) for i, seg in enumerate(out))
    return rows, durations
