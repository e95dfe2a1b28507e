"""The released MarketCalls format.

CSV columns ``phone`` (call id), ``Audio_id`` (segment audio file name, with or without ``.wav``),
``text``, ``label`` (A–E, per call); the augmented variant's lower-case ``audio_id`` and
``segment_number`` are accepted too (column names are case-insensitive; other columns are ignored).
Where the data comes from, in this order:

1. per-split files in DATA_DIR: ``train.csv``, ``valid.csv`` (or ``val.csv``, ``dev.csv``),
   ``test.csv``;
2. the CSV named by the option ``csv_path``, or the only ``*.csv`` in DATA_DIR, with a ``split``
   column (train / valid / val / dev / test);
3. that CSV without a ``split`` column: a deterministic call-level split stratified by label
   (80/10/10 unless ``split_ratios`` says otherwise, seeded by ``seed``), recorded in
   ``manifest.notes``; no file is written.

Audio files are looked up in ``DATA_DIR/audio/`` then ``DATA_DIR/``. Segment order within a call:
the ``segment_number`` column, else the last number in the file name (``..._10`` after ``..._9``),
else file order. CSVs may be UTF-8 (with or without BOM) or GB18030/GBK (Chinese Excel exports). A
``text`` column empty in most rows while another column holds text stops the read (a misnamed
column; rename it); option ``no_text=true`` says the calls really have no transcripts (one note
instead of a warning per row).
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import Issue, Manifest
from ..remote_files import data_root, is_url
from ._common import (
    ManifestError,
    bool_option,
    customer_channel,
    last_int,
    read_csv,
    require_columns,
    transcript_column_check,
)
from .pipeline import Parsed, RawRow, no_text_note, split_or_problem, to_manifest
from .registry import register_dataset

SCHEME = "marketcalls"

SPLIT_FILES = {
    "train": ("train.csv",),
    "valid": ("valid.csv", "val.csv", "dev.csv"),
    "test": ("test.csv",),
}
COLUMNS = {"call": ("phone",), "audio": ("audio_id",), "text": ("text",), "label": ("label",)}
OURS = {"phone", "audio_id", "text", "label", "split", "segment_number"}


def _find_csvs(data_dir: Path, csv_path: str | Path | None) -> list[tuple[Path, str | None]]:
    if csv_path:
        p = data_root(csv_path)
        p = p if is_url(csv_path) or p.is_absolute() else data_dir / csv_path
        if not p.is_file():
            raise ManifestError(f"{p}: no such CSV (check the csv_path option)")
        return [(p, None)]
    per_split = []
    for split, names in SPLIT_FILES.items():
        hits = [data_dir / n for n in names if (data_dir / n).is_file()]
        if len(hits) > 1:
            raise ManifestError(
                f"{data_dir}: both {hits[0].name} and {hits[1].name} exist; keep one of them as "
                f"the {split} split"
            )
        if hits:
            per_split.append((hits[0], split))
    if per_split:
        return per_split
    csvs = sorted(p for p in data_dir.glob("*.csv") if p.is_file())
    if len(csvs) == 1:
        return [(csvs[0], None)]
    if not csvs:
        raise ManifestError(
            f"{data_dir}: no CSV found; expected train.csv, valid.csv, test.csv or one CSV "
            "(optionally with a split column)"
        )
    raise ManifestError(
        f"{data_dir}: several CSVs ({', '.join(c.name for c in csvs)}) and no train/valid/test.csv; "
        "name the split files train.csv, valid.csv, test.csv, or choose one with the csv_path option"
    )


def _segment_id(audio_id: str) -> str:
    sid = audio_id.replace("\\", "/")
    return sid[:-4] if sid.lower().endswith(".wav") else sid


def _order(row: dict[str, str], audio_id: str, warnings: list[str]) -> float:
    """The ``segment_number`` column, else the last number in the file name, else file order."""
    if row.get("segment_number", ""):
        try:
            return float(row["segment_number"])
        except ValueError:
            warnings.append(
                f"warning: segment_number {row['segment_number']!r} is not a number; ordered by the "
                "file name instead"
            )
    n = last_int(audio_id)
    return float(n) if n is not None else float("inf")


def parse_marketcalls(
    data_dir: Path, csv_path: str | Path | None = None, no_text: bool = False
) -> Parsed:
    """The rows of the MarketCalls CSVs (see the module docstring)."""
    issues: list[Issue] = []
    rows: list[RawRow] = []
    sources = _find_csvs(data_dir, csv_path)
    split_mode = None
    for path, file_split in sources:
        fields, table, _ = read_csv(path, issues)
        cols = require_columns(path, fields, COLUMNS)
        transcript_column_check(path, fields, table, cols["text"], OURS, no_text)
        if split_mode is None:
            split_mode = "files" if file_split else ("column" if "split" in fields else "generated")
        for line, row in table:
            call_id, audio_id, warnings = row[cols["call"]], row[cols["audio"]], []
            unread = (
                None
                if call_id and audio_id
                else f"empty {'Audio_id' if call_id else 'phone'}; row skipped"
            )
            split, problem = file_split or "", None
            if split_mode == "column":
                split, problem = split_or_problem(row.get("split", ""), allow_empty=False)
            channel, more = customer_channel(row.get("customer_channel", ""))
            warnings += more
            rows.append(
                RawRow(
                    call_id=call_id,
                    segment_id=_segment_id(audio_id),
                    audio=audio_id,
                    where=f"{path.name}:{line}",
                    label=row[cols["label"]],
                    split=split,
                    text=row[cols["text"]],
                    order=_order(row, audio_id, warnings),
                    unread=unread,
                    problem=problem,
                    warnings=tuple(warnings),
                    channel=channel,
                )
            )
    notes: dict = {"split": split_mode, "sources": [p.name for p, _ in sources]}
    if split_mode == "files":
        notes["split_files"] = {s: p.name for p, s in sources}
        missing = [s for s in SPLIT_FILES if s not in notes["split_files"]]
        if missing:
            notes["missing_splits"] = missing
    if no_text:
        issues.append(no_text_note(", ".join(notes["sources"]), rows, notes))
    return Parsed(
        rows,
        data_dir,
        notes,
        issues=issues,
        warn_empty_text=not no_text,
        not_found=f"audio file {{audio}} not found in {data_dir / 'audio'} or {{data_dir}}; row skipped",
    )


@register_dataset("marketcalls", reads_urls=True, scheme=SCHEME)
def load_marketcalls(
    data_dir: Path,
    *,
    allow_outside_paths: bool = False,
    seed: int = 0,
    split_ratios=None,
    csv_path: str | Path | None = None,
    no_text: bool = False,
    dataset: str = "marketcalls",
) -> Manifest:
    parsed = parse_marketcalls(data_root(data_dir), csv_path, no_text=bool_option(no_text))
    return to_manifest(
        dataset,
        SCHEME,
        parsed,
        allow_outside_paths=allow_outside_paths,
        split_ratios=split_ratios,
        seed=seed,
    )
