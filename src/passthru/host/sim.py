"""SimHost: the Host protocol served by the model (docs/design.md, contract 2).

A SimHost is one process on a simulated kernel. ``SimHost()`` boots the default machine under
the default profile; ``process(name)`` returns another process on the same kernel (its own fd
table and address space). Every call goes through the simulated syscall layer, raises OSError
with the kernel's errno, and raises passthru.Fault where the real process would get SIGBUS or
SIGSEGV.

Model-only extras (not part of the protocol): ``kernel`` (the simulated kernel), ``sched``
(its scheduler: spawn tasks, read the event log and violations), ``vcpu(fd)`` (the modelled
vCPU behind a vCPU fd, to perform guest accesses), ``leaks()`` (``Kernel.leaks``: core's live
objects and every subsystem's teardown hook — what the checker's leak check reports).

Booting: ``SimHost()`` makes a :class:`~passthru.kernel.core.Kernel`, which links the
built-in subsystems and runs their initcalls (kernel/init.py); which device nodes exist is
decided there, not here. Not shared state: a SimHost is one process's handle; everything
tasks share lives in the kernel.
"""

from __future__ import annotations

from typing import Any

from ..hw.machine import Machine, default_machine
from ..kernel.core import Kernel
from ..kernel.fs.process import Process
from ..kernel.kvm.kvm_main import VcpuFile
from ..kernel.profile import DEFAULT_PROFILE, Profile, get_profile
from ..sim.scheduler import Scheduler
from .protocol import IoctlArg


class SimHost:
    def __init__(
        self,
        profile: str | Profile = DEFAULT_PROFILE,
        machine: Machine | None = None,
        sched: Scheduler | None = None,
        name: str = "vmm",
        *,
        _kernel: Kernel | None = None,
    ) -> None:
        if _kernel is None:
            prof = get_profile(profile) if isinstance(profile, str) else profile
            _kernel = Kernel(prof, machine or default_machine(), sched or Scheduler())
        self.kernel = _kernel
        self.sched = _kernel.sched
        self.proc = Process(_kernel, name)

    def __repr__(self) -> str:
        return f"<SimHost {self.proc.name} on {self.kernel.profile.name}>"

    @property
    def profile(self) -> Profile:
        return self.kernel.profile

    def process(self, name: str) -> SimHost:
        """Another process on the same simulated kernel."""
        return SimHost(name=name, _kernel=self.kernel)

    # ----- the Host protocol --------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        return self.proc.open(path, flags)

    def close(self, fd: int) -> None:
        self.proc.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        return self.proc.ioctl(fd, request, arg)

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        return self.proc.mmap(addr, length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        self.proc.munmap(addr, length)

    def memfd_create(self, name: str, flags: int) -> int:
        return self.proc.memfd_create(name, flags)

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        return self.proc.fcntl(fd, cmd, arg)

    def ftruncate(self, fd: int, length: int) -> None:
        self.proc.ftruncate(fd, length)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        self.proc.fallocate(fd, mode, offset, length)

    def read(self, fd: int, n: int) -> bytes:
        return self.proc.read(fd, n)

    def write(self, fd: int, data: bytes) -> int:
        return self.proc.write(fd, data)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return self.proc.read(fd, n, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return self.proc.write(fd, data, offset)

    def peek(self, addr: int, n: int) -> bytes:
        return self.proc.mm.access(addr, n, write=False)

    def poke(self, addr: int, data: bytes) -> None:
        self.proc.mm.access(addr, len(data), write=True, data=bytes(data))

    # ----- model-only extras ------------------------------------------------------------
    def vcpu(self, fd: int) -> Any:
        """The modelled vCPU behind vCPU fd ``fd`` (for guest memory accesses)."""
        f = self.proc.lookup_fd(fd, "vcpu")  # no reference: the fd keeps it
        if not isinstance(f, VcpuFile):
            raise TypeError(f"fd {fd} is not a vCPU fd")
        return f.vcpu

    def exit(self) -> None:
        """Close every fd and unmap everything, as process exit does."""
        self.proc.exit()

    def leaks(self) -> list[str]:
        return self.kernel.leaks()

    def __enter__(self) -> SimHost:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exit()
