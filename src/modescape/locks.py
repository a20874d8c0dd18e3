"""One writer per output: a lock on an ``--out`` folder (and on a result store) held by one process.

Two processes started on the same ``--out`` would write the same files; the second is refused at once
with one line naming the folder and the holder's pid (or, with ``wait``, waits for it). The lock is
``fcntl.flock`` on a small file (``.modescape.lock`` in the folder, holding the pid and host of its
holder): the kernel releases it when the process ends, however it ends (SIGKILL included), so a lock
is never stale; a lock file left behind by a killed process is simply taken over by the next one.
Under ``torchrun`` only rank 0 takes a lock: the other ranks are part of the same job (they know it
from `modescape.distributed.context`), and are never refused.

Locks are per process and reentrant (taking one twice in a process counts up); a held lock's file is
removed when it is released (`release`, `release_all`, or at exit), so a finished command leaves no
lock file. A forked child does not hold its parent's locks. flock is advisory and local: two hosts
sharing a network folder are not serialised on file systems without flock support.

This module is light at import (no torch): the command line calls `lock_out` from ``out_dir``.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".modescape.lock"


class Lock:
    """A held lock (see the module docstring); `release` it, or use it as a context manager."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd
        self.count = 1

    def release(self) -> None:
        """Count down; the last release removes the lock file (while still holding it) and unlocks."""
        if self.fd < 0:
            return
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(_key(self.path), None)
        try:
            if _same_file(self.fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)  # closing the only descriptor releases the flock
        self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, Lock] = {}


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a releasing holder may have removed it)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def holder(path: str | os.PathLike) -> str:
    """Who holds the lock file ``path``, in words: "pid 123" (plus "on host h" when not this host)."""
    for _ in range(20):  # the holder writes its pid right after locking: read again briefly if empty
        try:
            text = Path(path).read_text().split()
        except OSError:
            text = []
        if text:
            pid = text[0]
            host = text[1] if len(text) > 1 else ""
            return f"pid {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")
        time.sleep(0.02)
    return "pid unknown"


def acquire(path: str | os.PathLike, what: str, hint: str, wait: bool | float = False) -> Lock:
    """Lock the file ``path`` (created if needed) for this process, or raise `UserError`.

    ``what`` names the locked thing in the message (e.g. "--out runs/a"), ``hint`` says what to do.
    ``wait``: False refuses at once when another process holds it; True waits for it; a number waits
    at most that many seconds. Reentrant within a process.
    """
    path = Path(path)
    held = _HELD.get(_key(path))
    if held is not None and held.fd >= 0:
        held.count += 1
        return held
    deadline = None if wait is True else time.monotonic() + (0.0 if wait is False else float(wait))
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(
                f"cannot create the lock file {path}: {e.strerror or e}; choose a folder you can write to"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {path}: {e.strerror or e}") from None
            if deadline is not None and time.monotonic() >= deadline:
                raise UserError(f"{what} is in use by another modescape process ({holder(path)}): {hint}") from None
            time.sleep(0.1)
            continue
        if not _same_file(fd, path):  # the previous holder removed the file as we opened it: take the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        lock = _HELD[_key(path)] = Lock(path, fd)
        return lock


def _rank() -> int:
    """This process's rank under torchrun (0 outside it); torch is imported only inside a torchrun job."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return 0
    from .distributed import context

    return context().rank


def lock_out(folder: str | os.PathLike, wait: bool | float = False) -> Lock | None:
    """Lock an existing ``--out`` folder for this command (``folder/.modescape.lock``), or raise `UserError`:
    "--out DIR is in use by another modescape process (pid N): ...". Under torchrun, ranks other than 0
    take no lock and get None. Held until `release_all` or the end of the process."""
    if _rank() != 0:
        return None
    folder = Path(folder)
    return acquire(folder / LOCK_NAME, f"--out {folder}", "wait for it to finish, or choose another --out", wait)


def lock_store(store: str | os.PathLike, wait: bool | float = False) -> Lock | None:
    """Lock a result store for writing: the file ``.NAME.lock`` beside ``store`` (its parent folder is
    created). Rank 0 only under torchrun, as `lock_out`."""
    if _rank() != 0:
        return None
    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    return acquire(
        store.parent / f".{store.name}.lock",
        f"result {store}",
        "wait for it to finish, or write to another folder",
        wait,
    )


def release_all() -> None:
    """Release every lock this process holds (removing their files); run at exit."""
    for lock in list(_HELD.values()):
        lock.count = 1
        lock.release()


def _forget_in_child() -> None:
    # a forked child shares its parent's open lock descriptions: closing its copies leaves the parent's lock
    # in place, and the child never removes the parent's lock files
    for lock in _HELD.values():
        try:
            os.close(lock.fd)
        except OSError:
            pass
        lock.fd = -1
    _HELD.clear()


atexit.register(release_all)
os.register_at_fork(after_in_child=_forget_in_child)
