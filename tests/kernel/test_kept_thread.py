"""kernel/netns.Kept: a set-up's helper work on one thread kept for the process's life
(no thread started per set-up), its errors handed to join, and a job asked while the kept
thread is busy done on a thread of its own."""

from __future__ import annotations

import threading

import pytest

from portway.kernel import netns


def test_jobs_run_one_after_another_on_one_kept_thread() -> None:
    kept = netns.Kept()
    seen: list[int] = []
    for _ in range(5):
        kept.beside(lambda: seen.append(threading.get_ident())).join()
    assert len(seen) == 5 and len(set(seen)) == 1
    assert seen[0] != threading.get_ident()


def test_a_jobs_error_is_raised_by_join_unless_quiet() -> None:
    kept = netns.Kept()

    def fails() -> None:
        raise OSError("helper failed")

    with pytest.raises(OSError, match="helper failed"):
        kept.beside(fails).join()
    kept.beside(fails).join(quiet=True)  # the caller's own exception is the one raised
    done: list[bool] = []
    kept.beside(lambda: done.append(True)).join()  # the thread is still there
    assert done == [True]


def test_a_job_asked_while_the_kept_thread_is_busy_gets_its_own() -> None:
    kept = netns.Kept()
    hold = threading.Event()
    where: dict[str, int] = {}

    def first() -> None:
        where["first"] = threading.get_ident()
        hold.wait(5)

    busy = kept.beside(first)
    other = kept.beside(lambda: where.__setitem__("second", threading.get_ident()))
    other.join()
    hold.set()
    busy.join()
    assert where["first"] != where["second"]
    kept.beside(lambda: where.__setitem__("third", threading.get_ident())).join()
    assert where["third"] == where["first"]
