"""One writer per store: a lock file beside the store (``NAME.zarr.lock``) naming its owner's pid
and host.

Beside, not inside, because ``--overwrite`` empties the store's folder. A lock left by a process
that no longer runs on this host is stale and taken over; a lock from another host is refused, with
the file to delete if that process is known to be gone.

A remote store (``s3://bucket/NAME.zarr``) gets a lock *object* beside it,
``s3://bucket/NAME.zarr.lock``, created with fsspec's ``mode="create"``: on S3 that is a conditional
PUT (``If-None-Match: *``), so of two writers racing for it exactly one wins. Other filesystems
without an atomic create fall back to check-then-write, which narrows the race to milliseconds but
does not close it (docs/scaling.md says so). The owner rules are the same.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .store import StoreError, is_url, remote_fs

log = logging.getLogger(__name__)


class StoreLocked(StoreError):
    pass


# the locks this process holds now: a lock object naming this process but not in here was left by
# an earlier run in this process whose release failed (the store unreachable), and is stale
_HELD: set[str] = set()


def _stale(owner: dict, me: dict, path) -> bool:
    """A lock whose process is gone (or is this process, which no longer holds it)."""
    if owner.get("host") != me["host"] or not isinstance(owner.get("pid"), int):
        return False
    if owner["pid"] == me["pid"]:
        return str(path) not in _HELD
    return not _alive(owner["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    def __init__(self, store: str | Path, storage_options: dict | None = None):
        self.remote = is_url(store)
        lock = str(store).rstrip("/") + ".lock"
        self.path: Path | str = lock if self.remote else Path(lock)
        self.storage_options = storage_options
        self.owned = False

    def _refuse(self, owner: dict) -> StoreLocked:
        who = (
            f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
            if owner
            else "?"
        )
        return StoreLocked(
            f"{str(self.path)[: -len('.lock')]}: another msmtfn-extract is writing it ({who}); "
            f"wait for it, or delete {self.path} if that process is gone"
        )

    def _acquire_remote(self, me: dict) -> StoreLock:
        fs, key = remote_fs(self.path, self.storage_options)
        for _ in range(2):
            try:
                fs.pipe_file(key, json.dumps(me).encode(), mode="create")
            except FileExistsError:
                try:
                    owner = json.loads(fs.cat_file(key) or b"{}")
                except (OSError, ValueError):
                    owner = {}
                if _stale(owner, me, self.path):
                    fs.rm_file(key)  # stale: its process is gone
                    continue
                raise self._refuse(owner) from None
            self.owned = True
            _HELD.add(str(self.path))
            return self
        raise StoreLocked(f"{self.path}: could not take the lock")

    def acquire(self) -> StoreLock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if self.remote:
            return self._acquire_remote(me)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                if _stale(owner, me, self.path):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise self._refuse(owner) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            _HELD.add(str(self.path))
            return self
        raise StoreLocked(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.owned:
            self.owned = False
            _HELD.discard(str(self.path))
            if not self.remote:
                self.path.unlink(missing_ok=True)
                return
            try:
                fs, key = remote_fs(self.path, self.storage_options)
                fs.rm_file(key)
            except FileNotFoundError:
                pass
            # the store unreachable: the error that stopped the run matters more
            except OSError as e:
                log.warning(
                    "could not remove the lock %s (%s); the next run on this host takes it over "
                    "once this process has exited",
                    self.path,
                    str(e).splitlines()[0] if str(e) else type(e).__name__,
                )

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
