"""struct file and its f_op table (include/linux/fs.h, fs/file_table.c).

A File is reference counted: every fd that points at it holds one reference, and so does every
kernel object that took one (a VMA's vm_file, a KVM VM holding its /dev/kvm, ...) and every
syscall running on it (``Process.fget``/``fdget``, fs/process.py). ``release`` runs once,
when the last reference goes (:func:`fput`, the kernel's __fput) — so a file is never released
under a running ioctl, even when another task closes its fd meanwhile.

The default methods return what fs/read_write.c, fs/ioctl.c, mm/mmap.c and fs/open.c return
for a file whose f_op lacks that method. ``unlocked_ioctl`` is a table (fs/ioctl_table.py): a
file class sets ``ioctl_table`` and :meth:`File.ioctl` dispatches through it; a class without
one has no unlocked_ioctl (ENOTTY, as vfs_ioctl's -ENOIOCTLCMD).

Invariants: ``refcount`` >= 1 until ``released``; ``release`` runs exactly once, after which
the file is never got again. Units: ``f_pos``, sizes and offsets in bytes.
Locking (which lock protects which field):
- ``_ref`` (f_count, the kernel's file_ref_t): atomic, release/acquire on the last put — a
  tracked ``atomic`` cell, so __fput (``release``) sees everything the other holders did;
- ``f_flags``, ``f_mode``, ``name``: set at open, immutable after;
- ``f_pos``: untracked (the kernel's f_pos_lock; no modelled file reads it concurrently);
- ``released``: written once by the last put (ordered by ``_ref``).
Leaves out: f_pos locking, fsnotify, O_APPEND, the deferral of __fput to task_work.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...sim.track import Cell
from ...uapi import linux as L
from .ioctl_table import IoctlTable

if TYPE_CHECKING:
    from ..core import Kernel
    from ..mm.vma import Vma
    from .process import Process

FMODE_READ = 0x1
FMODE_WRITE = 0x2


def fput(file: File) -> None:
    """fput: drop a reference taken by fget/get_file; the last one releases the file."""
    file.put()


def no_such_ioctl(file: File, proc: Process, cmd: int, arg: Any) -> int:
    """The ENOTTY every file without the request gives (vfs_ioctl's -ENOIOCTLCMD): the
    default of most ioctl tables."""
    raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: {file.kind} has no such ioctl")


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
    ioctl_table: IoctlTable | None = None  # f_op->unlocked_ioctl; None: ENOTTY

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

    # ----- reference counting (get_file/fput) -------------------------------------------
    @property
    def refcount(self) -> int:
        return self._ref.peek()

    def get(self) -> File:
        """get_file: one more reference (the caller already holds one)."""
        assert not self.released, f"fget on released {self!r}"
        self._ref.set(self._ref.get() + 1)
        return self

    def put(self) -> None:
        """fput: drop a reference; the last one releases the file."""
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
        """f_op->unlocked_ioctl: the class's table, or ENOTTY when it has none."""
        if self.ioctl_table is None:
            return no_such_ioctl(self, proc, cmd, arg)
        return self.ioctl_table.dispatch(self, proc, cmd, arg)

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
