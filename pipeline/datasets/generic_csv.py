"""The generic CSV format, for your own calls.

One CSV, ``DATA_DIR/calls.csv`` (else ``DATA_DIR/manifest.csv``; or name any file with the dataset option
``csv_path``), one row per segment. Column names are case-insensitive; other columns are ignored. UTF-8 (with or
without BOM) and GB18030/GBK are read.

============  ========  ==========================================================================================
column        required  meaning
============  ========  ==========================================================================================
``call_id``   yes       the call (recording, conversation) the segment belongs to; the label belongs to the call
``audio``     yes       audio file, relative to DATA_DIR (``.wav`` may be left off); absolute paths and paths
                        that leave DATA_DIR (``../x.wav``) need ``--allow-outside-paths``
``start``     no        seconds into the file where the segment starts; empty = the beginning
``end``       no        seconds into the file where it ends; empty = the end. With ``start``/``end`` one long
                        recording can hold many segments (rows with the same ``audio``); segments longer than
                        40 s are cut into pieces at extraction
``text``      no        the segment's transcript; empty is allowed (reported as a warning)
``label``     no        the call's label in the label scheme (``marketcalls``: A–E, any case); empty = unlabelled
                        (extracted, but not used for training or scoring). Segments of one call that disagree:
                        the most frequent label wins and the call is reported
``split``     no        train / valid (val, dev) / test. If the column is absent or empty everywhere, labelled
                        calls get a deterministic call-level split stratified by label (``split_ratios``, default
                        0.8,0.1,0.1, seeded by ``--seed``) and unlabelled calls get none
``segment``   no        order of the segment within its call (a number); default: ``start``, then row order
============  ========  ==========================================================================================

Options: ``csv_path``, ``label_scheme`` (default ``marketcalls``), ``split_ratios``. A row that cannot be used
(missing audio file, ``start``/``end`` not numbers or outside the file, a path refused, an exact duplicate of an
earlier row) is reported in ``manifest.issues`` and left out; unknown labels stop with an error listing the rows.

Example::

    call_id,audio,start,end,text,label,split
    c001,recordings/c001.wav,0,12.5,喂你好请问是哪位,B,train
    c001,recordings/c001.wav,12.5,30,我对这个挺感兴趣的,B,train
    c002,recordings/c002_a.wav,,,不需要谢谢,D,test
    c003,new/c003.wav,,,,,
"""
from __future__ import annotations

import math
from pathlib import Path

from ..manifest import Issue, Manifest, PathRefused, Segment, resolve_audio
from ._common import (ManifestError, RowChecks, build_manifest, check_labels, drop_rows, label_lookup, majority_labels,
                      normalise_split, parse_ratios, read_csv, require_columns, scheme_or_error, split_counts,
                      stratified_split)

COLUMNS = {"call": ("call_id",), "audio": ("audio",)}
DEFAULT_NAMES = ("calls.csv", "manifest.csv")


def _seconds(value: str, where: str, name: str, issues: list[Issue]) -> tuple[bool, float | None]:
    """(ok, seconds or None for empty)."""
    if value == "":
        return True, None
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or x < 0:
        issues.append(Issue(where, f"{name} {value!r} is not a number of seconds ≥ 0; row skipped"))
        return False, None
    return True, x


def load_generic_csv(data_dir: Path, *, allow_outside_paths: bool = False, seed: int = 0,
                     csv_path: str | Path | None = None, label_scheme: str = "marketcalls",
                     split_ratios=None) -> Manifest:
    data_dir = Path(data_dir)
    scheme = scheme_or_error(label_scheme)
    canonical = label_lookup(scheme)
    if csv_path:
        path = Path(csv_path) if Path(csv_path).is_absolute() else data_dir / csv_path
    else:
        path = next((data_dir / n for n in DEFAULT_NAMES if (data_dir / n).is_file()), data_dir / DEFAULT_NAMES[0])
    if not path.is_file():
        raise ManifestError(f"{path}: no such CSV (the csv dataset reads DATA_DIR/calls.csv or manifest.csv, or "
                            "the file given with the csv_path option)")
    issues: list[Issue] = []
    fields, rows, _ = read_csv(path, issues)
    cols = require_columns(path, fields, COLUMNS)
    calls: dict[str, list] = {}
    labels_seen: list[tuple[str, str]] = []
    checks = RowChecks(issues)
    seen_ids: set[str] = set()
    any_split = "split" in fields and any(r.get("split") for _, r in rows)
    for order, (line, row) in enumerate(rows):
        where = f"{path.name}:{line}"
        call_id, audio_name = row[cols["call"]], row[cols["audio"]]
        if not call_id or not audio_name:
            issues.append(Issue(where, f"empty {'call_id' if not call_id else 'audio'}; row skipped"))
            continue
        label_raw = row.get("label", "")
        labels_seen.append((where, label_raw))
        label = canonical.get(label_raw.lower(), label_raw)
        ok_s, start = _seconds(row.get("start", ""), where, "start", issues)
        ok_e, end = _seconds(row.get("end", ""), where, "end", issues)
        if not (ok_s and ok_e):
            continue
        if end is not None and end <= (start or 0.0):
            issues.append(Issue(where, f"end {end:g} is not after start {start or 0.0:g}; row skipped"))
            continue
        split = ""
        if any_split:
            given = row.get("split", "")
            split = normalise_split(given) or ""
            if given and not split:
                issues.append(Issue(where, f"unknown split {given!r} (use train, valid/val/dev or test); "
                                           "row skipped"))
                continue
        try:
            audio = resolve_audio(audio_name, data_dir, search=("",), allow_outside=allow_outside_paths)
        except PathRefused as e:
            issues.append(Issue(where, f"{e}; row skipped"))
            continue
        if audio is None:
            issues.append(Issue(where, f"audio file {audio_name} not found (paths are relative to {data_dir}); "
                                       "row skipped"))
            continue
        dur = checks.seconds(audio) if start is not None or end is not None else None
        if dur is not None and start is not None and start >= dur:
            issues.append(Issue(where, f"start {start:g} s is past the end of {audio_name} ({dur:.2f} s); "
                                       "row skipped"))
            continue
        if dur is not None and end is not None and end > dur + 0.05:
            issues.append(Issue(where, f"warning: end {end:g} s is past the end of {audio_name} ({dur:.2f} s); "
                                       "the segment stops at the end of the file"))
        if not checks.first_time((call_id, str(audio), start, end), where,
                                 "segment: same call_id, audio, start and end"):
            continue
        split = checks.one_split(call_id, split, where)
        text = checks.transcript(where, row.get("text", ""))
        order_key = start if start is not None else 0.0
        if row.get("segment", ""):
            try:
                order_key = float(row["segment"])
            except ValueError:
                issues.append(Issue(where, f"warning: segment {row['segment']!r} is not a number; ordered by "
                                           "start, then row order"))
        base = f"{call_id}/{audio_name.replace(chr(92), '/')}"
        if start is not None or end is not None:
            base += f"@{start or 0.0:g}-" + (f"{end:g}" if end is not None else "end")
        seg_id, k = base, 2
        while seg_id in seen_ids:
            seg_id, k = f"{base}#{k}", k + 1
        seen_ids.add(seg_id)
        seg = Segment(segment_id=seg_id, call_id=call_id, index=0, split=split, label=label, audio_path=str(audio),
                      text=text, start=start, end=end, source_row=where)
        calls.setdefault(call_id, []).append((order_key, order, seg))
    calls = drop_rows(calls, check_labels(labels_seen, scheme.name, allow_empty=True, issues=issues))
    if scheme.level == "call":   # segment-level schemes (sentiment, meld) keep each segment's own label
        calls = majority_labels(calls, issues)
    notes: dict = {"split": "column" if any_split else "none", "sources": [path.name]}
    if any_split:
        for cid, items in calls.items():
            seg = items[0][2]
            if seg.label and not seg.split:
                issues.append(Issue(f"call {cid} ({seg.source_row})", "warning: labelled but no split given; "
                                    "it is extracted but not used for training or scoring"))
    else:
        labelled = {cid: items[0][2].label for cid, items in calls.items() if items[0][2].label}
        if labelled:
            ratios = parse_ratios(split_ratios)
            assign = stratified_split(labelled, ratios, seed)
            calls = {cid: [(o, f, s.with_(split=assign.get(cid, ""))) for o, f, s in items]
                     for cid, items in calls.items()}
            notes.update({"split": "generated", "split_method": "call-level, stratified by label, seeded shuffle",
                          "split_ratios": [round(r, 6) for r in ratios], "split_seed": seed,
                          "split_counts": split_counts(assign)})
    notes["unlabelled_calls"] = sum(1 for items in calls.values() if not items[0][2].label)
    return build_manifest("csv", scheme.name, calls, issues, notes)
