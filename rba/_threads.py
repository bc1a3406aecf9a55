"""Thread settings for small dense linear algebra."""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["single_thread"]


@contextmanager
def single_thread():
    """Run small dense linear algebra on one thread. On a 2-core machine with another process busy, torch's
    multi-threaded calls on (D+1)² systems were 35-55× slower than single-threaded ones (21 MiniLM span fits:
    10.9 s vs 0.31 s; a 1000×384 probe fit: 4.2 s vs 0.13 s)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
