"""``msmtfn-extract verify STORE [--repair]``: read every chunk of a cache back, check it, and mark
what is damaged for re-encoding.

Per shard (in threads): both hidden-state arrays and their lengths are read back, which checks every
chunk's CRC32C (schema 2 stores; older ones carry none, so only chunks that no longer decode are
found); for each done row the row invariants hold: its lengths within 1 … the array's rows, zeros past
them (the padding), no NaN/inf; a text variant's row holds no audio of its own. ``repair`` (under the store's lock, as a writer) marks exactly the
damaged rows not done and rewrites their rows as zeros (so the shard reads back whole), in that
order: a repair cut short leaves rows not done, never bad rows marked done. The ``msmtfn-extract``
command that made the store then re-encodes them through its resume path, in the same batches as
the first time.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from .lock import StoreLock
from .store import CacheStore

log = logging.getLogger(__name__)

MODALITIES = ("audio", "text")


@dataclass(frozen=True)
class Damage:
    row: int
    segment_id: str
    array: str  # audio/hidden, text/length, …
    reason: str


def _read(store: CacheStore, name: str, start: int, stop: int, bad: dict[int, tuple]):
    """Rows [start, stop) of ``name``; where the slab does not read back, row by row, each row that
    fails recorded in ``bad`` (row → (array, reason)) and left zero."""
    arr = store.group[name]
    try:
        return np.asarray(arr[start:stop])
    except Exception as e:
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
    out = np.zeros((stop - start,) + tuple(arr.shape[1:]), dtype=arr.dtype)
    for r in range(start, stop):
        try:
            out[r - start] = arr[r]
        except Exception as e:
            if isinstance(e, (KeyboardInterrupt, MemoryError)):
                raise
            why = "checksum mismatch" if "checksum" in str(e).lower() else "chunk does not decode"
            bad.setdefault(r, (name, why))
    return out


def check_shard(
    store: CacheStore, rows: range, done: np.ndarray, source: np.ndarray | None = None
) -> dict[int, tuple]:
    """The damaged rows of one shard: row → (array, reason). A row using another row's audio
    (``source``, a text variant) must hold none of its own: length 0, zeros."""
    bad: dict[int, tuple] = {}
    source = np.arange(store.n) if source is None else source
    start, stop = rows.start, rows.stop
    for mod in MODALITIES:
        before = set(bad)
        lengths = _read(store, f"{mod}/length", start, stop, bad)
        if set(bad) - before:  # the shard's lengths are one chunk: none of its rows can be trusted
            for r in rows:
                bad.setdefault(r, (f"{mod}/length", "lengths unreadable"))
            continue
        hidden = _read(store, f"{mod}/hidden", start, stop, bad)
        width = hidden.shape[1]
        for i, r in enumerate(rows):
            if r in bad or not done[r]:
                continue
            n = int(lengths[i])
            if mod == "audio" and source[r] != r:
                if n or np.any(hidden[i]):
                    bad[r] = (f"{mod}/hidden", f"audio of its own (it uses row {source[r]}'s)")
                continue
            if not 1 <= n <= width:
                bad[r] = (f"{mod}/length", f"length {n} outside 1–{width}")
            elif not np.isfinite(hidden[i, :n]).all():
                bad[r] = (f"{mod}/hidden", "NaN/inf values")
            elif np.any(hidden[i, n:]):
                bad[r] = (f"{mod}/hidden", f"non-zero values past its length {n}")
    return bad


def verify_store(
    path, storage_options: dict | None = None, *, repair: bool = False, threads: int = 4,
    progress: bool = True,
) -> dict:  # fmt: skip
    """Check every chunk and row of the store at ``path``; with ``repair``, mark the damaged rows
    for re-encoding. Returns the report (``damaged``: one entry per damaged row)."""
    store = CacheStore.open(path, "r+" if repair else "r", storage_options)
    done, shards, source = store.done(), store.shard_ranges(), store.audio_source()
    bad: dict[int, tuple] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        work = pool.map(lambda rows: check_shard(store, rows, done, source), shards)
        for found in tqdm(
            work, total=len(shards), desc="verify", unit="shard", disable=not progress
        ):
            bad.update(found)
    ids = store.group["table/segment_id"][:]
    damaged = [Damage(r, str(ids[r]), *bad[r]) for r in sorted(bad)]
    report = {
        "store": str(store.path),
        "checksums": store.checksums,
        "rows": store.n,
        "done": int(done.sum()),
        "shards": len(shards),
        "damaged": [asdict(d) for d in damaged],
        "repaired": 0,
    }
    if repair and damaged:
        with StoreLock(store.path, storage_options):
            report["repaired"] = mark_for_reencoding(store, sorted(bad))
    return report


def mark_for_reencoding(store: CacheStore, rows: list[int]) -> int:
    """Rows not done (first), then their feature rows and lengths rewritten as zeros, one shard at a
    time; rows of a shard whose lengths cannot be read go with them. Returns how many rows."""
    wanted, count = set(rows), 0
    for shard in store.shard_ranges():
        if not wanted.intersection(shard):
            continue
        start, stop = shard.start, shard.stop
        unread: dict[int, tuple] = {}
        slabs = {}
        for mod in MODALITIES:
            slabs[mod] = _read(store, f"{mod}/hidden", start, stop, unread)
            slabs[f"{mod}_len"] = _read(store, f"{mod}/length", start, stop, unread)
        reset = sorted(wanted.intersection(shard) | set(unread))
        flags = np.asarray(store.group["done"][start:stop])
        skipped = np.asarray(store.group["skipped"][start:stop])
        for r in reset:
            flags[r - start] = skipped[r - start] = False
            for mod in MODALITIES:
                slabs[mod][r - start] = 0
                slabs[f"{mod}_len"][r - start] = 0
        store.set_flags(start, stop, flags, skipped)  # before the bytes: never bad rows marked done
        store.write_slab(
            start, slabs["audio"], slabs["audio_len"], slabs["text"], slabs["text_len"]
        )
        log.info("%s: %d rows marked for re-encoding", store.path, len(reset))
        count += len(reset)
    store.touch()
    return count
