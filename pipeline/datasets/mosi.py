"""CMU-MOSI and CMU-MOSEI, in the two forms their users download.

A call is a video; its segments are the video's opinion utterances in time order, each with its own
label: the annotators' mean sentiment score in [-3, 3] written as a decimal string (label scheme
``sentiment``). Scores that are not numbers or lie outside [-3, 3] are named in ``manifest.issues``
and the utterance is left out.

**CSV form** (MMSA / MMML: the per-utterance ``label.csv``). ``DATA_DIR/label.csv`` (or the file
named by the option ``label_csv``) with columns ``video_id, clip_id, text, label`` and ``mode``
(train / valid / test; other columns such as ``annotation``, ``label_T`` are ignored). Audio, looked
up under DATA_DIR (or the option ``audio_dir``):

- one file per utterance: ``wav/<video_id>/<clip_id>.wav`` (MMML),
  ``Raw/<video_id>/<clip_id>.mp4|wav`` (MMSA),
  ``Raw/Audio/WAV_16000/Segmented/<video_id>_<clip_id>.wav`` (the CMU release),
  ``<video_id>/<clip_id>.wav``;
- or, when the CSV has ``start`` and ``end`` columns (seconds), one file per video:
  ``wav/<video_id>.wav``, ``Raw/Audio/WAV_16000/Full/<video_id>.wav`` (MOSI),
  ``Raw/Audio/Full/WAV_16000/<video_id>.wav`` (MOSEI), ``<video_id>.wav`` (``.mp4`` accepted too).

The community MOSI reformatting ``id,text,label,mode`` (``id`` = ``<video_id>_<clip_id>``, e.g.
``03bSnISJMiM_1``, clip k = row k-1 of the video's ``.csd`` intervals) is read as the same thing.

Segment ids are ``<video_id>_<clip_id>``; utterances are ordered by ``start`` where given, else by
``clip_id`` (a number, or MOSEI's start time ``82_7645`` = 82.7645 s).

**SDK form** (CMU Multimodal SDK computational sequences, HDF5 ``.csd``): a labels sequence
(``CMU_MOSI_Opinion_Labels.csd``, ``CMU_MOSEI_Labels.csd``; option ``labels_csd``) whose
``data/<video>`` entries hold ``intervals`` (N×2 seconds into the video) and ``features`` (N×D;
column 0 is the sentiment score, the other MOSEI columns are emotions), and a words sequence
(``CMU_MOSI_TimestampedWords.csd``; option ``words_csd``) whose words (``sp`` = silence, dropped)
make each utterance's transcript: a word belongs to the utterance whose interval holds the word's
midpoint. Entries keyed per segment (``<video>[<k>]``, as the SDK writes after aligning to the
labels) are read too. Audio is one file per video (the per-video paths above; option ``audio_dir``
names the folder). Segment ids are ``<video>[<k>]``, k the row of the video's label intervals (or
the key's own ``[k]``), the SDK's own notation.

Which form: ``label_csv`` given, or ``DATA_DIR/label.csv`` present → CSV form (unless ``labels_csd``
is given); otherwise the SDK form (the ``.csd`` files are searched for under DATA_DIR).

**Splits**, by video: the option ``split_file`` (a CSV with ``video_id`` and ``split``/``mode``
columns, a JSON ``{"train": [ids], "valid": [...], "test": [...]}`` or ``{id: split}``, or the SDK's
``cmu_mosi_std_folds.py`` / ``cmu_mosei_std_folds.py``, read as data, never run); else the CSV's
``mode`` column; else a folds file in DATA_DIR (``*std_folds*.py``, ``standard_folds.json``,
``splits.csv``/``splits.json``); else a deterministic video-level split stratified by the sign of
the video's mean score (``split_ratios``, default 0.8,0.1,0.1, seeded by ``seed``), which
``manifest.notes`` records as NOT the standard folds.

DATA_DIR may be a URL (``s3://bucket/MOSI``): folders are listed, not probed per row, and the
``.csd`` files are read by h5py through fsspec's ranged reads.
"""

from __future__ import annotations

import ast
import bisect
import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..manifest import Issue, Manifest
from ..remote_files import data_root, file_sizes, is_remote, opened
from ._common import (
    ManifestError,
    audio_seconds,
    normalise_split,
    option_path,
    parse_ratios,
    read_csv,
    require_columns,
    seconds,
    split_counts,
    stratified_split,
)
from .pipeline import Parsed, RawRow, to_manifest
from .registry import register_dataset

log = logging.getLogger(__name__)

SCHEME = "sentiment"
LABEL_CSV_NAMES = ("label.csv", "labels.csv")
CSV_COLUMNS = {"video": ("video_id",), "clip": ("clip_id",), "text": ("text",), "label": ("label",)}
START_COLS, END_COLS = ("start", "start_time", "begin"), ("end", "end_time")
AUDIO_EXTS = (".wav", ".mp4")
# where one file per utterance lives, relative to DATA_DIR or audio_dir
PER_UTTERANCE = (
    "wav/{v}/{c}",
    "Raw/{v}/{c}",
    "raw/{v}/{c}",
    "audio/{v}/{c}",
    "{v}/{c}",
    "Raw/Audio/WAV_16000/Segmented/{v}_{c}",
    "Audio/WAV_16000/Segmented/{v}_{c}",
    "WAV_16000/Segmented/{v}_{c}",
    "Segmented/{v}_{c}",
    "wav/{v}_{c}",
    "{v}_{c}",
)
# where one file per video lives
PER_VIDEO = (
    "wav/{v}",
    "Raw/Audio/WAV_16000/Full/{v}",
    "Audio/WAV_16000/Full/{v}",
    "WAV_16000/Full/{v}",
    "Raw/Audio/Full/WAV_16000/{v}",
    "Audio/Full/WAV_16000/{v}",
    "Full/WAV_16000/{v}",
    "Full/{v}",
    "audio/{v}",
    "{v}",
)
FOLD_NAMES = {
    "train": ("standard_train_fold", "train_fold", "train"),
    "valid": ("standard_valid_fold", "valid_fold", "standard_val_fold", "valid", "val", "dev"),
    "test": ("standard_test_fold", "test_fold", "test"),
}
SPLIT_FILE_NAMES = ("standard_folds.json", "splits.csv", "splits.json", "split.csv", "split.json")
SEGMENT_KEY = re.compile(r"^(.*)\[(\d+)\]$")


# ---------------------------------------------------------------------------------------------------
# helpers


def score_label(value) -> str:
    """A score as the label string: the shortest decimal of its own precision ("2.4" from float32
    2.4)."""
    if isinstance(value, (np.floating, np.integer)):
        value = str(value)  # numpy prints the shortest repr of the value in its own dtype
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value).strip()


def _safe_id(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


class AudioFinder:
    """Finds a video's or an utterance's file among the known layouts; remembers the layout that
    worked."""

    def __init__(self, root: Path, templates: tuple[str, ...]):
        self.root, self.templates = root, templates
        self.hit: str | None = None
        self._listings: dict[str, frozenset[str]] = {}

    def _listing(self, folder: str) -> frozenset[str]:
        # one listdir per folder instead of ~40 stat calls per row: a dataset with audio for a few
        # of its 20k rows (a partial download) is read in a second, not in half a minute
        if folder not in self._listings:
            self._listings[folder] = frozenset(file_sizes(self.root / folder))
        return self._listings[folder]

    def find(self, **names: str) -> Path | None:
        order = ([self.hit] if self.hit else []) + [t for t in self.templates if t != self.hit]
        for t in order:
            rel = t.format(**names)
            folder, _, base = rel.rpartition("/")
            listing = self._listing(folder)
            for ext in AUDIO_EXTS:
                if base + ext not in listing:
                    continue
                p = self.root / (rel + ext)
                if p.is_file():
                    self.hit = t
                    return p if is_remote(p) else p.resolve()
        return None

    def expected(self, **names: str) -> str:
        return (
            ", ".join(t.format(**names) + ".wav|mp4" for t in self.templates[:4])
            + " (under "
            + f"{self.root})"
        )


# ---------------------------------------------------------------------------------------------------
# splits


def _assign(out: dict[str, str], vid: str, split: str | None, where: Path) -> None:
    if split is None:
        return
    if out.get(vid, split) != split:
        raise ManifestError(
            f"{where}: video {vid} is in both {out[vid]} and {split}; a video belongs to one "
            "split, fix the file"
        )
    out[vid] = split


def _folds_from_py(path: Path) -> dict[str, str]:
    """The SDK's ``cmu_mosi_std_folds.py``: list literals assigned to
    standard_{train,valid,test}_fold (parsed as data with ``ast``, never executed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    except SyntaxError as e:
        raise ManifestError(f"{path}:{e.lineno}: not a readable folds file ({e.msg})") from None
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if not isinstance(target, ast.Name):
                continue
            split = next((s for s, names in FOLD_NAMES.items() if target.id.lower() in names), None)
            if split is None:
                continue
            try:
                ids = ast.literal_eval(node.value)
            except ValueError:
                raise ManifestError(
                    f"{path}:{node.lineno}: {target.id} is not a list of video ids"
                ) from None
            for vid in ids:
                _assign(out, str(vid), split, path)
    return out


def _folds_from_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ManifestError(
            f'{path}: not readable JSON ({e}); write {{"train": [ids], "valid": [ids], '
            '"test": [ids]}} or {{id: split}}'
        ) from None
    out: dict[str, str] = {}
    if not isinstance(data, dict):
        raise ManifestError(
            f'{path}: expected a JSON object {{"train": [ids], ...}} or {{id: split}}'
        )
    for key, value in data.items():
        if isinstance(value, list):
            split = next(
                (s for s, names in FOLD_NAMES.items() if key.lower() in names), None
            ) or normalise_split(key)
            if split is None:
                raise ManifestError(
                    f"{path}: unknown split {key!r} (use train, valid/val/dev or test)"
                )
            for vid in value:
                _assign(out, str(vid), split, path)
        else:
            split = normalise_split(str(value))
            if split is None:
                raise ManifestError(
                    f"{path}: video {key}: unknown split {value!r} (use train, valid/val/dev or "
                    "test)"
                )
            _assign(out, str(key), split, path)
    return out


def _folds_from_csv(path: Path) -> dict[str, str]:
    issues: list[Issue] = []
    fields, rows, _ = read_csv(path, issues)
    cols = require_columns(
        path, fields, {"video": ("video_id", "video", "id"), "split": ("split", "mode", "fold")}
    )
    out: dict[str, str] = {}
    for line, row in rows:
        split = normalise_split(row[cols["split"]])
        if split is None:
            raise ManifestError(
                f"{path}:{line}: unknown split {row[cols['split']]!r} (use train, valid/val/dev or "
                "test)"
            )
        _assign(out, row[cols["video"]], split, path)
    return out


def read_split_file(path: Path) -> dict[str, str]:
    """video id → train | valid | test from a folds file (.py of the SDK, .json or .csv)."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such split file (check the split_file option)")
    suffix = path.suffix.lower()
    reader = {".py": _folds_from_py, ".json": _folds_from_json, ".csv": _folds_from_csv}.get(suffix)
    if reader is None:
        raise ManifestError(
            f"{path}: unknown split file type {suffix!r}; give a .csv (video_id,split), a .json or "
            "the SDK's cmu_mosi_std_folds.py"
        )
    out = reader(path)
    if not out:
        raise ManifestError(
            f"{path}: no video ids found (expected standard_train_fold / standard_valid_fold / "
            "standard_test_fold lists, or video_id,split rows)"
        )
    return out


def _find_split_file(data_dir: Path) -> Path | None:
    hits = sorted(data_dir.glob("*std_folds*.py")) + [
        data_dir / n for n in SPLIT_FILE_NAMES if (data_dir / n).is_file()
    ]
    return hits[0] if hits else None


def _apply_splits(
    calls: dict[str, list], split_of: dict[str, str], source: str, issues: list[Issue]
) -> dict[str, list]:
    known = [cid for cid in calls if cid in split_of]
    if calls and not known:
        some = ", ".join(sorted(calls)[:3])
        raise ManifestError(
            f"{source}: names none of the videos of this dataset (e.g. {some}); use the folds file "
            f"of the same dataset or pass another with the split_file option"
        )
    out = {}
    for cid, items in calls.items():
        if cid not in split_of:
            issues.append(
                Issue(
                    f"video {cid} ({items[0][2].source_row})",
                    f"not in any split of {source}; its {len(items)} utterance(s) skipped",
                )
            )
            continue
        out[cid] = [(o, f, s.with_(split=split_of[cid])) for o, f, s in items]
    return out


def _generated_split(
    calls: dict[str, list], dataset: str, ratios, seed: int, notes: dict
) -> dict[str, list]:
    """Video-level split stratified by the sign of each video's mean score (not the standard
    folds)."""
    ratios = parse_ratios(ratios)
    strata = {}
    for cid, items in calls.items():
        mean = float(np.mean([float(s.label) for _, _, s in items]))
        strata[cid] = "negative" if mean < 0 else "non-negative"
    assign = stratified_split(strata, ratios, seed)
    notes.update(
        {
            "split": "generated",
            "split_note": f"NOT the standard CMU-{dataset.upper()} folds: no folds file was found, so videos "
            "were split at random (pass split_file with cmu_" + dataset + "_std_folds.py or a "
            "video_id,split CSV to use the standard folds; results are not comparable to "
            "published numbers otherwise)",
            "split_method": "video-level, stratified by the sign of the mean score, seeded shuffle",
            "split_ratios": [round(r, 6) for r in ratios],
            "split_seed": seed,
            "split_counts": split_counts(assign),
        }
    )
    return {
        cid: [(o, f, s.with_(split=assign[cid])) for o, f, s in items]
        for cid, items in calls.items()
    }


# ---------------------------------------------------------------------------------------------------
# CSV form


def _split_id(row: dict[str, str]) -> dict[str, str]:
    """``id`` = ``VIDEO_CLIP`` (``03bSnISJMiM_1``; video ids may hold ``_`` themselves, the clip
    never does)."""
    vid, sep, clip = row["id"].rpartition("_")
    return {**row, "video_id": vid if sep else row["id"], "clip_id": clip if sep else ""}


def _clip_seconds(clip: str) -> float | None:
    """Order key of a clip id: its number (MOSI ``3``), or the start time MOSEI writes as
    ``82_7645`` (82.7645 s)."""
    m = re.fullmatch(r"(\d+)(?:[_.](\d+))?", clip)
    if m is None:
        return None
    return float(f"{m.group(1)}.{m.group(2) or 0}")


@dataclass(frozen=True)
class _CsvRowColumns:
    """How a ``label.csv`` row finds its split, times and audio (per utterance, or a timed part of
    its video's file)."""

    split_col: str | None
    start_col: str | None  # None: the CSV has no start/end columns
    end_col: str | None
    per_utt: AudioFinder
    per_video: AudioFinder

    def resolve(self, path: Path, row: dict, vid: str, clip: str):
        """(split, start, end, audio, problem, unread) of one row."""
        split = start = end = audio = problem = None
        s_col, e_col = self.start_col, self.end_col
        if not _safe_id(vid) or not _safe_id(clip):
            unread = f"video_id {vid!r} / clip_id {clip!r} empty or not a plain name; row skipped"
            return split, start, end, audio, problem, unread
        if self.split_col is not None and (split := normalise_split(row[self.split_col])) is None:
            problem = (
                f"unknown {self.split_col} {row[self.split_col]!r} (use train, valid or test); "
                "row skipped"
            )
        elif s_col is not None and (row[s_col] or row[e_col]):
            start, end = seconds(row[s_col]), seconds(row[e_col])
            audio = self.per_video.find(v=vid)
            if start is None or end is None or end <= start:
                problem = (
                    f"{s_col}/{e_col} {row[s_col]!r}/{row[e_col]!r} are not seconds with end "
                    "after start; row skipped"
                )
            elif audio is None:
                problem = (
                    f"audio of video {vid} not found; looked for "
                    f"{self.per_video.expected(v=vid)}; row skipped"
                )
        else:
            audio = self.per_utt.find(v=vid, c=clip)
            if audio is None:
                problem = self._missing_utterance(path, vid, clip)
        return split, start, end, audio, problem, None

    def _missing_utterance(self, path: Path, vid: str, clip: str) -> str:
        whole = self.per_video.find(v=vid)
        hint = (
            f"; only the whole video {whole.name} is there: add start,end columns (seconds) to "
            f"{path.name}"
            if whole is not None
            else ""
        )
        return (
            f"audio of utterance {vid}_{clip} not found; looked for "
            f"{self.per_utt.expected(v=vid, c=clip)}{hint}; row skipped"
        )


def _parse_csv_form(path: Path, audio_root: Path) -> Parsed:
    """The utterances of a ``label.csv`` (``notes["split"]`` is "column" when it has a mode/split
    column)."""
    issues: list[Issue] = []
    fields, table, _ = read_csv(path, issues)
    if "id" in fields and "video_id" not in fields and "clip_id" not in fields:
        # the community form id,text,label,mode
        table = [(line, _split_id(row)) for line, row in table]
        fields = [*fields, "video_id", "clip_id"]
    cols = require_columns(path, fields, CSV_COLUMNS)
    split_col = next((c for c in ("mode", "split") if c in fields), None)
    start_col = next((c for c in START_COLS if c in fields), None)
    end_col = next((c for c in END_COLS if c in fields), None)
    timed = start_col is not None and end_col is not None
    per_utt, per_video = AudioFinder(audio_root, PER_UTTERANCE), AudioFinder(audio_root, PER_VIDEO)
    rows: list[RawRow] = []
    for order, (line, row) in enumerate(table):
        vid, clip = row[cols["video"]], row[cols["clip"]]
        seg_id = f"{vid}_{clip}"
        cut = _CsvRowColumns(split_col, start_col if timed else None, end_col, per_utt, per_video)
        split, start, end, audio, problem, unread = cut.resolve(path, row, vid, clip)
        key = start if start is not None else _clip_seconds(clip)
        rows.append(
            RawRow(
                call_id=vid,
                segment_id=seg_id,
                audio=str(audio),
                where=f"{path.name}:{line}",
                label=score_label(row[cols["label"]]),
                split=split or "",
                text=row[cols["text"]],
                start=start,
                end=end,
                order=float(order) if key is None else key,
                unread=unread,
                problem=problem,
            )
        )
    notes = {
        "form": "csv",
        "sources": [path.name],
        "audio": "per video with start/end" if timed else "per utterance",
    }
    if split_col is not None:
        notes["split"] = "column"
    return Parsed(
        rows,
        path.parent,
        notes,
        duplicate="utterance {segment_id}",
        call_kind="video",
        found_by_parser=True,
        labels_of_kept_rows=True,
        warn_end_past_file=False,
        issues=issues,
    )


# ---------------------------------------------------------------------------------------------------
# SDK form


def _find_csd(data_dir: Path, kind: str, option: Path | None, dataset: str) -> Path:
    if option is not None:
        if not option.is_file():
            raise ManifestError(f"{option}: no such file (check the {kind}_csd option)")
        return option
    found = sorted(p for p in data_dir.rglob("*.csd") if p.is_file())
    norm = {p: p.name.lower().replace("_", "").replace("-", "") for p in found}
    if kind == "labels":
        hits = [p for p in found if "label" in norm[p]]
        # older SDK releases split MOSEI's labels: LabelsSentiment (the score) beside LabelsEmotions
        # (not it)
        hits = [p for p in hits if "emotion" not in norm[p]] or hits
        hits = [p for p in hits if "sentiment" in norm[p] or "opinion" in norm[p]] or hits
    else:
        hits = [p for p in found if "timestampedwords" in norm[p] and "vector" not in norm[p]]
    # several: prefer the one named after this dataset (CMU_MOSI_… vs CMU_MOSEI_…)
    if len(hits) > 1:
        named = [p for p in hits if f"cmu{dataset}" in norm[p]]
        hits = named or hits
    if len(hits) > 1:
        raise ManifestError(
            f"{data_dir}: several {kind} sequences ({', '.join(p.name for p in hits)}); choose one "
            f"with the {kind}_csd option"
        )
    if not hits:
        example = (
            f"CMU_{dataset.upper()}_"
            + ("Opinion_Labels.csd" if dataset == "mosi" else "Labels.csd")
            if kind == "labels"
            else f"CMU_{dataset.upper()}_TimestampedWords.csd"
        )
        raise ManifestError(
            f"{data_dir}: no {kind} computational sequence (*.csd) found; expected e.g. {example} "
            f"(or pass it with the {kind}_csd option)"
        )
    return hits[0]


def _csd_data(f, path: Path):
    """The ``data`` group of a computational sequence (under its one top-level group, or at the
    root)."""
    import h5py

    if "data" in f and isinstance(f["data"], h5py.Group):
        return f["data"]
    groups = [k for k in f if isinstance(f[k], h5py.Group) and "data" in f[k]]
    if not groups:
        raise ManifestError(
            f"{path}: not a computational sequence (no top-level group holding a 'data' group; "
            f"found {', '.join(f.keys()) or 'nothing'}); download the .csd again or name the right "
            "file with the labels_csd / words_csd option"
        )
    return f[groups[0]]["data"]


@contextlib.contextmanager
def _open_csd(path: Path):
    """The open HDF5 file; an object's through fsspec's ranged reads (never the whole file)."""
    import h5py

    with opened(str(path)) as src:
        try:
            f = h5py.File(src, "r")
        except OSError as e:
            raise ManifestError(
                f"{path}: not an HDF5 computational sequence ({e}); download it again"
            ) from None
        with f:
            yield f


def _entries(data, path: Path, issues: list[Issue]):
    """(key, video, clip index or None, features (N×D), intervals (N×2)) for each well-formed
    entry."""
    for key in data:
        entry = data[key]
        where = f"{path.name}:{key}"
        if "features" not in entry or "intervals" not in entry:
            issues.append(
                Issue(
                    where,
                    "entry without 'features' and 'intervals' datasets; skipped (the file may be "
                    "damaged: download it again)",
                )
            )
            continue
        feats, ivs = (
            np.asarray(entry["features"][()]),
            np.asarray(entry["intervals"][()], dtype=np.float64),
        )
        if feats.ndim == 1:
            feats = feats[:, None]
        if ivs.ndim != 2 or ivs.shape[1] != 2 or feats.shape[0] != ivs.shape[0]:
            issues.append(
                Issue(
                    where,
                    f"features {feats.shape} and intervals {ivs.shape} do not match (expected "
                    "N×D and N×2); skipped (download the file again)",
                )
            )
            continue
        m = SEGMENT_KEY.match(key)
        yield key, (m.group(1) if m else key), (int(m.group(2)) if m else None), feats, ivs


def _word_text(w) -> str:
    if isinstance(w, np.ndarray):
        w = w.reshape(-1)[0] if w.size else b""
    if isinstance(w, bytes):
        return w.decode("utf-8", errors="replace").strip()
    return str(w).strip()


def _read_words(path: Path, issues: list[Issue]) -> dict[str, list[tuple[float, str]]]:
    """video → [(word midpoint, word)] in time order, silences (``sp``) dropped."""
    words: dict[str, list[tuple[float, str]]] = {}
    with _open_csd(path) as f:
        for _, vid, _, feats, ivs in _entries(_csd_data(f, path), path, issues):
            out = words.setdefault(vid, [])
            for w, (a, b) in zip(feats, ivs):
                text = _word_text(w)
                if text and text.lower() != "sp":
                    out.append(((a + b) / 2.0, text))
    for out in words.values():
        out.sort(key=lambda x: x[0])
    return words


def _sdk_utterances(labels_path, key, vid, clip, feats, ivs, audio, dur, words) -> list[RawRow]:
    """The rows of one labels .csd entry: each interval an utterance, its text the words whose
    midpoints fall inside it."""
    rows = []
    mids = [m for m, _ in words.get(vid, ())]
    for r in range(ivs.shape[0]):
        if clip is None:  # one entry per video: row r is utterance r
            seg_id = f"{vid}[{r}]"
        else:  # one entry per utterance (SDK-aligned keys)
            seg_id = key if ivs.shape[0] == 1 else f"{key}#{r}"
        start, end = float(ivs[r, 0]), float(ivs[r, 1])
        problem, text, warnings = None, "", ()
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start or start < 0:
            problem = f"interval [{start}, {end}] is not a time span; utterance skipped"
        elif dur is not None and start >= dur:
            problem = (
                f"starts at {start:g} s, past the end of {audio.name} ({dur:.2f} s); utterance "
                "skipped (is it the right audio?)"
            )
        else:
            # the words whose midpoints are in [start, end)
            lo, hi = bisect.bisect_left(mids, start), bisect.bisect_left(mids, end)
            text = " ".join(w for _, w in words.get(vid, [])[lo:hi])
            if not text and vid in words:
                warnings = ("warning: no words inside the interval; empty transcript (kept)",)
        rows.append(
            RawRow(
                call_id=vid,
                segment_id=seg_id,
                audio=str(audio),
                where=f"{labels_path.name}:{seg_id}",
                label=score_label(feats[r, 0]),
                text=text,
                start=start,
                end=end,
                order=start,
                problem=problem,
                warnings=warnings,
            )
        )
    return rows


def _parse_sdk_form(
    data_dir: Path, dataset: str, labels_csd: Path | None, words_csd: Path | None, audio_root: Path
) -> Parsed:
    """The utterances of the CMU SDK's labels .csd, with their words from the words .csd."""
    issues: list[Issue] = []
    labels_path = _find_csd(data_dir, "labels", labels_csd, dataset)
    words_path = _find_csd(data_dir, "words", words_csd, dataset)
    words = _read_words(words_path, issues)
    finder = AudioFinder(audio_root, PER_VIDEO)
    audio_of: dict[str, Path | None] = {}
    durations: dict[Path, float | None] = {}
    rows: list[RawRow] = []
    widths: set[int] = set()
    no_words: set[str] = set()
    with _open_csd(labels_path) as f:
        for key, vid, clip, feats, ivs in _entries(_csd_data(f, labels_path), labels_path, issues):
            widths.add(int(feats.shape[1]))
            if vid not in audio_of:
                audio_of[vid] = finder.find(v=vid) if _safe_id(vid) else None
                if audio_of[vid] is None:
                    issues.append(
                        Issue(
                            f"{labels_path.name}:{key}",
                            f"audio of video {vid} not found; looked for "
                            f"{finder.expected(v=vid)} (or name the folder with audio_dir); its "
                            "utterances skipped",
                        )
                    )
            audio = audio_of[vid]
            if audio is None:
                continue
            if vid not in words and vid not in no_words:
                no_words.add(vid)
                issues.append(
                    Issue(
                        f"{words_path.name}",
                        f"warning: no words for video {vid}; its transcripts are empty",
                    )
                )
            dur = audio_seconds(audio, durations)
            rows += _sdk_utterances(labels_path, key, vid, clip, feats, ivs, audio, dur, words)
    notes = {
        "form": "sdk",
        "sources": [labels_path.name, words_path.name],
        "label_column": "features[:, 0] (sentiment)"
        + ("" if widths <= {1} else f" of {max(widths)}"),
    }
    return Parsed(
        rows,
        data_dir,
        notes,
        duplicate="utterance {segment_id}",
        call_kind="video",
        found_by_parser=True,
        labels_of_kept_rows=True,
        warn_empty_text=False,
        warn_end_past_file=False,
        issues=issues,
    )


# ---------------------------------------------------------------------------------------------------
# adapter


@register_dataset("mosi", reads_urls=True, scheme=SCHEME)
def load_mosi(
    data_dir: Path,
    *,
    allow_outside_paths: bool = False,
    seed: int = 0,
    label_csv: str | Path | None = None,
    labels_csd: str | Path | None = None,
    words_csd: str | Path | None = None,
    audio_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    split_ratios=None,
    dataset: str = "mosi",
) -> Manifest:
    """CMU-MOSI (or, with ``dataset="mosei"``, CMU-MOSEI) in the CSV or the SDK form (see the module
    docstring).

    ``allow_outside_paths`` is accepted for the common signature: paths here come from ids, never
    from the files.
    """
    data_dir = data_root(data_dir)
    audio_root = option_path(data_dir, audio_dir) or data_dir
    if audio_dir is not None and not audio_root.is_dir():
        raise ManifestError(f"{audio_root}: no such folder (check the audio_dir option)")
    csv_path = option_path(data_dir, label_csv)
    if csv_path is None and labels_csd is None:
        csv_path = next((data_dir / n for n in LABEL_CSV_NAMES if (data_dir / n).is_file()), None)
    if csv_path is not None:
        if not csv_path.is_file():
            raise ManifestError(f"{csv_path}: no such CSV (check the label_csv option)")
        parsed = _parse_csv_form(csv_path, audio_root)
    else:
        try:
            parsed = _parse_sdk_form(
                data_dir,
                dataset,
                option_path(data_dir, labels_csd),
                option_path(data_dir, words_csd),
                audio_root,
            )
        except ManifestError as e:
            if labels_csd is None and "no labels computational sequence" in str(e):
                raise ManifestError(
                    f"{data_dir}: neither label.csv (MMSA/MMML form: video_id,clip_id,text,label,"
                    f"mode + wav/<video_id>/<clip_id>.wav or Raw/<video_id>/<clip_id>.mp4) nor a "
                    f"labels .csd (CMU SDK form: CMU_{dataset.upper()}_…Labels.csd + "
                    f"CMU_{dataset.upper()}_TimestampedWords.csd + Raw/Audio/WAV_16000/Full/"
                    "<video>.wav) found; download one of them into this folder"
                ) from None
            raise
    notes, column = parsed.notes, parsed.notes.get("split") == "column"
    split_path = option_path(data_dir, split_file)
    if split_path is None and not column:
        split_path = _find_split_file(data_dir)

    def assign_splits(calls: dict[str, list]) -> dict[str, list]:
        if split_path is not None:
            notes.update({"split": "file", "split_file": split_path.name})
            return _apply_splits(calls, read_split_file(split_path), split_path.name, parsed.issues)
        if not column and calls:
            return _generated_split(calls, dataset, split_ratios, seed, notes)
        return calls

    manifest = to_manifest(dataset, SCHEME, parsed, assign_splits=assign_splits)
    log.info(
        "%s: %d videos, %d utterances (%s form), %d issues",
        dataset,
        len({s.call_id for s in manifest.segments}),
        len(manifest.segments),
        notes["form"],
        len(manifest.issues),
    )
    return manifest


@register_dataset("mosei", reads_urls=True, scheme=SCHEME)
def load_mosei(
    data_dir: Path,
    *,
    allow_outside_paths: bool = False,
    seed: int = 0,
    label_csv: str | Path | None = None,
    labels_csd: str | Path | None = None,
    words_csd: str | Path | None = None,
    audio_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    split_ratios=None,
) -> Manifest:
    """CMU-MOSEI: the same forms as CMU-MOSI (``CMU_MOSEI_Labels.csd``: column 0 of the features is
    sentiment)."""
    return load_mosi(
        data_dir,
        allow_outside_paths=allow_outside_paths,
        seed=seed,
        label_csv=label_csv,
        labels_csd=labels_csd,
        words_csd=words_csd,
        audio_dir=audio_dir,
        split_file=split_file,
        split_ratios=split_ratios,
        dataset="mosei",
    )
