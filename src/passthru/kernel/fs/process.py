"""A process: its fd table (fs/file.c) and address space, and the syscall entry points the
Host protocol calls (fs/open.c, fs/read_write.c, fs/ioctl.c, fs/fcntl.c, mm/mmap.c).

Each syscall does the VFS's generic checks in the kernel's order, then calls the file's f_op.

Locking: the fd table (``fds``, and the close-on-exec bits in ``cloexec``, which are recorded
as accesses to the fd's slot of the table) is changed under files->file_lock and read by
fdget under RCU — a spinlock the model leaves implicit, so the table is ``atomic``.
Leaves out: credentials and permissions beyond f_mode, signals, O_APPEND, dup2/dup3, the
file reference fdget takes in a multi-threaded process (here a close racing a syscall on the
same fd can release the file while the syscall still runs; in Linux the release waits).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...sim import track
from ...sim.track import TrackedDict
from ...uapi import linux as L
from ..mm.memfd import MAX_LFS_FILESIZE, memfd_create
from ..mm.vma import Mm
from .file import FMODE_READ, FMODE_WRITE, File
from .uaccess import UserArg

if TYPE_CHECKING:
    from ..core import Kernel

FD_START = 3  # 0-2 are the process's stdio, as on a real host
RLIMIT_NOFILE = 1024  # the usual soft limit; fixed so runs are deterministic


class Process:
    def __init__(self, kernel: Kernel, name: str) -> None:
        self.kernel = kernel
        self.name = name
        self.fds: dict[int, File] = TrackedDict(label=f"proc {name}.fdtable", atomic=True)
        self.cloexec: set[int] = set()
        self.mm = Mm(self)
        kernel.processes.append(self)

    # ----- fd table --------------------------------------------------------------------
    def fd_install(self, file: File, cloexec: bool = False) -> int:
        """Install ``file`` (its reference moves to the table) at the lowest free fd."""
        fd = FD_START
        while fd in self.fds:
            fd += 1
        if fd >= RLIMIT_NOFILE:
            file.put()
            raise kerr(errno.EMFILE, f"no free fd below RLIMIT_NOFILE ({RLIMIT_NOFILE})")
        self.fds[fd] = file
        if cloexec:
            self.cloexec.add(fd)
        return fd

    def _fd_bits(self, fd: int, write: bool) -> None:
        """close_on_exec bits live in the fd table: an access to the fd's slot."""
        if track.active() is not None:
            (track.write if write else track.read)(self.fds, fd, fd + 1)

    def fget(self, fd: int, what: str = "") -> File:
        f = self.fds.get(fd)
        if f is None:
            raise kerr(errno.EBADF, f"{what or 'fget'}: fd {fd} is not open")
        return f

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
        f.put()

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        f = self.fget(fd, f"ioctl {request:#x}")
        request &= 0xFFFFFFFF  # the kernel's cmd is an unsigned int
        return f.ioctl(self, request, UserArg(self, arg))

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        file = None
        if not flags & L.MAP_ANONYMOUS:
            file = self.fget(fd, "mmap")
        return self.mm.mmap(addr, length, prot, flags, file, offset)

    def munmap(self, addr: int, length: int) -> None:
        self.mm.munmap(addr, length)

    def memfd_create(self, name: str, flags: int) -> int:
        f = memfd_create(self.kernel, name, flags)
        return self.fd_install(f, bool(flags & L.MFD_CLOEXEC))

    def fcntl(self, fd: int, cmd: int, arg: int) -> int:
        f = self.fget(fd, f"fcntl {cmd}")
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
        if length < 0:
            raise kerr(errno.EINVAL, "ftruncate: negative length")
        f = self.fget(fd, "ftruncate")
        if not f.regular or not f.f_mode & FMODE_WRITE:
            raise kerr(errno.EINVAL, "ftruncate: not a regular file open for writing")
        if length > MAX_LFS_FILESIZE:
            raise kerr(errno.EFBIG, "ftruncate: length beyond the file system's maximum")
        f.truncate(length)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        f = self.fget(fd, "fallocate")
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

    def _rw_check(self, f: File, mode: int, what: str, pos: int | None) -> None:
        if not f.f_mode & mode:
            verb = "reading" if mode == FMODE_READ else "writing"
            raise kerr(errno.EBADF, f"{what}: fd not open for {verb}")
        if pos is not None and pos < 0:
            raise kerr(errno.EINVAL, f"{what}: negative offset")

    def _pos_check(self, fd: int, pos: int | None, what: str) -> File:
        if pos is not None and pos < 0:
            raise kerr(errno.EINVAL, f"{what}: negative offset")
        f = self.fget(fd, what)
        if pos is not None and not f.fmode_pread:
            raise kerr(errno.ESPIPE, f"{what}: {f.kind} is not seekable (no FMODE_PREAD)")
        return f

    def read(self, fd: int, n: int, pos: int | None = None) -> bytes:
        f = self._pos_check(fd, pos, "pread" if pos is not None else "read")
        self._rw_check(f, FMODE_READ, "read", pos)
        return f.read(self, n, pos)

    def write(self, fd: int, data: bytes, pos: int | None = None) -> int:
        f = self._pos_check(fd, pos, "pwrite" if pos is not None else "write")
        self._rw_check(f, FMODE_WRITE, "write", pos)
        return f.write(self, bytes(data), pos)

    def exit(self) -> None:
        """do_exit: close every fd and tear down the address space."""
        for fd in sorted(self.fds):
            self.close(fd)
        self.mm.exit_mmap()
