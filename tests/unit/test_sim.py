"""The deterministic scheduler, its locks, lockdep and deadlock detection."""

from __future__ import annotations

import errno

from passthru.check.explore import DfsExplorer, ReplayChooser
from passthru.sim import Completion, Mutex, RwSem, Scheduler, Srcu, WaitQueue, WwAcquireCtx
from passthru.sim.locks import WwMutex
from passthru.sim.track import Cell


def test_outside_tasks_points_are_noops_and_locks_work():
    s = Scheduler()
    m = Mutex(s, "m")
    with m:
        assert m.held_by_current()
    assert not m.is_locked()
    assert s.violations == []


def test_tasks_run_in_spawn_order_to_completion_without_chooser():
    s = Scheduler()
    out: list[str] = []

    def t(name: str) -> None:
        out.append(name + "1")
        s.point("x")
        out.append(name + "2")

    s.spawn("a", t, "a")
    s.spawn("b", t, "b")
    s.run()
    assert out == ["a1", "a2", "b1", "b2"]


def test_recursive_mutex_is_a_deadlock_violation():
    s = Scheduler()
    m = Mutex(s, "m")

    def t() -> None:
        m.lock()
        m.lock()

    s.spawn("t", t)
    s.run()
    assert [v.kind for v in s.violations] == ["deadlock"]
    assert "recursive locking of m" in s.violations[0].message


def test_abba_deadlock_is_detected_with_holders_and_waiters():
    s = Scheduler(chooser=ReplayChooser([1, 2, 1, 2]))
    a, b = Mutex(s, "A"), Mutex(s, "B")

    def t(x: Mutex, y: Mutex) -> None:
        x.lock()
        s.point("between")
        y.lock()

    s.spawn("t1", t, a, b)
    s.spawn("t2", t, b, a)
    s.run()
    kinds = [v.kind for v in s.violations]
    assert "deadlock" in kinds and "lock-order" in kinds
    dl = next(v for v in s.violations if v.kind == "deadlock")
    assert "t1 holds [A] waits B" in dl.message and "t2 holds [B] waits A" in dl.message


def test_lockdep_flags_inversion_in_a_run_that_did_not_deadlock():
    s = Scheduler()  # sequential: t1 finishes before t2 starts, no deadlock possible
    a, b = Mutex(s, "A"), Mutex(s, "B")

    def t(x: Mutex, y: Mutex) -> None:
        x.lock()
        y.lock()
        y.unlock()
        x.unlock()

    s.spawn("t1", t, a, b)
    s.spawn("t2", t, b, a)
    s.run()
    assert [v.kind for v in s.violations] == ["lock-order"]
    assert "B -> A" in s.violations[0].message


def test_lock_held_at_task_exit_is_reported():
    s = Scheduler()
    m = Mutex(s, "m")
    s.spawn("t", m.lock)
    s.run()
    assert [v.kind for v in s.violations] == ["lock-held-at-exit"]


def test_rwsem_readers_share_writers_exclude():
    s = Scheduler(chooser=ReplayChooser([1, 2, 3, 1, 2, 3]))
    r = RwSem(s, "sem")
    seen: list[tuple[str, int, bool]] = []

    def reader(name: str) -> None:
        r.down_read()
        s.point("inside")
        seen.append((name, len(r.readers), r.writer is not None))
        r.up_read()

    def writer() -> None:
        r.down_write()
        seen.append(("w", len(r.readers), True))
        r.up_write()

    s.spawn("r1", reader, "r1")
    s.spawn("r2", reader, "r2")
    s.spawn("w", writer)
    s.run()
    assert s.violations == []
    assert ("r1", 2, False) in seen  # both readers inside at once
    assert seen[-1] == ("w", 0, True)  # the writer waited for both


def test_ww_mutex_older_wounds_younger_which_backs_off():
    s = Scheduler(chooser=ReplayChooser([1, 2, 1, 2, 2, 2, 1, 1, 1]))
    a, b = WwMutex(s, "resv_a"), WwMutex(s, "resv_b")
    results: dict[str, list[int]] = {"old": [], "young": []}

    def txn(name: str, first: WwMutex, second: WwMutex, stamp_first: bool) -> None:
        ctx = WwAcquireCtx(s, name)
        while True:
            rc1 = first.lock(ctx)
            s.point("work")
            rc2 = second.lock(ctx)
            results[name].append(rc2)
            if rc2 == -errno.EDEADLK:
                first.unlock()
                second.lock_slow(ctx)
                second.unlock()
                continue
            assert rc1 == 0
            second.unlock()
            first.unlock()
            return

    s.spawn("old", txn, "old", a, b, True)
    s.spawn("young", txn, "young", b, a, False)
    s.run()
    assert not any(v.kind == "deadlock" for v in s.violations)
    assert -errno.EDEADLK in results["young"]  # the younger transaction backed off
    assert results["old"] == [0]


def test_srcu_synchronize_waits_for_earlier_readers_only():
    s = Scheduler(chooser=ReplayChooser([1, 2, 1]))
    srcu = Srcu(s, "srcu")
    order: list[str] = []

    def reader() -> None:
        idx = srcu.read_lock()
        s.point("in-read-side")
        order.append("reader-done")
        srcu.read_unlock(idx)

    def sync() -> None:
        srcu.synchronize()
        order.append("synced")

    s.spawn("reader", reader)
    s.spawn("sync", sync)
    s.run()
    assert order == ["reader-done", "synced"]


def test_completion_timeout_advances_model_time_only():
    s = Scheduler()
    c = Completion(s, "done")
    got: list[bool] = []
    s.spawn("waiter", lambda: got.append(c.wait(timeout_ns=1_000_000_000)))
    s.run()
    assert got == [False]
    assert s.now == 1_000_000_000


def test_waitqueue_wakes_on_condition():
    s = Scheduler()
    wq = WaitQueue(s, "wq")
    flag: list[int] = []

    def waiter() -> None:
        wq.wait_event(lambda: bool(flag))

    def waker() -> None:
        flag.append(1)
        wq.wake_up()

    s.spawn("waiter", waiter)
    s.spawn("waker", waker)
    s.run()
    assert s.violations == [] and all(t.state == "done" for t in s.tasks)


def test_fault_points_fail_the_nth():
    s = Scheduler(fail_nth={2})
    assert [s.fault("alloc"), s.fault("alloc"), s.fault("alloc")] == [False, True, False]
    assert s.faults_failed == [(2, "alloc")]


def _two_increments(locked: bool):
    def run(ch: ReplayChooser) -> None:
        # The counter is a tracked cell: the reductions learn from its accesses, not from
        # the points' names (which here say nothing true).
        s = Scheduler(chooser=ch, track=True, races=False)
        assert s.tracker is not None
        s.tracker.activate()
        try:
            m = Mutex(s, "m")
            box = Cell(0, label="counter")

            def incr() -> None:
                if locked:
                    m.lock()
                s.point("x", "r")
                v = box.get()
                s.point("y", "r")
                box.set(v + 1)
                if locked:
                    m.unlock()

            s.spawn("t1", incr)
            s.spawn("t2", incr)
            s.run()
        finally:
            s.tracker.deactivate()
        ch.finish()
        results.append(box.peek())

    results: list[int] = []
    return run, results


def test_dfs_finds_the_lost_update():
    run, results = _two_increments(locked=False)
    for _ in DfsExplorer(bound=2).schedules(run):
        pass
    assert 1 in results and 2 in results


def test_dfs_enumerates_every_schedule_of_the_locked_version_without_loss():
    run, results = _two_increments(locked=True)
    n = sum(1 for _ in DfsExplorer(bound=2, sleep_sets=False).schedules(run))
    assert set(results) == {2}
    assert n == 18  # the exact size of the preemption-bounded space; a change means a bug


def test_dfs_unlocked_space_and_bound_zero():
    run, results = _two_increments(locked=False)
    assert sum(1 for _ in DfsExplorer(bound=2, sleep_sets=False).schedules(run)) == 14
    run0, results0 = _two_increments(locked=False)
    # With no preemptions only the two serial orders remain, and neither loses an update.
    assert sum(1 for _ in DfsExplorer(bound=0, sleep_sets=False).schedules(run0)) == 2
    assert set(results0) == {2}


def test_sleep_sets_and_dpor_prune_equivalent_schedules_but_keep_the_bug():
    from passthru.check.explore import DporExplorer

    counts = {}
    for name, make in (("dfs", lambda: DfsExplorer(bound=None, sleep_sets=False)),
                       ("sleep", lambda: DfsExplorer(bound=None)), ("dpor", DporExplorer)):
        run, results = _two_increments(locked=False)
        counts[name] = sum(1 for _ in make().schedules(run))
        assert 1 in results  # every reduction still finds the lost update
    assert counts["sleep"] < counts["dfs"] and counts["dpor"] < counts["dfs"]


def _where_run(where: bool) -> list:
    s = Scheduler()
    s.log.where = where

    def t() -> None:
        s.emit("x", "ev", n=1)
        s.point("r")
        s.violation("deadlock", "bad")

    s.spawn("t", t)
    s.run()
    return s.log.events


def test_event_log_computes_where_only_when_asked(monkeypatch):
    from passthru.sim.log import EventLog, kernel_name

    plain = EventLog()
    assert plain.enabled and not plain.where
    assert not Scheduler().log.where

    # The cheap path never walks the stack: any call to where_of would fail the run.
    def boom(*_: object) -> str:
        raise AssertionError("where computed for a log that did not ask for it")

    monkeypatch.setattr("passthru.sim.scheduler.where_of", boom)
    monkeypatch.setattr("passthru.sim.scheduler.where_of_function", boom)
    cheap = _where_run(False)
    assert cheap and all(e.where == "" for e in cheap)
    assert all("where" not in e.to_json() for e in cheap)
    monkeypatch.undo()

    # Asked for: events, scheduling points and violations say where in the caller they come
    # from (this file is outside the package: its base name), not the scheduler's frames.
    located = _where_run(True)
    got = {f"{e.subsystem}.{e.event}": e.where for e in located}
    assert got["x.ev"].startswith("test_sim.py:") and got["x.ev"].endswith(" t")
    assert got["sched.run"].startswith("test_sim.py:")
    assert got["VIOLATION.deadlock"].endswith(" t")
    assert got["x.ev"] != got["sched.run"] != got["VIOLATION.deadlock"]
    # The text log is the same with or without locations.
    assert [e.text() for e in located] == [e.text() for e in cheap]
    assert kernel_name("kvm_tdp_mmu_map: install the SPTE") == "kvm_tdp_mmu_map"
    assert kernel_name("KVM_MMU_LOCK + kvm_mmu_invalidate_begin + x.") == \
        "kvm_mmu_invalidate_begin"
    assert kernel_name("A guest load/store of n bytes") is None


def test_rwsem_down_write_trylock_never_waits():
    s = Scheduler()
    sem = RwSem(s, "t.sem")
    got = []

    def t():
        sem.down_read()
        got.append(sem.down_write_trylock())  # a reader holds it: False at once, no wait
        sem.up_read()
        got.append(sem.down_write_trylock())  # free: taken
        got.append(sem.held_for_write())
        sem.up_write()

    s.spawn("t", t)
    s.run()
    assert got == [False, True, True]
    assert sem.writer is None and not sem.readers
