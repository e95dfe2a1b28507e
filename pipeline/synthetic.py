"""Synthetic cache stores: the real store format filled with generated tensors, for tests and benchmarks.

A ``fill`` callback decides each call's label and features, so a test can hide a cue in the text, in the
audio, or in the order of segments, and check the trainer finds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .manifest import Segment
from .store import CacheStore, StoreShape


@dataclass
class SyntheticCall:
    label: str
    audio: np.ndarray        # (S, A, Da) float; rows past audio_len are ignored (zeroed)
    audio_len: np.ndarray    # (S,)
    text: np.ndarray         # (S, T, Dt)
    text_len: np.ndarray     # (S,)
    split: str | None = None


def random_call(rng: np.random.Generator, index: int, n_segments: int, shape: StoreShape) -> SyntheticCall:
    s = n_segments
    return SyntheticCall(
        label="ABCDE"[int(rng.integers(0, 5))],
        audio=rng.standard_normal((s, shape.audio_frames, shape.audio_dim), dtype=np.float32),
        audio_len=rng.integers(max(1, shape.audio_frames // 3), shape.audio_frames + 1, size=s),
        text=rng.standard_normal((s, shape.text_tokens, shape.text_dim), dtype=np.float32),
        text_len=rng.integers(2, shape.text_tokens + 1, size=s),
    )


def write_synthetic_store(path: str | Path, *, n_calls: int, segments: tuple[int, int] | list[int] = (1, 6),
                          audio_frames: int = 24, audio_dim: int = 16, text_tokens: int = 8, text_dim: int = 16,
                          seed: int = 0, fill: Callable[..., SyntheticCall] | None = None,
                          split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), shard_size: int = 16,
                          dataset: str = "synthetic", codec: str = "zstd") -> CacheStore:
    """Write a complete store (all rows ``done``). ``segments`` is a (min, max) range or one count per call.
    ``fill(rng, call_index, n_segments, shape) -> SyntheticCall`` makes each call (default: random)."""
    rng = np.random.default_rng(seed)
    counts = (list(segments) if isinstance(segments, list)
              else [int(rng.integers(segments[0], segments[1] + 1)) for _ in range(n_calls)])
    n = int(sum(counts))
    shape = StoreShape(n=n, audio_frames=audio_frames, audio_dim=audio_dim, text_tokens=text_tokens,
                       text_dim=text_dim, shard_size=shard_size)
    fill = fill or random_call
    calls = [fill(rng, c, counts[c], shape) for c in range(n_calls)]
    order = rng.permutation(n_calls)
    cut1, cut2 = int(split_fractions[0] * n_calls), int((split_fractions[0] + split_fractions[1]) * n_calls)
    default_split = {int(c): ("train" if k < cut1 else "valid" if k < cut2 else "test") for k, c in enumerate(order)}
    segs: list[Segment] = []
    for c, call in enumerate(calls):
        split = call.split or default_split[c]
        for i in range(counts[c]):
            segs.append(Segment(segment_id=f"call{c:05d}_{i}", call_id=f"call{c:05d}", index=i, split=split,
                                label=call.label, audio_path=f"/synthetic/call{c:05d}_{i}.wav", text=""))
    store = CacheStore.create(path, shape, segs, fingerprint=f"synthetic-{seed}", manifest_digest="synthetic",
                              settings={"dataset": dataset, "synthetic": True, "seed": seed}, codec=codec,
                              dataset=dataset)
    audio = np.zeros((n, audio_frames, audio_dim), np.float16)
    text = np.zeros((n, text_tokens, text_dim), np.float16)
    alen = np.zeros(n, np.int32)
    tlen = np.zeros(n, np.int32)
    row = 0
    for c, call in enumerate(calls):
        for i in range(counts[c]):
            la, lt = int(call.audio_len[i]), int(call.text_len[i])
            audio[row, :la] = call.audio[i, :la]
            text[row, :lt] = call.text[i, :lt]
            alen[row], tlen[row] = la, lt
            row += 1
    for r in store.shard_ranges():
        store.write_slab(r.start, audio[r.start:r.stop], alen[r.start:r.stop], text[r.start:r.stop],
                         tlen[r.start:r.stop])
    store.set_flags(0, n, np.ones(n, bool), np.zeros(n, bool))
    return store
