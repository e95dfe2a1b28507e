"""``msmtfn-predict --explain DIR``: why each call scored so, as ``DIR/explanations.csv`` and an
offline HTML report (``DIR/index.html``, ``DIR/calls/<call_id>.html``).

The figures come from train/explain.py (definitions: docs/explain.md), computed in the same pass
as the predictions. This module turns them into rows and pages: a segment's text rows become the
transcript's words through the tokenizer's character offsets, its audio frames become seconds of the
recording (the frames span the segment evenly), and recordings mode embeds each segment's audio.

A folder that holds anything a report did not write is refused before anything runs; a previous
report in it (its ``.msmtfn-report.json`` lists its files) is replaced, nothing else is touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write_text

from .config import PredictError

MARK = ".msmtfn-report.json"
COLUMNS = [
    "call_id",
    "segment",
    "start",
    "end",
    "text",
    "task",
    "class",
    "probability",
    "contribution",
    "audio_contribution",
    "text_contribution",
    "context_contribution",
    "top_neighbour",
    "neighbour_contribution",
    "top_words",
    "top_audio",
    "status",
]
TOP = 5  # words and audio spans listed per attributed segment
# a word: one CJK character (Chinese has no spaces), or a run of other non-space characters
WORD = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+")


@dataclass
class SegmentView:
    index: int  # the segment's number in its call (as --segments-out numbers it)
    start: float
    end: float
    text: str
    # the words (or phrases) in order: (text, effect, first character, end character) in ``text``
    words: list[tuple[str, float, int, int]] = field(default_factory=list)
    spans: list[tuple[float, float, float]] = field(default_factory=list)  # (from s, to s, attr)
    at: float = 0.0  # where the timeline draws it (its own file's segments: one after another)
    clip: bytes | None = None  # the segment's audio (FLAC), recordings mode
    predictions: dict = field(default_factory=dict)  # segment-level labels: task -> answer


@dataclass
class CallView:
    call_id: str
    source: str
    status: str
    predictions: dict  # task -> {"label", "probs"} | {"value"} (call-level labels)
    segments: list[SegmentView]  # the explained segments, by their position in the call
    items: list = field(default_factory=list)  # train.explain.ExplainedItem
    attributed: dict = field(default_factory=dict)  # position -> task whose rows are attributed


# ------------------------------------------------------------------------------ rows → words
def word_attributions(
    tokenizer, text: str, max_tokens: int, stretches
) -> list[tuple[str, float, int, int]]:
    """The transcript's words (or phrases: a stretch of several tokens) with their effects:
    (text, effect, first character, end character), in order. ``stretches`` (first row, end row,
    effect) index the tokens as the extraction tokenised the text; the stretches that fall on the
    same words are summed (a word's subword tokens), special tokens carry no word."""
    offsets = tokenizer(text, truncation=True, max_length=max_tokens, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    words = [(m.start(), m.end()) for m in WORD.finditer(text)]
    starts = [a for a, _ in words]

    def word_of(char: int) -> int:
        return int(np.searchsorted(starts, char, side="right")) - 1

    spans: dict[tuple[int, int], float] = {}
    for r0, r1, effect in np.asarray(stretches, dtype=np.float64).reshape(-1, 3):
        chars = [(a, b) for a, b in offsets[int(r0) : int(r1)] if b > a]
        if not chars:
            continue  # special tokens only
        first, last = word_of(chars[0][0]), word_of(chars[-1][1] - 1)
        if first < 0:
            continue
        spans[(first, last)] = spans.get((first, last), 0.0) + float(effect)
    out = []
    for (first, last), effect in sorted(spans.items()):
        a, b = words[first][0], words[last][1]
        out.append((text[a:b], effect, a, b))
    return out


def audio_spans(start: float, end: float, windows) -> list[tuple[float, float, float]]:
    """Audio stretches (first row, end row, effect) as seconds of the recording: the valid frames
    span the segment evenly."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 3)
    if not len(w) or not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        return []
    per_row = (end - start) / w[-1, 1]
    return [(start + a * per_row, start + b * per_row, float(x)) for a, b, x in w]


def top(pairs, key=lambda x: x[-1], n: int = TOP):
    return sorted(pairs, key=lambda x: -abs(key(x)))[:n]


def _num(x) -> str:
    return "" if x is None or not math.isfinite(float(x)) else f"{float(x):.6f}"


def csv_rows(view: CallView) -> list[list]:
    """explanations.csv's rows of one call: one per (segment, task); a call that was not predicted
    is one row with its status."""
    if not view.items:
        return [[view.call_id] + [""] * (len(COLUMNS) - 2) + [view.status]]
    out = []
    for it in view.items:
        seg = view.segments[it.segment]
        rows_of = view.attributed.get(it.segment) == it.task
        words = (
            "; ".join(f"{w[0]}:{w[1]:+.4f}" for w in top(seg.words, key=lambda w: w[1]))
            if rows_of and seg.words
            else ""
        )
        spans = (
            "; ".join(f"{a:.1f}-{b:.1f}s:{x:+.4f}" for a, b, x in top(seg.spans)) if rows_of else ""
        )
        neighbour = view.segments[it.top_neighbour].index if it.top_neighbour >= 0 else ""
        out.append(
            [
                view.call_id,
                seg.index,
                _num(seg.start),
                _num(seg.end),
                seg.text,
                it.task,
                it.label or "",
                _num(it.probability),
                _num(it.contribution),
                _num(it.audio_contribution),
                _num(it.text_contribution),
                _num(it.context_contribution),
                neighbour,
                _num(it.neighbour_contribution),
                words,
                spans,
                view.status,
            ]
        )
    return out


# ---------------------------------------------------------------------------- the report folder
def _listed(path: Path) -> set[str] | None:
    try:
        return set(json.loads((path / MARK).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_report_dir(path: str | Path) -> None:
    """``path`` is new, empty, or holds a previous report only; else one line, before anything
    runs (nothing is deleted)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PredictError(f"{path}: is a file; give --explain a folder (new or empty)")
    if not path.is_dir():
        return
    found = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    if not found:
        return
    listed = _listed(path)
    foreign = sorted(found - (listed or set()) - {MARK})
    if listed is None or foreign:
        what = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise PredictError(
            f"{path}: holds files a msmtfn report did not write ({what}); give --explain a new or "
            "empty folder (nothing was deleted)"
        )


def page_name(call_id: str, taken: set[str]) -> str:
    """A file name for a call's page: its id with unsafe characters replaced, unique."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:120] or "call"
    name, k = f"{base}.html", 1
    while name in taken:
        k += 1
        name = f"{base}-{k}.html"
    taken.add(name)
    return name


class ReportWriter:
    """Writes each call's page as it comes (its audio need not stay in memory), then the index,
    explanations.csv and the list of what it wrote."""

    def __init__(self, path: str | Path, run: str, tasks: list[dict], main: str):
        from .report import call_page

        check_report_dir(path)
        self.path, self.run, self.tasks, self.main = Path(path), run, tasks, main
        self.call_page = call_page
        old = _listed(self.path) or set()
        for name in old:  # the previous report's files only
            (self.path / name).unlink(missing_ok=True)
        (self.path / "calls").mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []
        self.rows: list[list] = []
        self.index: list[dict] = []
        self._mark()

    def _mark(self) -> None:
        atomic_write_text(self.path / MARK, json.dumps({"files": sorted(self.files)}, indent=1))

    def add(self, view: CallView) -> str | None:
        """The call's rows and page; returns the page's path inside the folder (None: skipped)."""
        self.rows += csv_rows(view)
        name = None
        if view.items:
            taken = {Path(f).name for f in self.files}
            name = f"calls/{page_name(view.call_id, taken)}"
            self.files.append(name)
            self._mark()  # listed before it exists: a cut-short report is still replaceable
            atomic_write_text(
                self.path / name, self.call_page(view, self.tasks, self.main, self.run)
            )
        self.index.append({"view": _summary(view, self.main), "page": name})
        return name

    def close(self) -> Path:
        from .report import index_page

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(self.rows)
        self.files += ["explanations.csv", "index.html"]
        self._mark()
        atomic_write_text(self.path / "explanations.csv", buf.getvalue())
        atomic_write_text(self.path / "index.html", index_page(self.index, self.main, self.run))
        self.index_path = self.path / "index.html"
        return self.index_path

    def most_telling_page(self) -> Path | None:
        """The page of the call whose top segment moves its probability most (the demo names
        it)."""
        pages = [e for e in self.index if e["page"] and "top_contribution" in e["view"]]
        if not pages:
            return None
        best = max(pages, key=lambda e: abs(e["view"]["top_contribution"]))
        return self.path / best["page"]


def _summary(view: CallView, main: str) -> dict:
    """What the index shows of a call: its prediction of the main task, the top segment."""
    mine = [it for it in view.items if it.task == main]
    answer = view.predictions.get(main) or {}
    out = {"call_id": view.call_id, "status": view.status, "segments": len(view.segments)}
    if mine:  # a segment-level call: the strongest segment's own prediction
        best = max(
            mine, key=lambda it: abs(it.contribution) if math.isfinite(it.contribution) else 0
        )
        seg = view.segments[best.segment]
        out.update(label=best.label, probability=best.probability, top_segment=seg.index)
        out.update(top_text=seg.text, top_contribution=best.contribution)
    elif "label" in answer:
        out["label"] = answer["label"]
    return out


# ------------------------------------------------------------------------------- building views
CLIP_RATE = 16000  # the report's audio: mono FLAC at this rate


def audio_clip(path: str, start: float, end: float) -> bytes | None:
    """[start, end) of a recording as FLAC bytes, or None where it cannot be read (moved, gone)."""
    import soundfile as sf

    from extract import AudioError, load_segment

    try:
        x, _ = load_segment(path, start, end, CLIP_RATE)
    except (AudioError, OSError):
        return None
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), CLIP_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def lay_out(segments: list[SegmentView], sources: list[str]) -> None:
    """Timeline places: a recording's own times, or where each segment is its own file (or times
    repeat), one after another."""
    ordered = all(b.start >= a.start for a, b in zip(segments, segments[1:]))
    if len(set(sources)) == 1 and ordered:
        for s in segments:
            s.at = s.start
        return
    t = 0.0
    for s in segments:
        s.at, t = t, t + max(0.0, s.end - s.start)


def attach(view: CallView, explanation, tokenizer=None, max_tokens: int = 0) -> CallView:
    """The explanation's items, and its row attributions as words and audio spans."""
    view.items = explanation.items
    for pos, attr in explanation.rows.items():
        seg = view.segments[pos]
        view.attributed[pos] = attr.task
        if attr.text is not None and tokenizer is not None and seg.text:
            seg.words = word_attributions(tokenizer, seg.text, max_tokens, attr.text)
        if attr.audio is not None:
            seg.spans = audio_spans(seg.start, seg.end, attr.audio)
    return view


def cache_views(cs, tokenizer=None, max_tokens: int = 0):
    """Per explained call of a :class:`train.predictions.CacheScores`, its :class:`CallView`."""
    from train.predictions import decode_outputs

    data, scored = cs.data, cs.scored
    table = data.store.table()
    texts = data.store.segment_texts()
    seconds = data.store.segment_seconds()
    answers = decode_outputs(data.scheme, cs.tasks, scored.outputs) if len(scored.calls) else []
    per_call: dict[int, dict] = {}
    per_seg: dict[tuple[int, int], dict] = {}
    for i, a in enumerate(answers):
        c = int(scored.calls[i])
        if scored.segments is None:
            per_call[c] = a
        else:
            per_seg[(c, int(scored.segments[i]))] = a
    for c, e in scored.explanations:
        segs = []
        for pos, r in enumerate(data.rows[c]):
            start = float(table["start"][r]) if np.isfinite(table["start"][r]) else 0.0
            end = float(table["end"][r])
            if not np.isfinite(end):
                end = start + (float(seconds[r]) if np.isfinite(seconds[r]) else 0.0)
            text = "" if texts is None else str(texts[r])
            source = str(table["source_path"][r])
            segs.append(
                SegmentView(
                    int(table["segment_index"][r]),
                    start,
                    end,
                    text,
                    clip=audio_clip(source, start, end) if end > start else None,
                    predictions=per_seg.get((c, pos), {}),
                )
            )
        lay_out(segs, [str(table["source_path"][r]) for r in data.rows[c]])
        view = CallView(
            data.calls[c],
            str(table["source_path"][int(data.rows[c][0])]),
            "ok",
            per_call.get(c, {}),
            segs,
        )
        yield attach(view, e, tokenizer, max_tokens)


def explain_cache(
    run_dir,
    cache,
    split="test",
    device="cpu",
    batch_calls=0,
    threads=0,
    explain=None,
    segments=0,
    steps=16,
    text_model=None,
    method="ablation",
) -> tuple[str, int, ReportWriter | None]:
    """``msmtfn-predict --cache``: (predictions CSV, rows, the written report or None). The
    tokenizer maps text rows to words; where it cannot be loaded the report has no words (logged)."""
    import logging

    from train.explain import ExplainOptions, explained_tasks, main_task
    from train.predictions import score_cache_calls

    from .features import ModelMismatch, run_tokenizer

    opts = ExplainOptions(row_segments=segments, method=method, steps=steps) if explain else None
    if explain:
        check_report_dir(explain)
    cs = score_cache_calls(run_dir, cache, split, device, batch_calls, None, threads, opts)
    if not explain:
        return cs.table(), len(cs.scored.calls), None
    tokenizer, max_tokens = None, 0
    if segments:
        try:
            tokenizer, max_tokens = run_tokenizer(cs.meta, run_dir, text_model)
        except ModelMismatch as e:
            logging.getLogger(__name__).warning("%s; the report shows no words", e)
    names = explained_tasks(cs.data.scheme, cs.tasks)
    task = cs.meta["train"].get("task") or next(iter(cs.meta["dims"]["tasks"]))
    report = ReportWriter(explain, str(run_dir), cs.tasks, main_task(task, names))
    for view in cache_views(cs, tokenizer, max_tokens):
        report.add(view)
    report.close()
    return cs.table(), len(cs.scored.calls), report
