"""Two textbook bugs that show the checker works: a lost update and an ABBA deadlock.

Each comes buggy and fixed. They use only the public scenario API (passthru.kapi), no
kernel: the lost update is two tasks doing read-modify-write on a shared counter held in a
tracked cell (so the checker sees the accesses — and the race detector flags the unlocked
variant too); the ABBA is two tasks taking two mutexes in opposite orders — lockdep flags the
inversion in any schedule where both orders happen, and some schedules deadlock outright.
"""

from __future__ import annotations

from ..kapi import Mutex, Sandbox, scenario

PROFILES = ("linux-7.1",)


def _counter(s: Sandbox, locked: bool) -> None:
    counter = s.shared(0, "counter")
    lock = Mutex(s.sched, "counter_lock")

    def incr() -> None:
        if locked:
            lock.lock()
        s.point("counter", "r")
        v = counter.get()
        s.point("counter", "w")
        counter.set(v + 1)
        if locked:
            lock.unlock()

    s.spawn("t1", incr)
    s.spawn("t2", incr)
    s.final("lost-update", lambda: None if counter.peek() == 2
            else f"counter is {counter.peek()} after two increments")


@scenario(profiles=PROFILES, expect="violation", teardown=False)
def lost_update(s: Sandbox) -> None:
    """Two unlocked read-modify-writes of one counter: an increment is lost."""
    _counter(s, locked=False)


@scenario(profiles=PROFILES, expect="safe", teardown=False)
def lost_update_fixed(s: Sandbox) -> None:
    """The same increments under a mutex: never lost."""
    _counter(s, locked=True)


def _abba(s: Sandbox, same_order: bool) -> None:
    a = Mutex(s.sched, "lock_a")
    b = Mutex(s.sched, "lock_b")
    shared = s.shared(0, "shared")

    def take(first: Mutex, second: Mutex) -> None:
        first.lock()
        second.lock()
        shared.set(shared.get() + 1)
        second.unlock()
        first.unlock()

    s.spawn("t1", take, a, b)
    s.spawn("t2", take, a, b) if same_order else s.spawn("t2", take, b, a)


@scenario(profiles=PROFILES, expect="violation", teardown=False)
def abba(s: Sandbox) -> None:
    """t1 takes A then B, t2 takes B then A: lock-order inversion (and a deadlock)."""
    _abba(s, same_order=False)


@scenario(profiles=PROFILES, expect="safe", teardown=False)
def abba_fixed(s: Sandbox) -> None:
    """Both take A then B: no inversion, no deadlock."""
    _abba(s, same_order=True)
