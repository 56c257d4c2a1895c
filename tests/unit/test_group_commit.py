"""The group commit's hand-over logic (webhooks/services/group_commit.py), with a store that
records what it is given: who leads, what each flush takes, and who gets which error. That the
real store and COMMIT serve a group is shown against PostgreSQL in test_concurrency.py."""

from __future__ import annotations

import threading
import time
import uuid
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
    group_commit: GroupCommit
    groups: list[list[str]] = []
    leaders: list[str] = []
    release = threading.Event()

    def store(session: Any, jobs: list[Job], now: Any) -> None:
        leaders.append(threading.current_thread().name)
        groups.append([job.row["id"] for job in jobs])
        if len(groups) == 1:
            release.wait(10)

    group_commit = GroupCommit(store, lambda jobs, ready: None)
    sessions = {name: FakeSession() for name in "abcd"}

    def publish(name: str) -> Job:
        threading.current_thread().name = name
        return group_commit.publish(sessions[name], _job(name))  # type: ignore[arg-type]

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(publish, "a")
        _wait_until(lambda: groups == [["a"]])
        rest: list[Any] = []
        for n, name in enumerate("bcd", 1):  # one by one: their order is known
            rest.append(pool.submit(publish, name))
            _wait_until(lambda n=n: len(group_commit._pending) == n)
        release.set()
        jobs = [first.result(10)] + [future.result(10) for future in rest]
    assert groups == [["a"], ["b", "c", "d"]]
    assert leaders == ["a", "b"]  # the first to wait leads the next group, with its session
    assert sessions["a"].commits == 1 and sessions["b"].commits == 1
    assert sessions["c"].commits == sessions["d"].commits == 0
    assert all(job.created_at is not None and job.error is None for job in jobs)
    assert group_commit._busy is False and group_commit._pending == []


def test_a_failing_group_is_stored_again_one_by_one_and_only_the_bad_event_fails() -> None:
    group_commit: GroupCommit
    groups: list[list[str]] = []
    committed: list[list[str]] = []
    release = threading.Event()

    def store(session: Any, jobs: list[Job], now: Any) -> None:
        groups.append([job.row["id"] for job in jobs])
        if len(groups) == 1:
            release.wait(10)
        if any(job.row["id"] == "bad" for job in jobs):
            raise ValueError("refused")

    group_commit = GroupCommit(
        store, lambda jobs, ready: committed.append([j.row["id"] for j in jobs])
    )
    session = FakeSession()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group_commit.publish, session, _job("a"))
        _wait_until(lambda: len(groups) == 1)
        rest: dict[str, Any] = {}
        for n, name in enumerate(["b", "bad", "c"], 1):  # one by one: their order is known
            rest[name] = pool.submit(group_commit.publish, session, _job(name))
            _wait_until(lambda n=n: len(group_commit._pending) == n)
        release.set()
        assert first.result(10).error is None
        with pytest.raises(ValueError, match="refused"):
            rest["bad"].result(10)
        assert rest["b"].result(10).created_at is not None
        assert rest["c"].result(10).created_at is not None
    assert groups == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert committed == [["a"], ["b"], ["c"]]
    assert session.rollbacks == 2  # the group's, then the bad event's own


def test_a_flush_cut_short_answers_its_group_with_an_error_and_hands_over() -> None:
    """A BaseException (the process stopping) is not retried; the waiting requests get an
    error, not a hang, and events that came meanwhile still get a leader."""
    group_commit: GroupCommit
    calls: list[list[str]] = []
    release = threading.Event()

    def store(session: Any, jobs: list[Job], now: Any) -> None:
        calls.append([job.row["id"] for job in jobs])
        if len(calls) == 1:
            release.wait(10)
        if len(calls) == 2:
            raise KeyboardInterrupt

    group_commit = GroupCommit(store, lambda jobs, ready: None)
    session = FakeSession()

    def publish(name: str) -> Any:
        try:
            return group_commit.publish(session, _job(name))  # type: ignore[arg-type]
        except BaseException as exc:  # the answer under test
            return exc

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(publish, "a")
        _wait_until(lambda: len(calls) == 1)
        second: list[Any] = []
        for n, name in enumerate("bc", 1):  # one by one: the first to wait leads
            second.append(pool.submit(publish, name))
            _wait_until(lambda n=n: len(group_commit._pending) == n)
        release.set()
        assert isinstance(first.result(10), Job)
        answers = [future.result(10) for future in second]
    assert isinstance(answers[0], KeyboardInterrupt)  # the leader's own
    assert isinstance(answers[1], RuntimeError)
    assert group_commit._busy is False
    assert isinstance(group_commit.publish(session, _job("d")), Job)  # type: ignore[arg-type]
