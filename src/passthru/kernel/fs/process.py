"""A process: its fd table (fs/file.c) and address space, and the syscall entry points the
Host protocol calls (fs/open.c, fs/read_write.c, fs/ioctl.c, fs/fcntl.c, mm/mmap.c).

Each syscall does the VFS's generic checks in the kernel's order, then calls the file's f_op.
A syscall on an fd holds a reference to its file for the whole call (:meth:`Process.fdget`,
fget … fput), so a close racing it only drops the fd: the file is released when the syscall
ends, as in Linux. :meth:`Process.fget` is the kernel's fget (a reference the caller drops
with ``fput``); :meth:`Process.lookup_fd` looks a file up without one, for model-only callers
that inspect an open fd (the fd keeps the file alive).

Invariants: every file in ``fds`` holds one reference per fd pointing at it; fds are
``FD_START`` ≤ fd < ``RLIMIT_NOFILE`` and the lowest free one is used.
Locking (which lock protects which field):
- ``fds`` (the fd table): files->file_lock for changes, RCU for fdget's lookup — a spinlock
  the model leaves implicit, so the table is an ``atomic`` tracked dict;
- ``cloexec`` (the close_on_exec bits): under the same file_lock, recorded as accesses to the
  fd's slot of ``fds`` (``_fd_bits``);
- ``mm``: the address space, with its own mmap_lock (mm/vma.py).
Leaves out: credentials and permissions beyond f_mode, signals, O_APPEND, dup2/dup3, fdget's
single-threaded shortcut (the kernel takes no reference when the fd table is not shared; the
model's tasks share one table, so every syscall takes one).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...sim import track
from ...sim.track import TrackedDict
from ...uapi import linux as L
from ..mm.memfd import MAX_LFS_FILESIZE, memfd_create
from ..mm.vma import Mm
from .file import FMODE_READ, FMODE_WRITE, File, fput
from .uaccess import UserArg

if TYPE_CHECKING:
    from ..core import Kernel

# include/linux/fs.h MAX_RW_COUNT: INT_MAX & PAGE_MASK, the most one read or write moves
MAX_RW_COUNT = 0x7FFFF000
FD_START = 3  # 0-2 are the process's stdio, as on a real host
RLIMIT_NOFILE = 1024  # the usual soft limit; fixed so runs are deterministic
# RLIMIT_MEMLOCK's default since 5.16 (MLOCK_LIMIT, 8 MiB), for pinned-page accounting.
RLIMIT_MEMLOCK = 8 << 20
#: The capabilities a process has by default: root's, as the tests run (capable()).
ROOT_CAPS = frozenset({"CAP_IPC_LOCK", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN", "CAP_SYS_RAWIO"})


def _loff_t(x: int) -> int:
    """``x`` as the kernel's loff_t (a signed 64-bit register: 2^63 and above are negative)."""
    return ((x + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


class Process:
    def __init__(self, kernel: Kernel, name: str) -> None:
        self.kernel = kernel
        self.name = name
        self.fds: dict[int, File] = TrackedDict(label=f"proc {name}.fdtable", atomic=True)
        self.cloexec: set[int] = set()
        self.mm = Mm(self)
        # Credentials for capable() and the rlimits pinned pages are charged against: uid 0
        # with root's capabilities unless a scenario drops them (set before any task runs).
        self.uid = 0
        self.caps: frozenset[str] = ROOT_CAPS
        self.rlimit_memlock = RLIMIT_MEMLOCK
        kernel.processes.append(self)

    def capable(self, cap: str) -> bool:
        """capable(CAP_*): does the process hold ``cap``?"""
        return cap in self.caps

    # ----- fd table --------------------------------------------------------------------
    def fd_install(self, file: File, cloexec: bool = False) -> int:
        """Install ``file`` (its reference moves to the table) at the lowest free fd."""
        fd = FD_START
        while fd in self.fds:
            fd += 1
        if fd >= RLIMIT_NOFILE:
            fput(file)
            raise kerr(errno.EMFILE, f"no free fd below RLIMIT_NOFILE ({RLIMIT_NOFILE})")
        self.fds[fd] = file
        if cloexec:
            self.cloexec.add(fd)
        return fd

    def _fd_bits(self, fd: int, write: bool) -> None:
        """close_on_exec bits live in the fd table: an access to the fd's slot."""
        if track.active() is not None:
            (track.write if write else track.read)(self.fds, fd, fd + 1)

    def lookup_fd(self, fd: int, what: str = "") -> File:
        """files_lookup_fd_raw: the file at ``fd`` *without* a reference (EBADF if none),
        for callers that only look while the fd keeps the file alive."""
        f = self.fds.get(fd)
        if f is None:
            raise kerr(errno.EBADF, f"{what or 'fget'}: fd {fd} is not open")
        return f

    def fget_or_none(self, fd: int) -> File | None:
        """fget as the kernel spells it: the file at ``fd`` with a new reference, or None."""
        f = self.fds.get(fd)
        return None if f is None else f.get()

    def fget(self, fd: int, what: str = "") -> File:
        """fget: the file at ``fd`` with a new reference (EBADF if none); drop it with fput."""
        return self.lookup_fd(fd, what).get()

    @contextmanager
    def fdget(self, fd: int, what: str) -> Iterator[File]:
        """``CLASS(fd, f)(fd)``: the file at ``fd``, held (fget) for the block, fput after."""
        f = self.fget(fd, what)
        try:
            yield f
        finally:
            fput(f)

    # ----- syscalls ----------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        file = self.kernel.open_device(self, path, flags)
        return self.fd_install(file, bool(flags & L.O_CLOEXEC))

    def close(self, fd: int) -> None:
        f = self.fds.pop(fd, None)
        if f is None:
            raise kerr(errno.EBADF, f"close: fd {fd} is not open")
        self._fd_bits(fd, True)
        self.cloexec.discard(fd)
        fput(f)

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        with self.fdget(fd, f"ioctl {request:#x}") as f:
            request &= 0xFFFFFFFF  # the kernel's cmd is an unsigned int
            return f.ioctl(self, request, UserArg(self, arg))

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        if flags & L.MAP_ANONYMOUS:
            return self.mm.mmap(addr, length, prot, flags, None, offset)
        with self.fdget(fd, "mmap") as file:  # the VMA takes its own reference
            return self.mm.mmap(addr, length, prot, flags, file, offset)

    def munmap(self, addr: int, length: int) -> None:
        self.mm.munmap(addr, length)

    def memfd_create(self, name: str, flags: int) -> int:
        f = memfd_create(self.kernel, name, flags)
        return self.fd_install(f, bool(flags & L.MFD_CLOEXEC))

    def fcntl(self, fd: int, cmd: int, arg: int) -> int:
        with self.fdget(fd, f"fcntl {cmd}") as f:
            return self._do_fcntl(f, fd, cmd, arg)

    def _do_fcntl(self, f: File, fd: int, cmd: int, arg: int) -> int:
        """do_fcntl, with the file held."""
        if cmd == L.F_GETFD:
            self._fd_bits(fd, False)
            return L.FD_CLOEXEC if fd in self.cloexec else 0
        if cmd == L.F_SETFD:
            self._fd_bits(fd, True)
            (self.cloexec.add if arg & L.FD_CLOEXEC else self.cloexec.discard)(fd)
            return 0
        if cmd == L.F_GETFL:
            return f.f_flags
        if cmd in (L.F_DUPFD, L.F_DUPFD_CLOEXEC):
            if not 0 <= arg < RLIMIT_NOFILE:  # f_dupfd takes it as unsigned int
                raise kerr(errno.EINVAL, f"fcntl F_DUPFD: {arg} >= RLIMIT_NOFILE ({RLIMIT_NOFILE})")
            new = max(arg, FD_START)
            while new in self.fds:
                new += 1
            if new >= RLIMIT_NOFILE:
                raise kerr(errno.EMFILE, f"fcntl F_DUPFD: no free fd below {RLIMIT_NOFILE}")
            self.fds[new] = f.get()
            self._fd_bits(new, True)
            if cmd == L.F_DUPFD_CLOEXEC:
                self.cloexec.add(new)
            return new
        if cmd in (L.F_ADD_SEALS, L.F_GET_SEALS):
            seals = f.fcntl_seals()
            if seals is None:
                raise kerr(errno.EINVAL, f"fcntl: {f.kind} does not support seals")
            if cmd == L.F_GET_SEALS:
                return int(seals.get_seals())
            seals.add_seals(arg & 0xFFFFFFFF)
            return 0
        raise kerr(errno.EINVAL, f"fcntl: unknown command {cmd}")

    def ftruncate(self, fd: int, length: int) -> None:
        length = _loff_t(length)
        if length < 0:
            raise kerr(errno.EINVAL, "ftruncate: negative length")
        with self.fdget(fd, "ftruncate") as f:
            if not f.regular or not f.f_mode & FMODE_WRITE:
                raise kerr(errno.EINVAL, "ftruncate: not a regular file open for writing")
            if length > MAX_LFS_FILESIZE:
                raise kerr(errno.EFBIG, "ftruncate: length beyond the file system's maximum")
            f.truncate(length)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        offset, length = _loff_t(offset), _loff_t(length)
        with self.fdget(fd, "fallocate") as f:
            if offset < 0 or length <= 0:
                raise kerr(errno.EINVAL, "fallocate: negative offset or non-positive length")
            if mode & L.FALLOC_FL_PUNCH_HOLE and not mode & L.FALLOC_FL_KEEP_SIZE:
                raise kerr(errno.EOPNOTSUPP, "fallocate: PUNCH_HOLE without KEEP_SIZE")
            if not f.f_mode & FMODE_WRITE:
                raise kerr(errno.EBADF, "fallocate: fd not open for writing")
            if not f.regular:
                raise kerr(errno.ENODEV, f"fallocate: {f.kind} is not a regular file")
            if offset + length > MAX_LFS_FILESIZE:
                raise kerr(errno.EFBIG, "fallocate: range beyond the maximum file size")
            f.fallocate(mode, offset, length)

    @contextmanager
    def _fdget_rw(self, fd: int, pos: int | None, mode: int, count: int) -> Iterator[File]:
        """ksys_read/ksys_pread64 (and the write forms): the offset, the fd, FMODE_PREAD,
        the file's mode, then rw_verify_area, in the kernel's order; the file held for the
        block. ``pos`` is a loff_t (a value ≥ 2^63 is negative), ``count`` a size_t."""
        verb, ing = ("read", "reading") if mode == FMODE_READ else ("write", "writing")
        what = verb if pos is None else f"p{verb}"
        if pos is not None and _loff_t(pos) < 0:
            raise kerr(errno.EINVAL, f"{what}: negative offset {_loff_t(pos)}")
        with self.fdget(fd, what) as f:
            if pos is not None and not f.fmode_pread:
                raise kerr(errno.ESPIPE, f"{what}: {f.kind} is not seekable (no FMODE_PREAD)")
            if not f.f_mode & mode:
                raise kerr(errno.EBADF, f"{verb}: fd not open for {ing}")
            # rw_verify_area: a count that is negative as ssize_t, or a position + count past
            # LLONG_MAX, is EINVAL (no file here has FMODE_UNSIGNED_OFFSET).
            if count < 0 or count > MAX_LFS_FILESIZE:
                raise kerr(errno.EINVAL, f"{what}: count {count} is negative as ssize_t")
            start = f.f_pos if pos is None else _loff_t(pos)
            if start + count > MAX_LFS_FILESIZE:
                raise kerr(errno.EINVAL, f"{what}: position {start:#x} + count {count:#x} "
                           "overflows loff_t")
            yield f

    def read(self, fd: int, n: int, pos: int | None = None) -> bytes:
        with self._fdget_rw(fd, pos, FMODE_READ, n) as f:
            # vfs_read: at most MAX_RW_COUNT bytes per call
            return f.read(self, min(n, MAX_RW_COUNT), None if pos is None else _loff_t(pos))

    def write(self, fd: int, data: bytes, pos: int | None = None) -> int:
        with self._fdget_rw(fd, pos, FMODE_WRITE, len(data)) as f:
            return f.write(self, bytes(data[:MAX_RW_COUNT]),
                           None if pos is None else _loff_t(pos))

    def exit(self) -> None:
        """do_exit: close every fd and tear down the address space."""
        for fd in sorted(self.fds):
            self.close(fd)
        self.mm.exit_mmap()
