"""Bundle members in parallel on CPU threads, each member's kernels single-threaded.

The LeNets' kernels are small: at batch 128 a second intra-op thread speeds the MNIST autoencoder's
step up ~1.5x and the encoder's hardly at all (measured on 2 cores, torch 2.13). Running two
members at once, one core each, uses the cores better. :class:`MemberWorkers` does that with Python
threads — torch releases the GIL inside its kernels, and autograd runs a CPU graph on the thread
that calls it. Tasks should be large (a member's whole epoch): with a synchronisation after every
step, the slower member of each step sets the pace, which cost 10-30% of a two-member step here.

Determinism: with OpenMP as ATen's parallel backend (as in the x86 Linux wheels; checked at run
time) the intra-op thread count is a per-thread setting, so every member runs with exactly one
intra-op thread, whatever K is and whichever worker (the calling thread is one) runs it. A member's
numbers therefore never depend on the other members — the bundle's bit-for-bit isolation guarantee.
Without OpenMP, on one core, on a GPU or when the caller does not want threads, members run one
after another on the calling thread with its thread setting.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from functools import cache
from typing import TypeVar

import torch

R = TypeVar("R")


@cache
def _per_thread_intraop() -> bool:
    """Whether ``torch.set_num_threads`` is a per-thread setting here (the OpenMP backend)."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def threaded(device: torch.device, wanted: bool = True) -> bool:
    """Whether members run on worker threads with single-threaded kernels: ``wanted`` (by the caller,
    for members big enough to pay for it), a CPU, more than one intra-op thread, and OpenMP."""
    return wanted and device.type == "cpu" and torch.get_num_threads() > 1 and _per_thread_intraop()


def member_threads(device: torch.device, wanted: bool = True) -> int:
    """Intra-op threads each member's kernels run with: 1 when :func:`threaded`, else the caller's setting."""
    return 1 if threaded(device, wanted) else torch.get_num_threads()


class MemberWorkers:
    """Runs ``fn(k)`` for many members on ``min(K, torch.get_num_threads())`` workers: the calling
    thread and a pool of helper threads.

    Args:
        k: the number of members (no more workers than that).
        device: members on another device than the CPU always run on the calling thread.
        wanted: False runs members one after another on the calling thread. Threads pay off for
            convolutional members; an MLP member's step is mostly Python, which the GIL serialises
            (8 digits-MLP members, 3 + 20 epochs: 0.93 s one after another, 1.19 s on 2 threads,
            1.16 s as separate runs).
    """

    def __init__(self, k: int, device: torch.device, *, wanted: bool = True) -> None:
        self.threaded = threaded(device, wanted)
        self.n = min(k, torch.get_num_threads()) if self.threaded else 1
        # the calling thread is one of the n workers: one hand-off fewer per call, and no idle thread
        self._pool = (concurrent.futures.ThreadPoolExecutor(self.n - 1, thread_name_prefix="bundle-member")
                      if self.n > 1 else None)

    def map(self, fn: Callable[[int], R], members: Sequence[int]) -> list[R]:
        """``[fn(k) for k in members]``: each worker (the calling thread is one of them) takes the next
        member not yet taken until none is left, so unequal tasks balance out.

        ``fn`` must only touch member k's own state. After an exception no new member is started, and
        it is re-raised here once every worker has stopped.
        """
        if not self.threaded:
            return [fn(k) for k in members]
        results: list[R | None] = [None] * len(members)
        todo = iter(range(len(members)))
        lock = threading.Lock()
        failed = threading.Event()

        def work() -> None:
            torch.set_num_threads(1)  # this thread's setting (and the default for threads started later)
            while not failed.is_set():
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    results[i] = fn(members[i])
                except BaseException:
                    failed.set()
                    raise

        threads = torch.get_num_threads()
        helpers = min(self.n, len(members)) - 1
        futures = [self._pool.submit(work) for _ in range(helpers)] if self._pool is not None else []
        try:
            work()
        finally:
            concurrent.futures.wait(futures)
            torch.set_num_threads(threads)  # the calling thread's setting, and the default for new threads
        for f in futures:
            f.result()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker threads (also happens when the object is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
