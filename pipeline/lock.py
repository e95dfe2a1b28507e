"""One writer per store: a lock file beside the store (``NAME.zarr.lock``) naming its owner's pid and host.

Beside, not inside, because ``--overwrite`` empties the store's folder. A lock left by a process that no longer
runs on this host is stale and taken over; a lock from another host is refused, with the file to delete if that
process is known to be gone.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .store import StoreError


class StoreLocked(StoreError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    def __init__(self, store: str | Path):
        self.path = Path(str(store).rstrip("/") + ".lock")
        self.owned = False

    def acquire(self) -> "StoreLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                who = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}" if owner else "?"
                raise StoreLocked(f"{self.path.with_suffix('')}: another msmtfn-extract is writing it ({who}); "
                                  f"wait for it, or delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            return self
        raise StoreLocked(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
