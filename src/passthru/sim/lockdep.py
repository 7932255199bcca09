"""A lockdep-style lock-order graph (kernel/locking/lockdep.c, much reduced).

Locks are grouped into classes by name (``lock.cls``). Acquiring class B while holding A adds
the edge A -> B; if B already reaches A, the two orders can deadlock and the inversion is
reported — even in a run that happened not to deadlock. Leaves out: irq contexts, read-lock
recursion subtleties, nest_lock annotations other than ww_mutex's acquire context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import kinds

if TYPE_CHECKING:
    from .scheduler import Scheduler

LOCK_ORDER = kinds.register("lock-order", "sim.lockdep")  # two lock classes taken in both orders


class LockDep:
    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.edges: dict[str, dict[str, str]] = {}  # a -> {b: where the edge was first seen}
        self.reported: set[tuple[str, str]] = set()

    def _reaches(self, src: str, dst: str) -> list[str] | None:
        # Iterative DFS in sorted order so the reported chain is deterministic.
        stack: list[tuple[str, list[str]]] = [(src, [src])]
        seen = {src}
        while stack:
            node, path = stack.pop()
            if node == dst:
                return path
            for nxt in sorted(self.edges.get(node, {}), reverse=True):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    def acquire(self, lock: Any) -> None:
        """lock_acquire: record and check the order *before* waiting, as lockdep does, so an
        inversion is reported even when the acquisition then deadlocks."""
        cur = self.sched.current
        cls = lock.cls
        for h in cur.held:
            hcls = h.cls
            if hcls == cls:
                continue  # same class nesting (e.g. two dma_resv under one ww ctx) is allowed
            if cls in self.edges.get(hcls, {}):
                continue
            back = self._reaches(cls, hcls)
            where = f"{cur.name}@{self.sched.step}"
            if back is not None and (hcls, cls) not in self.reported:
                self.reported.add((hcls, cls))
                first = self.edges[back[0]][back[1]]
                chain = " -> ".join(back)
                self.sched.violation(
                    LOCK_ORDER,
                    f"possible circular locking: {hcls} -> {cls} ({where}) "
                    f"inverts {chain} (first seen {first})",
                )
            self.edges.setdefault(hcls, {})[cls] = where

    def acquired(self, lock: Any) -> None:
        self.sched.current.held.append(lock)
        if self.sched.log.enabled:
            self.sched.emit("lock", "acquire", lock=lock.name)

    def release(self, lock: Any) -> None:
        held = self.sched.current.held
        for i in range(len(held) - 1, -1, -1):
            if held[i] is lock:
                del held[i]
                if self.sched.log.enabled:
                    self.sched.emit("lock", "release", lock=lock.name)
                return
