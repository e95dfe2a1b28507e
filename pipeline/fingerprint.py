"""Fingerprints: one hash of everything that changes the cached numbers, so a stale cache is never
reused."""

from __future__ import annotations

import hashlib
import json


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def compute_fingerprint(settings: dict, manifest_digest: str) -> str:
    """``settings`` must hold every number-changing input (encoder ids + weight hashes, layer,
    rates, pooling, max lengths, dtype, segmentation, augmentation); ``manifest_digest`` covers the
    rows and audio files."""
    h = hashlib.sha256()
    h.update(canonical(settings).encode())
    h.update(manifest_digest.encode())
    return h.hexdigest()[:32]


def diff_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts ("audio.layer: -1 → 6")."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_settings(a, b, prefix=name + "."))
        elif a != b:
            out.append(f"{name}: {a} → {b}")
    return out


def hash_state_dict(state_dict) -> str:
    """Hash of a model's weights (names, dtypes, shapes, bytes): identifies the encoder whatever its
    source."""
    import torch  # local: pipeline/ stays importable without torch for the store alone

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]
