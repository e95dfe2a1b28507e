"""Pieces every adapter shares: robust CSV reading, the stratified call-level split, label checks, ordering."""
from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

from ..labels import get_scheme
from ..manifest import Issue, Manifest, Segment

SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "dev": "valid", "test": "test", "testing": "test"}


class ManifestError(ValueError):
    """The dataset cannot be read as asked; the message names the file and the fix."""


def read_csv(path: Path, issues: list[Issue]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV as (line number, {lower-cased column: value}). Tries UTF-8 (with BOM), then GB18030 (Chinese
    Excel exports); bytes that fit neither are replaced and the file is named in ``issues``."""
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        text = raw.decode("utf-8", errors="replace")
        issues.append(Issue(path.name, "warning: bytes that are neither UTF-8 nor GB18030 were replaced by U+FFFD"))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        raise ManifestError(f"{path}: empty CSV (no header row)")
    fields = [f.strip().lower() for f in reader.fieldnames]
    rows = []
    for i, row in enumerate(reader, start=2):
        rows.append((i, {k.strip().lower(): (v or "").strip() if isinstance(v, str) else ""
                         for k, v in row.items() if k is not None}))
    return fields, rows


def require_columns(path: Path, fields: list[str], required: dict[str, tuple[str, ...]]) -> dict[str, str]:
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
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(fields) or 'none'}")
    return found


def normalise_split(value: str) -> str | None:
    return SPLIT_ALIASES.get(value.strip().lower())


def last_int(name: str) -> int | None:
    nums = re.findall(r"\d+", Path(name).stem)
    return int(nums[-1]) if nums else None


def stratified_split(call_labels: dict[str, str], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Deterministic call-level split, stratified by label: each label's calls are shuffled with ``seed`` and
    dealt out by ``ratios`` (train, valid, test); every split gets at least one call when there are ≥ 3."""
    by_label: dict[str, list[str]] = {}
    for cid in sorted(call_labels):
        by_label.setdefault(call_labels[cid], []).append(cid)
    out: dict[str, str] = {}
    rng = random.Random(seed)
    leftovers: list[str] = []
    for label in sorted(by_label):
        ids = by_label[label]
        rng.shuffle(ids)
        n = len(ids)
        n_valid, n_test = int(n * ratios[1]), int(n * ratios[2])
        for cid in ids[:n_test]:
            out[cid] = "test"
        for cid in ids[n_test: n_test + n_valid]:
            out[cid] = "valid"
        for cid in ids[n_test + n_valid:]:
            out[cid] = "train"
        leftovers.extend(ids[n_test + n_valid:])
    # small datasets: make sure valid and test are not empty, taking from train's largest labels
    for split in ("test", "valid"):
        if split not in out.values() and len(out) >= 3:
            counts: dict[str, int] = {}
            for cid in leftovers:
                if out[cid] == "train":
                    counts[call_labels[cid]] = counts.get(call_labels[cid], 0) + 1
            label = max(sorted(counts), key=lambda k: counts[k])
            cid = next(c for c in reversed(leftovers) if out[c] == "train" and call_labels[c] == label)
            out[cid] = split
    return out


def check_labels(rows: list[tuple[str, str]], scheme_name: str, allow_empty: bool) -> None:
    """``rows`` = (where, label). Unknown labels stop the manifest, listing the offending rows."""
    scheme = get_scheme(scheme_name)
    bad = [(w, lab) for w, lab in rows if not (scheme.is_valid(lab) or (allow_empty and lab == ""))]
    if bad:
        shown = "; ".join(f"{w} {lab!r}" for w, lab in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ManifestError(f"unknown label(s) in {len(bad)} row(s): {shown}{more}. Valid labels: "
                            f"{', '.join(scheme.base_labels)}" + (" or empty (unlabelled)" if allow_empty else "")
                            + ". Fix the rows or remove them.")


def build_manifest(dataset: str, scheme: str, calls: dict[str, list[tuple[float, int, Segment]]],
                   issues: list[Issue], notes: dict) -> Manifest:
    """Order each call's segments by (order key, file order), number them 0..k-1, and check something is left."""
    segments: list[Segment] = []
    for cid in calls:
        for i, (_, _, seg) in enumerate(sorted(calls[cid], key=lambda x: (x[0], x[1]))):
            segments.append(seg.with_(index=i))
    if not segments:
        first = "; ".join(str(x) for x in issues[:3])
        raise ManifestError(f"{dataset}: no usable rows" + (f" ({first})" if first else ""))
    return Manifest(dataset=dataset, label_scheme=scheme, segments=segments, issues=issues, notes=notes)


def majority_labels(calls: dict[str, list[tuple[float, int, Segment]]], issues: list[Issue]) -> dict[str, list]:
    """A call has one label; where its segments disagree, the most frequent wins and the call is named."""
    for cid, items in calls.items():
        labels = [seg.label for _, _, seg in items]
        if len(set(labels)) > 1:
            counts = {lab: labels.count(lab) for lab in labels}
            best = max(sorted(counts), key=lambda k: counts[k])
            issues.append(Issue(f"call {cid}", f"warning: segments carry labels {sorted(counts)}; using {best!r}"))
            calls[cid] = [(o, f, seg.with_(label=best)) for o, f, seg in items]
    return calls
