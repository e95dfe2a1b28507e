"""Recordings from strangers decoded with a bound on time and memory (msmtfn-serve).

Each upload is decoded by one of a few long-lived worker processes (spawned, so no model or device
state is copied into them): a worker's address space is capped (``RLIMIT_AS``: what its imports use
plus ``memory_mb``), a decode that runs past ``timeout_s`` gets its worker killed and replaced, and a
decoder that crashes on a file (libsndfile, FFmpeg) takes only its worker with it. Every failure is
an :class:`extract.AudioError` with one line saying why, which the service answers as a 4xx.

The samples returned are exactly what ``msmtfn-predict`` decodes for cutting (``load_segment`` at
``CUT_RATE``): the worker runs the same function.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import struct
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

# a WAV data size that means "length unknown" (a recorder that was still writing): not a truncation
_STREAMING_SIZES = (0, 0xFFFFFFFF)


@dataclass(frozen=True)
class DecodeLimits:
    timeout_s: float = 60.0  # one recording's decode
    memory_mb: int = 4096  # address space a decode may add to the worker's
    max_audio_minutes: float = 240.0  # longest recording accepted (from its header)
    workers: int = 2


def wav_truncation(path: str) -> str | None:
    """Why a RIFF/WAVE file is cut short (its data chunk promises more bytes than the file holds),
    else None; libsndfile would decode the part that is there without a word."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, rate_bytes = 12, 0
            while pos + 8 <= size:
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                kind, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if kind == b"fmt " and n >= 12:
                    rate_bytes = struct.unpack("<I", f.read(12)[8:12])[0]  # byte rate
                if kind == b"data":
                    have = size - pos - 8
                    if n in _STREAMING_SIZES or n <= have:
                        return None
                    promised = f"{n / rate_bytes / 3600:.1f} h" if rate_bytes else f"{n} bytes"
                    held = f"{have / rate_bytes:.1f} s" if rate_bytes else f"{have} bytes"
                    return (
                        f"truncated WAV file: its header promises {promised} of audio, the file "
                        f"holds {held} (an upload cut short?)"
                    )
                pos += 8 + n + (n & 1)
    except OSError:
        return None
    return None


def _limit_memory(memory_mb: int) -> None:
    """Cap this process's address space at what it maps now plus ``memory_mb`` (Linux)."""
    try:
        import resource

        with open("/proc/self/status", encoding="ascii") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        cap = vm + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (OSError, ValueError, StopIteration, ImportError):
        log.warning("decode workers: no address-space limit on this system")


def _worker(conn, limits: DecodeLimits, rate: int) -> None:
    """A decode worker's loop: a path in, ("ok", samples) or ("error", reason) out."""
    from extract.audio import AudioError, load_segment, probe_duration

    _limit_memory(limits.memory_mb)
    conn.send("ready")  # the timeout counts decoding only, not this process's start
    while True:
        try:
            path, channel = conn.recv()
        except EOFError:
            return
        try:
            reason = wav_truncation(path)
            if reason:
                raise AudioError(reason)
            seconds = probe_duration(path)
            if seconds is not None and seconds > limits.max_audio_minutes * 60:
                raise AudioError(
                    f"recording is {seconds / 60:.0f} min long; this server takes at most "
                    f"{limits.max_audio_minutes:g} min (--max-audio-minutes)"
                )
            x, _ = load_segment(path, None, None, rate, channel)
            conn.send(("ok", x))
        except AudioError as e:
            conn.send(("error", str(e)))
        except MemoryError:
            conn.send(
                ("error", f"decoding needs more than {limits.memory_mb} MB (--decode-memory-mb)")
            )


class _Process:
    def __init__(self, ctx, limits: DecodeLimits, rate: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, limits, rate), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False

    def wait_ready(self, seconds: float = 120.0) -> None:
        if not self.ready:
            if not self.conn.poll(seconds) or self.conn.recv() != "ready":
                raise OSError("decode worker did not start")
            self.ready = True

    def stop(self) -> None:
        self.conn.close()
        self.proc.kill()
        self.proc.join(5)


class BoundedDecoder:
    """``decode(path, channel)`` → samples (float32 at ``rate``) or an AudioError; safe from many threads
    (each call takes a free worker, waiting for one if all are busy)."""

    def __init__(self, limits: DecodeLimits, rate: int):
        self.limits, self.rate = limits, rate
        self._ctx = multiprocessing.get_context("spawn")
        self._free: queue.Queue[_Process] = queue.Queue()
        self._all: list[_Process] = []
        self._lock = threading.Lock()
        # OpenBLAS maps a buffer per thread: one thread keeps the worker's own footprint small
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        for _ in range(max(1, limits.workers)):
            self._free.put(self._start())

    def _start(self) -> _Process:
        p = _Process(self._ctx, self.limits, self.rate)
        with self._lock:
            self._all.append(p)
        return p

    def _replace(self, p: _Process) -> _Process:
        p.stop()
        with self._lock:
            self._all.remove(p)
        return self._start()

    def decode(self, path: str, channel: str = "mix"):
        from extract.audio import AudioError

        p = self._free.get()
        try:
            p.wait_ready()
            p.conn.send((path, channel))
            if not p.conn.poll(self.limits.timeout_s):
                p = self._replace(p)
                return AudioError(
                    f"decoding took longer than {self.limits.timeout_s:g} s (--decode-timeout-s)"
                )
            kind, value = p.conn.recv()
        except (EOFError, OSError):
            p.proc.join(2)
            code = p.proc.exitcode
            p = self._replace(p)
            return AudioError(f"the decoder crashed on this file (worker exit code {code})")
        finally:
            self._free.put(p)
        return AudioError(value) if kind == "error" else value

    def close(self) -> None:
        with self._lock:
            for p in self._all:
                p.stop()
            self._all.clear()
