"""Background writer: the GPU hands finished rows over and never waits on compression or disk.

Rows are buffered per shard; a shard is written in one piece when every row this run owes it has arrived
(a whole-shard write encodes each chunk once, instead of read-modify-writing the shard per row), and only then
are its ``done`` flags flipped. A crash therefore loses at most the shards in flight, never a row marked done.
Complete shards are compressed and written by a small thread pool: shards (and their ``done`` chunks) are
disjoint, and zstd releases the GIL, so writing scales with cores instead of capping a GPU at one core's
compression speed (bench/extract_throughput.py measures it).
"""
from __future__ import annotations

import logging
import queue
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.store import CacheStore, StoreError

log = logging.getLogger(__name__)


class WriteFailed(StoreError):
    pass


@dataclass
class _Shard:
    start: int
    stop: int
    owed: set[int]                      # rows of this shard this run still has to deliver
    audio: np.ndarray | None = None
    audio_len: np.ndarray | None = None
    text: np.ndarray | None = None
    text_len: np.ndarray | None = None
    ok: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)


class ShardWriter:
    def __init__(self, store: CacheStore, todo: np.ndarray, max_queue: int = 8, write_threads: int = 0):
        self.store = store
        shape = store.shape
        self._dims = (shape.audio_frames, shape.audio_dim, shape.text_tokens, shape.text_dim)
        self._done_before = store.done()
        self._shards: dict[int, _Shard] = {}
        self._row_shard: dict[int, int] = {}
        for k, r in enumerate(store.shard_ranges()):
            owed = {i for i in r if todo[i]}
            if owed:
                self._shards[k] = _Shard(r.start, r.stop, owed)
                for i in owed:
                    self._row_shard[i] = k
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.error: BaseException | None = None
        self.rows_written = 0
        self.bytes_written = 0
        self.skipped: dict[int, str] = {}
        self._write_threads = write_threads or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self._write_threads, thread_name_prefix="shard-write")
        self._inflight: list[Future] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producer side
    def put(self, rows: list[int], audio: np.ndarray, audio_len: np.ndarray, text: np.ndarray,
            text_len: np.ndarray) -> None:
        self._check()
        self._q.put(("rows", rows, audio, audio_len, text, text_len))

    def skip(self, row: int, reason: str) -> None:
        self._check()
        self._q.put(("skip", row, reason))

    def close(self, raise_errors: bool = True) -> None:
        """Write every complete shard and stop (idempotent); raises WriteFailed if a write failed."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
            self._pool.shutdown(wait=True)
        if raise_errors:
            self._check()

    def _check(self) -> None:
        if self.error is not None:
            raise WriteFailed(f"writing {self.store.path} failed: {self.error}; every shard marked done is intact — "
                              "fix the cause (disk space, permissions) and run the same command to resume") \
                from self.error

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks; nothing more is written
            try:
                self._handle(item)
            except BaseException as e:  # disk full, permission, store errors: stop writing, report upstream
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
        if self._done_before[sh.start: sh.stop].any():
            # rows finished by an earlier run share this shard: keep their bytes
            sh.audio, sh.audio_len, sh.text, sh.text_len = (np.array(x) for x in self.store.read_slab(sh.start, sh.stop))
        else:
            sh.audio = np.zeros((n, a, da), np.float16)
            sh.text = np.zeros((n, t, dt), np.float16)
            sh.audio_len = np.zeros(n, np.int32)
            sh.text_len = np.zeros(n, np.int32)

    def _handle(self, item) -> None:
        if item[0] == "skip":
            _, row, reason = item
            sh = self._shards[self._row_shard[row]]
            sh.failed[row] = reason
            sh.owed.discard(row)
            self._maybe_flush(self._row_shard[row])
            return
        _, rows, audio, audio_len, text, text_len = item
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
            touched.add(k)
        for k in sorted(touched):
            self._maybe_flush(k)

    def _maybe_flush(self, k: int) -> None:
        sh = self._shards[k]
        if sh.owed:
            return
        del self._shards[k]
        # bound the memory held by queued shards: wait for the oldest when many are in flight
        self._inflight = [f for f in self._inflight if not f.done()]
        while len(self._inflight) >= 2 * self._write_threads:
            self._inflight.pop(0).result()
        self._inflight.append(self._pool.submit(self._flush, sh))

    def _flush(self, sh: _Shard) -> None:
        if self.error is not None:
            return
        try:
            if sh.ok:
                self.store.write_slab(sh.start, sh.audio, sh.audio_len, sh.text, sh.text_len)
            rows = np.arange(sh.start, sh.stop)
            done = self._done_before[sh.start: sh.stop] | np.isin(rows, list(sh.ok))
            skipped = np.isin(rows, list(sh.failed)) & ~done
            self.store.set_flags(sh.start, sh.stop, done, skipped)  # after the data: a done row is always whole
        except BaseException as e:
            self._fail(e)
            return
        with self._lock:
            if sh.ok:
                self.bytes_written += sh.audio.nbytes + sh.text.nbytes
            self.rows_written += len(sh.ok)
            self.skipped.update(sh.failed)
