"""Per-dimension standardisation of the cached hidden states, from training rows only.

Frozen encoders' hidden states are far from unit scale and share a large common component: RoBERTa
has a few outlier dimensions 10-20x the rest, a random tiny HuBERT's rows have std 0.15, and in
every case what tells calls apart is a small variation on top of what all rows share. A LayerNorm
per row does not remove that (the outliers dominate its statistics); subtracting each dimension's
training mean and dividing by its std does, the way a linear probe's StandardScaler would. Measured
on the demo task in docs/model.md. The statistics are model buffers, so they are saved with the
checkpoint and prediction applies the very same numbers.
"""

from __future__ import annotations

import numpy as np

# segments sampled for the statistics: ~250k audio rows at the paper's size, a few seconds
MAX_SEGMENTS = 256
_memo: dict = {}


def feature_stats(
    store, rows: np.ndarray, modality: str, *, max_segments: int = MAX_SEGMENTS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 per hidden dimension of ``modality`` over the valid rows of store
    ``rows`` (a seeded sample of at most ``max_segments`` of them); std is floored so a constant
    dimension maps to 0, not inf."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) > max_segments:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_segments, replace=False))
    key = (str(store.path), store.fingerprint, modality, rows.tobytes())
    if key in _memo:  # a sweep's trials share one cache and one training split
        return _memo[key]
    hidden, length = store.array(f"{modality}/hidden"), store.array(f"{modality}/length")
    lengths = np.asarray(length.get_orthogonal_selection((rows,)))
    dim = hidden.shape[2]
    total, total_sq, n = np.zeros(dim), np.zeros(dim), 0
    for i in range(0, len(rows), 32):
        part = rows[i : i + 32]
        block = np.asarray(store.read_rows(f"{modality}/hidden", part), dtype=np.float64)
        valid = np.arange(block.shape[1])[None, :] < lengths[i : i + 32, None]
        x = block[valid]
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        n += len(x)
    if not n:
        mean, std = np.zeros(dim), np.ones(dim)
    else:
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
        std = np.maximum(std, 1e-3 * max(float(np.median(std)), 1e-12))
    out = (mean.astype(np.float32), std.astype(np.float32))
    _memo[key] = out
    return out
