"""The released MarketCalls format.

CSV columns ``phone`` (call id), ``Audio_id`` (segment audio file name, with or without ``.wav``), ``text``,
``label`` (A–E); the augmented variant's lower-case ``audio_id`` and ``segment_number`` are accepted too. Either
per-split files (``train.csv``, ``valid.csv`` or ``val.csv``, ``test.csv``) or one CSV with a ``split`` column; with
neither, a deterministic call-level split stratified by label is made and recorded in ``manifest.notes``.
Audio files are looked up in ``DATA_DIR/audio/`` then ``DATA_DIR/``. Segment order within a call: the
``segment_number`` column, else the last number in the file name (``..._10`` after ``..._9``), else file order.
"""
from __future__ import annotations

from pathlib import Path

from ..manifest import Issue, PathRefused, Segment, resolve_audio
from ._common import (ManifestError, build_manifest, check_labels, last_int, majority_labels, normalise_split,
                      read_csv, require_columns, stratified_split)

SPLIT_FILES = {"train": ("train.csv",), "valid": ("valid.csv", "val.csv", "dev.csv"), "test": ("test.csv",)}
COLUMNS = {"call": ("phone",), "audio": ("audio_id",), "text": ("text",), "label": ("label",)}


def _find_csvs(data_dir: Path, csv_path: str | None) -> list[tuple[Path, str | None]]:
    if csv_path:
        p = Path(csv_path)
        p = p if p.is_absolute() else data_dir / p
        if not p.is_file():
            raise ManifestError(f"{p}: no such CSV")
        return [(p, None)]
    per_split = []
    for split, names in SPLIT_FILES.items():
        hit = next((data_dir / n for n in names if (data_dir / n).is_file()), None)
        if hit:
            per_split.append((hit, split))
    if per_split:
        return per_split
    csvs = sorted(data_dir.glob("*.csv"))
    if len(csvs) == 1:
        return [(csvs[0], None)]
    if not csvs:
        raise ManifestError(f"{data_dir}: no CSV found (expected train.csv/valid.csv/test.csv or one CSV with a "
                            "split column)")
    raise ManifestError(f"{data_dir}: several CSVs ({', '.join(c.name for c in csvs)}) and no train/valid/test.csv; "
                        "keep one, or name the split files train.csv, valid.csv, test.csv")


def load_marketcalls(data_dir: Path, *, allow_outside_paths: bool = False, seed: int = 0,
                     split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), csv_path: str | None = None,
                     dataset: str = "marketcalls") -> Manifest:
    issues: list[Issue] = []
    calls: dict[str, list] = {}
    call_split: dict[str, str] = {}
    labels_seen: list[tuple[str, str]] = []
    seen_ids: dict[str, str] = {}
    order = 0
    split_source = None
    for path, file_split in _find_csvs(data_dir, csv_path):
        fields, rows = read_csv(path, issues)
        cols = require_columns(path, fields, COLUMNS)
        has_split, has_segno = "split" in fields, "segment_number" in fields
        split_source = split_source or ("files" if file_split else ("column" if has_split else "generated"))
        for line, row in rows:
            where = f"{path.name}:{line}"
            call_id, audio_id = row.get(cols["call"], ""), row.get(cols["audio"], "")
            label = row.get(cols["label"], "").upper()
            if not call_id or not audio_id:
                issues.append(Issue(where, "empty call id or audio id; row skipped"))
                continue
            labels_seen.append((where, label))
            split = file_split
            if split is None and has_split:
                split = normalise_split(row.get("split", ""))
                if split is None:
                    issues.append(Issue(where, f"unknown split {row.get('split')!r} (train/valid/test); row skipped"))
                    continue
            try:
                audio = resolve_audio(audio_id, data_dir, allow_outside=allow_outside_paths)
            except PathRefused as e:
                issues.append(Issue(where, f"{e}; row skipped"))
                continue
            if audio is None:
                issues.append(Issue(where, f"audio file {audio_id} not found in {data_dir}/audio or {data_dir}; "
                                           "row skipped"))
                continue
            seg_id = Path(audio_id).stem if audio_id.lower().endswith(".wav") else audio_id
            if seg_id in seen_ids:
                issues.append(Issue(where, f"duplicate segment {seg_id} (first at {seen_ids[seg_id]}); row skipped"))
                continue
            seen_ids[seg_id] = where
            if call_id in call_split and split is not None and call_split[call_id] != split:
                issues.append(Issue(where, f"call {call_id} is in {call_split[call_id]} and {split}; kept in "
                                           f"{call_split[call_id]}"))
                split = call_split[call_id]
            if split is not None:
                call_split.setdefault(call_id, split)
            key = None
            if has_segno:
                try:
                    key = float(row.get("segment_number", ""))
                except ValueError:
                    key = None
            if key is None:
                n = last_int(audio_id)
                key = float(n) if n is not None else float("inf")
            text = row.get(cols["text"], "")
            if not text:
                issues.append(Issue(where, "warning: empty transcript (encoded as special tokens only)"))
            seg = Segment(segment_id=seg_id, call_id=call_id, index=0, split=split or "", label=label,
                          audio_path=str(audio), text=text, source_row=where)
            calls.setdefault(call_id, []).append((key, order, seg))
            order += 1
    check_labels(labels_seen, "marketcalls", allow_empty=False)
    calls = majority_labels(calls, issues)
    notes = {"split": split_source}
    if split_source == "generated":
        labels = {cid: items[0][2].label for cid, items in calls.items()}
        assign = stratified_split(labels, split_ratios, seed)
        calls = {cid: [(o, f, s.with_(split=assign[cid])) for o, f, s in items] for cid, items in calls.items()}
        notes.update({"split_ratios": list(split_ratios), "split_seed": seed,
                      "split_counts": {k: sum(1 for v in assign.values() if v == k) for k in ("train", "valid", "test")}})
    return build_manifest(dataset, "marketcalls", calls, issues, notes)
