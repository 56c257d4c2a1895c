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

from sqlalchemy.exc import OperationalError

from webhooks.services.group_commit import GroupCommit, Job

TENANT = uuid.uuid4()


class FakeSession:
    def __init__(self, lose_commit: int = 0) -> None:
        self.commits = 0
        self.rollbacks = 0
        self.lose_commit = lose_commit  # this COMMIT (1, 2, ...) loses its connection

    def in_transaction(self) -> bool:
        return False

    def commit(self) -> None:
        self.commits += 1
        if self.commits == self.lose_commit:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    def rollback(self) -> None:
        self.rollbacks += 1


class HeldStore:
    """A store that records each group (and its leader's thread), holds the first flush until
    `release` is set, and then raises `fail(names, call)` if it returns an exception."""

    def __init__(self, fail: Callable[[list[str], int], BaseException | None] | None = None):
        self.groups: list[list[str]] = []
        self.leaders: list[str] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, session: Any, jobs: list[Job], now: Any) -> str:
        names = [job.row["id"] for job in jobs]
        self.groups.append(names)
        self.leaders.append(threading.current_thread().name)
        if len(self.groups) == 1:
            self.release.wait(10)
        error = self.fail(names, len(self.groups)) if self.fail else None
        if error is not None:
            raise error
        for job in jobs:
            job.deliveries = 2
        return "ready"


def _job(name: str, tenant: uuid.UUID = TENANT) -> Job:
    return Job(tenant, {"id": name})


def _wait_until(check: Callable[[], Any], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _publish(group_commit: GroupCommit, session: Any, name: str) -> Any:
    """Publish in this thread (named after the event); return the job or what it raised."""
    threading.current_thread().name = name
    try:
        return group_commit.publish(session, _job(name))
    except BaseException as exc:  # the answer under test
        return exc


def _first_then_group(
    store: HeldStore, later: str, sessions: dict[str, Any] | None = None
) -> tuple[GroupCommit, list[Any], list[Any]]:
    """Publish "a", hold its flush until the events named in `later` all wait, then release;
    return the group commit, what each got ("a" first), and what was committed."""
    committed: list[Any] = []
    group_commit = GroupCommit(
        store, lambda jobs, ready: committed.append([j.row["id"] for j in jobs])
    )
    shared = FakeSession()
    session_of = (sessions or {}).get
    with ThreadPoolExecutor(len(later) + 1) as pool:
        first = pool.submit(_publish, group_commit, session_of("a", shared), "a")
        _wait_until(lambda: len(store.groups) == 1)
        rest = []
        for count, name in enumerate(later, 1):  # one by one: the order they wait in is known
            rest.append(pool.submit(_publish, group_commit, session_of(name, shared), name))
            _wait_until(lambda count=count: group_commit._waiting() == count)
        store.release.set()
        answers = [first.result(10)] + [future.result(10) for future in rest]
    assert group_commit._queues == {}  # every queue is forgotten once idle
    return group_commit, answers, committed


def test_a_lone_event_is_flushed_at_once_in_its_own_group() -> None:
    store = HeldStore()
    store.release.set()
    committed: list[Any] = []
    commit = GroupCommit(store, lambda jobs, ready: committed.append((len(jobs), ready)))
    session = FakeSession()
    job = commit.publish(session, _job("a"))  # type: ignore[arg-type]
    assert store.groups == [["a"]] and committed == [(1, "ready")] and session.commits == 1
    assert job.deliveries == 2 and job.created_at is not None and job.error is None


def test_events_arriving_during_a_flush_share_the_next_one_led_by_the_first() -> None:
    store = HeldStore()
    sessions = {name: FakeSession() for name in "abcd"}
    _, jobs, committed = _first_then_group(store, "bcd", sessions)
    assert store.groups == [["a"], ["b", "c", "d"]] == committed
    assert store.leaders == ["a", "b"]  # the first to wait leads the next group, with its session
    assert sessions["a"].commits == 1 and sessions["b"].commits == 1
    assert sessions["c"].commits == sessions["d"].commits == 0
    assert all(job.created_at is not None and job.error is None for job in jobs)


def test_a_failing_group_is_stored_again_one_by_one_and_only_the_bad_event_fails() -> None:
    store = HeldStore(lambda names, _: ValueError("refused") if "bad" in names else None)
    _, answers, committed = _first_then_group(store, ["b", "bad", "c"])
    assert store.groups == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert committed == [["a"], ["b"], ["c"]]
    assert isinstance(answers[2], ValueError)
    assert all(isinstance(answers[i], Job) and answers[i].created_at for i in (0, 1, 3))


def test_a_flush_cut_short_answers_its_group_with_an_error_and_hands_over() -> None:
    """A BaseException (the process stopping) is not retried; the waiting requests get an
    error, not a hang, and events that came meanwhile still get a leader."""
    store = HeldStore(lambda _, call: KeyboardInterrupt() if call == 2 else None)
    group_commit, answers, _ = _first_then_group(store, "bc")
    assert isinstance(answers[0], Job)
    assert isinstance(answers[1], KeyboardInterrupt)  # the leader's own
    assert isinstance(answers[2], RuntimeError)
    assert isinstance(group_commit.publish(FakeSession(), _job("d")), Job)  # type: ignore[arg-type]


def test_a_failed_commit_is_not_stored_again_and_each_request_gets_its_own_error() -> None:
    """A COMMIT whose connection failed may have taken effect: storing the events again could
    store them twice. Every request of the group answers the error, each with its own copy."""
    store = HeldStore()
    lossy = FakeSession(lose_commit=2)  # the second group's COMMIT
    _, answers, committed = _first_then_group(store, "bcd", dict.fromkeys("abcd", lossy))
    assert store.groups == [["a"], ["b", "c", "d"]] and committed == [["a"]]
    assert isinstance(answers[0], Job)
    assert all(isinstance(error, OperationalError) for error in answers[1:])
    assert len({id(error) for error in answers[1:]}) == 3


def test_tenants_are_grouped_apart_and_one_tenants_flush_does_not_hold_up_another() -> None:
    store = HeldStore()
    group_commit = GroupCommit(store, lambda jobs, ready: None)
    a, b = uuid.uuid4(), uuid.uuid4()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group_commit.publish, FakeSession(), _job("a1", a))
        _wait_until(lambda: store.groups == [["a1"]])  # tenant A's flush waits (for a lock)
        a2 = pool.submit(group_commit.publish, FakeSession(), _job("a2", a))
        _wait_until(lambda: group_commit._waiting() == 1)
        b1 = pool.submit(group_commit.publish, FakeSession(), _job("b1", b))
        assert b1.result(10).created_at is not None  # while A's flush still waits
        assert not first.done() and not a2.done()
        store.release.set()
        assert first.result(10).error is None and a2.result(10).error is None
    assert store.groups == [["a1"], ["b1"], ["a2"]]
    assert group_commit._queues == {}
