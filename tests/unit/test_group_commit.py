"""The group commit's hand-over logic (webhooks/services/group_commit.py), with a store that
records what it is given: who leads, what each flush takes, and who gets which error. That the
real store and COMMIT serve a group is shown against PostgreSQL in test_concurrency.py."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from webhooks.services.group_commit import GroupCommit, Job


class FakeSession:
    def __init__(self) -> None:
        self.commits = 0
        self.rollbacks = 0

    def commit(self) -> None:
        self.commits += 1

    def rollback(self) -> None:
        self.rollbacks += 1


def _job(name: str) -> Job:
    return Job(uuid.uuid4(), {"id": name})


def _wait_until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class HeldStore:
    """A store that records the events of each flush, and holds the first flush until
    `release` is set: the events published meanwhile wait behind it and make the next group.
    `then(groups)` runs after each flush is recorded (a test's way to make one fail)."""

    def __init__(self, then: Callable[[list[list[str]]], None] = lambda groups: None) -> None:
        self.groups: list[list[str]] = []
        self.leaders: list[str] = []  # the thread that ran each flush
        self.release = threading.Event()
        self._then = then

    def __call__(self, session: Any, jobs: list[Job], now: Any) -> None:
        self.leaders.append(threading.current_thread().name)
        self.groups.append([job.row["id"] for job in jobs])
        if len(self.groups) == 1:
            self.release.wait(10)
        self._then(self.groups)


def test_a_lone_event_is_flushed_at_once_in_its_own_group() -> None:
    groups: list[list[str]] = []
    committed: list[Any] = []

    def store(session: Any, jobs: list[Job], now: Any) -> str:
        groups.append([job.row["id"] for job in jobs])
        for job in jobs:
            job.deliveries = 2
        return "ready"

    commit = GroupCommit(store, lambda jobs, ready: committed.append((len(jobs), ready)))
    session = FakeSession()
    job = commit.publish(session, _job("a"))  # type: ignore[arg-type]
    assert groups == [["a"]] and committed == [(1, "ready")] and session.commits == 1
    assert job.deliveries == 2 and job.created_at is not None and job.error is None


def test_events_arriving_during_a_flush_share_the_next_one_led_by_the_first() -> None:
    store = HeldStore()
    group_commit = GroupCommit(store, lambda jobs, ready: None)
    sessions = {name: FakeSession() for name in "abcd"}

    def publish(name: str) -> Job:
        threading.current_thread().name = name
        return group_commit.publish(sessions[name], _job(name))  # type: ignore[arg-type]

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(publish, "a")
        _wait_until(lambda: store.groups == [["a"]])
        rest = [pool.submit(publish, name) for name in "bcd"]
        _wait_until(lambda: len(group_commit._pending) == 3)
        store.release.set()
        jobs = [first.result(10)] + [future.result(10) for future in rest]
    assert store.groups == [["a"], ["b", "c", "d"]]
    assert store.leaders == ["a", "b"]  # the first to wait leads the next group, with its session
    assert sessions["a"].commits == 1 and sessions["b"].commits == 1
    assert sessions["c"].commits == sessions["d"].commits == 0
    assert all(job.created_at is not None and job.error is None for job in jobs)
    assert group_commit._busy is False and group_commit._pending == []


def test_a_failing_group_is_stored_again_one_by_one_and_only_the_bad_event_fails() -> None:
    committed: list[list[str]] = []

    def refuse_bad(groups: list[list[str]]) -> None:
        if "bad" in groups[-1]:
            raise ValueError("refused")

    store = HeldStore(then=refuse_bad)
    group_commit = GroupCommit(
        store, lambda jobs, ready: committed.append([j.row["id"] for j in jobs])
    )
    session = FakeSession()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group_commit.publish, session, _job("a"))
        _wait_until(lambda: len(store.groups) == 1)
        rest = {
            name: pool.submit(group_commit.publish, session, _job(name))
            for name in ["b", "bad", "c"]
        }
        _wait_until(lambda: len(group_commit._pending) == 3)
        store.release.set()
        assert first.result(10).error is None
        with pytest.raises(ValueError, match="refused"):
            rest["bad"].result(10)
        assert rest["b"].result(10).created_at is not None
        assert rest["c"].result(10).created_at is not None
    assert store.groups == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert committed == [["a"], ["b"], ["c"]]
    assert session.rollbacks == 2  # the group's, then the bad event's own


def test_a_flush_cut_short_answers_its_group_with_an_error_and_hands_over() -> None:
    """A BaseException (the process stopping) is not retried; the waiting requests get an
    error, not a hang, and events that came meanwhile still get a leader."""

    def stop_second(groups: list[list[str]]) -> None:
        if len(groups) == 2:
            raise KeyboardInterrupt

    store = HeldStore(then=stop_second)
    group_commit = GroupCommit(store, lambda jobs, ready: None)
    session = FakeSession()

    def publish(name: str) -> Any:
        try:
            return group_commit.publish(session, _job(name))  # type: ignore[arg-type]
        except BaseException as exc:  # the answer under test
            return exc

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(publish, "a")
        _wait_until(lambda: len(store.groups) == 1)
        second = [pool.submit(publish, name) for name in "bc"]
        _wait_until(lambda: len(group_commit._pending) == 2)
        store.release.set()
        assert isinstance(first.result(10), Job)
        answers = [future.result(10) for future in second]
    assert isinstance(answers[0], KeyboardInterrupt)  # the leader's own
    assert isinstance(answers[1], RuntimeError)
    assert group_commit._busy is False
    assert isinstance(group_commit.publish(session, _job("d")), Job)  # type: ignore[arg-type]
