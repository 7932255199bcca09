"""The checker is sound on what it claims: a corpus of small racy programs that every
strategy must find, and the fifteen-line example of issue 7 that DFS and DPOR once called
safe because the race was not named by any scheduling point.

Each program is run with the data-race detector off (so the bug must be found as what it is:
a lost update, a use-after-free, a deadlock...) and on (where the race detector must flag
the unsynchronised accesses too). Strategies: DFS with sleep sets (with the preemption bound
the bug needs), DPOR, the enumeration without reduction, PCT and random.
"""

from __future__ import annotations

import pytest

from passthru.check.explore import PctChooser, RandomChooser
from passthru.check.runner import check, run_once
from passthru.check.scenario import Sandbox, scenario
from passthru.extents import RangeMap
from passthru.sim.locks import Mutex

# ----- the corpus ------------------------------------------------------------------------


@scenario(expect="violation", teardown=False, name="corpus_flag")
def corpus_flag(s: Sandbox) -> None:
    """Issue 7's example: A reads a flag B sets and clears between two unrelated points."""
    flag = s.shared(0, "flag")
    seen = s.shared(0, "seen")

    def a() -> None:
        s.point("c", "r")
        seen.set(flag.get())

    def b() -> None:
        s.point("a", "w")
        flag.set(1)
        s.point("b", "w")
        flag.set(0)

    s.spawn("A", a)
    s.spawn("B", b)
    s.final("saw-flag", lambda: "A saw the transient flag" if seen.peek() else None)


@scenario(expect="violation", teardown=False, name="corpus_lost_update")
def corpus_lost_update(s: Sandbox) -> None:
    """Two read-modify-writes of one tracked counter."""
    n = s.shared(0, "counter")

    def incr() -> None:
        v = n.get()
        s.point("anything")
        n.set(v + 1)

    s.spawn("t1", incr)
    s.spawn("t2", incr)
    s.final("lost-update", lambda: None if n.peek() == 2 else f"counter is {n.peek()}")


@scenario(expect="violation", teardown=False, name="corpus_stale_read")
def corpus_stale_read(s: Sandbox) -> None:
    """A reader takes a pointer, the writer retires the object, the reader uses it."""
    obj = s.shared("buffer#1", "current")
    freed = s.shared(frozenset[str](), "freed")

    def reader() -> None:
        p = obj.get()
        s.point("use")
        if p in freed.get():
            s.sched.violation("use-after-free", f"reader used {p} after it was retired")

    def writer() -> None:
        old = obj.get()
        obj.set("buffer#2")
        freed.set(freed.get() | {old})

    s.spawn("reader", reader)
    s.spawn("writer", writer)


@scenario(expect="violation", teardown=False, name="corpus_pt_uaf")
def corpus_pt_uaf(s: Sandbox) -> None:
    """Use-after-free through a page table: a walker translates, an unmapper zaps the entry
    and frees the page, the walker then writes the page it translated to."""
    pt: RangeMap[int] = RangeMap(linear=True, label="pt")
    pages: RangeMap[str] = RangeMap(label="pages")
    pt.set(0x1000, 0x2000, 0x8000)
    pages.set(0x8000, 0x9000, "allocated")

    def walker() -> None:
        pa = pt.lookup(0x1000)
        s.point("tlb")
        if pa is not None and pages.lookup(pa) != "allocated":
            s.sched.violation("use-after-free", f"DMA to freed page {pa:#x}")

    def unmapper() -> None:
        pt.remove(0x1000, 0x2000)
        s.point("free")
        pages.remove(0x8000, 0x9000)

    s.spawn("walker", walker)
    s.spawn("unmapper", unmapper)


@scenario(expect="violation", teardown=False, name="corpus_abba3")
def corpus_abba3(s: Sandbox) -> None:
    """ABBA through three locks: t1 A→B, t2 B→C, t3 C→A deadlock when each holds its first."""
    a, b, c = (Mutex(s.sched, n) for n in ("A", "B", "C"))

    def take(x: Mutex, y: Mutex) -> None:
        x.lock()
        y.lock()
        y.unlock()
        x.unlock()

    s.spawn("t1", take, a, b)
    s.spawn("t2", take, b, c)
    s.spawn("t3", take, c, a)


@scenario(expect="violation", teardown=False, name="corpus_missed_wakeup")
def corpus_missed_wakeup(s: Sandbox) -> None:
    """The waiter tests the condition, then sleeps without re-testing it: a wake-up that
    comes in between is lost and the waiter sleeps forever."""
    ready = s.shared(False, "ready")
    wq = object()

    def waiter() -> None:
        if not ready.get():
            s.point("about to sleep")
            s.sched.block(wq)

    def waker() -> None:
        ready.set(True)
        s.sched.wake(wq)

    s.spawn("waiter", waiter)
    s.spawn("waker", waker)


@scenario(expect="violation", teardown=False, name="corpus_check_then_act")
def corpus_check_then_act(s: Sandbox) -> None:
    """Check-then-act on a page table: both faulters see the entry absent, both install,
    and the first page is leaked."""
    pt: RangeMap[int] = RangeMap(linear=True, label="pt")
    installed = s.shared(0, "installed")

    def fault(pa: int) -> None:
        if not pt.any_in(0x1000, 0x2000):
            s.point("alloc")
            pt.set(0x1000, 0x2000, pa)
            installed.set(installed.get() + 1)

    s.spawn("f1", fault, 0x8000)
    s.spawn("f2", fault, 0x9000)
    s.final("leaked-page", lambda: None if installed.peek() == 1
            else f"{installed.peek()} pages installed for one entry: one leaked")


CORPUS = {
    "corpus_flag": (corpus_flag, "saw-flag", 1),
    "corpus_lost_update": (corpus_lost_update, "lost-update", 1),
    "corpus_stale_read": (corpus_stale_read, "use-after-free", 1),
    "corpus_pt_uaf": (corpus_pt_uaf, "use-after-free", 1),
    "corpus_abba3": (corpus_abba3, "deadlock", 1),  # blocking switches for free
    "corpus_missed_wakeup": (corpus_missed_wakeup, "deadlock", 1),
    "corpus_check_then_act": (corpus_check_then_act, "leaked-page", 1),
}


def _sc(fn):  # noqa: ANN001, ANN202
    return fn.__passthru_scenario__


def _found_by_sampling(sc, kind: str, chooser, n: int = 400) -> bool:  # noqa: ANN001
    for seed in range(n):
        res = run_once(sc, "linux-7.1", None, chooser(seed), log=False, races=False)
        if any(v.kind == kind for v in res.violations):
            return True
    return False


def _found_systematically(sc, kind: str, strategy: str, bound: int | None) -> bool:  # noqa: ANN001
    from passthru.check.crosscheck import explore_all

    ex = explore_all(sc, "linux-7.1", None, strategy, bound, races=False)
    return kind in ex.kinds


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_strategy_finds_each_corpus_bug(name: str) -> None:
    fn, kind, need = CORPUS[name]
    sc = _sc(fn)
    # DFS finds it with exactly the preemption bound it needs, and not below.
    assert _found_systematically(sc, kind, "dfs", need), "dfs"
    assert not _found_systematically(sc, kind, "dfs", need - 1), "the bug needs its bound"
    assert _found_systematically(sc, kind, "dpor", None), "dpor"
    assert _found_systematically(sc, kind, "full", None), "no reduction"
    assert _found_by_sampling(sc, kind, lambda i: PctChooser(i, depth=2 + i % 3, horizon=16))
    assert _found_by_sampling(sc, kind, RandomChooser)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_checker_reports_each_bug_through_the_front_door(name: str) -> None:
    fn, kind, need = CORPUS[name]
    if name == "corpus_abba3":
        kind, need = "lock-order", 0  # lockdep sees the cycle in the serial schedule already
    for strategy in ("dfs", "dpor", "pct", "random"):
        v = check(_sc(fn), "linux-7.1", strategy=strategy, races=False, budget=500)
        assert v.found, strategy
        assert kind in {x.kind for x in v.violations}, (strategy, v.violations)
        # shrinking gives the fewest preemptions the bug needs, whoever found it
        assert v.counterexample is not None and v.counterexample.preemptions == need


RACY = ["corpus_flag", "corpus_lost_update", "corpus_stale_read", "corpus_check_then_act"]


@pytest.mark.parametrize("name", RACY)
def test_the_race_detector_flags_the_unsynchronised_accesses(name: str) -> None:
    # With races on, even the first (serial) schedule has conflicting accesses of two tasks
    # with no happens-before: KCSAN-style, the race is reported without the bad interleaving.
    res = run_once(_sc(CORPUS[name][0]), "linux-7.1", None, None, log=False)
    races = [v for v in res.violations if v.kind == "data-race"]
    assert races, res.violations
    assert "no happens-before" in races[0].message


def test_a_lock_orders_the_accesses_and_silences_the_detector() -> None:
    @scenario(expect="safe", teardown=False, name="corpus_locked_counter")
    def locked(s: Sandbox) -> None:
        n = s.shared(0, "counter")
        m = Mutex(s.sched, "m")

        def incr() -> None:
            with m:
                v = n.get()
                s.point("anything")
                n.set(v + 1)

        s.spawn("t1", incr)
        s.spawn("t2", incr)
        s.final("lost-update", lambda: None if n.peek() == 2 else "lost")

    for strategy in ("dfs", "dpor", "full"):
        v = check(_sc(locked), "linux-7.1", strategy=strategy)
        assert not v.found and v.complete, (strategy, v.violations)


def test_marked_accesses_count_in_footprints_but_are_not_races() -> None:
    @scenario(expect="safe", teardown=False, name="corpus_marked")
    def marked(s: Sandbox) -> None:
        c = s.shared(0, "seq")

        def w() -> None:
            c.set_once(1)

        def r() -> None:
            c.get_once()

        s.spawn("w", w)
        s.spawn("r", r)

    sc = _sc(marked)
    res = run_once(sc, "linux-7.1", None, None, log=False)
    assert not res.violations
    from passthru.check.crosscheck import explore_all

    # ... yet the two steps are dependent: DPOR explores both orders.
    assert explore_all(sc, "linux-7.1", None, "dpor").schedules == 2


def test_without_footprints_the_reductions_would_miss_the_flag() -> None:
    """The control: the same program with its state in an untracked dict is invisible to
    sleep sets and DPOR (what issue 7 reported) — which is why state must be tracked."""

    @scenario(expect="violation", teardown=False, name="corpus_untracked_flag")
    def untracked(s: Sandbox) -> None:
        st = {"flag": 0, "seen": 0}

        def a() -> None:
            s.point("c", "r")
            st["seen"] = st["flag"]

        def b() -> None:
            s.point("a", "w")
            st["flag"] = 1
            s.point("b", "w")
            st["flag"] = 0

        s.spawn("A", a)
        s.spawn("B", b)
        s.final("saw-flag", lambda: "A saw the flag" if st["seen"] else None)

    sc = _sc(untracked)
    assert not check(sc, "linux-7.1", strategy="dpor").found
    assert check(sc, "linux-7.1", strategy="full").found
    assert check(_sc(corpus_flag), "linux-7.1", strategy="dpor", races=False).found
