"""The device-memory cgroup controller (kernel/cgroup/dmem.c, include/linux/cgroup_dmem.h):
a region per device memory (e.g. a GPU's VRAM) with a usage and a limit.

dmem_cgroup_try_charge fails with -EAGAIN when the charge would pass the limit (the caller,
TTM, may then evict from the pool that hit the limit). Pinned buffers cannot be evicted, so a
pin past the limit fails with that error and nothing is charged — **[unconfirmed]** that the
error userspace finally sees from a pin is EAGAIN (docs/fidelity.md). Charges are whole
buffers, never pages. Leaves out: the cgroup hierarchy (one cgroup), min/low protection.

Invariants: 0 <= ``usage`` <= ``limit``; a failed charge changes nothing but ``failcnt``.
Units: bytes (``usage``, ``limit``, charges); ``failcnt`` counts refusals.

Locking (one line per field):
- ``usage``, ``failcnt``: a page_counter (atomic_long updates), so the region is one
  ``atomic`` tracked location, written by every charge and uncharge.
- ``limit``, ``name``: set when the region is made (no dmem.max writes are modelled).
"""

from __future__ import annotations

import errno

from ...errors import kerr
from ...sim import track


class DmemRegion(track.Tracked):
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.usage = 0
        self.failcnt = 0
        self.track_init(f"dmem.{name}", atomic=True)

    def try_charge(self, size: int, what: str) -> None:
        track.write(self)  # page_counter_try_charge: an atomic read-modify-write
        if self.usage + size > self.limit:
            self.failcnt += 1
            raise kerr(errno.EAGAIN, f"dmem_cgroup_try_charge: {what} needs {size:#x} bytes of "
                       f"{self.name}; {self.usage:#x} of {self.limit:#x} already charged")
        self.usage += size

    def uncharge(self, size: int) -> None:
        track.write(self)
        assert self.usage >= size, "dmem uncharge below zero"
        self.usage -= size
