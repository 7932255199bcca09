"""dma_fence: a one-shot completion of work on a buffer (drivers/dma-buf/dma-fence.c).

A fence signals once; waiters sleep on it (with a model-time timeout). Leaves out: callbacks,
fence contexts and seqno ordering, error propagation beyond a recorded error code.

Invariants: a fence signals at most once; its error is set before it signals. Units: timeouts
in nanoseconds of model time; ``error`` a negative errno (0: none).

Which lock protects which field (sim/track.py):
- ``_signaled`` (``fence->flags``' SIGNALED bit, location ``fence:<name>``): the signaller
  sets it with test_and_set_bit under ``fence->lock`` (dma_fence_signal_timestamp_locked): an
  atomic read-modify-write, so a marked write; readers test it lock-free
  (dma_fence_is_signaled: test_bit), a marked read. Neither is ever a data race;
- ``error``: written by the signaller before it publishes the bit, read by those who saw it
  set (ordered by the release/acquire below);
- ``name``, ``sched``, the wait queue: set at creation, never rebound.
Happens-before: what the signaller did before signalling is ordered before whatever a task
does after it *saw* the fence signalled — by waiting (dma_fence_wait) or by testing the bit
(dma_fence_is_signaled, dma_resv's pruning of signalled fences): the fence is the dma-buf
world's release/acquire.
"""

from __future__ import annotations

from ...sim import track
from ...sim.locks import WaitQueue
from ...sim.scheduler import Scheduler


class DmaFence(track.Tracked):
    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self._signaled = False
        self.error = 0
        self.track_init(f"fence:{name}")
        self._wq = WaitQueue(sched, f"fence:{name}.wait")

    def __repr__(self) -> str:
        return f"<DmaFence {self.name} {'signaled' if self._signaled else 'pending'}>"

    @property
    def signaled(self) -> bool:
        """dma_fence_is_signaled: test_bit(DMA_FENCE_FLAG_SIGNALED_BIT), lock-free (marked);
        a fence seen signalled orders the caller after the signaller."""
        track.read_once(self)
        if self._signaled:
            track.acquire(self)
            return True
        return False

    def signal(self, error: int = 0) -> None:
        """dma_fence_signal (with dma_fence_set_error first when ``error``): test_and_set_bit
        of the signalled flag — atomic, a marked write — releasing to every later observer."""
        track.write_once(self)
        if self._signaled:
            return
        self.error = error
        track.release(self)
        self._signaled = True
        self.sched.emit("dma_fence", "signal", fence=self.name)
        self._wq.wake_up()

    def wait(self, timeout_ns: int | None = None) -> bool:
        """dma_fence_wait_timeout: True when signaled, False on timeout."""
        return self._wq.wait_event(lambda: self.signaled, timeout_ns)
