"""MELD (Multimodal EmotionLines Dataset), as released in ``MELD.Raw``.

A call is a dialogue; its segments are the dialogue's utterances in ``Utterance_ID`` order, each
labelled ``<emotion>/<sentiment>`` in lower case (label scheme ``meld``, e.g. ``joy/positive``).
Dialogue ids restart in every split, so ids carry the split's MELD name: call ``dev/dia12``, segment
``dev/dia12_utt3``.

CSVs ``train_sent_emo.csv``, ``dev_sent_emo.csv`` (the valid split), ``test_sent_emo.csv`` with
columns ``Utterance, Emotion, Sentiment, Dialogue_ID, Utterance_ID`` (``Sr No., Speaker, Season,
Episode, StartTime, EndTime`` are ignored), looked up in DATA_DIR, ``DATA_DIR/MELD.Raw``,
``DATA_DIR/MELD``, ``DATA_DIR/data/MELD`` (option ``csv_dir``). The files are UTF-8, cp1252 or
Latin-1; quotes garbled by a double encoding (``heâ\\x80\\x99s``) are repaired where the repair is
exact.

Clips ``dia{D}_utt{U}.wav`` (extracted beforehand, preferred) or ``.mp4`` (decoded with PyAV at
extraction), in the split's folder: ``train_splits/`` or ``train/``; ``dev_splits_complete/``,
``dev_splits/`` or ``dev/``; ``output_repeated_splits_test/``, ``test_splits/`` or ``test/``; looked
up next to the CSVs, in DATA_DIR and in ``DATA_DIR/MELD.Raw`` (option ``clips_dir``: the folder
holding the split folders). A missing or empty clip (MELD lacks a few, e.g. ``dev/dia110_utt7``) is
named in ``manifest.issues`` and left out; a clip that exists but cannot be decoded is reported by
the extraction and skipped there.

DATA_DIR may be a URL (``s3://bucket/MELD``, pipeline/remote_files.py): each clip folder is listed
once, and the clips are read through fsspec.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..labels import MELD_EMOTIONS, MELD_SENTIMENTS
from ..manifest import Issue, Manifest
from ..remote_files import data_root, file_sizes, located
from ._common import WESTERN_ENCODINGS, ManifestError, option_path, read_csv, require_columns
from .pipeline import Parsed, RawRow, to_manifest
from .registry import register_dataset

log = logging.getLogger(__name__)

SCHEME = "meld"
# (MELD's split name, our split, CSV name, clip folders in order of preference)
SPLITS = (
    ("train", "train", "train_sent_emo.csv", ("train_splits", "train")),
    ("dev", "valid", "dev_sent_emo.csv", ("dev_splits_complete", "dev_splits", "dev")),
    ("test", "test", "test_sent_emo.csv", ("output_repeated_splits_test", "test_splits", "test")),
)
COLUMNS = {
    "text": ("utterance",),
    "emotion": ("emotion",),
    "sentiment": ("sentiment",),
    "dialogue": ("dialogue_id",),
    "utterance": ("utterance_id",),
}
HOMES = ("", "MELD.Raw", "MELD", "data/MELD")
CLIP_EXTS = (".wav", ".mp4")


# ---------------------------------------------------------------------------------------------------
# text


def repair_text(s: str) -> str:
    """Undo the double encoding found in MELD's text (UTF-8 bytes read as Latin-1/cp1252:
    ``â\\x80\\x99`` → ’), map stray C1 control characters (cp1252 bytes read as Latin-1: ``\\x92``)
    to their cp1252 characters and no-break spaces to spaces, so the 2019 files read as the current
    ones.

    Only exact repairs are made: a string that does not decode as UTF-8 after re-encoding is kept as
    it is.
    """
    if s.isascii():
        return s
    for enc in ("latin-1", "cp1252"):
        try:
            fixed = s.encode(enc).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if fixed != s:
            s = fixed
            break
    if any("\x80" <= ch <= "\x9f" for ch in s):
        s = "".join(
            bytes([ord(ch)]).decode("cp1252", errors="ignore") or ch
            if "\x80" <= ch <= "\x9f"
            else ch
            for ch in s
        )
    # the 2019 release has U+00A0 where the current files have a space (after the repair: Â\xa0 is
    # one NBSP)
    return s.replace("\xa0", " ")


# ---------------------------------------------------------------------------------------------------
# files


def _find_csvs(data_dir: Path, csv_dir: Path | None) -> dict[str, Path]:
    homes = [csv_dir] if csv_dir is not None else [data_dir / h for h in HOMES]
    for home in homes:
        found = {
            name: home / csv_name for name, _, csv_name, _ in SPLITS if (home / csv_name).is_file()
        }
        if found:
            return found
    where = (
        str(csv_dir) if csv_dir is not None else f"{data_dir} (or its MELD.Raw/, MELD/, data/MELD/)"
    )
    raise ManifestError(
        f"{where}: no MELD CSV found; expected train_sent_emo.csv, dev_sent_emo.csv, "
        "test_sent_emo.csv (from MELD.Raw), or name their folder with the csv_dir option"
    )


def _find_clip_dir(roots: list[Path], folders: tuple[str, ...]) -> Path | None:
    for root in roots:
        for name in folders:
            if (root / name).is_dir():
                return root / name
    return None


def _int(value: str) -> int | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return int(x) if x.is_integer() and x >= 0 else None


# ---------------------------------------------------------------------------------------------------
# adapter


def _row(
    row: dict[str, str],
    cols: dict[str, str],
    where: str,
    name: str,
    split: str,
    clip_dir: Path,
    sizes: dict[str, int],
) -> RawRow:
    dia, utt = _int(row[cols["dialogue"]]), _int(row[cols["utterance"]])
    stem = f"dia{dia}_utt{utt}"
    found = next((stem + ext for ext in CLIP_EXTS if stem + ext in sizes), None)
    clip = clip_dir / found if found else None
    problem = None
    if dia is None or utt is None:
        problem = (
            f"Dialogue_ID {row[cols['dialogue']]!r} / Utterance_ID {row[cols['utterance']]!r} are not "
            "whole numbers; row skipped"
        )
    elif clip is None:
        problem = f"clip {stem}.mp4 (or .wav) not found in {clip_dir}; row skipped"
    elif sizes[found] == 0:
        problem = f"clip {clip.name} is empty (0 bytes); row skipped (download it again)"
    return RawRow(
        call_id=f"{name}/dia{dia}",
        segment_id=f"{name}/{stem}",
        audio=located(clip) if clip is not None and problem is None else stem,
        where=where,
        label=f"{row[cols['emotion']].lower()}/{row[cols['sentiment']].lower()}",
        split=split,
        text=row[cols["text"]],
        order=float(utt or 0),
        problem=problem,
    )


def parse_meld(
    data_dir: Path, csv_dir: str | Path | None = None, clips_dir: str | Path | None = None
) -> Parsed:
    """The utterances of MELD's CSVs, with their clips (see the module docstring)."""
    csvs = _find_csvs(data_dir, option_path(data_dir, csv_dir))
    clips_root = option_path(data_dir, clips_dir)
    if clips_root is not None and not clips_root.is_dir():
        raise ManifestError(f"{clips_root}: no such folder (check the clips_dir option)")
    issues: list[Issue] = []
    rows: list[RawRow] = []
    notes: dict = {
        "split": "files",
        "sources": [p.name for p in csvs.values()],
        "clip_dirs": {},
        "encodings": {},
    }
    for name, split, _, folders in SPLITS:
        path = csvs.get(name)
        if path is None:
            notes.setdefault("missing_splits", []).append(split)
            continue
        # MELD is English: the GB18030 guess of the default would turn cp1252 quotes into Chinese
        # characters
        fields, table, enc = read_csv(path, issues, encodings=WESTERN_ENCODINGS, clean=repair_text)
        notes["encodings"][path.name] = enc
        cols = require_columns(path, fields, COLUMNS)
        roots = (
            [clips_root]
            if clips_root is not None
            else list(dict.fromkeys([path.parent, data_dir, data_dir / "MELD.Raw"]))
        )
        clip_dir = _find_clip_dir(roots, folders)
        if clip_dir is None:
            issues.append(
                Issue(
                    path.name,
                    f"no clip folder for the {name} split (expected {' or '.join(folders)} "
                    f"in {' or '.join(str(r) for r in roots)}; extract {name}.tar.gz there "
                    f"or pass clips_dir); its {len(table)} utterances skipped",
                )
            )
            continue
        notes["clip_dirs"][name] = located(clip_dir)
        sizes = file_sizes(clip_dir)  # one listing, not a probe per utterance
        rows += [
            _row(row, cols, f"{path.name}:{line}", name, split, clip_dir, sizes)
            for line, row in table
        ]
    if not notes["clip_dirs"]:
        raise ManifestError(
            f"{data_dir}: no MELD clip folder found (train_splits/, dev_splits_complete/, "
            "output_repeated_splits_test/ or train/, dev/, test/ next to the CSVs or in DATA_DIR); "
            "extract the clips there or name their folder with the clips_dir option"
        )
    notes["emotions"], notes["sentiments"] = list(MELD_EMOTIONS), list(MELD_SENTIMENTS)
    return Parsed(
        rows,
        data_dir,
        notes,
        duplicate="utterance {last}",
        found_by_parser=True,
        labels_of_kept_rows=True,
        issues=issues,
    )


@register_dataset("meld", reads_urls=True, scheme=SCHEME)
def load_meld(
    data_dir: Path,
    *,
    allow_outside_paths: bool = False,
    seed: int = 0,
    csv_dir: str | Path | None = None,
    clips_dir: str | Path | None = None,
) -> Manifest:
    """MELD from its CSVs and clips (see the module docstring). The split is MELD's own (``seed`` is
    unused)."""
    manifest = to_manifest("meld", SCHEME, parse_meld(data_root(data_dir), csv_dir, clips_dir))
    log.info(
        "meld: %d dialogues, %d utterances, %d issues",
        len({s.call_id for s in manifest.segments}),
        len(manifest.segments),
        len(manifest.issues),
    )
    return manifest
