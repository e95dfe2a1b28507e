"""The demo dataset: a small generated set of "phone calls" in the MarketCalls format.

**A smoke dataset.** It lets the whole pipeline run end to end offline in seconds (``msmtfn-demo``,
the tests); it is not a benchmark and its numbers say nothing about accuracy on real calls.

What is written to DATA_DIR: ``train.csv``, ``valid.csv``, ``test.csv`` (columns ``phone``,
``Audio_id``, ``text``, ``label``), ``audio/<phone>_<k>.wav`` (8 kHz mono 16-bit PCM, like phone
calls; 2–5 segments per call, each 1.5–4 s) and ``demo.json`` (the settings it was generated with).

The label needs both modalities. One segment of each call carries the *text cue* — the customer's
answer: positive purchase words (好的, 可以, 感兴趣, 多少钱 …), a refusal (不需要, 没兴趣, 不考虑 …) or a strong
refusal (别打了, 挂了 …); the other segments are neutral fillers (喂你好, 你说吧 …). Every segment carries the
*audio cue*: the customer's voice is high-pitched (about 210–270 Hz) or low-pitched (about 85–125
Hz) throughout the call.

    A  positive words + high voice        B  positive words + low voice
    C  (strong) refusal + high voice      D  refusal + low voice          E  strong refusal + low
    voice

So text alone separates {A, B} from {C, D, E} but not A from B; the voice alone separates {A, C}
from {B, D, E}; the five classes (and the 2-class task A+B+C | D+E, "positive words OR high voice")
need both. Calls are dealt round by round through A–E, and rounds go to train, valid, test, train,
train in turn: every split holds every label once there are ≥ 15 calls (48 by default: 28 / 10 /
10).

The audio is spoken by ``espeak-ng`` (Mandarin ``cmn``: high = variant ``cmn+f2`` at ``-p`` 65–90,
about 215–275 Hz; low = ``cmn`` at ``-p`` 30–55, about 80–100 Hz; rate ``-s`` 150–210 per call) when
it is on PATH and ``use_espeak`` is not False, and resampled to 8 kHz with soxr. Otherwise (the
default on CI) a voice-like signal is synthesised: a glottal-pulse-like harmonic source at the
call's pitch with a falling phrase contour, a tone-like contour per syllable and jitter; one
syllable envelope per Chinese character; vowel formant resonances that change per syllable; a short
noise burst at syllable onsets; light line noise. Either way the output is deterministic given
``seed`` (same bytes twice).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
import soxr

from ..manifest import Manifest
from ..remote_files import data_root, is_remote
from .marketcalls import SCHEME, load_marketcalls
from .registry import register_dataset

log = logging.getLogger(__name__)

RATE = 8000
MIN_SECONDS, MAX_SECONDS = 1.5, 4.0
MIN_CALLS = 15

POSITIVE = [
    "好的可以",
    "可以啊多少钱",
    "我挺感兴趣的",
    "多少钱一个月",
    "好的你发给我吧",
    "可以了解一下",
    "感兴趣说说看",
    "好的多少钱",
]
NEGATIVE = ["不需要谢谢", "我没兴趣", "暂时不考虑", "不用了谢谢", "我已经有了", "没兴趣不需要"]
STRONG = ["别打了", "别再打了挂了", "以后别打了", "挂了别打了", "别打了烦不烦"]
FILLER = [
    "喂你好",
    "嗯嗯",
    "你是哪位",
    "你说吧",
    "我在听",
    "哦这样啊",
    "然后呢",
    "什么活动",
    "嗯你继续说",
    "稍等一下",
]
LABELS = "ABCDE"
# label -> (text cue pools to draw from, voice)
RULE = {
    "A": (("pos",), "high"),
    "B": (("pos",), "low"),
    "C": (("neg", "strong"), "high"),
    "D": (("neg",), "low"),
    "E": (("strong",), "low"),
}
POOLS = {"pos": POSITIVE, "neg": NEGATIVE, "strong": STRONG}
SPLIT_CYCLE = ("train", "valid", "test", "train", "train")
VOWELS = np.array(
    [
        [730, 1090, 2440],
        [270, 2290, 3010],
        [300, 870, 2240],
        [530, 1840, 2480],
        [570, 840, 2410],
        [440, 1020, 2240],
        [390, 1990, 2550],
    ],
    dtype=np.float64,
)


# -----------------------------------------------------------------------------------------------
# synthesis


def _n_syllables(text: str) -> int:
    return max(1, len(re.findall(r"[\u4e00-\u9fff]", text)) or len(text))


def _fit_length(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pad with a little silence (random lead-in) to ≥ 1.5 s; trim to ≤ 4 s with a short
    fade-out."""
    n_min, n_max = int(MIN_SECONDS * RATE), int(MAX_SECONDS * RATE)
    if len(x) > n_max:
        x = x[:n_max].copy()
        fade = int(0.05 * RATE)
        x[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=x.dtype)
    target = max(n_min, min(n_max, len(x) + int(rng.uniform(0.15, 0.5) * RATE)))
    lead = int(rng.integers(0, target - len(x) + 1))
    out = np.zeros(target, dtype=np.float32)
    out[lead : lead + len(x)] = x
    return out


def _finish(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Level, light line noise and hum, clipped to 16-bit range."""
    x = 0.35 * x / (np.abs(x).max() + 1e-9)
    n = len(x)
    t = np.arange(n) / RATE
    x = (
        x
        + 0.004 * rng.standard_normal(n)
        + 0.002 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 2 * np.pi))
    )
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def synth_voice(text: str, f0: float, rate_cps: float, rng: np.random.Generator) -> np.ndarray:
    """A voice-like utterance of ``text`` at ~``rate_cps`` syllables/s around pitch ``f0`` (8 kHz
    float32)."""
    n_syll = _n_syllables(text)
    speech = min(n_syll / rate_cps, MAX_SECONDS - 0.3)
    n = int(speech * RATE)
    t = np.arange(n) / RATE
    # syllable boundaries with some timing variation
    w = rng.uniform(0.8, 1.2, n_syll)
    edges = np.concatenate([[0], np.cumsum(w) / w.sum() * n]).astype(int)
    syll = np.clip(np.searchsorted(edges, np.arange(n), side="right") - 1, 0, n_syll - 1)
    # 0..1 within syllable
    pos = (np.arange(n) - edges[syll]) / np.maximum(edges[syll + 1] - edges[syll], 1)
    # F0: phrase declination × tone-like contour per syllable × jitter (a slow random walk)
    tones = rng.integers(0, 4, n_syll)
    shape = np.select(
        [tones[syll] == 0, tones[syll] == 1, tones[syll] == 2],
        [np.zeros(n), 0.12 * (pos - 0.5), -0.12 * np.sin(np.pi * pos)],
        0.12 * (0.5 - pos),
    )
    jitter = np.cumsum(rng.standard_normal(n)) * 0.0006
    jitter -= np.linspace(0, jitter[-1], n)
    f0_t = f0 * (1.05 - 0.1 * t / max(speech, 1e-3)) * (1 + shape) * (1 + jitter)
    phase = 2 * np.pi * np.cumsum(f0_t) / RATE
    # harmonic source with a glottal-like spectral tilt, shaped by the syllable's vowel formants
    k_max = int(3800 / (f0 * 0.8))
    k = np.arange(1, k_max + 1, dtype=np.float64)
    formants = VOWELS[rng.integers(0, len(VOWELS), n_syll)] * rng.uniform(0.95, 1.05, (n_syll, 1))
    bw = np.array([90.0, 110.0, 170.0])
    hf = k[:, None] * f0  # (K, 1) harmonic freqs
    res = 1.0 / np.sqrt(
        (1 - (hf[..., None] / formants[None]) ** 2) ** 2
        + (hf[..., None] * bw / formants[None] ** 2) ** 2
    )  # (K, syll, 3)
    gain = res.prod(-1) / k[:, None]  # cascade of resonators; source+radiation -6 dB/oct
    z = np.exp(1j * phase)
    zk = np.ones(n, dtype=np.complex128)
    x = np.zeros(n)
    for i in range(k_max):
        zk = zk * z
        alias = (i + 1) * f0_t < 3900
        x += gain[i, syll] * zk.imag * alias
    # syllable envelope: quick attack, decay, short gap; a consonant-like noise burst at each onset
    env = np.minimum(pos / 0.12, 1.0) * np.clip((1 - pos) / 0.25, 0, 1) ** 0.7
    env *= rng.uniform(0.6, 1.0, n_syll)[syll]
    burst = rng.standard_normal(n) * np.exp(-pos * 25) * (rng.uniform(0, 1, n_syll) < 0.6)[syll]
    burst = np.diff(burst, prepend=0.0)  # high-pass: fricative-like
    x = x / (np.abs(x).max() + 1e-9) * env + 0.15 * burst * (pos < 0.12)
    return _fit_length(x.astype(np.float32), rng)


def _espeak_call(texts: list[str], voice: str, pitch: int, speed: int) -> list[np.ndarray] | None:
    """Speak a call's segments in one espeak-ng run (SSML breaks between them, split on the
    silences)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    ssml = "<speak>" + '<break time="1200ms"/>'.join(escape(t) for t in texts) + "</speak>"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            subprocess.run(
                [exe, "-v", voice, "-m", "-p", str(pitch), "-s", str(speed), "-w", str(wav), ssml],
                capture_output=True,
                timeout=60,
                check=True,
            )
            x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        log.warning("espeak-ng failed (%s); synthesising instead", e)
        return None
    x = x.mean(axis=1)
    silent = np.concatenate([[False], np.abs(x) < 1e-4, [False]])
    d = np.diff(silent.astype(np.int8))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    gaps = [
        (a, b) for a, b in zip(starts, stops) if b - a >= int(0.9 * sr) and a > 0 and b < len(x)
    ]
    if len(gaps) != len(texts) - 1:
        return None
    bounds = [0] + [p for a, b in gaps for p in (a, b)] + [len(x)]
    pieces = [x[bounds[2 * i] : bounds[2 * i + 1]] for i in range(len(texts))]
    out = []
    for p in pieces:
        nz = np.flatnonzero(np.abs(p) >= 1e-4)
        p = p[nz[0] : nz[-1] + 1] if len(nz) else p
        out.append(soxr.resample(p, sr, RATE).astype(np.float32))
    return out


# -----------------------------------------------------------------------------------------------
# generation


def _plan(n_calls: int, seed: int) -> list[dict]:
    """Calls, their labels, splits, voices and segment texts: drawn from ``seed`` alone (not the
    audio backend)."""
    rng = np.random.default_rng(seed)
    calls = []
    for c in range(n_calls):
        label = LABELS[c % len(LABELS)]
        split = SPLIT_CYCLE[(c // len(LABELS)) % len(SPLIT_CYCLE)]
        pools, voice = RULE[label]
        pool = POOLS[pools[int(rng.integers(0, len(pools)))]]
        k = int(rng.integers(2, 6))
        cue_at = int(rng.integers(0, k))
        texts = [
            str(rng.choice(pool)) if s == cue_at else str(rng.choice(FILLER)) for s in range(k)
        ]
        calls.append(
            {
                "phone": f"1{3 + seed % 7}{(seed * 7919 + c) % 10**9:09d}",
                "label": label,
                "split": split,
                "voice": voice,
                "texts": texts,
                "f0": float(rng.uniform(210, 270) if voice == "high" else rng.uniform(85, 125)),
                "espeak_voice": "cmn+f2" if voice == "high" else "cmn",
                "espeak_pitch": int(
                    rng.integers(65, 91) if voice == "high" else rng.integers(30, 56)
                ),
                "rate_cps": float(rng.uniform(3.5, 5.0)),
                "espeak_speed": int(rng.integers(150, 211)),
            }
        )
    return calls


def _render(call: dict, index: int, seed: int, speak: bool) -> tuple[list[np.ndarray], bool]:
    rng = np.random.default_rng([seed, index, 1])
    spoken = (
        _espeak_call(
            call["texts"], call["espeak_voice"], call["espeak_pitch"], call["espeak_speed"]
        )
        if speak
        else None
    )
    if spoken is not None:
        return [_finish(_fit_length(x, rng), rng) for x in spoken], True
    out = []
    for text in call["texts"]:
        f0 = call["f0"] * float(rng.uniform(0.95, 1.05))
        out.append(_finish(synth_voice(text, f0, call["rate_cps"], rng), rng))
    return out, False


def generate_demo(
    data_dir: str | Path, *, n_calls: int = 48, seed: int = 0, use_espeak: bool | None = None
) -> Path:
    """Write ``train.csv``, ``valid.csv``, ``test.csv``, ``audio/*.wav`` and ``demo.json`` into
    ``data_dir``.

    ``use_espeak``: None = espeak-ng when installed, else synthesis; True = require espeak-ng; False
    = synthesis. Returns the folder. Files of an earlier demo generation listed in its ``demo.json``
    are replaced.
    """
    if n_calls < MIN_CALLS:
        raise ValueError(
            f"n_calls={n_calls}: the demo needs at least {MIN_CALLS} calls (three rounds of the five "
            "labels) so that train, valid and test each hold every label"
        )
    root = Path(data_dir)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    have = shutil.which("espeak-ng") is not None
    if use_espeak and not have:
        raise RuntimeError(
            "use_espeak=True but espeak-ng is not on PATH (apt-get install espeak-ng), or pass "
            "use_espeak=None to synthesise instead"
        )
    speak = have and use_espeak is not False
    plan = _plan(n_calls, seed)
    # espeak runs are separate processes
    with ThreadPoolExecutor(max_workers=4 if speak else 1) as pool:
        rendered = list(pool.map(lambda ic: _render(ic[1], ic[0], seed, speak), enumerate(plan)))
    backends = {"espeak-ng" if used else "synth" for _, used in rendered}
    old = root / "demo.json"
    # remove audio of an earlier, larger generation that the new CSVs no longer name
    if old.is_file():
        try:
            for name in json.loads(old.read_text()).get("audio", []):
                (audio_dir / Path(name).name).unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    names = []
    for call, (audio, _) in zip(plan, rendered):
        for s, (text, x) in enumerate(zip(call["texts"], audio)):
            name = f"{call['phone']}_{s}"
            sf.write(audio_dir / f"{name}.wav", x, RATE, subtype="PCM_16", format="WAV")
            names.append(f"{name}.wav")
            rows[call["split"]].append(
                {"phone": call["phone"], "Audio_id": name, "text": text, "label": call["label"]}
            )
    for split, rs in rows.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(
                f, fieldnames=["phone", "Audio_id", "text", "label"], lineterminator="\n"
            )
            w.writeheader()
            w.writerows(rs)
    meta = {
        "generator": "msmtfn demo",
        "n_calls": n_calls,
        "seed": seed,
        "audio_backend": sorted(backends),
        "rate": RATE,
        "label_rule": {k: {"text": list(v[0]), "voice": v[1]} for k, v in RULE.items()},
        "audio": names,
    }
    old.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return root


def _needs_generation(
    data_dir: Path, n_calls: int | None, seed: int, use_espeak: bool | None
) -> bool:
    if not any(data_dir.glob("*.csv")):
        return True
    meta_path = data_dir / "demo.json"
    if not meta_path.is_file():
        return False  # CSVs we did not write: read them as they are
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    if (n_calls is not None and meta.get("n_calls") != n_calls) or meta.get("seed") != seed:
        return True
    backend = meta.get("audio_backend", [])
    return (use_espeak is True and "synth" in backend) or (
        use_espeak is False and "espeak-ng" in backend
    )


def _generate_into_url(data_dir, **kw) -> None:
    """:func:`generate_demo` for a URL folder: written locally, then uploaded, the audio first and
    ``demo.json`` last, so an upload cut short leaves CSVs naming only uploaded audio (or no CSVs:
    generated again)."""
    with tempfile.TemporaryDirectory(prefix="msmtfn-demo-") as tmp:
        generate_demo(tmp, **kw)
        local = Path(tmp)
        new = set(json.loads((local / "demo.json").read_text(encoding="utf-8"))["audio"])
        old = data_dir / "demo.json"
        if old.is_file():  # as generate_demo does on a disk: an earlier generation's extra audio
            try:
                for name in json.loads(old.read_text(encoding="utf-8")).get("audio", []):
                    if Path(name).name not in new:
                        (data_dir / "audio" / Path(name).name).unlink(missing_ok=True)
            except (ValueError, OSError):
                pass
        fs, root = data_dir.fs, data_dir.path.rstrip("/")
        fs.put(f"{local / 'audio'}/", f"{root}/audio/", recursive=True)
        for name in ("train.csv", "valid.csv", "test.csv", "demo.json"):
            fs.put_file(str(local / name), f"{root}/{name}")


@register_dataset("demo", scheme=SCHEME, makes_data_dir=True, reads_urls=True)
def load_demo(
    data_dir: Path,
    *,
    allow_outside_paths: bool = False,
    seed: int = 0,
    n_calls: int | None = None,
    use_espeak: bool | None = None,
) -> Manifest:
    """Generate the demo data into ``data_dir`` unless it already holds it, then read it with the
    MarketCalls adapter as dataset ``demo``.

    A folder without CSVs is generated (``n_calls`` default 48). A folder this function generated
    (it has ``demo.json``) is generated again when ``seed`` differs from the one it was made with,
    when ``n_calls`` is given and differs, or when ``use_espeak`` is True/False and the other
    backend made it. CSVs without ``demo.json`` are someone else's: they are read as they are.
    """
    data_dir = data_root(data_dir)
    if _needs_generation(data_dir, n_calls, seed, use_espeak):
        make = _generate_into_url if is_remote(data_dir) else generate_demo
        make(data_dir, n_calls=n_calls or 48, seed=seed, use_espeak=use_espeak)
    return load_marketcalls(
        data_dir, allow_outside_paths=allow_outside_paths, seed=seed, dataset="demo"
    )
