"""Errors the model raises: OSError with the kernel's errno, and Fault for SIGBUS/SIGSEGV."""

from __future__ import annotations

import errno as _errno


class Fault(Exception):
    """A SIGBUS or SIGSEGV the model delivered to the calling process.

    ``address`` is the faulting user address, ``kind`` is ``"SIGBUS"`` or ``"SIGSEGV"``.
    On LinuxHost a real signal kills the process, so code that expects one probes in a child.
    """

    def __init__(self, address: int, kind: str, reason: str = "") -> None:
        super().__init__(f"{kind} at {address:#x}" + (f": {reason}" if reason else ""))
        self.address = address
        self.kind = kind
        self.reason = reason


def kerr(err: int, message: str) -> OSError:
    """An OSError carrying the kernel's errno and a message naming the failed check."""
    return OSError(err, f"{message} [{_errno.errorcode.get(err, err)}]")
