"""dma_resv: a buffer's reservation object — its ww_mutex and its fences by usage
(drivers/dma-buf/dma-resv.c, include/linux/dma-resv.h).

Usages are ordered KERNEL < WRITE < READ < BOOKKEEP; asking for the fences of a usage returns
those of that usage *and every lower one* (dma_resv_usage_rw / dma_resv_iter semantics), so
waiting for BOOKKEEP waits for everything and waiting for KERNEL only for memory management
(moves, clears). Adding a fence needs the lock held (dma_resv_assert_held), as does reading
the list without RCU — violations are reported like lockdep would.

Invariants: a fence joins the list only with the lock held, and the signalled fences are
pruned whenever one is added; the list is an immutable tuple replaced on every update, so an
RCU reader sees a consistent snapshot. Units: timeouts in nanoseconds of model time.

Which lock protects which field (sim/track.py):
- ``_fences`` (``<buf>.resv.fences``): the resv lock for writes — dma_resv_add_fence asserts
  it (plain write) — and for the locked walk, ``pending(usage, locked=True)``
  (dma_resv_for_each_fence: plain, asserted); :meth:`DmaResv.pending`,
  :meth:`test_signaled` and :meth:`wait_timeout` read it as the kernel's unlocked
  dma_resv_iter does — RCU, so marked reads;
- ``lock`` (the ww_mutex itself), ``name``, ``sched``: set at creation, never rebound.
Leaves out: fence slot reservation (dma_resv_reserve_fences), seqcount retries.
"""

from __future__ import annotations

from ...sim import kinds
from ...sim.locks import WwAcquireCtx, WwMutex
from ...sim.scheduler import Scheduler
from ...sim.track import Cell
from .fence import DmaFence

# The violations this file reports (sim/kinds.py).
kinds.register("dma-buf-locking", "dma-buf")

DMA_RESV_USAGE_KERNEL = 0
DMA_RESV_USAGE_WRITE = 1
DMA_RESV_USAGE_READ = 2
DMA_RESV_USAGE_BOOKKEEP = 3
USAGE_NAMES = {0: "KERNEL", 1: "WRITE", 2: "READ", 3: "BOOKKEEP"}

FenceList = tuple[tuple[DmaFence, int], ...]


class DmaResv:
    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.lock = WwMutex(sched, f"{name}.resv", "reservation_ww_class")
        self._fences: Cell[FenceList] = Cell((), label=f"{name}.resv.fences")

    @property
    def fences(self) -> list[tuple[DmaFence, int]]:
        """The fence list as an RCU reader sees it (a marked read)."""
        return list(self._fences.get_once())

    def lock_ctx(self, ctx: WwAcquireCtx | None = None) -> int:
        """dma_resv_lock: 0, or -EDEADLK when a wounded transaction must back off."""
        return self.lock.lock(ctx)

    def unlock(self) -> None:
        self.lock.unlock()

    def held(self) -> bool:
        return self.lock.held_by_current()

    def assert_held(self, what: str) -> None:
        if not self.held():
            self.sched.violation("dma-buf-locking", f"{what} without {self.name}'s resv lock held")

    def add_fence(self, fence: DmaFence, usage: int) -> None:
        """dma_resv_add_fence: needs the lock; replaces the signalled fences it finds."""
        self.assert_held("dma_resv_add_fence")
        kept = tuple((f, u) for f, u in self._fences.get() if not f.signaled)
        self._fences.set(kept + ((fence, usage),))
        self.sched.emit("dma_resv", "add_fence", resv=self.name, fence=fence.name,
                        usage=USAGE_NAMES[usage])

    def pending(self, usage: int, locked: bool = False) -> list[DmaFence]:
        """The unsignalled fences of ``usage`` or lower: dma_resv_iter (RCU, unlocked), or with
        ``locked`` dma_resv_for_each_fence (the caller holds the lock)."""
        if locked:
            self.assert_held("dma_resv_for_each_fence")
            fences = self._fences.get()
        else:
            fences = self._fences.get_once()
        return [f for f, u in fences if u <= usage and not f.signaled]

    def test_signaled(self, usage: int) -> bool:
        """dma_resv_test_signaled (RCU)."""
        return not self.pending(usage)

    def wait_timeout(self, usage: int, timeout_ns: int | None = None) -> bool:
        """dma_resv_wait_timeout: wait for every fence of ``usage`` or lower (RCU walk)."""
        for f in self.pending(usage):
            if not f.wait(timeout_ns):
                return False
        return True
