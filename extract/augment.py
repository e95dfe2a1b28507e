"""Audio augmentation variants, encoded once at extraction and sampled by the trainer.

``--augment noise,speed --variants 2`` adds, for every *training* row, the rows ``noise-1``,
``noise-2``, ``speed-1``, ``speed-2``: one augmented copy per transform and draw, tagged in the
store's ``variant`` column. Validation and test rows are never augmented. Each copy's random
parameters are a fixed function of (seed, segment id, variant), so a resumed or repeated extraction
writes the same numbers; the transforms and their ranges are part of the cache fingerprint.

Transforms come from ``audiomentations`` (``speed`` is Kaldi-style speed perturbation: resampling
that changes tempo and pitch together, as in ASR practice; ``tempo`` keeps the pitch).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import soxr

from pipeline.manifest import Segment


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
    return [f"{name}-{k}" for name in augment for k in range(1, variants + 1)]


def settings(augment: tuple[str, ...], variants: int, seed: int) -> dict:
    """The fingerprint's ``augmentation`` entry."""
    if not augment:
        return {"variants": []}
    return {
        "variants": variant_names(augment, variants),
        "seed": seed,
        "splits": ["train"],
        "transforms": {n: TRANSFORMS[n].params for n in augment},
    }


def add_variant_rows(
    rows: list[Segment],
    durations: dict[str, float],
    augment: tuple[str, ...],
    variants: int,
    max_seconds: float,
) -> tuple[list[Segment], dict[str, float]]:
    """Append one augmented copy of every training row per variant (originals keep their row
    numbers)."""
    if not augment:
        return rows, durations
    durations = dict(durations)
    extra: list[Segment] = []
    for v in variant_names(augment, variants):
        stretch = 1.0 / 0.9 if v.split("-")[0] in ("speed", "tempo") else 1.0
        for s in rows:
            if s.split != "train" or s.variant != "orig":
                continue
            seg = s.with_(segment_id=f"{s.segment_id}~{v}", variant=v)
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
