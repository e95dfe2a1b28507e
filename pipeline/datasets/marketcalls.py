"""The released MarketCalls format.

CSV columns ``phone`` (call id), ``Audio_id`` (segment audio file name, with or without ``.wav``), ``text``,
``label`` (A–E, per call); the augmented variant's lower-case ``audio_id`` and ``segment_number`` are accepted too
(column names are case-insensitive; other columns are ignored). Where the data comes from, in this order:

1. per-split files in DATA_DIR: ``train.csv``, ``valid.csv`` (or ``val.csv``, ``dev.csv``), ``test.csv``;
2. the CSV named by the option ``csv_path``, or the only ``*.csv`` in DATA_DIR, with a ``split`` column
   (train / valid / val / dev / test);
3. that CSV without a ``split`` column: a deterministic call-level split stratified by label (80/10/10 unless
   ``split_ratios`` says otherwise, seeded by ``seed``), recorded in ``manifest.notes``; no file is written.

Audio files are looked up in ``DATA_DIR/audio/`` then ``DATA_DIR/``. Segment order within a call: the
``segment_number`` column, else the last number in the file name (``..._10`` after ``..._9``), else file order.
CSVs may be UTF-8 (with or without BOM) or GB18030/GBK (Chinese Excel exports).
"""
from __future__ import annotations

from pathlib import Path

from ..manifest import Issue, Manifest, PathRefused, Segment, resolve_audio
from ._common import (ManifestError, RowChecks, build_manifest, check_labels, drop_rows, label_lookup, last_int,
                      majority_labels, normalise_split, parse_ratios, read_csv, require_columns, scheme_or_error,
                      split_counts, stratified_split)

SPLIT_FILES = {"train": ("train.csv",), "valid": ("valid.csv", "val.csv", "dev.csv"), "test": ("test.csv",)}
COLUMNS = {"call": ("phone",), "audio": ("audio_id",), "text": ("text",), "label": ("label",)}


def _find_csvs(data_dir: Path, csv_path: str | Path | None) -> list[tuple[Path, str | None]]:
    if csv_path:
        p = Path(csv_path)
        p = p if p.is_absolute() else data_dir / p
        if not p.is_file():
            raise ManifestError(f"{p}: no such CSV (check the csv_path option)")
        return [(p, None)]
    per_split = []
    for split, names in SPLIT_FILES.items():
        hits = [data_dir / n for n in names if (data_dir / n).is_file()]
        if len(hits) > 1:
            raise ManifestError(f"{data_dir}: both {hits[0].name} and {hits[1].name} exist; keep one of them as "
                                f"the {split} split")
        if hits:
            per_split.append((hits[0], split))
    if per_split:
        return per_split
    csvs = sorted(p for p in data_dir.glob("*.csv") if p.is_file())
    if len(csvs) == 1:
        return [(csvs[0], None)]
    if not csvs:
        raise ManifestError(f"{data_dir}: no CSV found; expected train.csv, valid.csv, test.csv or one CSV "
                            "(optionally with a split column)")
    raise ManifestError(f"{data_dir}: several CSVs ({', '.join(c.name for c in csvs)}) and no train/valid/test.csv; "
                        "name the split files train.csv, valid.csv, test.csv, or choose one with the csv_path option")


def _segment_id(audio_id: str) -> str:
    sid = audio_id.replace("\\", "/")
    return sid[:-4] if sid.lower().endswith(".wav") else sid


def load_marketcalls(data_dir: Path, *, allow_outside_paths: bool = False, seed: int = 0,
                     split_ratios=None, csv_path: str | Path | None = None,
                     dataset: str = "marketcalls") -> Manifest:
    data_dir = Path(data_dir)
    scheme = scheme_or_error("marketcalls")
    canonical = label_lookup(scheme)
    issues: list[Issue] = []
    calls: dict[str, list] = {}
    checks = RowChecks(issues)
    labels_seen: list[tuple[str, str]] = []
    order = 0
    sources = _find_csvs(data_dir, csv_path)
    per_split = sources[0][1] is not None
    split_mode = None
    for path, file_split in sources:
        fields, rows, _ = read_csv(path, issues)
        cols = require_columns(path, fields, COLUMNS)
        has_split, has_segno = "split" in fields, "segment_number" in fields
        if split_mode is None:
            split_mode = "files" if per_split else ("column" if has_split else "generated")
        for line, row in rows:
            where = f"{path.name}:{line}"
            call_id, audio_id = row[cols["call"]], row[cols["audio"]]
            label_raw = row[cols["label"]]
            if not call_id or not audio_id:
                issues.append(Issue(where, f"empty {'phone' if not call_id else 'Audio_id'}; row skipped"))
                continue
            labels_seen.append((where, label_raw))
            label = canonical.get(label_raw.lower(), label_raw)
            split = file_split
            if split_mode == "column":
                split = normalise_split(row.get("split", ""))
                if split is None:
                    issues.append(Issue(where, f"unknown split {row.get('split', '')!r} (use train, valid/val/dev "
                                               "or test); row skipped"))
                    continue
            try:
                audio = resolve_audio(audio_id, data_dir, allow_outside=allow_outside_paths)
            except PathRefused as e:
                issues.append(Issue(where, f"{e}; row skipped"))
                continue
            if audio is None:
                issues.append(Issue(where, f"audio file {audio_id} not found in {data_dir / 'audio'} or "
                                           f"{data_dir}; row skipped"))
                continue
            seg_id = _segment_id(audio_id)
            if not checks.first_time(seg_id, where, f"segment {seg_id}"):
                continue
            split = checks.one_split(call_id, split, where)
            key = None
            if has_segno and row.get("segment_number", ""):
                try:
                    key = float(row["segment_number"])
                except ValueError:
                    issues.append(Issue(where, f"warning: segment_number {row['segment_number']!r} is not a "
                                               "number; ordered by the file name instead"))
            if key is None:
                n = last_int(audio_id)
                key = float(n) if n is not None else float("inf")
            text = checks.transcript(where, row[cols["text"]])
            seg = Segment(segment_id=seg_id, call_id=call_id, index=0, split=split or "", label=label,
                          audio_path=str(audio), text=text, source_row=where)
            calls.setdefault(call_id, []).append((key, order, seg))
            order += 1
    calls = drop_rows(calls, check_labels(labels_seen, scheme.name, allow_empty=False, issues=issues))
    calls = majority_labels(calls, issues)
    notes: dict = {"split": split_mode, "sources": [p.name for p, _ in sources]}
    if split_mode == "files":
        notes["split_files"] = {s: p.name for p, s in sources}
        missing = [s for s in SPLIT_FILES if s not in notes["split_files"]]
        if missing:
            notes["missing_splits"] = missing
    elif split_mode == "generated":
        ratios = parse_ratios(split_ratios)
        labels = {cid: items[0][2].label for cid, items in calls.items()}
        assign = stratified_split(labels, ratios, seed)
        calls = {cid: [(o, f, s.with_(split=assign[cid])) for o, f, s in items] for cid, items in calls.items()}
        notes.update({"split_method": "call-level, stratified by label, seeded shuffle",
                      "split_ratios": [round(r, 6) for r in ratios], "split_seed": seed,
                      "split_counts": split_counts(assign)})
    return build_manifest(dataset, scheme.name, calls, issues, notes)
