"""Background writer: the GPU hands finished rows over and never waits on compression or disk.

Rows are buffered per shard; a shard is written in one piece when every row this run owes it has
arrived (a whole-shard write encodes each chunk once, instead of read-modify-writing the shard per
row), and only then are its ``done`` flags flipped. A done row is therefore always whole.

Batches are sorted by length within a block of many shards, so a shard's rows arrive spread over the
whole block and a shard completes only near the block's end. So that an interrupt does not lose the
block, a shard is also written while still *partial* (the rows encoded so far, flagged done; the
others stay zero and not done):

- on :meth:`close` with ``keep_partial`` (the single-process loop's Ctrl-C / error path): every
  encoded row but the batch in flight is kept;
- with ``checkpoint_seconds``: when a shard's oldest unwritten row has waited that long, so a
  SIGKILL loses at most about that much work. Each shard is then written at most once per interval
  plus once when complete (``shard_writes`` counts them; bench/checkpoint_writes.py measures the
  amplification).

The last write of a shard is always the whole shard from the in-memory buffer (rows of earlier
writes and of earlier runs are kept in, or read back into, it), and zarr encodes a whole-shard write
from scratch, so a shard written partially first ends byte-identical to a one-shot write. Writes of
one shard are serialised. Shards are compressed and written by a small thread pool: shards (and
their ``done`` chunks) are disjoint, and zstd releases the GIL, so writing scales with cores instead
of capping a GPU at one core's compression speed (bench/extract_throughput.py measures it).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.store import CacheStore, StoreError

log = logging.getLogger(__name__)

# the single-process default: a SIGKILL loses at most about this much encoded work
CHECKPOINT_SECONDS = 30.0


class WriteFailed(StoreError):
    pass


@dataclass
class _Shard:
    key: int  # the shard's index in the store
    start: int
    stop: int
    owed: set[int]  # rows of this shard this run still has to deliver
    audio: np.ndarray | None = None
    audio_len: np.ndarray | None = None
    text: np.ndarray | None = None
    text_len: np.ndarray | None = None
    ok: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    # when the oldest row not yet written arrived (None: nothing unwritten)
    dirty_since: float | None = None
    counted: int = 0  # rows of ``ok`` already counted in rows_written by an earlier write
    # this shard's write in flight (writes of one shard never overlap)
    pending: Future | None = None


@dataclass(frozen=True)
class _Write:
    """One write of a shard: the buffers (a copy for a partial write, which the writer keeps
    filling), its rows."""

    key: int
    start: int
    stop: int
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    ok: frozenset[int]
    failed: dict[int, str]
    new_rows: int  # rows flagged done for the first time by this write
    final: bool


class ShardWriter:
    def __init__(
        self,
        store: CacheStore,
        todo: np.ndarray,
        max_queue: int = 8,
        write_threads: int = 0,
        *,
        checkpoint_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        shape = store.shape
        self._dims = (shape.audio_frames, shape.audio_dim, shape.text_tokens, shape.text_dim)
        self._done_before = store.done()
        self._shards: dict[int, _Shard] = {}
        self._dirty: dict[int, _Shard] = {}  # shards with unwritten rows, oldest first
        self._row_shard: dict[int, int] = {}
        for k, r in enumerate(store.shard_ranges()):
            owed = {i for i in r if todo[i]}
            if owed:
                self._shards[k] = _Shard(k, r.start, r.stop, owed)
                for i in owed:
                    self._row_shard[i] = k
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.error: BaseException | None = None
        self.rows_written = 0
        self.bytes_written = 0
        self.skipped: dict[int, str] = {}
        # shard index → times written (partial writes included)
        self.shard_writes: dict[int, int] = {}
        self._checkpoint = (
            checkpoint_seconds if checkpoint_seconds and checkpoint_seconds > 0 else None
        )
        self._clock = clock
        self._keep_partial = False
        self._write_threads = write_threads or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(
            max_workers=self._write_threads, thread_name_prefix="shard-write"
        )
        self._inflight: list[Future] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producer side
    def put(
        self,
        rows: list[int],
        audio: np.ndarray,
        audio_len: np.ndarray,
        text: np.ndarray,
        text_len: np.ndarray,
    ) -> None:
        self._check()
        self._q.put(("rows", self._clock(), rows, audio, audio_len, text, text_len))

    def skip(self, row: int, reason: str) -> None:
        self._check()
        self._q.put(("skip", self._clock(), row, reason))

    def close(self, raise_errors: bool = True, keep_partial: bool = False) -> None:
        """Write every complete shard and stop (idempotent); raises WriteFailed if a write failed.
        With ``keep_partial`` (an interrupt or an error upstream), shards still missing rows are
        written too, their rows delivered so far flagged done, so that a rerun encodes only the
        rest."""
        if self._thread.is_alive():
            self._keep_partial = keep_partial
            self._q.put(None)
            self._thread.join()
            self._pool.shutdown(wait=True)
        if raise_errors:
            self._check()

    def _check(self) -> None:
        if self.error is not None:
            raise WriteFailed(
                f"writing {self.store.path} failed: {self.error}; every shard marked done is intact — "
                "fix the cause (disk space, permissions) and run the same command to resume"
            ) from self.error

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        # wake up at least this often to honour checkpoint_seconds when no batch arrives (a slow
        # batch)
        poll = min(1.0, self._checkpoint / 4) if self._checkpoint else None
        while True:
            try:
                item = self._q.get(timeout=poll)
            except queue.Empty:
                item = ("tick", self._clock())
            if item is None:
                if self._keep_partial and self.error is None:
                    self._write_partial(lambda sh: True)
                return
            if self.error is not None:
                continue  # drain so the producer never blocks; nothing more is written
            try:
                self._handle(item)
                if self._checkpoint:
                    now = item[1]
                    self._write_partial(
                        lambda sh, now=now: now - sh.dirty_since >= self._checkpoint
                    )
            # disk full, permission, store errors: stop writing, report upstream
            except BaseException as e:
                self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            log.error("cache write failed: %s", e)
            self.error = e

    def _buffers(self, sh: _Shard) -> None:
        if sh.audio is not None:
            return
        n = sh.stop - sh.start
        a, da, t, dt = self._dims
        if self._done_before[sh.start : sh.stop].any():
            # rows finished by an earlier run share this shard: keep their bytes
            sh.audio, sh.audio_len, sh.text, sh.text_len = (
                np.array(x) for x in self.store.read_slab(sh.start, sh.stop)
            )
        else:
            sh.audio = np.zeros((n, a, da), np.float16)
            sh.text = np.zeros((n, t, dt), np.float16)
            sh.audio_len = np.zeros(n, np.int32)
            sh.text_len = np.zeros(n, np.int32)

    def _handle(self, item) -> None:
        kind, at = item[0], item[1]
        if kind == "tick":
            return
        if kind == "skip":
            _, _, row, reason = item
            k = self._row_shard[row]
            sh = self._shards[k]
            sh.failed[row] = reason
            sh.owed.discard(row)
            self._mark_dirty(sh, at)
            self._maybe_flush(k)
            return
        _, _, rows, audio, audio_len, text, text_len = item
        touched = set()
        for j, row in enumerate(rows):
            k = self._row_shard[row]
            sh = self._shards[k]
            self._buffers(sh)
            i = row - sh.start
            sh.audio[i] = 0
            sh.audio[i, : audio_len[j]] = audio[j, : audio_len[j]]
            sh.text[i] = 0
            sh.text[i, : text_len[j]] = text[j, : text_len[j]]
            sh.audio_len[i], sh.text_len[i] = audio_len[j], text_len[j]
            sh.ok.add(row)
            sh.owed.discard(row)
            self._mark_dirty(sh, at)
            touched.add(k)
        for k in sorted(touched):
            self._maybe_flush(k)

    def _mark_dirty(self, sh: _Shard, at: float) -> None:
        if sh.dirty_since is None:
            sh.dirty_since = at
            self._dirty[sh.key] = sh

    def _maybe_flush(self, k: int) -> None:
        sh = self._shards[k]
        if sh.owed:
            return
        del self._shards[k]
        self._submit(sh, final=True)

    def _write_partial(self, due: Callable[[_Shard], bool]) -> None:
        """Write the shards with unwritten rows, oldest first, while ``due`` holds; they stay open
        for the rest."""
        for sh in list(self._dirty.values()):
            if not due(sh):
                return  # the dict is in order of dirty_since: the rest waited less
            self._submit(sh, final=False)

    def _submit(self, sh: _Shard, final: bool) -> None:
        if sh.pending is not None:
            sh.pending.result()  # the shard's previous write first: a later write must land last
        if sh.ok:
            self._buffers(sh)
        arrays = (sh.audio, sh.audio_len, sh.text, sh.text_len)
        if not final and sh.ok:  # the writer thread keeps filling the buffers: write a snapshot
            arrays = tuple(a.copy() for a in arrays)
        w = _Write(
            sh.key,
            sh.start,
            sh.stop,
            arrays,
            frozenset(sh.ok),
            dict(sh.failed),
            len(sh.ok) - sh.counted,
            final,
        )
        sh.counted, sh.dirty_since = len(sh.ok), None
        self._dirty.pop(sh.key, None)
        # bound the memory held by queued shards: wait for the oldest when many are in flight
        self._inflight = [f for f in self._inflight if not f.done()]
        while len(self._inflight) >= 2 * self._write_threads:
            self._inflight.pop(0).result()
        sh.pending = self._pool.submit(self._flush, w)
        self._inflight.append(sh.pending)

    def _flush(self, w: _Write) -> None:
        if self.error is not None:
            return
        try:
            if w.ok:
                self.store.write_slab(w.start, *w.arrays)
            rows = np.arange(w.start, w.stop)
            done = self._done_before[w.start : w.stop] | np.isin(rows, list(w.ok))
            skipped = np.isin(rows, list(w.failed)) & ~done
            # after the data: a done row is always whole
            self.store.set_flags(w.start, w.stop, done, skipped)
        except BaseException as e:
            self._fail(e)
            return
        with self._lock:
            if w.ok:
                self.bytes_written += w.arrays[0].nbytes + w.arrays[2].nbytes
            self.rows_written += w.new_rows
            self.skipped.update(w.failed)
            self.shard_writes[w.key] = self.shard_writes.get(w.key, 0) + 1
