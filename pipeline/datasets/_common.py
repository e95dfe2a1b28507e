"""Pieces every adapter shares: the one CSV reader, the row checks, the stratified call-level split,
label checks, ordering."""

from __future__ import annotations

import csv
import io
import math
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from ..labels import LabelScheme, SchemeFileError, resolve_scheme
from ..manifest import SPLITS, Issue, Manifest, Segment
from ..remote_files import data_root, is_url, opened

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
}
DEFAULT_RATIOS = (0.8, 0.1, 0.1)


class ManifestError(ValueError):
    """The dataset cannot be read as asked; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------
# CSV reading


def _decodes(line: bytes, encoding: str) -> bool:
    try:
        line.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


CJK_ENCODINGS = ("utf-8", "gb18030")  # the default: UTF-8, else a Chinese Excel export
WESTERN_ENCODINGS = ("utf-8", "cp1252", "latin-1")  # English files (MELD); latin-1 reads any byte


def decode_csv_bytes(
    raw: bytes, name: str, issues: list[Issue], encodings: Sequence[str] = CJK_ENCODINGS
) -> tuple[str, str]:
    """Text of a CSV file and the encoding used: the first of ``encodings`` that decodes the whole
    file (a UTF-8 BOM is dropped).

    With the default UTF-8/GB18030 pair, a file neither decodes whole is read line by line in its
    main encoding, and bytes that fit neither are replaced by U+FFFD; each such line is named in
    ``issues`` (``name:line``): one bad row never makes the rest of the file unreadable. (A GB18030
    guess is never made for a file with UTF-8 lines in it: a UTF-8 file with a few broken lines can
    decode as GB18030 as a whole, which is mojibake.)
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    encodings = tuple(encodings)
    try:
        return raw.decode(encodings[0]), encodings[0]
    except UnicodeDecodeError:
        pass
    if encodings != CJK_ENCODINGS:
        for enc in encodings[1:]:
            try:
                return raw.decode(enc), enc
            except UnicodeDecodeError:
                continue
        issues.append(
            Issue(
                name,
                f"warning: not {' or '.join(e.upper() for e in encodings)}; bytes that do not "
                f"fit {encodings[0].upper()} were replaced by U+FFFD (re-save the file as UTF-8)",
            )
        )
        return raw.decode(encodings[0], errors="replace"), encodings[0]
    lines = raw.split(b"\n")  # 0x0A is never part of a multi-byte character in UTF-8 or GB18030
    utf8_ok = sum(1 for ln in lines if not ln.isascii() and _decodes(ln, "utf-8"))
    if utf8_ok == 0:  # no line reads as UTF-8 text: a GB18030 (GBK, GB2312) export
        try:
            text = raw.decode("gb18030")
            return (text[1:] if text.startswith("\ufeff") else text), "gb18030"
        except UnicodeDecodeError:
            pass
    # (a UTF-8 file with a few broken lines can happen to decode as GB18030 as a whole: that is
    # mojibake)
    gb_ok = sum(
        1
        for ln in lines
        if not ln.isascii() and _decodes(ln, "gb18030") and not _decodes(ln, "utf-8")
    )
    main = "utf-8" if utf8_ok >= gb_ok else "gb18030"
    other = "gb18030" if main == "utf-8" else "utf-8"
    out = []
    for i, ln in enumerate(lines, start=1):
        try:
            out.append(ln.decode(main))
            continue
        except UnicodeDecodeError:
            pass
        if main == "gb18030" and _decodes(ln, other):
            # a UTF-8 line pasted into a GB18030 file; valid UTF-8 is unambiguous
            out.append(ln.decode(other))
            continue
        out.append(ln.decode(main, errors="replace"))
        issues.append(
            Issue(
                f"{name}:{i}",
                f"warning: bytes that are not valid {main.upper()} were replaced by "
                "U+FFFD (re-save the file as UTF-8)",
            )
        )
    return "\n".join(out), main


class CsvTable(NamedTuple):
    header: list[str]  # lower-cased, stripped column names
    rows: list[tuple[int, dict[str, str]]]  # (line where the row starts, {column: value})
    encoding: str


def seconds(value: str) -> float | None:
    """A time in seconds as the CSVs write it (``12.5``, ``3``): a finite number ≥ 0, else None.
    The one reader of seconds of every adapter and of predict's transcripts CSV."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x >= 0 else None


def read_csv(
    path: Path,
    issues: list[Issue],
    *,
    encodings: Sequence[str] = CJK_ENCODINGS,
    clean: Callable[[str], str] | None = None,
) -> CsvTable:
    """The one CSV reader of the adapters: rows as (line number where the row starts, {lower-cased
    column: stripped value}), decoded with the first of ``encodings`` that fits (see
    :func:`decode_csv_bytes`).

    Blank rows are skipped, extra columns kept (adapters ignore what they do not know), short rows
    padded with "". ``clean`` repairs each value before it is stripped (MELD's garbled quotes).
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror or e})") from None
    text, encoding = decode_csv_bytes(raw, path.name, issues, encodings)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    line = 0
    try:
        for rec in reader:
            start, line = line + 1, reader.line_num
            if not rec or all(not v.strip() for v in rec):
                continue
            if header is None:
                header = [h.replace("\ufeff", "").strip().lower() for h in rec]
                continue
            row: dict[str, str] = {}
            for k, v in zip(header, rec):
                if k and k not in row:  # a repeated column name: the first one counts
                    v = v.replace("\x00", "")
                    row[k] = (clean(v) if clean else v).strip()
            for k in header:
                row.setdefault(k, "")
            rows.append((start, row))
    except csv.Error as e:
        raise ManifestError(
            f"{path}:{line + 1}: unreadable CSV ({e}); check the quoting on that line"
        ) from None
    if header is None:
        raise ManifestError(
            f"{path}: empty CSV (no header row); write the column names on the first line"
        )
    return CsvTable(header, rows, encoding)


def require_columns(
    path: Path, fields: list[str], required: dict[str, tuple[str, ...]]
) -> dict[str, str]:
    """Map each logical column to the first alias present; ManifestError names what is missing."""
    found = {}
    missing = []
    for name, aliases in required.items():
        hit = next((a for a in aliases if a in fields), None)
        if hit is None:
            missing.append("/".join(aliases))
        else:
            found[name] = hit
    if missing:
        found_cols = ", ".join(f for f in fields if f) or "none"
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; found {found_cols}. "
            "Rename the header or add the column"
        )
    return found


def bool_option(value, name: str = "no_text") -> bool:
    """A yes/no dataset option as code (True) or a command line (``--option no_text=true``) gives
    it."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off", ""):
        return False
    raise ManifestError(f"option {name}={value!r}: write {name}=true or {name}=false")


def _text_like(value: str) -> bool:
    """A value that reads as words (a transcript), not a number, an id, a path or a file name."""
    v = value.strip()
    if not v or "/" in v or "\\" in v or re.search(r"\.(wav|mp3|mp4|flac|ogg|m4a)$", v, re.I):
        return False
    try:
        float(v)
        return False
    except ValueError:
        pass
    letters = sum(ch.isalpha() for ch in v)
    return letters >= 2 and (" " in v or any(ord(ch) > 0x2E7F for ch in v) or letters >= 12)


def transcript_column_check(
    path: Path,
    header: list[str],
    rows: list[tuple[int, dict[str, str]]],
    text_col: str | None,
    ours: set[str],
    no_text: bool,
) -> bool:
    """Stop (ManifestError, one line) when most rows have no transcript while a column that is not
    one of ``ours`` holds text-like values: a misnamed ``text`` column. Returns True when most rows
    have no transcript (the caller then words one summary note instead of a warning per row, where
    ``no_text`` says so)."""
    if not rows:
        return False
    empty = sum(1 for _, r in rows if not (r.get(text_col, "") if text_col else ""))
    if 2 * empty <= len(rows):
        return False
    if no_text:
        return True
    best, best_n = None, 0
    for col in header:
        if not col or col in ours or col == text_col:
            continue
        values = [r.get(col, "") for _, r in rows if r.get(col, "")]
        words = [v for v in values if _text_like(v)]
        # a transcript column: text in most rows, and the rows mostly differ (not a speaker or
        # category column)
        if 2 * len(words) > len(rows) and 2 * len(set(words)) > len(words) and len(words) > best_n:
            best, best_n = col, len(words)
    if best is not None:
        target = text_col or "text"
        raise ManifestError(
            f"{path}: {empty} of {len(rows)} rows have no transcript ({target!r} "
            f"{'is empty' if text_col else 'column missing'}) but column {best!r} holds text in "
            f"{best_n} rows; rename column {best!r} to {target!r}, or pass --option no_text=true if "
            "the calls have no transcripts"
        )
    return False


# ---------------------------------------------------------------------------------------------------
# row checks


def option_path(base: Path, option: str | Path | None) -> Path | None:
    """A path option of an adapter (``csv_dir``, ``audio_dir``, ...): absolute as given, else
    relative to the dataset folder; None when the option is not given."""
    if option is None or option == "":
        return None
    if is_url(option):
        return data_root(option)
    p = Path(option)
    return p if p.is_absolute() else base / p


def audio_seconds(path, cache: dict[Path, float | None]) -> float | None:
    """Seconds of a soundfile-readable file; None for containers (mp4) and unreadable files, which
    the extraction decodes or reports."""
    if path not in cache:
        try:
            import soundfile as sf

            with opened(str(path)) as f:  # a URL: its header read through fsspec
                info = sf.info(f)
            cache[path] = info.frames / info.samplerate if info.samplerate > 0 else None
        except Exception:
            cache[path] = None
    return cache[path]


class RowChecks:
    """The checks every adapter makes on its rows, worded the same in every dataset; what they find
    goes to ``issues`` (a duplicate is left out by the caller, the others are warnings and the row
    is kept)."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        self._first: dict = {}
        self._split: dict[str, tuple[str, str]] = {}
        self._seconds: dict[Path, float | None] = {}

    def first_time(self, key, where: str, what: str) -> bool:
        """False, naming the row as a duplicate of the first, when ``key`` was seen before."""
        if key in self._first:
            self.issues.append(
                Issue(where, f"duplicate {what} (first at {self._first[key]}); row skipped")
            )
            return False
        self._first[key] = where
        return True

    def one_split(
        self, call_id: str, split: str | None, where: str, kind: str = "call"
    ) -> str | None:
        """A call (video, dialogue) is in one split: the first one given; a different later one is a
        warning."""
        if not split:
            return split
        first = self._split.setdefault(call_id, (split, where))
        if first[0] != split:
            self.issues.append(
                Issue(
                    where,
                    f"warning: {kind} {call_id} is in {first[0]} ({first[1]}) and in "
                    f"{split}; the segment is kept in {first[0]}",
                )
            )
        return first[0]

    @property
    def splits(self) -> dict[str, str]:
        """call → split, as :meth:`one_split` kept them."""
        return {cid: s for cid, (s, _) in self._split.items()}

    def transcript(self, where: str, text: str) -> str:
        if not text:
            self.issues.append(
                Issue(
                    where,
                    "warning: empty transcript (kept; the text encoder sees only its "
                    "special tokens)",
                )
            )
        return text

    def seconds(self, path: Path) -> float | None:
        return audio_seconds(path, self._seconds)


# ---------------------------------------------------------------------------------------------------
# values


CHANNEL_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}


def customer_channel(value: str) -> tuple[str, tuple[str, ...]]:
    """A ``customer_channel`` cell → (``left`` | ``right`` | a channel number | "", warnings)."""
    v = (value or "").strip().lower()
    if not v:
        return "", ()
    if v in CHANNEL_WORDS:
        return CHANNEL_WORDS[v], ()
    if v.isdigit():
        return str(int(v)), ()
    return "", (
        f"warning: customer_channel {value!r} is not left, right or a channel number; ignored",
    )


def normalise_split(value: str) -> str | None:
    return SPLIT_ALIASES.get(value.strip().lower())


def last_int(name: str) -> int | None:
    """The last integer in a file name's stem: ``13800001111_3.wav`` → 3, ``call_10`` → 10."""
    nums = re.findall(r"\d+", Path(name.replace("\\", "/")).stem)
    return int(nums[-1]) if nums else None


def parse_ratios(value) -> tuple[float, float, float]:
    """``split_ratios`` as given by code (a sequence) or a command line ("0.8,0.1,0.1"), normalised
    to sum 1."""
    if value is None:
        return DEFAULT_RATIOS
    if isinstance(value, str):
        value = [v for v in re.split(r"[,/:\s]+", value.strip()) if v]
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or any(v < 0 for v in vals) or vals[0] <= 0:
        raise ManifestError(
            f"split_ratios {value!r}: give three non-negative numbers train,valid,test "
            "with train > 0, e.g. 0.8,0.1,0.1"
        )
    total = sum(vals)
    return (vals[0] / total, vals[1] / total, vals[2] / total)


def label_lookup(scheme: LabelScheme) -> dict[str, str]:
    """Case-insensitive lookup of a scheme's base labels (``a`` → ``A``)."""
    return {lab.lower(): lab for lab in scheme.base_labels}


def scheme_or_error(name: str | LabelScheme, base: Path | None = None) -> LabelScheme:
    """A built-in scheme by name, a custom one from its TOML file (relative to the working folder,
    else to ``base``), or a scheme as given; ManifestError with one line otherwise."""
    try:
        return resolve_scheme(name, base)
    except SchemeFileError as e:
        raise ManifestError(str(e)) from None


def check_labels(
    rows: list[tuple[str, str]],
    scheme_name: str | LabelScheme,
    allow_empty: bool,
    issues: list[Issue] | None = None,
) -> set[str]:
    """``rows`` = (where, label as written). A row with an unknown label is named in ``issues`` and
    its ``where`` returned, so the adapter leaves it out and the run goes on. When most rows are
    unknown the labels are not this scheme's at all (a wrong column or dataset), and the manifest
    stops, listing the offending rows."""
    scheme = scheme_or_error(scheme_name)
    valid = label_lookup(scheme)
    bad = [
        (w, lab)
        for w, lab in rows
        if lab.lower() not in valid and not scheme.is_valid(lab) and not (allow_empty and lab == "")
    ]
    accepted = scheme.accepted() + (" or empty (unlabelled)" if allow_empty else "")
    if bad and (issues is None or 2 * len(bad) > len(rows)):
        shown = "; ".join(f"{w} {lab!r}" for w, lab in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ManifestError(
            f"unknown label(s) in {len(bad)} row(s): {shown}{more}. Valid labels ({scheme.name}): "
            f"{accepted}. Fix those rows or remove them"
        )
    for w, lab in bad:
        issues.append(Issue(w, f"unknown label {lab!r} (valid: {accepted}); row skipped"))
    return {w for w, _ in bad}


def drop_rows(calls: dict[str, list[Item]], wheres: set[str]) -> dict[str, list[Item]]:
    """``calls`` without the segments whose source row is in ``wheres`` (calls left empty
    disappear)."""
    if not wheres:
        return calls
    out = {
        cid: [it for it in items if it[2].source_row not in wheres] for cid, items in calls.items()
    }
    return {cid: items for cid, items in out.items() if items}


# ---------------------------------------------------------------------------------------------------
# splits


def _apportion(counts: dict[str, int], total: int, rng: random.Random) -> dict[str, int]:
    """Integers per label summing to ``total``, each ≤ its count and proportional to it (largest
    remainders)."""
    n = sum(counts.values())
    if n == 0 or total <= 0:
        return {k: 0 for k in counts}
    quota = {k: c * total / n for k, c in counts.items()}
    out = {k: int(q) for k, q in quota.items()}
    order = sorted(counts, key=lambda k: (-(quota[k] - out[k]), -counts[k], rng.random()))
    left = total - sum(out.values())
    while left > 0:
        progressed = False
        for k in order:
            if left and out[k] < counts[k]:
                out[k] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return out


def stratified_split(
    call_labels: dict[str, str], ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0
) -> dict[str, str]:
    """Deterministic call-level split stratified by label.

    The split sizes are ``round(n × ratio)`` for valid and test (at least one call each when there
    are ≥ 3 calls and the ratio is > 0; train keeps at least one); each split's calls are shared out
    over the labels in proportion to their counts (largest remainders), and within a label the calls
    are drawn after a shuffle seeded with ``seed``. The same calls, labels, ratios and seed always
    give the same split.
    """
    ratios = parse_ratios(ratios)
    by_label: dict[str, list[str]] = {}
    for cid in sorted(call_labels):
        by_label.setdefault(call_labels[cid], []).append(cid)
    rng = random.Random(seed)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    n = len(call_labels)
    n_valid, n_test = round(n * ratios[1]), round(n * ratios[2])
    if n >= 3:
        n_valid = max(n_valid, 1 if ratios[1] > 0 else 0)
        n_test = max(n_test, 1 if ratios[2] > 0 else 0)
    while n_valid + n_test > max(n - 1, 0):  # train keeps at least one call
        if n_valid >= n_test and n_valid > 0:
            n_valid -= 1
        else:
            n_test -= 1
    out: dict[str, str] = {}
    remaining = {lab: list(ids) for lab, ids in sorted(by_label.items())}
    for split, size in (("test", n_test), ("valid", n_valid)):
        take = _apportion({lab: len(ids) for lab, ids in remaining.items()}, size, rng)
        for lab, k in take.items():
            for cid in remaining[lab][:k]:
                out[cid] = split
            remaining[lab] = remaining[lab][k:]
    for ids in remaining.values():
        for cid in ids:
            out[cid] = "train"
    return out


def split_counts(assign: dict[str, str]) -> dict[str, int]:
    return {s: sum(1 for v in assign.values() if v == s) for s in SPLITS}


# ---------------------------------------------------------------------------------------------------
# assembling

Item = tuple[float, int, Segment]  # (order key, file order, segment)


def majority_labels(calls: dict[str, list[Item]], issues: list[Issue]) -> dict[str, list[Item]]:
    """A call has one label; where its segments disagree, the most frequent wins (ties: the first in
    label order) and the call is named in ``issues``. Empty labels (unlabelled rows) only win when
    nothing else is set."""
    for cid, items in calls.items():
        labels = [seg.label for _, _, seg in items]
        if len(set(labels)) <= 1:
            continue
        counts: dict[str, int] = {}
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1
        named = {k: v for k, v in counts.items() if k} or counts
        best = max(sorted(named), key=lambda k: named[k])
        shown = ", ".join(f"{k or 'empty'}×{v}" for k, v in sorted(counts.items()))
        where = items[0][2].source_row
        issues.append(
            Issue(
                f"call {cid}" + (f" ({where})" if where else ""),
                f"warning: its segments carry different labels ({shown}); the call is labelled {best!r}",
            )
        )
        calls[cid] = [(o, f, seg.with_(label=best)) for o, f, seg in items]
    return calls


def build_manifest(
    dataset: str,
    scheme: str,
    calls: dict[str, list[Item]],
    issues: list[Issue],
    notes: dict,
    label_scheme_def: dict | None = None,
) -> Manifest:
    """Order each call's segments by (order key, file order), number them 0..k-1, and check
    something is left."""
    segments: list[Segment] = []
    for cid in calls:
        for i, (_, _, seg) in enumerate(sorted(calls[cid], key=lambda x: (x[0], x[1]))):
            segments.append(seg.with_(index=i))
    if not segments:
        errors = [x for x in issues if not x.reason.startswith("warning:")] or issues
        first = "; ".join(str(x) for x in errors[:3])
        more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        raise ManifestError(
            f"{dataset}: no usable rows"
            + (f" ({first}{more})" if first else "")
            + ". Fix those rows (all issues are listed in manifest.issues)"
        )
    return Manifest(
        dataset=dataset,
        label_scheme=scheme,
        segments=segments,
        issues=issues,
        notes=notes,
        label_scheme_def=label_scheme_def,
    )
