"""The generic CSV format, for your own calls.

One CSV, ``DATA_DIR/calls.csv`` (else ``DATA_DIR/manifest.csv``; or name any file with the dataset
option ``csv_path``), one row per segment. Column names are case-insensitive; other columns are
ignored. UTF-8 (with or without BOM) and GB18030/GBK are read.

============  ========  ============================================================================
column        required  meaning
============  ========  ============================================================================
``call_id``   yes       the call (recording, conversation) the segment belongs to; the label belongs
                        to the call
``audio``     yes       audio file, relative to DATA_DIR (``.wav`` may be left off); absolute paths
                        and paths that leave DATA_DIR (``../x.wav``) need ``--allow-outside-paths``
``start``     no        seconds into the file where the segment starts; empty = the beginning
``end``       no        seconds into the file where it ends; empty = the end. With ``start``/``end``
                        one long recording can hold many segments (rows with the same ``audio``);
                        segments longer than 40 s are cut into pieces at extraction
``text``      no        the segment's transcript; empty is allowed (reported as a warning). When
                        most rows have none while another column holds text (``transcript``), the
                        read stops naming the rename; option ``no_text=true`` says the calls have no
                        transcripts (one note, no per-row warnings)
``label``     no        the call's label in the label scheme (``marketcalls``: A–E, any case; a
                        custom scheme: its ``classes``); empty = unlabelled (extracted, but not used
                        for training or scoring). Segments of one call that disagree: the most
                        frequent label wins and the call is reported
``split``     no        train / valid (val, dev) / test. If the column is absent or empty
                        everywhere, labelled calls get a deterministic call-level split stratified
                        by label (``split_ratios``, default 0.8,0.1,0.1, seeded by ``--seed``) and
                        unlabelled calls get none
``segment``   no        order of the segment within its call (a number); default: ``start``, then
                        row order
``customer_`` no        ``customer_channel``: the customer's channel of a stereo recording (left,
``channel``             right, or a channel number), read with ``--channel customer``
``speaker``   no        who speaks in the row (agent, customer, …); with ``--roles prefix`` the text
                        encoder reads ``speaker: text``
============  ========  ============================================================================

Options: ``csv_path``, ``label_scheme`` (default ``marketcalls``; a built-in name or a custom
scheme's ``.toml`` file, see :mod:`pipeline.labels`), ``split_ratios``, ``no_text``. A row that
cannot be used (missing audio file, ``start``/``end`` not numbers or outside the file, a path
refused, an exact duplicate of an earlier row) is reported in ``manifest.issues`` and left out, as
is a row with an unknown label; only when most rows carry unknown labels (a wrong column or label
scheme) does the run stop, listing them (README, stage 1).

Example::

    call_id,audio,start,end,text,label,split
    c001,recordings/c001.wav,0,12.5,喂你好请问是哪位,B,train
    c001,recordings/c001.wav,12.5,30,我对这个挺感兴趣的,B,train
    c002,recordings/c002_a.wav,,,不需要谢谢,D,test
    c003,new/c003.wav,,,,,
"""

from __future__ import annotations

from pathlib import Path

from ..labels import LabelScheme
from ..manifest import Issue, Manifest
from ..remote_files import data_root, is_remote, is_url
from ._common import (
    ManifestError,
    bool_option,
    customer_channel,
    read_csv,
    require_columns,
    scheme_or_error,
    seconds,
    transcript_column_check,
)
from .pipeline import Parsed, RawRow, no_text_note, split_or_problem, to_manifest
from .registry import register_dataset

DEFAULT_SCHEME = "marketcalls"  # label_scheme= chooses another

COLUMNS = {"call": ("call_id",), "audio": ("audio",)}
OURS = {"call_id", "audio", "start", "end", "text", "label", "split", "segment"}
DEFAULT_NAMES = ("calls.csv", "manifest.csv")


def _seconds(value: str, name: str) -> tuple[float | None, str | None]:
    """(seconds or None for empty, problem)."""
    if value == "":
        return None, None
    x = seconds(value)
    if x is None:
        return None, f"{name} {value!r} is not a number of seconds ≥ 0; row skipped"
    return x, None


def _row(row: dict[str, str], cols: dict[str, str], where: str, any_split: bool) -> RawRow:
    call_id, audio_name = row[cols["call"]], row[cols["audio"]]
    start, bad_start = _seconds(row.get("start", ""), "start")
    end, bad_end = _seconds(row.get("end", ""), "end")
    unread = (
        None
        if call_id and audio_name
        else f"empty {'audio' if call_id else 'call_id'}; row skipped"
    )
    problem = bad_start or bad_end
    if problem is None and end is not None and end <= (start or 0.0):
        problem = f"end {end:g} is not after start {start or 0.0:g}; row skipped"
    split = ""
    if problem is None and any_split:
        split, problem = split_or_problem(row.get("split", ""), allow_empty=True)
    order, warnings = start if start is not None else 0.0, ()
    if row.get("segment", ""):
        try:
            order = float(row["segment"])
        except ValueError:
            warnings = (
                f"warning: segment {row['segment']!r} is not a number; ordered by start, then row order",
            )
    channel, more = customer_channel(row.get("customer_channel", ""))
    warnings += more
    seg_id = f"{call_id}/{audio_name.replace(chr(92), '/')}"
    if start is not None or end is not None:
        seg_id += f"@{start or 0.0:g}-" + (f"{end:g}" if end is not None else "end")
    return RawRow(
        call_id=call_id,
        segment_id=seg_id,
        audio=audio_name,
        where=where,
        label=row.get("label", ""),
        split=split,
        text=row.get("text", ""),
        start=start,
        end=end,
        order=order,
        unread=unread,
        problem=problem,
        warnings=warnings,
        channel=channel,
        speaker=row.get("speaker", "").strip(),
    )


def parse_generic_csv(
    data_dir: Path, csv_path: str | Path | None = None, no_text: bool = False
) -> Parsed:
    """The rows of the generic CSV (see the module docstring)."""
    if csv_path:
        path = data_root(csv_path)
        path = path if is_url(csv_path) or path.is_absolute() else data_dir / csv_path
    else:
        path = next(
            (data_dir / n for n in DEFAULT_NAMES if (data_dir / n).is_file()),
            data_dir / DEFAULT_NAMES[0],
        )
    if not path.is_file():
        raise ManifestError(
            f"{path}: no such CSV (the csv dataset reads DATA_DIR/calls.csv or manifest.csv, or "
            "the file given with the csv_path option)"
        )
    issues: list[Issue] = []
    fields, table, _ = read_csv(path, issues)
    cols = require_columns(path, fields, COLUMNS)
    transcript_column_check(
        path, fields, table, "text" if "text" in fields else None, OURS, no_text
    )
    any_split = "split" in fields and any(r.get("split") for _, r in table)
    rows = [_row(row, cols, f"{path.name}:{line}", any_split) for line, row in table]
    notes = {"split": "column" if any_split else "none", "sources": [path.name]}
    if no_text:
        issues.append(no_text_note(path.name, rows, notes))
    return Parsed(
        rows,
        data_dir,
        notes,
        search=("",),
        not_found="audio file {audio} not found (paths are relative to {data_dir}); row skipped",
        duplicate="segment: same call_id, audio, start and end",
        same_by_audio=True,
        issues=issues,
        warn_empty_text=not no_text,
    )


@register_dataset("csv", reads_urls=True, scheme=DEFAULT_SCHEME)
def load_generic_csv(
    data_dir: Path,
    *,
    allow_outside_paths: bool = False,
    seed: int = 0,
    csv_path: str | Path | None = None,
    label_scheme: str | LabelScheme = DEFAULT_SCHEME,
    split_ratios=None,
    no_text: bool = False,
) -> Manifest:
    # a bad scheme is named before the files are read
    data_dir = data_root(data_dir)  # a local Path, or a UPath for a URL
    scheme = scheme_or_error(label_scheme, None if is_remote(data_dir) else data_dir)
    return to_manifest(
        "csv",
        scheme,
        parse_generic_csv(data_dir, csv_path, no_text=bool_option(no_text)),
        allow_outside_paths=allow_outside_paths,
        allow_empty_labels=True,
        split_ratios=split_ratios,
        seed=seed,
    )
