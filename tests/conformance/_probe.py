"""Helpers shared by the conformance tests: child-process probes and small uAPI wrappers.

A SIGBUS or SIGSEGV on LinuxHost is a real signal that kills the process, so a probe that
expects one runs in a forked child and the parent reads how the child died. On SimHost the
model raises passthru.Fault in-process instead; ``expect_sigbus`` hides the difference.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from passthru.errors import Fault
from passthru.host.linux import LinuxHost

PAGE = 4096


@dataclass(frozen=True)
class ChildResult:
    """How a forked probe ended: killed by ``signal``, or exited with ``exitcode``."""

    signal: int | None
    exitcode: int | None
    error: str  # repr of the exception the probe raised, if it raised one

    def __str__(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exited {self.exitcode}" + (f" after {self.error}" if self.error else "")


def run_in_child(fn: Callable[[], Any]) -> ChildResult:
    """Run ``fn`` in a forked child with default signal dispositions; report how it ended.

    Exit 0: ``fn`` returned; exit 1: it raised (the repr comes back through a pipe).
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(rfd)
            # pytest's faulthandler would print a traceback and then re-raise; die quietly.
            faulthandler.disable()
            signal.signal(signal.SIGBUS, signal.SIG_DFL)
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - report anything to the parent
                os.write(wfd, repr(e).encode()[:4000])
                os._exit(1)
            os._exit(0)
        finally:
            os._exit(2)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 4096):
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    error = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        return ChildResult(os.WTERMSIG(status), None, error)
    return ChildResult(None, os.WEXITSTATUS(status), error)


def expect_signal(host: Any, fn: Callable[[], Any], kind: str, address: int | None = None) -> None:
    """Assert that ``fn`` takes signal ``kind`` ("SIGBUS" or "SIGSEGV").

    LinuxHost: ``fn`` runs in a forked child, which must die by that signal.
    Any other host (SimHost): ``fn`` must raise passthru.Fault of that kind, at ``address``
    when one is given.
    """
    if isinstance(host, LinuxHost):
        res = run_in_child(fn)
        assert res.signal == signal.Signals[kind], f"expected {kind}, child {res}"
        return
    with pytest.raises(Fault) as e:
        fn()
    assert e.value.kind == kind
    if address is not None:
        assert e.value.address == address


def expect_sigbus(host: Any, fn: Callable[[], Any], address: int | None = None) -> None:
    expect_signal(host, fn, "SIGBUS", address)


def expect_no_signal(host: Any, fn: Callable[[], Any]) -> None:
    """The counterpart: ``fn`` completes (in a child on LinuxHost, so a bug cannot kill us)."""
    if isinstance(host, LinuxHost):
        res = run_in_child(fn)
        assert res.signal is None and res.exitcode == 0, f"child {res}"
    else:
        fn()
