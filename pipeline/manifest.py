"""The manifest: a typed list of segments that every dataset adapter produces and the extractor
consumes.

A *call* (a phone call, a video, a dialogue) is the unit a label belongs to; its *segments* are the
pieces that are encoded separately (≤ 40 s of audio each, with their own transcript).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .remote_files import data_root, file_identity, is_remote, is_url

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Segment:
    segment_id: str  # unique within the manifest (e.g. the audio file name)
    call_id: str
    index: int  # position within the call, 0-based, contiguous after planning
    split: str  # train | valid | test | "" (unlabelled, e.g. new calls to predict)
    label: str  # base label of the call, or of this segment where the scheme's level is
    # "segment" (MOSI/MOSEI, MELD); "" when unlabelled
    audio_path: str  # absolute path
    text: str
    start: float | None = None  # seconds into audio_path; None = from the beginning
    end: float | None = None  # None = to the end
    variant: str = "orig"  # "orig" or an augmentation's name
    source_row: str = ""  # where it came from ("train.csv:17"), for error messages
    # the customer's channel of a stereo call (left/right/N) where its CSV says; "" = not given
    channel: str = ""
    speaker: str = ""  # who speaks (a speaker column: agent, customer, …); "" = not given
    # a text variant's original: the segment whose audio rows this row uses; "" = its own
    audio_of: str = ""

    def with_(self, **changes) -> Segment:
        return replace(self, **changes)


def role_text(speaker: str, text: str) -> str:
    """An utterance as ``--roles prefix`` gives it to the text encoder: ``speaker: text``."""
    return f"{speaker}: {text}" if speaker else text


@dataclass(frozen=True)
class Issue:
    """A problem found in the input: the item is named, the reason given, the run goes on without
    it."""

    where: str  # file and row, or segment id; for an issue of several rows, those rows in short
    reason: str
    # every row (FILE:LINE) the issue covers, where it covers more than one
    rows: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def to_dict(self) -> dict:
        """As report.json lists it (``rows`` only for an issue of several rows)."""
        return {
            "where": self.where,
            "reason": self.reason,
            **({"rows": list(self.rows)} if self.rows else {}),
        }


@dataclass
class Manifest:
    dataset: str
    label_scheme: str
    segments: list[Segment]
    issues: list[Issue] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # e.g. how the split was made
    # a custom scheme's definition (pipeline/labels.py); None: built-in
    label_scheme_def: dict | None = None

    @property
    def scheme(self):
        from .labels import scheme_from_record

        return scheme_from_record(self.label_scheme, self.label_scheme_def)

    def __len__(self) -> int:
        return len(self.segments)

    def calls(self) -> dict[str, list[Segment]]:
        """Segments grouped by call, in segment order."""
        out: dict[str, list[Segment]] = {}
        for s in self.segments:
            out.setdefault(s.call_id, []).append(s)
        for segs in out.values():
            segs.sort(key=lambda s: s.index)
        return out

    def digest(self, with_file_stats: bool = True) -> str:
        """Hash of everything in the manifest that changes the cached numbers or their labels.

        Audio files enter by size and mtime, so an edited recording makes a different fingerprint.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.dataset, self.label_scheme]).encode())
        # a custom scheme's content; built-in digests are unchanged
        if self.label_scheme_def is not None:
            h.update(json.dumps(self.label_scheme_def, sort_keys=True, ensure_ascii=False).encode())
        stats: dict[str, list] = {}
        for s in self.segments:
            row = asdict(s)
            row.pop("source_row")
            for key in ("channel", "speaker", "audio_of"):  # older manifests keep their digest
                if not row[key]:
                    row.pop(key)
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            if with_file_stats and s.audio_path not in stats:
                # size and mtime (local), size and ETag (an object at a URL)
                stats[s.audio_path] = file_identity(s.audio_path)
        h.update(json.dumps(sorted(stats.items())).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        calls = self.calls()
        from .labels import label_counts

        per_split: dict[str, int] = {}
        for segs in calls.values():
            per_split[segs[0].split] = per_split.get(segs[0].split, 0) + 1
        # a name may be unknown here
        scheme = self.scheme if self.label_scheme_def else self.label_scheme
        counts = label_counts(
            scheme, [s.call_id for s in self.segments], [s.label for s in self.segments]
        )
        return {
            "segments": len(self.segments),
            "calls": len(calls),
            "calls_per_split": per_split,
            "calls_per_label": counts.get("calls per label", {}),
            "labels": counts,
        }


class PathRefused(ValueError):
    """A CSV named a path outside the dataset directory without the user allowing it."""


def _wav_options(c):
    return (c,) if c.suffix.lower() == ".wav" else (c, c.with_name(c.name + ".wav"))


def _resolve_remote(name: str, data_dir, search: tuple[str, ...], allow_outside: bool):
    """:func:`resolve_audio` under a URL folder (a UPath): the same rules on the object keys (a
    recording at another URL, or a local absolute path, needs ``allow_outside``)."""
    if is_url(name) or Path(name).is_absolute():
        if not allow_outside:
            raise PathRefused(f"absolute path {name} (pass --allow-outside-paths to permit it)")
        c = data_root(name)
        return next((cand for cand in _wav_options(c) if cand.is_file()), None)
    root = posixpath.normpath("/" + data_dir.path)
    for sub in search:
        c = data_dir / sub / name if sub else data_dir / name
        for cand in _wav_options(c):
            key = posixpath.normpath("/" + cand.path)  # `..` collapsed: object stores do not
            if not allow_outside and posixpath.commonpath([root, key]) != root:
                raise PathRefused(
                    f"path {name} escapes the dataset directory {data_dir} "
                    f"(pass --allow-outside-paths to permit it)"
                )
            cand = data_root(f"{data_dir.protocol}://{key.lstrip('/')}")
            if cand.is_file():
                return cand
    return None


def resolve_audio(
    name: str, data_dir: Path, search: tuple[str, ...] = ("audio", ""), allow_outside: bool = False
) -> Path | None:
    """Find an audio file named in a CSV under each search folder of data_dir (``.wav`` may be
    omitted).

    Absolute paths, and relative ones that climb out of data_dir (``../x.wav``), raise PathRefused
    unless allow_outside: a CSV from elsewhere must not make us read arbitrary files. The check is
    on the path the CSV names, not on where a symlink inside the dataset points: links placed by the
    dataset's owner (``audio/`` on another disk) are theirs to make. Returns None when nothing
    exists (the caller reports it).
    """
    if is_remote(data_dir) or is_url(name):
        return _resolve_remote(name, data_dir, search, allow_outside)
    p = Path(name)
    root = os.path.abspath(data_dir)
    if p.is_absolute():
        if not allow_outside:
            raise PathRefused(f"absolute path {name} (pass --allow-outside-paths to permit it)")
        candidates = [p]
    else:
        candidates = [data_dir / sub / p for sub in search]
    for c in candidates:
        options = (c,) if c.suffix.lower() == ".wav" else (c, c.with_name(c.name + ".wav"))
        for cand in options:
            named = os.path.normpath(os.path.abspath(cand))  # `..` collapsed, symlinks not followed
            if not allow_outside and os.path.commonpath([root, named]) != root:
                raise PathRefused(
                    f"path {name} escapes the dataset directory {data_dir} "
                    f"(pass --allow-outside-paths to permit it)"
                )
            if cand.is_file():
                return cand.resolve()
    return None
