"""Synthetic cache stores: the real store format (``CacheStore.create`` + ``write_slab`` + ``set_flags``) filled
with generated float16 tensors, for tests and benchmarks.

Two hooks let a caller hide a cue the trainer should find:

* ``label_fn(call_index, segment_index, audio, text) -> label | None`` is called for every segment with that
  segment's float32 arrays ``audio (A, Da)`` and ``text (T, Dt)`` (random normal, rows past the segment's valid
  length already zero); it may modify them in place and may return the call's label (the last non-None value
  returned for a call's segments wins; when it returns None throughout, the call keeps its random label).
* ``fill(rng, call_index, n_segments, shape) -> SyntheticCall`` makes a whole call at once (label, arrays,
  lengths, optionally its split), for cues that span segments (e.g. their order).

Rows are generated and written one shard at a time, so a MarketCalls-sized store at the paper's dimensions
(~7 GB of float16) never sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest import Segment
from pipeline.store import CacheStore, StoreShape


@dataclass
class SyntheticCall:
    label: str
    audio: np.ndarray  # (S, A, Da) float; rows past audio_len are ignored (written as zeros)
    audio_len: np.ndarray  # (S,)
    text: np.ndarray  # (S, T, Dt)
    text_len: np.ndarray  # (S,)
    split: str | None = None
    segment_labels: list[str] | None = (
        None  # one label per segment (segment-level schemes: sentiment, meld)
    )


def random_call(
    rng: np.random.Generator,
    index: int,
    n_segments: int,
    shape: StoreShape,
    labels: str | tuple[str, ...] = "ABCDE",
) -> SyntheticCall:
    """Random normal features, random valid lengths (audio ≥ a third of the rows, text ≥ 2 tokens), random label."""
    s = n_segments
    return SyntheticCall(
        label=labels[int(rng.integers(0, len(labels)))],
        audio=rng.standard_normal((s, shape.audio_frames, shape.audio_dim), dtype=np.float32),
        audio_len=rng.integers(max(1, shape.audio_frames // 3), shape.audio_frames + 1, size=s),
        text=rng.standard_normal((s, shape.text_tokens, shape.text_dim), dtype=np.float32),
        text_len=rng.integers(min(2, shape.text_tokens), shape.text_tokens + 1, size=s),
    )


def write_synthetic_store(
    path: str | Path,
    *,
    calls: int | None = None,
    segments_per_call: tuple[int, int] | list[int] = (1, 6),
    audio_frames: int = 24,
    audio_dim: int = 16,
    text_tokens: int = 8,
    text_dim: int = 16,
    label_fn: Callable[[int, int, np.ndarray, np.ndarray], str | None] | None = None,
    fill: Callable[..., SyntheticCall] | None = None,
    seed: int = 0,
    dataset: str = "synthetic",
    shard_size: int = 16,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    labels: str | tuple[str, ...] = "ABCDE",
    label_scheme: str = "marketcalls",
    codec: str = "zstd",
    n_calls: int | None = None,
    segments: tuple[int, int] | list[int] | None = None,
) -> CacheStore:
    """Write a complete store (every row ``done``) of ``calls`` calls and return it opened for reading.

    ``segments_per_call``: an inclusive (min, max) range drawn per call, or one count per call.
    Splits: calls are shuffled and cut by ``split_fractions`` (train, valid, test) unless ``fill`` sets one.
    ``n_calls`` / ``segments`` are accepted as older spellings of ``calls`` / ``segments_per_call``.
    """
    calls = calls if calls is not None else n_calls
    if calls is None or calls < 1:
        raise ValueError("write_synthetic_store: calls must be a positive number")
    seg_spec = segments if segments is not None else segments_per_call
    rng = np.random.default_rng(seed)
    if isinstance(seg_spec, list):
        if len(seg_spec) != calls:
            raise ValueError(f"segments_per_call lists {len(seg_spec)} counts for {calls} calls")
        counts = [int(c) for c in seg_spec]
    else:
        counts = [int(c) for c in rng.integers(seg_spec[0], seg_spec[1] + 1, size=calls)]
    if min(counts) < 1:
        raise ValueError("every call needs at least one segment")
    n = int(sum(counts))
    shape = StoreShape(
        n=n,
        audio_frames=audio_frames,
        audio_dim=audio_dim,
        text_tokens=text_tokens,
        text_dim=text_dim,
        shard_size=shard_size,
    )
    order = rng.permutation(calls)
    cut1 = int(round(split_fractions[0] * calls))
    cut2 = int(round((split_fractions[0] + split_fractions[1]) * calls))
    default_split = np.empty(calls, dtype=object)
    for k, c in enumerate(order):
        default_split[c] = "train" if k < cut1 else "valid" if k < cut2 else "test"

    random_labels = [
        labels[int(k)] for k in np.random.default_rng([seed, 1]).integers(0, len(labels), calls)
    ]

    def generate() -> Iterator[tuple[int, SyntheticCall]]:
        for c in range(calls):
            if fill is not None:
                call = fill(rng, c, counts[c], shape)
            else:
                call = random_call(rng, c, counts[c], shape, labels)
                call.label = random_labels[c]
            call.audio_len = np.clip(np.asarray(call.audio_len, dtype=np.int64), 0, audio_frames)
            call.text_len = np.clip(np.asarray(call.text_len, dtype=np.int64), 0, text_tokens)
            for i in range(counts[c]):
                call.audio[i, call.audio_len[i] :] = 0
                call.text[i, call.text_len[i] :] = 0
                if label_fn is not None:
                    lab = label_fn(c, i, call.audio[i], call.text[i])
                    if lab is not None:
                        call.label = str(lab)
                    call.audio[i, call.audio_len[i] :] = (
                        0  # padding rows stay zero whatever the hook did
                    )
                    call.text[i, call.text_len[i] :] = 0
            yield c, call

    # Labels and splits go into the segment table at creation. When a hook decides them the calls are generated
    # once just for that (features dropped) and again shard by shard below from the same rng state, so the
    # values are identical; without hooks the labels come from their own rng and one pass suffices.
    state = rng.bit_generator.state
    if fill is None and label_fn is None:
        meta = [(random_labels[c], default_split[c]) for c in range(calls)]
    else:
        meta = [
            (call.segment_labels or call.label, call.split or default_split[c])
            for c, call in generate()
        ]
    segs: list[Segment] = []
    for c in range(calls):
        label, split = meta[c]
        for i in range(counts[c]):
            segs.append(
                Segment(
                    segment_id=f"call{c:05d}_{i}",
                    call_id=f"call{c:05d}",
                    index=i,
                    split=split,
                    label=label if isinstance(label, str) else label[i],
                    audio_path=f"/synthetic/call{c:05d}_{i}.wav",
                    text="",
                )
            )
    store = CacheStore.create(
        path,
        shape,
        segs,
        fingerprint=f"synthetic-{seed}",
        manifest_digest="synthetic",
        settings={"dataset": dataset, "synthetic": True, "seed": seed},
        codec=codec,
        dataset=dataset,
        label_scheme=label_scheme,
    )
    rng.bit_generator.state = state
    s = max(1, min(shard_size, n))
    buf_a = np.zeros((s, audio_frames, audio_dim), np.float16)
    buf_t = np.zeros((s, text_tokens, text_dim), np.float16)
    buf_al, buf_tl = np.zeros(s, np.int32), np.zeros(s, np.int32)
    row = fill_at = 0
    for c, call in generate():
        for i in range(counts[c]):
            buf_a[fill_at], buf_t[fill_at] = call.audio[i], call.text[i]
            buf_al[fill_at], buf_tl[fill_at] = call.audio_len[i], call.text_len[i]
            fill_at += 1
            if fill_at == s or row + fill_at == n:
                store.write_slab(
                    row, buf_a[:fill_at], buf_al[:fill_at], buf_t[:fill_at], buf_tl[:fill_at]
                )
                row += fill_at
                fill_at = 0
    store.set_flags(0, n, np.ones(n, bool), np.zeros(n, bool))
    return CacheStore.open(path)
