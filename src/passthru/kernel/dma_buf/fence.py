"""dma_fence: a one-shot completion of work on a buffer (drivers/dma-buf/dma-fence.c).

A fence signals once; waiters sleep on it (with a model-time timeout). Leaves out: callbacks,
fence contexts and seqno ordering, error propagation beyond a recorded error code.
"""

from __future__ import annotations

from ...sim.locks import WaitQueue
from ...sim.scheduler import Scheduler


class DmaFence:
    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.signaled = False
        self.error = 0
        self._wq = WaitQueue(sched, f"fence:{name}")

    def __repr__(self) -> str:
        return f"<DmaFence {self.name} {'signaled' if self.signaled else 'pending'}>"

    def signal(self, error: int = 0) -> None:
        if self.signaled:
            return
        self.signaled = True
        self.error = error
        self.sched.emit("dma_fence", "signal", fence=self.name)
        self._wq.wake_up()

    def wait(self, timeout_ns: int | None = None) -> bool:
        """dma_fence_wait_timeout: True when signaled, False on timeout."""
        return self._wq.wait_event(lambda: self.signaled, timeout_ns)
