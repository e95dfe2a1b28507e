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
from dataclasses import replace

from pipeline.manifest import Manifest, Segment, role_text
from pipeline.units import join_texts, turn_units

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


def _timed(s: Segment) -> bool:
    """A row cut from a longer recording by its start/end (not a file of its own)."""
    return s.start is not None or s.end is not None


def _timed_runs(segs: list[Segment]) -> list[list[Segment]]:
    """A call's segments as runs: consecutive timed rows of one recording together, every other
    segment (a file of its own) alone."""
    runs: list[list[Segment]] = []
    for s in segs:
        prev = runs[-1][-1] if runs else None
        if _timed(s) and prev is not None and _timed(prev) and prev.audio_path == s.audio_path:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _unit_segment(parts: list[Segment], roles: str) -> Segment:
    first, last = parts[0], parts[-1]
    text = join_texts(
        [role_text(p.speaker, p.text) if roles == "prefix" else p.text for p in parts]
    )
    return first.with_(
        segment_id=f"{first.segment_id}..{last.segment_id}",
        end=last.end,
        text=text,
        speaker="",  # several speakers: their names are in the text under --roles prefix
        source_row=f"{first.source_row} (+{len(parts) - 1} rows)",
    )


def unite_turns(manifest: Manifest, max_seconds: float, roles: str = "none") -> Manifest:
    """``--units turns``: each recording's timed rows grouped into conversation units
    (pipeline/units.py); a unit of several rows becomes one segment (their texts joined, each with
    its speaker before it under ``--roles prefix``), a unit of one row stays as it was. Raises
    ValueError (one line) for a dataset that has no units to make."""
    if manifest.scheme.level == "segment":
        raise ValueError(
            f"--units turns: {manifest.dataset}'s labels are per utterance "
            f"({manifest.label_scheme}); a unit would merge differently labelled rows"
        )
    out: list[Segment] = []
    for segs in manifest.calls().values():
        for run in _timed_runs(segs):
            if len(run) == 1:
                out.append(run[0])
                continue
            if missing := next((s for s in run if not s.speaker), None):
                raise ValueError(
                    f"{missing.source_row}: no speaker; --units turns needs a speaker column "
                    "(agent, customer, …) on every timed row of a recording"
                )
            spans = [(s.start or 0.0, math.inf if s.end is None else s.end) for s in run]
            for unit in turn_units(spans, [s.speaker for s in run], max_seconds):
                parts = [run[i] for i in unit]
                out.append(parts[0] if len(parts) == 1 else _unit_segment(parts, roles))
    if not any(_timed(s) for s in manifest.segments):
        raise ValueError(
            f"--units turns: {manifest.dataset}'s segments are files of their own, not timed rows "
            "of a recording (a CSV with start/end and speaker columns)"
        )
    calls: dict[str, int] = {}
    for i, s in enumerate(out):  # renumber each call's segments in order
        out[i] = s.with_(index=calls.setdefault(s.call_id, 0))
        calls[s.call_id] += 1
    return replace(manifest, segments=out)
