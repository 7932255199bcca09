"""copy_from_user / copy_to_user for ioctl arguments (include/linux/uaccess.h).

An ioctl argument reaches the kernel as an int (a value or a user pointer) or, from Python
callers, as a ctypes object or bytearray standing for the user buffer. copy_from_user of more
bytes than the buffer holds is EFAULT here; the real kernel would read whatever lies beyond
the object in user memory (docs/fidelity.md). Integer arguments used as pointers are read
from and written to the calling process's own memory, exactly as on LinuxHost.

Invariants: a UserArg is either a value/user pointer (``value``) or a caller's buffer
(``buf``), never both. Units: offsets and lengths in bytes; ``value`` is the kernel's 64-bit
``unsigned long``.
Locking: a UserArg belongs to one syscall; user memory is reached through the process's
address space, which takes its own mmap_lock (mm/vma.py).
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import Fault, kerr

if TYPE_CHECKING:
    from .process import Process

T = TypeVar("T", bound=ctypes.Structure)
USER_BUFFER_ADDR = 0x7FFD_0000_0000


class UserArg:
    __slots__ = ("proc", "value", "buf")

    def __init__(self, proc: Process, arg: Any) -> None:
        self.proc = proc
        self.buf: memoryview | None = None
        self.value = 0
        if arg is None:
            return
        if isinstance(arg, int):
            self.value = arg & 0xFFFFFFFFFFFFFFFF
        elif isinstance(arg, (bytearray, ctypes.Structure, ctypes.Union, ctypes.Array)):
            self.buf = memoryview(arg).cast("B")
        else:
            raise TypeError(f"ioctl argument must be int, ctypes object or bytearray, not {arg!r}")

    def as_int(self) -> int:
        """The argument as the kernel's ``unsigned long``. A Python buffer stands for a user
        pointer, so an ioctl that takes a plain integer sees a (non-zero) address, as on
        LinuxHost; the model uses a fixed stack-like address for determinism."""
        return USER_BUFFER_ADDR if self.buf is not None else self.value

    def length(self) -> int | None:
        return None if self.buf is None else len(self.buf)

    def read(self, n: int, offset: int = 0) -> bytes:
        if self.buf is not None:
            if offset + n > len(self.buf):
                raise kerr(errno.EFAULT, f"copy_from_user: {n} bytes at +{offset} past the buffer")
            return bytes(self.buf[offset : offset + n])
        try:
            return self.proc.mm.access(self.value + offset, n, write=False, who="kernel")
        except Fault as f:
            raise kerr(errno.EFAULT, f"copy_from_user: {f}") from None

    def write(self, data: bytes, offset: int = 0) -> None:
        if self.buf is not None:
            if offset + len(data) > len(self.buf):
                raise kerr(errno.EFAULT, f"copy_to_user: {len(data)} bytes past the buffer")
            self.buf[offset : offset + len(data)] = data
            return
        try:
            self.proc.mm.access(self.value + offset, len(data), write=True, data=data, who="kernel")
        except Fault as f:
            raise kerr(errno.EFAULT, f"copy_to_user: {f}") from None

    def copy_from_user(self, ctype: type[T]) -> T:
        return ctype.from_buffer_copy(self.read(ctypes.sizeof(ctype)))

    def copy_to_user(self, obj: ctypes.Structure, offset: int = 0) -> None:
        self.write(bytes(obj), offset)
