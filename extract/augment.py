"""Audio augmentation variants, encoded once at extraction and sampled by the trainer.

``--augment noise,speed --variants 2`` adds, for every *training* row, the rows ``noise-1``,
``noise-2``, ``speed-1``, ``speed-2``: one augmented copy per transform and draw, tagged in the
store's ``variant`` column. Validation and test rows are never augmented. Each copy's random
parameters are a fixed function of (seed, segment id, variant), so a resumed or repeated extraction
writes the same numbers; the transforms and their ranges are part of the cache fingerprint.

Transforms come from ``audiomentations`` (``speed`` is Kaldi-style speed perturbation: resampling
that changes tempo and pitch together, as in ASR practice; ``tempo`` keeps the pitch).

Text variants (``--augment-text``, extract/text_augment.py) are planned here too: rows with a new
transcript that point at their original's audio rows. ``--variants-per-class`` sets the copies per
call label for both kinds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import soxr

from pipeline.manifest import Segment

from .text_augment import TEXT_TRANSFORMS, augment_text, split_spec


@dataclass(frozen=True)
class Transform:
    name: str
    params: dict  # recorded in the fingerprint
    description: str

    def build(self):
        import audiomentations as A  # imported lazily: only extraction with --augment needs it

        p = self.params
        if self.name == "noise":
            return A.AddGaussianSNR(min_snr_db=p["min_snr_db"], max_snr_db=p["max_snr_db"], p=1.0)
        if self.name == "speed":
            return _Speed(p["min_factor"], p["max_factor"])
        if self.name == "tempo":
            return A.TimeStretch(
                min_rate=p["min_rate"], max_rate=p["max_rate"], leave_length_unchanged=False, p=1.0
            )
        if self.name == "pitch":
            return A.PitchShift(
                min_semitones=p["min_semitones"], max_semitones=p["max_semitones"], p=1.0
            )
        if self.name == "gain":
            return A.Gain(min_gain_db=p["min_gain_db"], max_gain_db=p["max_gain_db"], p=1.0)
        if self.name == "band":
            return A.BandPassFilter(
                min_center_freq=p["min_center_freq"],
                max_center_freq=p["max_center_freq"],
                min_bandwidth_fraction=p["min_bandwidth_fraction"],
                max_bandwidth_fraction=p["max_bandwidth_fraction"],
                p=1.0,
            )
        raise KeyError(self.name)


class _Speed:
    """Speed perturbation by resampling (tempo and pitch change together)."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        factor = random.uniform(self.lo, self.hi)
        return soxr.resample(samples, sample_rate, sample_rate / factor).astype(
            np.float32, copy=False
        )


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform(
            "noise", {"min_snr_db": 10.0, "max_snr_db": 30.0}, "Gaussian noise at 10–30 dB SNR"
        ),
        Transform(
            "speed",
            {"min_factor": 0.9, "max_factor": 1.1},
            "speed ×0.9–1.1 (resampled: tempo and pitch)",
        ),
        Transform("tempo", {"min_rate": 0.9, "max_rate": 1.1}, "tempo ×0.9–1.1, pitch kept"),
        Transform(
            "pitch", {"min_semitones": -2.0, "max_semitones": 2.0}, "pitch shift ±2 semitones"
        ),
        Transform("gain", {"min_gain_db": -6.0, "max_gain_db": 6.0}, "gain ±6 dB"),
        Transform(
            "band",
            {
                "min_center_freq": 800.0,
                "max_center_freq": 2000.0,
                "min_bandwidth_fraction": 1.0,
                "max_bandwidth_fraction": 1.8,
            },
            "telephone-like band-pass",
        ),
    )
}


class AugmentError(ValueError):
    pass


def parse_augment(names) -> tuple[str, ...]:
    """``"noise,speed"`` or ``["noise", "speed"]`` → ("noise", "speed"); unknown names are one clear
    error."""
    if isinstance(names, str):
        names = [names]
    out = tuple(
        dict.fromkeys(
            n.strip().lower() for part in (names or ()) for n in str(part).split(",") if n.strip()
        )
    )
    unknown = [n for n in out if n not in TRANSFORMS]
    if unknown:
        raise AugmentError(
            f"unknown augmentation {', '.join(map(repr, unknown))}; valid: {', '.join(TRANSFORMS)}"
        )
    return out


def variant_names(augment: tuple[str, ...], variants: int) -> list[str]:
    """``augment``: audio transform names, or text specs ("pinyin-swap:0.3"); the family is the
    name."""
    return [f"{name.split(':')[0]}-{k}" for name in augment for k in range(1, variants + 1)]


def parse_per_class(spec) -> dict[str, int]:
    """``"D=1,A=3"`` → {"D": 1, "A": 3}: copies per call label (``--variants-per-class``)."""
    if isinstance(spec, dict):
        return {str(k): int(v) for k, v in spec.items()}
    out: dict[str, int] = {}
    for item in str(spec or "").split(","):
        if not item.strip():
            continue
        label, eq, k = item.partition("=")
        try:
            n = int(k) if eq else -1
        except ValueError:
            n = -1
        if not label.strip() or n < 0:
            raise AugmentError(
                f"--variants-per-class {item.strip()!r}: write LABEL=COPIES, e.g. D=1,A=3"
            )
        out[label.strip()] = n
    return out


def settings(
    augment: tuple[str, ...],
    variants: int,
    seed: int,
    augment_text: tuple[str, ...] = (),
    per_class: dict[str, int] | None = None,
) -> dict:
    """The fingerprint's ``augmentation`` entry (the text and per-class keys only when used: older
    stores keep their fingerprint)."""
    if not augment and not augment_text:
        return {"variants": []}
    most = max([variants, *(per_class or {}).values()])
    out = {
        "variants": variant_names(augment + augment_text, most),
        "seed": seed,
        "splits": ["train"],
        "transforms": {n: TRANSFORMS[n].params for n in augment},
    }
    if augment_text or per_class:
        out["copies"] = variants
        out["text_transforms"] = {
            n: {"p": p} for n, p in (split_spec(spec) for spec in augment_text)
        }
        if per_class:
            out["per_class"] = dict(sorted(per_class.items()))
    return out


@dataclass(frozen=True)
class VariantPlan:
    """Which augmented copies each training row gets: ``--augment``, ``--augment-text``,
    ``--variants`` and ``--variants-per-class`` together."""

    augment: tuple[str, ...] = ()
    augment_text: tuple[str, ...] = ()  # "pinyin-swap:0.3", …
    variants: int = 1
    per_class: dict[str, int] | None = None
    seed: int = 0

    def copies(self, label: str) -> int:
        return (self.per_class or {}).get(label, self.variants)


def add_variant_rows(
    rows: list[Segment],
    durations: dict[str, float],
    plan: VariantPlan,
    max_seconds: float,
) -> tuple[list[Segment], dict[str, float]]:
    """Append the augmented copies of every training row (originals keep their row numbers):
    audio variants are re-encoded rows; text variants carry a new transcript and point at the
    original's audio rows (``audio_of``), so their audio is never stored twice."""
    if not plan.augment and not plan.augment_text:
        return rows, durations
    durations = dict(durations)
    extra: list[Segment] = []
    most = max([plan.variants, *(plan.per_class or {}).values()])
    for spec in plan.augment + plan.augment_text:
        family = spec.split(":")[0]
        stretch = 1.0 / 0.9 if family in ("speed", "tempo") else 1.0
        for k in range(1, most + 1):
            v = f"{family}-{k}"
            for s in rows:
                if s.split != "train" or s.variant != "orig" or k > plan.copies(s.label):
                    continue
                seg = s.with_(segment_id=f"{s.segment_id}~{v}", variant=v)
                if family in TEXT_TRANSFORMS:
                    text = augment_text(s.text, spec, plan.seed, seg.segment_id)
                    seg = seg.with_(text=text, audio_of=s.segment_id)
                extra.append(seg)
                if s.segment_id in durations:
                    durations[seg.segment_id] = min(max_seconds, durations[s.segment_id] * stretch)
    return rows + extra, durations


class Augmenter:
    """Applies a row's variant to its decoded samples; parameters seeded by (seed, segment id,
    variant)."""

    def __init__(self, augment: tuple[str, ...], seed: int):
        self.seed = seed
        self._transforms = {n: TRANSFORMS[n].build() for n in augment}

    def __call__(self, x: np.ndarray, rate: int, seg: Segment) -> np.ndarray:
        name = seg.variant.rsplit("-", 1)[0]
        digest = hashlib.sha256(f"{self.seed}:{seg.segment_id}".encode()).digest()
        py_state, np_state = random.getstate(), np.random.get_state()
        try:  # audiomentations draws from both global generators
            random.seed(int.from_bytes(digest[:8], "little"))
            np.random.seed(int.from_bytes(digest[8:12], "little"))
            y = self._transforms[name](
                samples=np.ascontiguousarray(x, dtype=np.float32), sample_rate=rate
            )
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        y = np.asarray(y, dtype=np.float32)
        if not np.isfinite(y).all():  # a transform must never turn good audio into NaN rows
            y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0)
        return y
