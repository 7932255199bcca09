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
from ..sim.log import RingEventLog
from ..sim.scheduler import Scheduler
from .protocol import IoctlArg

#: How many events a plain ``SimHost()`` keeps (the last ones); ``SimHost(log=True)`` keeps all.
DEFAULT_LOG_LIMIT = 10_000


class SimHost:
    """One process on a simulated Linux kernel, behind the Host protocol.

    ``SimHost()`` boots the default machine under the default kernel profile;
    ``SimHost("linux-6.19")`` (a profile name or a :class:`~passthru.kernel.profile.Profile`)
    picks another. ``process(name)`` gives another process on the same kernel. The calls are
    libc's (``open``, ``ioctl``, ``mmap``, ...): they return what the syscall returns, raise
    ``OSError`` with the kernel's errno, and raise :class:`passthru.Fault` where a real process
    would get SIGBUS or SIGSEGV.

    The event log (``host.sched.log``): by default only the last ``DEFAULT_LOG_LIMIT`` events
    are kept, so a long-lived host stays small; ``log=True`` keeps every event, ``log=False``
    keeps none (violations only), ``log=N`` keeps the last N. A ``sched`` you pass keeps the
    log it was made with (``Scheduler(log=...)``).

    Model-only extras: ``kernel``, ``sched``, ``vcpu(fd)``, ``leaks()``, ``exit()``.
    """

    def __init__(
        self,
        profile: str | Profile = DEFAULT_PROFILE,
        machine: Machine | None = None,
        sched: Scheduler | None = None,
        name: str = "vmm",
        *,
        log: bool | int | None = None,
        _kernel: Kernel | None = None,
    ) -> None:
        if _kernel is None:
            prof = get_profile(profile) if isinstance(profile, str) else profile
            if sched is None:
                sched = Scheduler(log=log is not False)
                if log is None or (not isinstance(log, bool) and isinstance(log, int)):
                    sched.log = RingEventLog(DEFAULT_LOG_LIMIT if log is None else log)
            elif log is not None:
                raise TypeError("SimHost(log=...) applies to the scheduler it makes; "
                                "make yours with Scheduler(log=...) instead")
            _kernel = Kernel(prof, machine or default_machine(), sched)
        self.kernel = _kernel
        self.sched = _kernel.sched
        self.proc = Process(_kernel, name)

    def __repr__(self) -> str:
        return f"<SimHost {self.proc.name} on {self.kernel.profile.name}>"

    @property
    def profile(self) -> Profile:
        """The kernel profile this host's kernel runs (a version, bugs and designs)."""
        return self.kernel.profile

    def process(self, name: str) -> SimHost:
        """Another process on the same simulated kernel (its own fds and address space)."""
        return SimHost(name=name, _kernel=self.kernel)

    # The Host protocol (host/protocol.py): each is the libc call of the same name.
    def open(self, path: str, flags: int) -> int:
        """open(2): open a device node (``/dev/kvm``, ``/dev/dma_heap/system``, ...); the fd."""
        return self.proc.open(path, flags)

    def close(self, fd: int) -> None:
        """close(2): drop this fd's reference to its file."""
        self.proc.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """ioctl(2): ``arg`` is an int, a ctypes struct or a writable buffer (updated in place
        for _IOR/_IOWR requests); returns the ioctl's non-negative result."""
        return self.proc.ioctl(fd, request, arg)

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        """mmap(2): map ``length`` bytes of ``fd`` (or anonymous memory, ``fd=-1``); the
        address in this process."""
        return self.proc.mmap(addr, length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2): unmap [addr, addr+length) in this process."""
        self.proc.munmap(addr, length)

    def memfd_create(self, name: str, flags: int) -> int:
        """memfd_create(2): a new anonymous shmem file (``MFD_*`` flags); the fd."""
        return self.proc.memfd_create(name, flags)

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """fcntl(2): seals (``F_ADD_SEALS``/``F_GET_SEALS``), ``F_DUPFD``, fd flags."""
        return self.proc.fcntl(fd, cmd, arg)

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2): set the file's size."""
        self.proc.ftruncate(fd, length)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2): allocate, or punch a hole with ``FALLOC_FL_PUNCH_HOLE``."""
        self.proc.fallocate(fd, mode, offset, length)

    def read(self, fd: int, n: int) -> bytes:
        """read(2): up to ``n`` bytes at the file position, which advances."""
        return self.proc.read(fd, n)

    def write(self, fd: int, data: bytes) -> int:
        """write(2): write at the file position, which advances; the bytes written."""
        return self.proc.write(fd, data)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """pread(2): up to ``n`` bytes at ``offset``; the file position does not move."""
        return self.proc.read(fd, n, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2): write at ``offset``; the file position does not move."""
        return self.proc.write(fd, data, offset)

    def peek(self, addr: int, n: int) -> bytes:
        """Read ``n`` bytes of this process's memory at ``addr`` (as a load would: faults in
        pages, raises passthru.Fault where the process would get SIGBUS/SIGSEGV)."""
        return self.proc.mm.access(addr, n, write=False)

    def poke(self, addr: int, data: bytes) -> None:
        """Write ``data`` into this process's memory at ``addr`` (as a store would)."""
        self.proc.mm.access(addr, len(data), write=True, data=bytes(data))

    # Model-only extras, not part of the Host protocol.
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
        """What the kernel still holds that it should not (the checker's leak check): live
        objects and each subsystem's teardown report; empty when nothing leaked."""
        return self.kernel.leaks()

    def __enter__(self) -> SimHost:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exit()
