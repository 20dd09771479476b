"""Members on worker threads: results in member order, single-threaded kernels, errors surface."""

from __future__ import annotations

import threading

import pytest
import torch

from deepsad.workers import MemberWorkers, member_threads, threaded

CPU = torch.device("cpu")
needs_threads = pytest.mark.skipif(not threaded(CPU), reason="needs >= 2 intra-op threads with OpenMP")


@needs_threads
def test_members_run_on_workers_with_one_intra_op_thread_each() -> None:
    before = torch.get_num_threads()
    workers = MemberWorkers(5, CPU)
    try:
        assert workers.threaded and workers.n == min(5, before) and member_threads(CPU) == 1
        seen = workers.map(lambda k: (k, torch.get_num_threads(), threading.current_thread().name), [4, 0, 3, 1])
        assert [k for k, _, _ in seen] == [4, 0, 3, 1]  # in the order asked for
        assert all(n == 1 for _, n, _ in seen)
        me = threading.current_thread().name  # the calling thread works too
        assert all(name == me or name.startswith("bundle-member") for _, _, name in seen)
        assert torch.get_num_threads() == before  # the caller's setting is back
        assert workers.map(lambda k: k, []) == []
    finally:
        workers.close()


def test_unwanted_or_single_threaded_workers_run_on_the_calling_thread() -> None:
    workers = MemberWorkers(3, CPU, wanted=False)
    assert not workers.threaded and workers.n == 1
    assert member_threads(CPU, wanted=False) == torch.get_num_threads()
    me = threading.current_thread().name
    assert workers.map(lambda k: (k, threading.current_thread().name), [2, 1]) == [(2, me), (1, me)]
    assert not threaded(torch.device("cuda", 0))


@needs_threads
def test_an_error_in_a_member_surfaces_after_every_worker_stopped() -> None:
    before = torch.get_num_threads()
    workers = MemberWorkers(2, CPU)
    finished: list[int] = []

    def fn(k: int) -> int:
        if k == 0:
            raise ValueError("member 0 failed")
        finished.append(k)
        return k

    try:
        with pytest.raises(ValueError, match="member 0 failed"):
            workers.map(fn, [0, 1, 2, 3])
        assert torch.get_num_threads() == before
        assert 0 not in finished  # (members taken before the failure may have finished)
    finally:
        workers.close()
