"""The one pipeline from an adapter's raw rows to a :class:`Manifest`.

An adapter only parses: it turns its files into :class:`RawRow` records (ids, label, audio path as
written, text, times, the split it names, and a problem with the row if parsing found one) inside a
:class:`Parsed`. :func:`to_manifest` then does what every dataset needs, worded the same everywhere:
path checks (absolute paths and ``..`` need ``allow_outside_paths``), duration probing, duplicates,
split conflicts, empty transcripts, label validation, majority call labels, a generated split where
none is given, and issue reporting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..labels import LabelScheme
from ..manifest import Issue, Manifest, PathRefused, Segment, resolve_audio
from ..remote_files import data_root
from ._common import (
    RowChecks,
    build_manifest,
    check_labels,
    drop_rows,
    label_lookup,
    majority_labels,
    normalise_split,
    parse_ratios,
    scheme_or_error,
    split_counts,
    stratified_split,
)


@dataclass(frozen=True)
class RawRow:
    """One segment as the dataset's files give it. ``audio`` is the path as written (relative to the
    dataset folder), or the file the parser found where ``Parsed.found_by_parser``; ``split`` is a
    normalised split or "" (none given); ``order`` sorts the call's segments (ties: file order);
    ``problem`` (set by the parser) leaves the row out with that reason; ``warnings`` are kept-row
    notes."""

    call_id: str
    segment_id: str
    audio: str
    where: str  # FILE:LINE of the row, for issues
    label: str = ""
    split: str = ""
    text: str = ""
    start: float | None = None
    end: float | None = None
    order: float = math.inf
    # the row cannot be read at all (no ids): reported, its label not checked
    unread: str | None = None
    problem: str | None = None
    warnings: tuple[str, ...] = ()
    channel: str = ""  # the customer's channel (a customer_channel column), normalised
    speaker: str = ""  # who speaks in the row (a speaker column)


@dataclass
class Parsed:
    """What an adapter's parser returns: the rows, how to find their audio, and notes for the
    manifest.

    ``search``: folders under ``data_dir`` where audio is looked up; ``not_found``: the issue for a
    missing file (``{audio}`` and ``{data_dir}`` are filled in); ``duplicate``: how a duplicate row
    is named (``{segment_id}``; ``{last}``: its part after the last ``/``); ``notes["split"]``:
    where the split came from (``files``, ``column``, ``none``: a split is generated for the
    labelled calls); ``issues``: found while reading files."""

    rows: list[RawRow]
    data_dir: Path
    notes: dict
    search: tuple[str, ...] = ("audio", "")
    not_found: str = "audio file {audio} not found in {data_dir}; row skipped"
    duplicate: str = "segment {segment_id}"
    call_kind: str = "call"  # what a call is called in split-conflict warnings (video, dialogue)
    # duplicates: same call, resolved audio file, start and end (not the id)
    same_by_audio: bool = False
    # the parser built the audio paths from ids and found the files itself
    found_by_parser: bool = False
    # label check over the rows kept after the duplicate check, not all rows
    labels_of_kept_rows: bool = False
    warn_empty_text: bool = True  # False where the parser words its own transcript warnings
    warn_end_past_file: bool = True
    issues: list[Issue] = field(default_factory=list)


def no_text_note(name: str, rows: list[RawRow], notes: dict) -> Issue:
    """The one note of a dataset that says it has no transcripts (option ``no_text``), instead of a
    warning per row."""
    empty = sum(1 for r in rows if not r.text)
    notes["no_text"] = True
    return Issue(
        name,
        f"warning: no transcripts (option no_text): {empty} of {len(rows)} rows have empty text; the "
        "text encoder sees only its special tokens there",
    )


def short_rows(wheres: list[str], shown: int = 5) -> str:
    """``calls.csv:2, :3, :4, :5, :6, … :11 (10 rows)``: rows of one file by line, the file named
    once."""
    cut = len(wheres) > shown + 1
    parts, last_file = [], None
    for w in (wheres[:shown] + wheres[-1:]) if cut else wheres:
        file, sep, line = w.rpartition(":")
        parts.append(f":{line}" if sep and file == last_file else w)
        last_file = file if sep else None
    if cut:
        parts[-1] = f"… {parts[-1]}"
    return f"{', '.join(parts)} ({len(wheres)} rows)"


class SameProblem:
    """Row issues with the same reason (one missing or refused audio file named by many rows) become
    one issue naming the rows, in the place of the first; ``Issue.rows`` keeps every row for
    report.json."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        self._rows: dict[str, list[str]] = {}
        self._at: dict[str, int] = {}

    def add(self, where: str, reason: str) -> None:
        if reason not in self._rows:
            self._at[reason] = len(self.issues)
            self.issues.append(Issue(where, reason))
        self._rows.setdefault(reason, []).append(where)

    def flush(self) -> None:
        for reason, wheres in self._rows.items():
            if len(wheres) > 1:
                plural = reason.replace("; row skipped", "; rows skipped")
                self.issues[self._at[reason]] = Issue(
                    short_rows(wheres), plural, rows=tuple(wheres)
                )
        self._rows.clear()


def split_or_problem(given: str, allow_empty: bool) -> tuple[str, str | None]:
    """(normalised split or "", problem) for a split value as written in a file."""
    split = normalise_split(given) or ""
    if not split and (given or not allow_empty):
        return "", f"unknown split {given!r} (use train, valid/val/dev or test); row skipped"
    return split, None


def _row_audio(parsed: Parsed, row, allow_outside_paths: bool, audio_issues) -> Path | None:
    """The row's audio file, or None (the reason added to ``audio_issues``)."""
    where = row.where
    try:
        audio = (
            data_root(row.audio)  # a URL stays one (Path would fold its //)
            if parsed.found_by_parser
            else resolve_audio(
                row.audio,
                parsed.data_dir,
                search=parsed.search,
                allow_outside=allow_outside_paths,
            )
        )
    except PathRefused as e:
        audio_issues.add(where, f"{e}; row skipped")
        return None
    if audio is None:
        audio_issues.add(
            where,
            parsed.not_found.replace("{audio}", row.audio).replace(
                "{data_dir}", str(parsed.data_dir)
            ),
        )
    return audio


def _times_fit_the_file(parsed: Parsed, row, audio: Path, checks: RowChecks) -> bool:
    """False (the row skipped, named) when it starts past the end of its file; an end past it is
    a warning."""
    start, end, where = row.start, row.end, row.where
    dur = checks.seconds(audio) if start is not None or end is not None else None
    shown = audio.name if parsed.found_by_parser else row.audio
    if dur is not None and start is not None and start >= dur:
        checks.issues.append(
            Issue(where, f"start {start:g} s is past the end of {shown} ({dur:.2f} s); row skipped")
        )
        return False
    if dur is not None and end is not None and end > dur + 0.05 and parsed.warn_end_past_file:
        checks.issues.append(
            Issue(
                where,
                f"warning: end {end:g} s is past the end of {shown} ({dur:.2f} s); "
                "the segment stops at the end of the file",
            )
        )
    return True


def _segments(
    parsed: Parsed,
    checks: RowChecks,
    canonical: dict[str, str],
    allow_outside_paths: bool,
    labels_seen: list[tuple[str, str]],
) -> dict[str, list]:
    issues = checks.issues
    audio_issues = SameProblem(issues)
    calls: dict[str, list] = {}
    seen_ids: set[str] = set()
    for order, row in enumerate(parsed.rows):
        where = row.where
        if row.unread:
            issues.append(Issue(where, row.unread))
            continue
        if not parsed.labels_of_kept_rows:
            labels_seen.append((where, row.label))
        if row.problem:
            issues.append(Issue(where, row.problem))
            continue
        audio = _row_audio(parsed, row, allow_outside_paths, audio_issues)
        if audio is None:
            continue
        start, end = row.start, row.end
        if not _times_fit_the_file(parsed, row, audio, checks):
            continue
        key = (row.call_id, str(audio), start, end) if parsed.same_by_audio else row.segment_id
        if not checks.first_time(
            key,
            where,
            parsed.duplicate.replace("{segment_id}", row.segment_id).replace(
                "{last}", row.segment_id.rpartition("/")[2]
            ),
        ):
            continue
        if parsed.labels_of_kept_rows:
            labels_seen.append((where, row.label))
        split = checks.one_split(row.call_id, row.split, where, kind=parsed.call_kind)
        text = checks.transcript(where, row.text) if parsed.warn_empty_text else row.text
        issues.extend(Issue(where, w) for w in row.warnings)
        seg_id, k = row.segment_id, 2
        while seg_id in seen_ids:
            seg_id, k = f"{row.segment_id}#{k}", k + 1
        seen_ids.add(seg_id)
        seg = Segment(
            segment_id=seg_id,
            call_id=row.call_id,
            index=0,
            split=split or "",
            label=canonical.get(row.label.lower(), row.label),
            audio_path=str(audio),
            text=text,
            start=start,
            end=end,
            source_row=where,
            channel=row.channel,
            speaker=row.speaker,
        )
        calls.setdefault(row.call_id, []).append((row.order, order, seg))
    audio_issues.flush()
    return calls


def generate_split(calls: dict[str, list], split_ratios, seed: int, notes: dict) -> dict[str, list]:
    """A call-level split of the labelled calls, stratified by label (unlabelled calls get none)."""
    labelled = {cid: items[0][2].label for cid, items in calls.items() if items[0][2].label}
    if not labelled:
        return calls
    ratios = parse_ratios(split_ratios)
    assign = stratified_split(labelled, ratios, seed)
    notes.update(
        {
            "split": "generated",
            "split_method": "call-level, stratified by label, seeded shuffle",
            "split_ratios": [round(r, 6) for r in ratios],
            "split_seed": seed,
            "split_counts": split_counts(assign),
        }
    )
    return {
        cid: [(o, f, s.with_(split=assign.get(cid, ""))) for o, f, s in items]
        for cid, items in calls.items()
    }


def to_manifest(
    dataset: str,
    scheme_name: str | LabelScheme,
    parsed: Parsed,
    *,
    allow_outside_paths: bool = False,
    allow_empty_labels: bool = False,
    split_ratios=None,
    seed: int = 0,
    assign_splits: Callable[[dict[str, list]], dict[str, list]] | None = None,
) -> Manifest:
    """The manifest of ``parsed``'s rows after every shared check (see the module docstring).

    ``assign_splits`` replaces the default split rule (a split generated for the labelled calls when
    the files name none) for a dataset with its own (standard folds files)."""
    scheme = scheme_or_error(scheme_name)
    issues = parsed.issues
    checks = RowChecks(issues)
    labels_seen: list[tuple[str, str]] = []
    calls = _segments(parsed, checks, label_lookup(scheme), allow_outside_paths, labels_seen)
    calls = drop_rows(
        calls, check_labels(labels_seen, scheme, allow_empty=allow_empty_labels, issues=issues)
    )
    # segment-level schemes (sentiment, meld) keep each segment's own label
    if scheme.level == "call":
        calls = majority_labels(calls, issues)
    notes = parsed.notes
    if assign_splits is not None:
        calls = assign_splits(calls)
    elif notes.get("split") in ("none", "generated"):
        calls = generate_split(calls, split_ratios, seed, notes)
    elif notes.get("split") == "column":
        for cid, items in calls.items():
            seg = items[0][2]
            if seg.label and not seg.split:
                issues.append(
                    Issue(
                        f"call {cid} ({seg.source_row})",
                        "warning: labelled but no split given; "
                        "it is extracted but not used for training or scoring",
                    )
                )
    if allow_empty_labels:
        notes["unlabelled_calls"] = sum(1 for items in calls.values() if not items[0][2].label)
    return build_manifest(
        dataset, scheme.name, calls, issues, notes, label_scheme_def=scheme.definition
    )
