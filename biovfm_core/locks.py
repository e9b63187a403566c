"""One writer per run folder: a lock file holding the owner's pid and host.

Two ``biovfm train`` processes writing one folder interleave their metrics rows and
checkpoints without either failing, so the second one must be refused up front.
The lock is created with ``O_EXCL`` (atomic on local file systems and NFSv3+). A
lock left by a killed process is recognised when it names this host and a pid that
is no longer alive, and is then taken over; a lock from another host cannot be
checked from here, so it is reported with the way to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from biovfm_core.errors import BiovfmError

LOCK_NAME = ".lock"

# A lock file with no readable content is one being written right now, or one whose
# writer died between creating and filling it; after this long it is the latter.
UNREADABLE_GRACE_S = 60.0


class RunFolderBusy(BiovfmError):
    """Another live process owns the run folder."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    # A killed process whose parent has not reaped it yet (in a container, PID 1 may
    # never reap) still answers signals, but it writes nothing any more.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


class RunLock:
    """Ownership of ``run_dir`` by this process until :meth:`release`.

    ``what`` names the folder in messages; a subclass for another kind of folder
    overrides it and :meth:`_busy_message` (what two writers there would spoil).
    """

    what = "run folder"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.held = False

    def acquire(self, say: Callable[[str], None] = lambda _: None) -> RunLock:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._is_stale(holder):
                    raise RunFolderBusy(self._busy_message(holder)) from None
                say(
                    f"{self.what} {self.run_dir}: taking over the lock of pid "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')}, which is no "
                    "longer running"
                )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": self.pid, "host": self.host, "started": time.time()}, handle)
            self.held = True
            return self
        raise RunFolderBusy(f"{self.what} {self.run_dir}: could not take its lock {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self._holder()
        if (holder.get("pid"), holder.get("host")) == (self.pid, self.host):
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _is_stale(self, holder: dict) -> bool:
        if not holder:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > UNREADABLE_GRACE_S
        if holder.get("host") != self.host:
            return False
        pid = holder.get("pid")
        return isinstance(pid, int) and pid != self.pid and not pid_alive(pid)

    @staticmethod
    def holder_text(holder: dict) -> str:
        return (
            f"pid {holder.get('pid')} on host {holder.get('host')}"
            if holder
            else "a process that is still writing the lock"
        )

    def _busy_message(self, holder: dict) -> str:
        who = self.holder_text(holder)
        return (
            f"run folder {self.run_dir} is in use by {who} (lock file {self.path}); two runs "
            "in one folder would mix their checkpoints and metrics. Choose another --name or "
            "--output, or wait for that run to end. If that process is gone (another host "
            "cannot be checked from here), delete the lock file."
        )
