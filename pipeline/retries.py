"""Counting the retries object storage needed, for ``report.json``.

The retrying itself is the SDKs': botocore's retry modes (``AWS_RETRY_MODE=standard|adaptive``,
``AWS_MAX_ATTEMPTS``: 5xx, 503 SlowDown, throttling, with backoff) and s3fs's own loop around each
call (connection resets, a body cut short, SlowDown that botocore gave up on). Neither returns a
count, but each logs every retry it makes at DEBUG; :class:`RetryCounter` counts those records in
this process and drops them (they never reach the user's console), so a run can say how many
retries its reads and writes took. A dask worker process keeps one counter for its lifetime
(:func:`process_counts`); each task sends the counts before and after it, and the driver adds up, per
worker process, the last minus the first (:func:`worker_retries`), which stays right when a worker
runs several tasks at once.
"""

from __future__ import annotations

import logging
import threading

# logger → the start of the message each retry logs
RETRY_LOGS = {
    "botocore.retries.standard": ("Retry needed, retrying",),  # standard and adaptive modes
    "botocore.retryhandler": ("Retry needed, action of",),  # legacy mode
    "s3fs": ("Retryable error",),  # s3fs's loop: resets, a body cut short, timeouts
}
_S3FS_RETRIED = ("SlowDown", "reduce your request rate")  # the client errors s3fs retries


class RetryCounter(logging.Filter):
    """``with RetryCounter() as r: …; r.counts()`` → ``{"botocore": n, "s3fs": m}``."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._counts = {"botocore": 0, "s3fs": 0}
        self._saved: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        key = "s3fs" if record.name == "s3fs" else "botocore"
        starts = RETRY_LOGS.get(record.name, ())
        hit = msg.startswith(starts) or (
            record.name == "s3fs"
            and msg.startswith("Client error")
            and any(p in record.getMessage() for p in _S3FS_RETRIED)
        )
        if hit:
            with self._lock:
                self._counts[key] += 1
        # DEBUG records exist only because the counter lowered the level: never shown
        return record.levelno > logging.DEBUG or self._saved.get(record.name, 0) == logging.DEBUG

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __enter__(self) -> RetryCounter:
        global _active
        for name in RETRY_LOGS:
            lg = logging.getLogger(name)
            self._saved[name] = lg.level
            lg.setLevel(logging.DEBUG)
            lg.addFilter(self)
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        for name, level in self._saved.items():
            lg = logging.getLogger(name)
            lg.removeFilter(self)
            lg.setLevel(level)
        if _active is self:
            _active = None


_active: RetryCounter | None = None


def active_counts() -> dict[str, int] | None:
    """The counts of the counter open in this process, or None."""
    return _active.counts() if _active is not None else None


_process: RetryCounter | None = None
_process_lock = threading.Lock()


def process_counts() -> dict[str, int] | None:
    """This process's counts since its first call, for a dask task to send back; None where a run's
    own counter is open here (an in-process worker: the driver already counts these retries)."""
    global _process
    if _active is not None:
        return None
    with _process_lock:
        if _process is None:
            _process = RetryCounter()
            for name in RETRY_LOGS:  # as __enter__, but never exited and not the run's counter
                lg = logging.getLogger(name)
                _process._saved[name] = lg.level
                lg.setLevel(logging.DEBUG)
                lg.addFilter(_process)
    return _process.counts()


def worker_retries(windows: list[tuple[str, dict, dict]]) -> dict[str, int]:
    """``[(process key, counts before a task, after it), …]`` → the retries all the tasks' processes
    made between the first task's start and the last one's end, summed over processes."""
    first: dict[str, dict] = {}
    last: dict[str, dict] = {}
    for key, before, after in windows:
        first[key] = {k: min(v, first.get(key, before)[k]) for k, v in before.items()}
        last[key] = {k: max(v, last.get(key, after)[k]) for k, v in after.items()}
    total = {"botocore": 0, "s3fs": 0}
    for key, end in last.items():
        for k in total:
            total[k] += end.get(k, 0) - first[key].get(k, 0)
    return total
