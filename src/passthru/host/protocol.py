"""The Host protocol: the libc-shaped calls every passthru user makes (docs/design.md contract 2).

SimHost (the model) and LinuxHost (the real kernel) both implement it, so the same VMM code and
the same conformance tests run on both. Failures raise OSError with the kernel's errno; a
SIGBUS/SIGSEGV in the model raises passthru.Fault.
"""

from __future__ import annotations

import ctypes
from typing import Protocol, Union, runtime_checkable

IoctlArg = Union[int, ctypes.Structure, ctypes.Array, bytearray, None]  # type: ignore[type-arg]


@runtime_checkable
class Host(Protocol):
    """The libc-shaped calls a VMM makes: SimHost and LinuxHost both provide them. Each
    returns what the system call returns and raises OSError with the kernel's errno."""

    def open(self, path: str, flags: int) -> int:
        """open(2); the new fd."""
        ...

    def close(self, fd: int) -> None:
        """close(2)."""
        ...

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """ioctl(2): ``arg`` an int, a ctypes struct or a writable buffer (updated in place)."""
        ...

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        """mmap(2); the mapped address."""
        ...

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2)."""
        ...

    def memfd_create(self, name: str, flags: int) -> int:
        """memfd_create(2); the new fd."""
        ...

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """fcntl(2)."""
        ...

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2)."""
        ...

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2)."""
        ...

    def read(self, fd: int, n: int) -> bytes:
        """read(2): up to ``n`` bytes."""
        ...

    def write(self, fd: int, data: bytes) -> int:
        """write(2); the bytes written."""
        ...

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """pread(2): up to ``n`` bytes at ``offset``."""
        ...

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2); the bytes written."""
        ...

    def peek(self, addr: int, n: int) -> bytes:
        """``n`` bytes of the calling process's memory at ``addr``."""
        ...

    def poke(self, addr: int, data: bytes) -> None:
        """Store ``data`` into the calling process's memory at ``addr``."""
        ...
