"""Exclusive per-key lock files, so that two processes never compute the same result at once.

A lock is an ``flock`` on ``<directory>/<key>.lock``.  The kernel releases it when its holder's
file is closed, including when the holder dies (killed, crashed, Ctrl-C), so a lock never goes
stale.  The holder deletes the lock file before it lets go; a process that was waiting on the
deleted file sees, once it holds that lock, that the path no longer names its file and opens the
path again, so two processes never both believe they hold one key.  Locks are advisory and per open
file: threads or processes that take the same key wait for each other.  Where ``fcntl`` is
unavailable (Windows) the lock is a no-op and concurrent runs may compute the same result twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX)
    fcntl = None  # type: ignore[assignment]

POLL = 0.05


@contextmanager
def key_lock(
    path: str | os.PathLike[str],
    timeout: float | None = None,
    on_wait: Callable[[], None] | None = None,
    what: str = "",
) -> Iterator[None]:
    """Hold the exclusive lock file ``path`` for the ``with`` block.

    Args:
        path: the lock file (created, with its directory, when absent).
        timeout: seconds to wait for another holder; ``None`` waits as long as it lives.
        on_wait: called once when the lock is held elsewhere, before waiting.
        what: what the holder computes, for the timeout's message.

    Raises:
        TimeoutError: when ``timeout`` passed with the lock still held elsewhere.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    handle = _acquire(path, timeout, on_wait, what)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while held: a waiter on this file then opens the path anew
        handle.close()  # releases the lock


def _acquire(
    path: Path, timeout: float | None, on_wait: Callable[[], None] | None, what: str
) -> BinaryIO:
    """Open and lock ``path``, waiting for another holder; the open, locked file."""
    start = time.monotonic()
    waited = False
    while True:
        handle = open(path, "a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
        except BaseException:
            handle.close()
            raise
        else:
            if _names(path, handle):
                return handle
            handle.close()  # locked a file its holder deleted meanwhile: open the path again
            continue
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        if timeout is not None and time.monotonic() - start >= timeout:
            raise TimeoutError(
                f"waited {timeout:g} s for another process computing {what or path.stem} "
                f"(lock file {path}); rerun when it has finished"
            )
        time.sleep(POLL)


def _names(path: Path, handle: BinaryIO) -> bool:
    """Whether ``path`` still names the open file ``handle``."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
    except FileNotFoundError:
        return False
