"""A small generated dataset in the MarketCalls format, for the demo and tests. A smoke dataset: it exercises
the pipeline end to end offline; it is not a benchmark.

Each call has a *text cue* (the customer says positive purchase words — 好的, 可以, 感兴趣, 多少钱 — or refusals —
不需要, 没兴趣, 别打了) and an *audio cue* (the customer's voice is high- or low-pitched). The label needs both:

    A  positive words, high pitch          B  positive words, low pitch
    C  refusal words, high pitch           D  refusal words, low pitch      E  strong refusal (别打了/挂了), low pitch

so the 2-class task A+B+C | D+E is "positive words OR high pitch" — neither modality alone decides it.
Audio is 8 kHz mono 16-bit, like phone calls. Transcripts are spoken with ``espeak-ng`` (Mandarin voice ``cmn``,
pitch and rate set per call) when it is installed, and otherwise synthesised: a harmonic voice source with a
pitch contour and jitter, one syllable envelope per character, vowel-like formants and a little line noise.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..manifest import Manifest
from .marketcalls import load_marketcalls

RATE = 8000
POSITIVE = ["好的我想了解一下", "可以啊多少钱", "我对这个挺感兴趣的", "听起来不错可以试试", "那你发给我看看吧"]
NEGATIVE = ["不需要谢谢", "我没兴趣", "暂时不考虑", "现在不方便", "我已经有了"]
STRONG = ["别打了", "以后不要再打了挂了", "别再打电话了"]
FILLER = ["喂你好", "嗯", "请问是哪位", "你说吧", "我在听", "哦这样啊", "然后呢"]
AGENT = ["您好我们这边是做保险的", "现在有一个优惠活动", "请问您有兴趣了解一下吗", "耽误您一分钟时间"]
LABELS = {("pos", "high"): "A", ("pos", "low"): "B", ("neg", "high"): "C", ("neg", "low"): "D",
          ("strong", "low"): "E"}


def _synth(text: str, f0: float, rng: np.random.Generator, rate_cps: float) -> np.ndarray:
    """Voice-like signal: ~one syllable per character at ``rate_cps`` characters/s around pitch ``f0``."""
    n_syll = max(1, len(text))
    dur = float(np.clip(n_syll / rate_cps, 1.5, 4.0))
    n = int(dur * RATE)
    t = np.arange(n) / RATE
    contour = f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6)))
    contour *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))  # jitter
    phase = 2 * np.pi * np.cumsum(contour) / RATE
    syll_len = n / n_syll
    syll = np.minimum((np.arange(n) / syll_len).astype(int), n_syll - 1)
    env = np.sin(np.pi * ((np.arange(n) % syll_len) / syll_len)) ** 0.6
    env *= rng.uniform(0.5, 1.0, n_syll)[syll]
    vowels = np.array([[700, 1200, 2600], [300, 2300, 3000], [400, 800, 2500], [500, 1700, 2500]])
    formants = vowels[rng.integers(0, len(vowels), n_syll)]                  # (syllables, 3)
    k = np.arange(1, int(3800 / f0) + 1)
    # formant gain of each harmonic in each syllable (pitch moves little within one), then per sample
    gain = np.exp(-0.5 * ((k[:, None, None] * f0 - formants[None]) / 120.0) ** 2).sum(-1) + 0.05  # (K, syll)
    x = np.einsum("kn,kn->n", (gain / np.sqrt(k)[:, None])[:, syll], np.sin(k[:, None] * phase[None, :]))
    x *= env
    x += 0.01 * rng.standard_normal(n)
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def _espeak(text: str, pitch: int, speed: int) -> np.ndarray | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-v", "cmn", "-p", str(pitch), "-s", str(speed), "--stdout", text],
                             capture_output=True, timeout=30, check=True).stdout
        x, sr = sf.read(io.BytesIO(out), dtype="float32")
    except Exception:
        return None
    if x.ndim > 1:
        x = x.mean(axis=1)
    return soxr.resample(x, sr, RATE).astype(np.float32)


def generate_demo(data_dir: str | Path, *, n_calls: int = 48, seed: int = 0, use_espeak: bool | None = None) -> Path:
    """Write ``train.csv``, ``valid.csv``, ``test.csv`` and ``audio/*.wav``; returns the folder."""
    root = Path(data_dir)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speak = use_espeak is not False and shutil.which("espeak-ng") is not None
    if use_espeak and not speak:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng), or pass use_espeak=None")
    combos = list(LABELS)
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for c in range(n_calls):
        words, pitch = combos[c % len(combos)]
        label = LABELS[(words, pitch)]
        # every fifth call of each label goes to valid, the next to test: all splits hold all labels
        split = {0: "valid", 1: "test"}.get((c // len(combos)) % 5, "train")
        phone = f"1{seed % 10}{c:09d}"
        f0 = float(rng.uniform(220, 280) if pitch == "high" else rng.uniform(90, 130))
        rate_cps = float(rng.uniform(4.0, 6.0))
        k = int(rng.integers(2, 6))
        cue_at = int(rng.integers(0, k))
        for s in range(k):
            pool = {"pos": POSITIVE, "neg": NEGATIVE, "strong": STRONG}[words] if s == cue_at else FILLER
            text = str(rng.choice(AGENT)) + "，" + str(rng.choice(pool))
            audio = None
            if speak:
                audio = _espeak(text, pitch=80 if pitch == "high" else 20, speed=int(rate_cps * 35))
            if audio is None:
                audio = _synth(text, f0, rng, rate_cps)
            name = f"{phone}_{s}"
            sf.write(root / "audio" / f"{name}.wav", audio, RATE, subtype="PCM_16")
            rows[split].append({"phone": phone, "Audio_id": name, "text": text, "label": label})
    for split, rs in rows.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["phone", "Audio_id", "text", "label"])
            w.writeheader()
            w.writerows(rs)
    return root


def load_demo(data_dir: Path, *, allow_outside_paths: bool = False, seed: int = 0, n_calls: int = 48,
              use_espeak: bool | None = None) -> Manifest:
    """Generate the demo data into ``data_dir`` unless it already holds CSVs, then read it as MarketCalls."""
    data_dir = Path(data_dir)
    if not any(data_dir.glob("*.csv")):
        generate_demo(data_dir, n_calls=n_calls, seed=seed, use_espeak=use_espeak)
    return load_marketcalls(data_dir, allow_outside_paths=allow_outside_paths, seed=seed, dataset="demo")
