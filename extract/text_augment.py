"""Text augmentation variants: the paper's same-pinyin character swaps, and word dropout.

``--augment-text pinyin-swap --variants 5`` adds, for every *training* row, five rows whose
transcript has each Chinese character swapped, with probability p (0.3 by default, the paper's;
``pinyin-swap:0.2`` sets it), for another common character of the same toneless pinyin (the
reading in context, from ``pypinyin``: 了 in 了解 is *liao*; the candidates are the GB2312
characters whose main reading is that syllable, the confusions a pinyin input method or an ASR
system makes). ``word-dropout`` (any language; p 0.1 by default) drops each word with probability
p (a CJK character counts as a word), keeping at least one.

A text variant has the original's audio: it is stored as text rows that point at the original's
audio rows (``Segment.audio_of`` → the store's ``audio/source``), never as a copy of them. Each
copy's draws are a fixed function of (seed, segment id, variant), so a resumed or repeated
extraction plans the very same texts; the transcripts then enter the manifest digest, and p in the
fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import numpy as np


class TextAugmentError(ValueError):
    pass


@dataclass(frozen=True)
class TextTransform:
    name: str
    default_p: float
    description: str


TEXT_TRANSFORMS: dict[str, TextTransform] = {
    t.name: t
    for t in (
        TextTransform(
            "pinyin-swap",
            0.3,
            "each Chinese character swapped for a common one of the same pinyin (p 0.3)",
        ),
        TextTransform(
            "word-dropout", 0.1, "each word (a CJK character counts as one) dropped (p 0.1)"
        ),
    )
}


def parse_text_augment(spec) -> tuple[str, ...]:
    """``"pinyin-swap:0.2,word-dropout"`` (or a list of such) → ("pinyin-swap:0.2",
    "word-dropout:0.1"): each transform with its probability resolved; an unknown name, a bad p or a
    transform named twice is one clear error."""
    parts = [spec] if isinstance(spec, str) else list(spec or ())
    out: dict[str, float] = {}
    for part in parts:
        for item in str(part).split(","):
            item = item.strip().lower()
            if not item:
                continue
            name, _, p_text = item.partition(":")
            name = name.strip()
            if name not in TEXT_TRANSFORMS:
                raise TextAugmentError(
                    f"--augment-text: unknown transform {name!r}; valid: {', '.join(TEXT_TRANSFORMS)}"
                )
            try:
                p = float(p_text) if p_text.strip() else TEXT_TRANSFORMS[name].default_p
            except ValueError:
                raise TextAugmentError(
                    f"--augment-text {item}: {p_text!r} is not a probability (e.g. {name}:0.2)"
                ) from None
            if not 0.0 < p <= 1.0:
                raise TextAugmentError(f"--augment-text {item}: p must be in (0, 1], not {p}")
            if name in out and out[name] != p:
                raise TextAugmentError(f"--augment-text names {name} twice ({out[name]} and {p})")
            out[name] = p
    return tuple(f"{n}:{p:g}" for n, p in out.items())


def split_spec(spec: str) -> tuple[str, float]:
    name, _, p = spec.partition(":")
    return name, float(p)


def _common(ch: str) -> bool:
    try:  # GB2312's 6763 characters: the ones in everyday use, which any Chinese tokenizer knows
        ch.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


@functools.cache
def homophones() -> dict[str, tuple[str, ...]]:
    """Toneless syllable → the common characters whose main reading it is."""
    from pypinyin.contrib.tone_convert import to_normal
    from pypinyin.pinyin_dict import pinyin_dict

    groups: dict[str, list[str]] = {}
    for code, readings in pinyin_dict.items():
        ch = chr(code)
        if 0x4E00 <= code <= 0x9FFF and _common(ch):
            groups.setdefault(to_normal(readings.split(",")[0]), []).append(ch)
    return {k: tuple(sorted(v)) for k, v in groups.items()}


def pinyin_swap(text: str, p: float, rng: np.random.Generator) -> str:
    """Each Chinese character, with probability p, replaced by another common character of its
    toneless reading in context; other characters, and characters without a homophone, kept."""
    from pypinyin import Style, pinyin

    # one entry per character: the non-Chinese ones come back as themselves
    readings = pinyin(text, style=Style.NORMAL, errors=lambda s: [[c] for c in s])
    if len(readings) != len(text):  # never misalign a reading with its character
        return text
    groups = homophones()
    out = []
    for ch, (reading, *_) in zip(text, readings):
        others = (
            [c for c in groups.get(reading, ()) if c != ch] if "\u4e00" <= ch <= "\u9fff" else []
        )
        draw = rng.random()
        out.append(others[int(rng.integers(len(others)))] if others and draw < p else ch)
    return "".join(out)


_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|[^\s\u3400-\u4dbf\u4e00-\u9fff]+")


def word_dropout(text: str, p: float, rng: np.random.Generator) -> str:
    """Each word (a run of non-space characters; a CJK character alone) dropped with probability p;
    at least one word is kept. Spaces around a dropped word collapse to one."""
    words = list(_WORD.finditer(text))
    if len(words) < 2:
        return text
    drop = rng.random(len(words)) < p
    if drop.all():
        drop[int(rng.integers(len(words)))] = False
    out, at = [], 0
    for m, gone in zip(words, drop):
        out.append(text[at : m.start()])
        if not gone:
            out.append(m.group())
        at = m.end()
    out.append(text[at:])
    return re.sub(r"[ \t]{2,}", " ", "".join(out)).strip()


FUNCTIONS = {"pinyin-swap": pinyin_swap, "word-dropout": word_dropout}


def augment_text(text: str, spec: str, seed: int, segment_id: str) -> str:
    """The text of variant ``spec`` ("pinyin-swap:0.3") of a row: seeded by (seed, segment id of the
    variant row, which names the copy), so every run plans the same."""
    name, p = split_spec(spec)
    digest = hashlib.sha256(f"{seed}:{segment_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return FUNCTIONS[name](text, p, rng)
