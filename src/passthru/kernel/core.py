"""The simulated kernel: what is global in Linux and belongs to no subsystem (init/main.c's
start_kernel, kernel/fork.c's tasklist, lib/idr.c, fs/char_dev.c + devtmpfs).

A :class:`Kernel` boots like start_kernel(): physical memory (hw/physmem.py, the machine's
RAM and MMIO), the core's own state, every subsystem's statics, then do_initcalls() — the
initcall table of kernel/init.py, where each subsystem registered its init, its statics and
its hooks. Core imports no subsystem (only the VFS's File and Process types, for
annotations) and calls none by name: a subsystem keeps its own state (a per-kernel static,
or objects it hangs off files) and gives the checker what it needs through the hooks it
registered (``invariant``, ``leaks``). A SimHost is one process of a Kernel;
``SimHost.process()`` adds another sharing it.

Invariants: ``live`` counts model objects by kind (files, VMs, memslots, pins...) — after
every process closed everything, :meth:`Kernel.leaks` is empty: nothing live, and nothing any
subsystem's teardown hook reports (no RAM allocated, no pin left...). ``devices`` holds one
opener per device node path.

Locking (which lock protects which field):
- ``devices`` (the device nodes drivers registered: cdev_add/misc_register + devtmpfs):
  written by initcalls at boot only, before any task runs (register_device refuses
  otherwise); read by every open.
- ``processes`` (tasklist_lock): an ``atomic`` tracked list (the implicit lock).
- ``_ids`` (the IDAs behind object names, each under its own spinlock): ``atomic`` tracked —
  which task creates the next VM decides its name, so the explorer must see those accesses.
- ``_statics`` (every subsystem's statics, see kernel/init.py): the dict is written at boot
  only; each static is tracked (or not) as its subsystem says.
- ``live``: the model's own accounting for the teardown check, not kernel state; untracked.
- ``profile``, ``machine``, ``sched``, ``phys``, ``initcalls``, ``_booting``: set at boot,
  never changed afterwards.
The boot order of the tracked structures is fixed (it names their checker locations).
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import kerr
from ..hw.machine import Machine
from ..hw.physmem import PhysMem
from ..sim.scheduler import Scheduler
from ..sim.track import TrackedDict, TrackedList
from . import init
from .profile import Profile

if TYPE_CHECKING:
    from .fs.file import File
    from .fs.process import Process

Opener = Callable[["Process", int], "File"]


class Kernel:
    def __init__(self, profile: Profile, machine: Machine, sched: Scheduler) -> None:
        init.link()  # the built-in subsystems' registrations (kernel/init.py)
        self.profile = profile
        self.machine = machine
        self.sched = sched
        self.phys = PhysMem(sched, machine)
        self.devices: dict[str, Opener] = TrackedDict(label="kernel.devices")
        self.live: dict[str, int] = {}
        self.processes: list[Process] = TrackedList(label="kernel.tasklist", atomic=True)
        self._statics: dict[str, Any] = init.make_statics(self)
        self._ids: dict[str, int] = TrackedDict(label="kernel.ida", atomic=True)
        self._booting = True
        self.initcalls: tuple[str, ...] = init.do_initcalls(self)
        self._booting = False

    # ----- what core offers every subsystem -------------------------------------------
    def register_device(self, path: str, opener: Opener) -> None:
        """Give ``path`` a device node (misc_register + devtmpfs): from an initcall only."""
        if not self._booting:
            raise RuntimeError(f"register_device({path!r}) after boot: register it from an "
                               "initcall (kernel/init.py)")
        self.devices[path] = opener

    def device_add(self, path: str, opener: Opener) -> None:
        """A driver's probe creates a device node (device_add + devtmpfs), at boot or later
        (a bind through driver_override or new_id); a node of the same path is EEXIST."""
        if path in self.devices:
            raise kerr(errno.EEXIST, f"device_add {path}: the node exists")
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

    def static(self, name: str) -> Any:
        """This kernel's instance of the static ``name`` (use the subsystem's handle from
        ``init.kernel_static`` rather than this)."""
        try:
            return self._statics[name]
        except KeyError:
            raise KeyError(f"no kernel static {name!r}: is its module in a built-in package "
                           "(kernel/init.py BUILTIN)?") from None

    # ----- what the checker asks: the subsystems' hooks -------------------------------
    def invariants(self) -> dict[str, Callable[[], str | None]]:
        """Every registered invariant, bound to this kernel, by name (link order)."""
        return {r.name: functools.partial(r.fn, self) for r in init.registered("invariant")}

    def invariant(self, name: str) -> Callable[[], str | None]:
        """The registered invariant ``name``, bound to this kernel: None when it holds."""
        found = self.invariants().get(name)
        if found is None:
            raise KeyError(f"no invariant {name!r}; registered: {sorted(self.invariants())}")
        return found

    def leaks(self) -> list[str]:
        """What is still alive: core's live objects, then what each subsystem's teardown
        hook reports (link order) — the checker's leak check after teardown."""
        out = [f"{n} {kind} object(s) alive" for kind, n in sorted(self.live.items())]
        for r in init.registered("teardown"):
            out.extend(r.fn(self))
        return out
