"""The simulated kernel: one scheduler, one physical address space, a profile, device nodes.

Models what is global in Linux (init/main.c's world): the device nodes drivers register
(misc_register / cdev), the live kernel objects, and the processes. A SimHost is one process
of this kernel; ``SimHost.process()`` adds another sharing it.

``live`` counts kernel objects by kind (files, VMs, memslots, pins...): the teardown invariant
is that after every process closed everything, nothing is live and no RAM is allocated.

Tracking: the id allocators behind object names (``next_id``: the kernel's IDAs, each under
its own spinlock) and the lists of processes (tasklist_lock) and dma-bufs (db_list's lock)
are ``atomic`` tracked structures — which task creates the next VM decides its name, so the
explorer must see those accesses. ``devices`` is written at boot only. ``live`` is the
model's own accounting for the teardown check, not kernel state, and is not tracked.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import kerr
from ..hw.machine import Machine
from ..hw.physmem import PhysMem
from ..sim.scheduler import Scheduler
from ..sim.track import TrackedDict, TrackedList
from .profile import Profile

if TYPE_CHECKING:
    from .fs.file import File
    from .fs.process import Process

Opener = Callable[["Process", int], "File"]


class Kernel:
    def __init__(self, profile: Profile, machine: Machine, sched: Scheduler) -> None:
        self.profile = profile
        self.machine = machine
        self.sched = sched
        self.phys = PhysMem(sched, machine)
        self.devices: dict[str, Opener] = TrackedDict(label="kernel.devices")
        self.live: dict[str, int] = {}
        self.processes: list[Process] = TrackedList(label="kernel.tasklist", atomic=True)
        # live dma-bufs, for the checker's invariants
        self.dmabufs: list[Any] = TrackedList(label="dma_buf.db_list", atomic=True)
        self._ids: dict[str, int] = TrackedDict(label="kernel.ida", atomic=True)
        from .char.mem import mem_init
        from .dma_buf.heaps import heaps_init
        from .dma_buf.udmabuf import udmabuf_init
        from .kvm.kvm_main import kvm_init

        mem_init(self)
        kvm_init(self)
        heaps_init(self)
        udmabuf_init(self)

    def register_device(self, path: str, opener: Opener) -> None:
        self.devices[path] = opener

    def open_device(self, proc: Process, path: str, flags: int) -> File:
        opener = self.devices.get(path)
        if opener is None:
            raise kerr(errno.ENOENT, f"open {path}: no such device node in this machine/profile")
        return opener(proc, flags)

    def track(self, kind: str, delta: int) -> None:
        n = self.live.get(kind, 0) + delta
        if n:
            self.live[kind] = n
        else:
            self.live.pop(kind, None)

    def next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def leaks(self) -> list[str]:
        """What is still alive: kernel objects, allocated RAM, pins."""
        out = [f"{n} {kind} object(s) alive" for kind, n in sorted(self.live.items())]
        used = self.phys.allocated_bytes()
        if used:
            out.append(f"{used:#x} bytes of RAM still allocated")
        if len(self.phys.pins):
            out.append(f"{len(self.phys.pins)} pinned extent(s) left")
        return out
