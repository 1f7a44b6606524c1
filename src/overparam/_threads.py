"""Intra-op thread count for a block of work.

Most of this project's work is many small matrices: each op's OpenMP fork/join then costs more
than a second thread gains, and on a loaded 2-core machine two threads made the lp-depth grid
10-30x and the Xu and Tarmoun experiments up to 20x slower than one (measured).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, restoring torch's setting after.

    ``None`` keeps the current setting.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"`threads` must be None or an integer >= 1, got {count!r}")
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
