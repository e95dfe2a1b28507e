"""The generic CSV format, for your own calls.

One CSV, ``DATA_DIR/calls.csv`` (or ``manifest.csv``; or name it with the dataset option ``csv_path``), one row
per segment:

============  ========  ==========================================================================================
column        required  meaning
============  ========  ==========================================================================================
``call_id``   yes       the call (recording, conversation) the segment belongs to; the label is per call
``audio``     yes       audio file, relative to DATA_DIR (absolute paths need ``--allow-outside-paths``)
``start``     no        seconds into the file where the segment starts (one long recording can hold many segments)
``end``       no        seconds where it ends (empty = end of file); segments over 40 s are split at extraction
``text``      no        the segment's transcript (empty is allowed and reported as a warning)
``label``     no        A–E (MarketCalls scheme); empty = unlabelled (kept in the store, not used to train)
``split``     no        train / valid (val, dev) / test; empty everywhere = a stratified split of labelled calls
``segment``   no        order of the segment within its call; default: ``start``, then file order
============  ========  ==========================================================================================
"""
from __future__ import annotations

from pathlib import Path

from ..manifest import Issue, PathRefused, Segment, resolve_audio
from ._common import (ManifestError, build_manifest, check_labels, majority_labels, normalise_split, read_csv,
                      require_columns, stratified_split)

COLUMNS = {"call": ("call_id",), "audio": ("audio",)}


def _float(value: str, where: str, name: str, issues: list[Issue]) -> float | None | str:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        issues.append(Issue(where, f"{name} {value!r} is not a number of seconds; row skipped"))
        return "bad"


def load_generic_csv(data_dir: Path, *, allow_outside_paths: bool = False, seed: int = 0,
                     csv_path: str | None = None, label_scheme: str = "marketcalls",
                     split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Manifest:
    if csv_path:
        path = Path(csv_path) if Path(csv_path).is_absolute() else data_dir / csv_path
    else:
        path = next((data_dir / n for n in ("calls.csv", "manifest.csv") if (data_dir / n).is_file()),
                    data_dir / "calls.csv")
    if not path.is_file():
        raise ManifestError(f"{path}: no such CSV (the csv dataset reads DATA_DIR/calls.csv; see README)")
    issues: list[Issue] = []
    fields, rows = read_csv(path, issues)
    cols = require_columns(path, fields, COLUMNS)
    calls: dict[str, list] = {}
    labels_seen = []
    seen: dict[tuple, str] = {}
    any_split = "split" in fields and any(r.get("split") for _, r in rows)
    for order, (line, row) in enumerate(rows):
        where = f"{path.name}:{line}"
        call_id, audio_name = row.get(cols["call"], ""), row.get(cols["audio"], "")
        if not call_id or not audio_name:
            issues.append(Issue(where, "empty call_id or audio; row skipped"))
            continue
        label = row.get("label", "").upper()
        labels_seen.append((where, label))
        start, end = _float(row.get("start", ""), where, "start", issues), _float(row.get("end", ""), where, "end", issues)
        if "bad" in (start, end):
            continue
        if start is not None and end is not None and end <= start:
            issues.append(Issue(where, f"end {end} is not after start {start}; row skipped"))
            continue
        split = ""
        if any_split:
            split = normalise_split(row.get("split", "")) or ""
            if row.get("split") and not split:
                issues.append(Issue(where, f"unknown split {row.get('split')!r} (train/valid/test); row skipped"))
                continue
        try:
            audio = resolve_audio(audio_name, data_dir, search=("",), allow_outside=allow_outside_paths)
        except PathRefused as e:
            issues.append(Issue(where, f"{e}; row skipped"))
            continue
        if audio is None:
            issues.append(Issue(where, f"audio file {audio_name} not found; row skipped"))
            continue
        key = (call_id, str(audio), start, end)
        if key in seen:
            issues.append(Issue(where, f"duplicate segment (same call, audio, start, end as {seen[key]}); row skipped"))
            continue
        seen[key] = where
        text = row.get("text", "")
        if not text:
            issues.append(Issue(where, "warning: empty transcript (encoded as special tokens only)"))
        seg_key = row.get("segment", "")
        try:
            order_key = float(seg_key) if seg_key else (start if start is not None else 0.0)
        except ValueError:
            order_key = start if start is not None else 0.0
        seg_id = f"{call_id}:{Path(audio_name).name}" + (f"@{start:g}" if start is not None else "")
        seg = Segment(segment_id=seg_id, call_id=call_id, index=0, split=split, label=label, audio_path=str(audio),
                      text=text, start=start, end=end, source_row=where)
        calls.setdefault(call_id, []).append((order_key, order, seg))
    check_labels(labels_seen, label_scheme, allow_empty=True)
    calls = majority_labels(calls, issues)
    notes: dict = {"split": "column" if any_split else "none"}
    labelled = {cid: items[0][2].label for cid, items in calls.items() if items[0][2].label}
    if not any_split and labelled:
        assign = stratified_split(labelled, split_ratios, seed)
        calls = {cid: [(o, f, s.with_(split=assign.get(cid, ""))) for o, f, s in items] for cid, items in calls.items()}
        notes.update({"split": "generated", "split_ratios": list(split_ratios), "split_seed": seed})
    return build_manifest("csv", label_scheme, calls, issues, notes)
