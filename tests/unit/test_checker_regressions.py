"""Regression tests for the checker defects of issue 7 (the dma-buf ones are in
test_dma_buf_regressions.py, the untracked-state one in test_checker_soundness.py)."""

from __future__ import annotations

from click.testing import CliRunner

from passthru.check.discover import builtin
from passthru.check.explore import PctChooser, RandomChooser, ReplayChooser
from passthru.check.runner import check, run_once
from passthru.check.scenario import Sandbox, scenario
from passthru.cli import main
from passthru.sim.locks import Mutex

SCENARIOS = {sc.name: sc for sc in builtin()}


def test_a_sampled_schedule_that_deadlocks_is_a_deadlock_violation_not_a_crash() -> None:
    # `passthru check -k resv_then_memory_lock_abba --profile linux-7.1 --strategy pct
    # --seed 1` used to end in a traceback: the deadlocked tasks were unwound while `main`
    # was current, their unlocks failed, and the final check then blocked.
    sc = SCENARIOS["resv_then_memory_lock_abba"]
    horizon = run_once(sc, "linux-7.1", None, ReplayChooser([]), log=False).steps
    deadlocks = []
    for seed in range(40):
        ch = PctChooser(seed, depth=2 + seed % 3, horizon=horizon)
        res = run_once(sc, "linux-7.1", None, ch, log=False)
        dl = [v for v in res.violations if v.kind == "deadlock"]
        if dl:
            deadlocks.append(dl[0])
            # ... and the deadlocked run replays to the same report
            again = run_once(sc, "linux-7.1", None, ReplayChooser(res.choices), log=False)
            assert [v.text() for v in again.violations] == [v.text() for v in res.violations]
    assert deadlocks, "no PCT seed reached the deadlock"
    msg = deadlocks[0].message
    assert "holds [" in msg and "waits" in msg  # each task's held and awaited locks
    r = CliRunner().invoke(main, ["check", "-k", "resv_then_memory_lock_abba", "--profile",
                                  "linux-7.1", "--strategy", "pct", "--seed", "1"])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert r.exit_code == 0 and "Traceback" not in r.output


@scenario(expect="violation", teardown=False, name="regress_one_preemption")
def one_preemption(s: Sandbox) -> None:
    """A lost update padded with many independent steps: random schedules find it with
    several preemptions; one suffices."""
    n = s.shared(0, "counter")
    pads = [s.shared(0, f"pad{i}") for i in range(4)]

    def incr(mine: list) -> None:  # type: ignore[type-arg]
        for p in mine:
            s.point("pad")
            p.set(1)
        v = n.get()
        s.point("gap")
        n.set(v + 1)
        for p in mine:
            s.point("pad")
            p.set(2)

    s.spawn("t1", incr, pads[:2])
    s.spawn("t2", incr, pads[2:])
    s.final("lost-update", lambda: None if n.peek() == 2 else f"counter is {n.peek()}")


def test_shrinking_gives_the_fewest_preemptions_whatever_found_the_bug() -> None:
    sc = one_preemption.__passthru_scenario__  # type: ignore[attr-defined]
    found_many = False
    for seed in range(30):
        res = run_once(sc, "linux-7.1", None, RandomChooser(seed), log=False, races=False)
        if res.violated and res.preemptions > 1:
            found_many = True
            break
    assert found_many, "random never needed more than one preemption: the test is moot"
    for strategy in ("random", "pct"):
        v = check(sc, "linux-7.1", strategy=strategy, races=False, budget=200)
        assert v.found and v.counterexample is not None
        assert v.counterexample.preemptions == 1, strategy


def test_an_unexpected_error_escaping_a_task_is_reported() -> None:
    @scenario(expect="safe", teardown=False, name="regress_task_error")
    def sc_fn(s: Sandbox) -> None:
        def bad() -> None:
            s.host.close(12345)  # EBADF: a scenario's own mistake

        s.spawn("bad", bad)

    @scenario(expect="safe", teardown=False, name="regress_task_error_expected")
    def sc_ok(s: Sandbox) -> None:
        import errno

        def bad() -> None:
            s.host.close(12345)

        s.spawn("bad", bad, expect_errors=(errno.EBADF,))

    v = check(sc_fn.__passthru_scenario__, "linux-7.1")  # type: ignore[attr-defined]
    assert v.found and v.violations[0].kind == "task-error"
    assert "EBADF" in v.violations[0].message or "Bad file" in v.violations[0].message
    v2 = check(sc_ok.__passthru_scenario__, "linux-7.1")  # type: ignore[attr-defined]
    assert not v2.found and v2.complete


def test_a_final_check_that_blocks_after_a_deadlock_is_reported_not_raised() -> None:
    @scenario(expect="violation", teardown=False, name="regress_final_blocks")
    def sc_fn(s: Sandbox) -> None:
        a, b = Mutex(s.sched, "A"), Mutex(s.sched, "B")

        def take(x: Mutex, y: Mutex) -> None:
            x.lock()
            y.lock()
            y.unlock()
            x.unlock()

        s.spawn("t1", take, a, b)
        s.spawn("t2", take, b, a)

        def final() -> str | None:
            a.lock()  # from main, after the deadlock unwound: must not hang or raise
            a.unlock()
            return None

        s.final("final", final)

    sc = sc_fn.__passthru_scenario__  # type: ignore[attr-defined]
    # t1 takes A, t2 takes B (one preemption), both block: a real deadlock.
    res = run_once(sc, "linux-7.1", None, ReplayChooser([1, 2, 2, 1]), log=True)
    kinds = [v.kind for v in res.violations]
    assert "deadlock" in kinds, res.violations
    assert any("t1 holds [A] waits B" in v.message for v in res.violations)
