"""LinuxHost: the Host protocol (docs/design.md contract 2) over the real kernel's system calls.

Every call goes through libc by ctypes (``use_errno=True``), so a failure carries the errno the
kernel returned; it is raised as ``OSError(errno, "<call>(<arguments>) [ENAME]")``. Addresses
are real addresses in this process: ``mmap`` returns what the kernel chose, ``peek``/``poke``
read and write them with ``ctypes.string_at``/``ctypes.memmove``, and user pointers inside ioctl
arguments are those same addresses.

The host remembers what it created so tests do not leak: the fds from ``open``,
``memfd_create``, ``fcntl(F_DUPFD*)`` and the ioctls known to return a new fd
(``FD_RETURNING_IOCTLS``; ``adopt`` adds others, e.g. an fd the kernel wrote into an output
struct), and the ranges it mapped. ``close_all`` (and leaving a ``with LinuxHost() as host:``
block) unmaps those ranges and closes those fds; a successful ``close``/``munmap`` through the
host forgets them.

What it leaves out:
- signals: a SIGBUS or SIGSEGV (touching a private guest_memfd page, ``peek`` of an unmapped
  address) kills the process instead of raising ``passthru.Fault`` as SimHost does; code that
  expects one must probe in a child process (tests/conformance has ``expect_sigbus``);
- ``EINTR`` is not retried, and there is no thread safety beyond the kernel's own;
- fds a process obtains other than through this object are not tracked unless ``adopt``-ed;
- no capability or device-node discovery: a missing node is the ``open`` error (ENOENT).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from types import TracebackType

from ..errors import kerr
from ..uapi.ioctl import _IO, _IOW, _IOWR
from .protocol import IoctlArg

_ULONG_MASK = (1 << 64) - 1

# ioctls whose positive return value is a new file descriptor. Numbers are spelled out so
# this module does not depend on the uapi mirrors it is used to test.
FD_RETURNING_IOCTLS: frozenset[int] = frozenset(
    {
        _IO(0xAE, 0x01),  # KVM_CREATE_VM
        _IO(0xAE, 0x41),  # KVM_CREATE_VCPU
        _IOWR(0xAE, 0xD4, 64),  # KVM_CREATE_GUEST_MEMFD
        _IO(0xAE, 0xCE),  # KVM_GET_STATS_FD
        _IOW("u", 0x42, 24),  # UDMABUF_CREATE
        _IOW("u", 0x43, 8),  # UDMABUF_CREATE_LIST
        _IO(";", 100 + 6),  # VFIO_GROUP_GET_DEVICE_FD
        _IO(";", 100 + 17),  # VFIO_DEVICE_FEATURE: DMA_BUF GET returns an fd, others 0
    }
)


def _load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    c_int, c_uint, c_long, c_ulong = ctypes.c_int, ctypes.c_uint, ctypes.c_long, ctypes.c_ulong
    c_void_p, c_size_t, c_char_p = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    # The variadic ones (open, ioctl, fcntl) take their optional argument as a full register
    # on x86-64, which is what the kernel reads.
    libc.open.argtypes = [c_char_p, c_int, c_uint]
    libc.open.restype = c_int
    libc.close.argtypes = [c_int]
    libc.close.restype = c_int
    libc.ioctl.argtypes = [c_int, c_ulong, c_ulong]
    libc.ioctl.restype = c_int
    libc.mmap.argtypes = [c_void_p, c_size_t, c_int, c_int, c_int, c_long]
    libc.mmap.restype = c_void_p
    libc.munmap.argtypes = [c_void_p, c_size_t]
    libc.munmap.restype = c_int
    libc.memfd_create.argtypes = [c_char_p, c_uint]
    libc.memfd_create.restype = c_int
    libc.fcntl.argtypes = [c_int, c_int, c_ulong]
    libc.fcntl.restype = c_int
    libc.ftruncate.argtypes = [c_int, c_long]
    libc.ftruncate.restype = c_int
    libc.fallocate.argtypes = [c_int, c_int, c_long, c_long]
    libc.fallocate.restype = c_int
    return libc


_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = _load_libc()
    return _libc


def _fail(call: str) -> OSError:
    return kerr(ctypes.get_errno(), call)


class LinuxHost:
    """The Host protocol on the running kernel (real fds, real mappings, real errno)."""

    def __init__(self) -> None:
        self._libc = _get_libc()
        self._fds: set[int] = set()
        # start -> end of each range this host mapped and has not unmapped
        self._maps: dict[int, int] = {}

    # -- bookkeeping -------------------------------------------------------------------------

    def adopt(self, fd: int) -> int:
        """Track an fd obtained some other way so that close_all closes it."""
        self._fds.add(fd)
        return fd

    @property
    def open_fds(self) -> frozenset[int]:
        """The fds this host opened (or adopted) and has not closed."""
        return frozenset(self._fds)

    @property
    def mappings(self) -> list[tuple[int, int]]:
        """The [start, end) ranges this host mapped and has not unmapped, sorted."""
        return sorted(self._maps.items())

    def close_all(self) -> None:
        """Unmap every range this host mapped, then close every fd it tracks."""
        for start, end in list(self._maps.items()):
            self._libc.munmap(start, end - start)
        self._maps.clear()
        for fd in sorted(self._fds):
            self._libc.close(fd)
        self._fds.clear()

    def __enter__(self) -> LinuxHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all()

    def _forget_range(self, start: int, end: int) -> None:
        for s, e in list(self._maps.items()):
            if e <= start or s >= end:
                continue
            del self._maps[s]
            if s < start:
                self._maps[s] = start
            if e > end:
                self._maps[end] = e

    # -- the Host protocol ---------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        """open(2): the new fd, tracked for close_all."""
        fd = int(self._libc.open(os.fsencode(path), flags, 0))
        if fd < 0:
            raise _fail(f"open({path!r}, {flags:#o})")
        self._fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        """close(2)."""
        if self._libc.close(fd) < 0:
            raise _fail(f"close({fd})")
        self._fds.discard(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """ioctl(2): ``arg`` is an int, None (NULL), a ctypes struct or array (its address), or
        a bytearray (updated in place); an fd the call returns is tracked for close_all."""
        if arg is None:
            word, shown = 0, "NULL"
        elif isinstance(arg, int):
            word, shown = arg & _ULONG_MASK, hex(arg)
        elif isinstance(arg, bytearray):
            if len(arg) == 0:
                word = 0
            else:
                word = ctypes.addressof((ctypes.c_char * len(arg)).from_buffer(arg))
            shown = f"bytearray[{len(arg)}]"
        elif isinstance(arg, (ctypes.Structure, ctypes.Array)):
            word, shown = ctypes.addressof(arg), f"&{type(arg).__name__}"
        else:
            raise TypeError(f"ioctl argument of type {type(arg).__name__}")
        ret = int(self._libc.ioctl(fd, request & _ULONG_MASK, word))
        if ret < 0:
            raise _fail(f"ioctl({fd}, {request:#x}, {shown})")
        if ret > 0 and request in FD_RETURNING_IOCTLS:
            self._fds.add(ret)
        return ret

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        """mmap(2): the start address; the range is tracked for close_all."""
        res = self._libc.mmap(addr or None, length, prot, flags, fd, offset)
        if res == _ULONG_MASK:  # MAP_FAILED, (void *)-1
            raise _fail(
                f"mmap({addr:#x}, {length:#x}, prot={prot:#x}, flags={flags:#x}, fd={fd}, "
                f"offset={offset:#x})"
            )
        start = int(res or 0)  # c_void_p gives None for NULL
        end = start + ((length + 4095) & ~4095)
        self._forget_range(start, end)  # MAP_FIXED may replace part of an earlier mapping
        self._maps[start] = end
        return start

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2)."""
        if self._libc.munmap(addr or None, length) < 0:
            raise _fail(f"munmap({addr:#x}, {length:#x})")
        self._forget_range(addr, addr + ((length + 4095) & ~4095))

    def memfd_create(self, name: str, flags: int) -> int:
        """memfd_create(2): EINVAL when ``name`` has no byte encoding (as SimHost)."""
        try:
            raw = os.fsencode(name)
        except UnicodeEncodeError:  # no bytes can reach the kernel: the name is invalid
            raise kerr(errno.EINVAL, f"memfd_create({name!r}, {flags:#x}): the name has no "
                       "byte encoding") from None
        fd = int(self._libc.memfd_create(raw, flags & 0xFFFFFFFF))
        if fd < 0:
            raise _fail(f"memfd_create({name!r}, {flags:#x})")
        self._fds.add(fd)
        return fd

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """fcntl(2) with an integer argument; a duplicated fd is tracked."""
        ret = int(self._libc.fcntl(fd, cmd, arg & _ULONG_MASK))
        if ret < 0:
            raise _fail(f"fcntl({fd}, {cmd}, {arg:#x})")
        if cmd in (0, 1030) and ret >= 0:  # F_DUPFD, F_DUPFD_CLOEXEC
            self._fds.add(ret)
        return ret

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2)."""
        if self._libc.ftruncate(fd, length) < 0:
            raise _fail(f"ftruncate({fd}, {length:#x})")

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2)."""
        if self._libc.fallocate(fd, mode, offset, length) < 0:
            raise _fail(f"fallocate({fd}, mode={mode:#x}, {offset:#x}, {length:#x})")

    def read(self, fd: int, n: int) -> bytes:
        """read(2) of up to ``n`` bytes (Python allocates ``n`` first: see docs/fidelity.md)."""
        try:
            return os.read(fd, n)
        except OSError as e:
            raise kerr(e.errno or 0, f"read({fd}, {n})") from None

    def write(self, fd: int, data: bytes) -> int:
        """write(2): the bytes written."""
        try:
            return os.write(fd, data)
        except OSError as e:
            raise kerr(e.errno or 0, f"write({fd}, <{len(data)} bytes>)") from None

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """pread(2)."""
        try:
            return os.pread(fd, n, offset)
        except OSError as e:
            raise kerr(e.errno or 0, f"pread({fd}, {n}, {offset:#x})") from None

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2): the bytes written."""
        try:
            return os.pwrite(fd, data, offset)
        except OSError as e:
            raise kerr(e.errno or 0, f"pwrite({fd}, <{len(data)} bytes>, {offset:#x})") from None

    def peek(self, addr: int, n: int) -> bytes:
        """Read ``n`` bytes of this process's memory (a fault kills the process)."""
        return ctypes.string_at(addr, n)

    def poke(self, addr: int, data: bytes) -> None:
        """Write ``data`` into this process's memory (a fault kills the process)."""
        ctypes.memmove(addr, data, len(data))
