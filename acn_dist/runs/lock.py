"""One owner per run: a lock file in the run folder naming the process that trains it.

`owner.json` holds the owner's host, pid, the pid's start time (so a recycled pid is not mistaken
for the owner), the start time of the run and a random token. It is created with O_EXCL, so two
starts cannot both create it. A second start while the owner lives is refused with an error
naming the run and its owner. A lock whose owner died (kill -9, a lost machine) is taken over:
on the owner's host when its process is gone; from any host when the owner stopped refreshing
the lock's heartbeat for `stale_after_s` seconds. The owner releases the lock when it ends.

In object storage (`train.storage_path=s3://...`) there is no atomic create-if-absent through
pyarrow, so the lock is best effort: a starter writes `owner.json` only when none is there, waits
`settle_s` and reads it back; it owns the run only if its own token is still there. Two starters
whose check and write fall within `settle_s` of each other are caught (the later write wins, the
earlier starter backs off); starts further apart see the first owner's lock. A dead owner's lock
is deleted rather than renamed aside (no rename in object stores). What stays unprotected: two
starters that both delete the same dead owner's lock and then both pass the settle window, which
needs two starts of one run within about a second of each other after its owner died.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acn_dist.errors import RunError
from acn_dist.runs.storage import AnyPath, ObjectPath, atomic_write_text, scratch_name


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot; Linux), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether `pid` is still the process that started at `start_ticks`."""
    ticks = process_start_ticks(pid)
    if ticks is not None:
        return start_ticks is None or ticks == start_ticks
    if Path("/proc").is_dir():
        return False
    try:  # not Linux: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    pid_start: int | None
    started: str  # ISO time the owner took the lock
    token: str
    heartbeat: float  # time.time() of the owner's last refresh

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_start_ticks(os.getpid()),
                   time.strftime("%Y-%m-%d %H:%M:%S %Z"), uuid.uuid4().hex, time.time())

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def dead(self, stale_after_s: float) -> bool:
        if self.host == socket.gethostname():
            return not process_alive(self.pid, self.pid_start)
        return time.time() - self.heartbeat > stale_after_s


def read_owner(path: AnyPath) -> Owner | None:
    try:
        return Owner(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError):  # a torn or foreign file: nobody can own through it
        return Owner("?", -1, None, "?", "", 0.0)


class RunLock:
    """`with RunLock(folder, run_id):` holds the run for this process, or raises `RunError`."""

    def __init__(self, path: AnyPath, run_id: str, heartbeat_s: float = 10.0, stale_after_s: float = 60.0,
                 settle_s: float = 1.0):
        self.path, self.run_id = path, run_id
        self.heartbeat_s, self.stale_after_s, self.settle_s = heartbeat_s, stale_after_s, settle_s
        self.owner: Owner | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.owner.token if self.owner else ""

    def _create(self, owner: Owner) -> bool:
        if isinstance(self.path, ObjectPath):
            return self._create_in_object_store(owner)
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(asdict(owner)))
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _create_in_object_store(self, owner: Owner) -> bool:
        """Best-effort create-if-absent (see the module's docstring)."""
        if self.path.exists():
            return False
        self.path.write_text(json.dumps(asdict(owner)))
        time.sleep(self.settle_s)
        holder = read_owner(self.path)
        return holder is not None and holder.token == owner.token

    def _refusal(self, holder: Owner) -> RunError:
        return RunError(f"run {self.run_id!r} is already being trained by its owner ({holder.describe()}); "
                        f"a run has one owner: wait for it to end, or stop it (lock {self.path}); a lock left by "
                        "an owner that died is taken over automatically")

    def refuse_if_owned(self) -> None:
        """Raise `RunError` when a live owner holds the run; reads only."""
        holder = read_owner(self.path)
        if holder is not None and not holder.dead(self.stale_after_s):
            raise self._refusal(holder)

    def acquire(self) -> Owner:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = Owner.me()
        for _ in range(3):
            if self._create(me):
                self.owner = me
                self._start_heartbeat()
                return me
            holder = read_owner(self.path)
            if holder is None:
                continue  # released meanwhile: try again
            if not holder.dead(self.stale_after_s):
                raise self._refusal(holder)
            # Take over from a dead owner: move its lock aside (only one starter's rename can
            # succeed), then create ours as usual.
            try:
                if isinstance(self.path, ObjectPath):
                    self.path.unlink()
                else:
                    os.replace(self.path, scratch_name(self.path, "dead-owner"))
            except FileNotFoundError:
                pass
        raise RunError(f"run {self.run_id!r}: could not take the lock {self.path}; another start is racing this one")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                holder = read_owner(self.path)
                if holder is None or holder.token != self.token:
                    return  # not ours any more
                refreshed = Owner(**{**asdict(holder), "heartbeat": time.time()})
                atomic_write_text(self.path, json.dumps(asdict(refreshed)))

        self._beat = threading.Thread(target=beat, name=f"lock-{self.run_id}", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = read_owner(self.path)
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)
        self.owner = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
