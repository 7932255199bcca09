"""The device-memory cgroup controller (kernel/cgroup/dmem.c, include/linux/cgroup_dmem.h):
a region per device memory (e.g. a GPU's VRAM) with a usage and a limit.

dmem_cgroup_try_charge fails with -EAGAIN when the charge would pass the limit (the caller,
TTM, may then evict from the pool that hit the limit). Pinned buffers cannot be evicted, so a
pin past the limit fails with that error and nothing is charged — **[unconfirmed]** that the
error userspace finally sees from a pin is EAGAIN (docs/fidelity.md). Charges are whole
buffers, never pages. Leaves out: the cgroup hierarchy (one cgroup), min/low protection.
"""

from __future__ import annotations

import errno

from ...errors import kerr


class DmemRegion:
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.usage = 0
        self.failcnt = 0

    def try_charge(self, size: int, what: str) -> None:
        if self.usage + size > self.limit:
            self.failcnt += 1
            raise kerr(errno.EAGAIN, f"dmem_cgroup_try_charge: {what} needs {size:#x} bytes of "
                       f"{self.name}; {self.usage:#x} of {self.limit:#x} already charged")
        self.usage += size

    def uncharge(self, size: int) -> None:
        assert self.usage >= size, "dmem uncharge below zero"
        self.usage -= size
