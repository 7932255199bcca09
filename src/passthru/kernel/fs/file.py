"""struct file and its f_op table (include/linux/fs.h, fs/file_table.c).

A File is reference counted: every fd that points at it holds one reference, and so does every
kernel object that took one (a VMA's vm_file, a KVM VM holding its /dev/kvm, ...). ``release``
runs once, when the last reference goes — the kernel's __fput.

The default methods return what fs/read_write.c, fs/ioctl.c, mm/mmap.c and fs/open.c return
for a file whose f_op lacks that method.

Locking: the reference count is the kernel's file_ref_t — atomic, with release/acquire
ordering on the last put — so it is a tracked ``atomic`` cell: __fput (``release``) sees
everything the other holders did. Leaves out: f_pos locking, fsnotify, O_APPEND.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...sim.track import Cell
from ...uapi import linux as L

if TYPE_CHECKING:
    from ..core import Kernel
    from ..mm.vma import Vma
    from .process import Process

FMODE_READ = 0x1
FMODE_WRITE = 0x2


def fmode_from_flags(flags: int) -> int:
    acc = flags & L.O_ACCMODE
    mode = 0
    if acc in (L.O_RDONLY, L.O_RDWR):
        mode |= FMODE_READ
    if acc in (L.O_WRONLY, L.O_RDWR):
        mode |= FMODE_WRITE
    return mode


class File:
    """An open file description. Subclasses are the f_op tables of the modelled drivers."""

    kind = "file"
    regular = False  # S_ISREG: ftruncate and fallocate apply
    fmode_pread = False  # FMODE_PREAD/PWRITE: pread and pwrite allowed (else ESPIPE)
    noexec = True  # on a noexec mount (anon inodes): PROT_EXEC mappings get EPERM

    def __init__(self, kernel: Kernel, flags: int, name: str) -> None:
        self.kernel = kernel
        self.f_flags = flags
        self.f_mode = fmode_from_flags(flags)
        self.f_pos = 0
        self.name = name
        self._ref: Cell[int] = Cell(1, label=f"{name}.f_count", atomic=True)
        self.released = False
        kernel.track(self.kind, +1)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ref={self.refcount}>"

    # ----- reference counting (fget/fput) -----------------------------------------------
    @property
    def refcount(self) -> int:
        return self._ref.peek()

    def get(self) -> File:
        assert not self.released, f"fget on released {self!r}"
        self._ref.set(self._ref.get() + 1)
        return self

    def put(self) -> None:
        n = self._ref.get()
        assert n > 0, f"fput underflow on {self!r}"
        self._ref.set(n - 1)
        if n == 1:
            self.released = True
            self.kernel.sched.emit("fs", "release", file=self.name)
            self.release()
            self.kernel.track(self.kind, -1)

    def release(self) -> None:
        """f_op->release: drop what the open file held."""

    # ----- f_op defaults -------------------------------------------------------------------
    def ioctl(self, proc: Process, cmd: int, arg: Any) -> int:
        raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: {self.kind} has no such ioctl")

    def read(self, proc: Process, n: int, pos: int | None) -> bytes:
        raise kerr(errno.EINVAL, f"read: {self.kind} has no read method (FMODE_CAN_READ clear)")

    def write(self, proc: Process, data: bytes, pos: int | None) -> int:
        raise kerr(errno.EINVAL, f"write: {self.kind} has no write method (FMODE_CAN_WRITE clear)")

    def mmap(self, proc: Process, vma: Vma) -> None:
        raise kerr(errno.ENODEV, f"mmap: {self.kind} has no mmap method")

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        raise kerr(errno.EOPNOTSUPP, f"fallocate: {self.kind} has no fallocate method")

    def truncate(self, length: int) -> None:
        raise kerr(errno.EINVAL, f"ftruncate: {self.kind} is not a regular file")

    def fcntl_seals(self) -> Any:
        """The memfd seal holder, or None when the file cannot be sealed (EINVAL)."""
        return None

    def size(self) -> int:
        return 0

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        """vm_ops->fault for file range ``[start, end)``: return (fstart, fend, phys) pieces
        or raise passthru.Fault (SIGBUS)."""
        raise NotImplementedError
