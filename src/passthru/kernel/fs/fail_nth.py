"""/proc/thread-self/fail-nth (fs/proc/base.c proc_fail_nth_*, lib/fault-inject.c
should_fail_ex): fail the calling task's Nth fault point from now.

Writing N (kstrtouint: decimal, 0x hex or 0 octal; anything else EINVAL) arms the task: each
later fault point counts it down and the one that brings it to zero fails; writing 0 disarms.
Reading returns what is left ("%u\\n"): 0 once the failure has fired. The model's fault
points (Scheduler.fault, the same points ``passthru check --faults`` sweeps) stand for the
kernel's should_fail() calls — failslab and fail_page_alloc in the allocators and the
subsystems' own — so the same Nth is not the same allocation on the two hosts: what a
conformance test can compare is the property the kernel's fail_nth selftests check (a call
either succeeds or fails with the injected errno and leaves nothing behind), not N.

Leaves out: per-task state (the model's fault counter is the scheduler's, so one task arms
it for all — the conformance tests run one task), the debugfs attributes (failslab's
ignore-gfp-wait etc.: every model fault point can fail), /proc/<pid>/task/<tid>/fail-nth.
Registered by its initcall as a node in the kernel's device table (a file in procfs).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ..init import initcall
from .file import File

if TYPE_CHECKING:
    from ..core import Kernel
    from .process import Process

FAIL_NTH = "/proc/thread-self/fail-nth"


class FailNthFile(File):
    kind = "proc"
    fmode_pread = True

    def _target(self) -> int | None:
        armed = self.kernel.sched.fail_nth
        return max(armed) if armed else None

    def read(self, proc: Process, n: int, pos: int | None) -> bytes:
        sched = self.kernel.sched
        target = self._target()
        left = target - sched.faults_seen if target is not None else 0
        text = f"{max(left, 0)}\n".encode()
        start = self.f_pos if pos is None else pos
        out = text[start:start + n]
        if pos is None:
            self.f_pos += len(out)
        return out

    def write(self, proc: Process, data: bytes, pos: int | None) -> int:
        text = data.decode("ascii", "replace").strip()
        try:
            nth = int(text, 0)
        except ValueError:
            raise kerr(errno.EINVAL, f"fail-nth: {text!r} is not an unsigned int "
                       "(kstrtouint)") from None
        if not 0 <= nth < 1 << 32:
            raise kerr(errno.EINVAL, f"fail-nth: {nth} is not an unsigned int (kstrtouint)")
        sched = self.kernel.sched
        sched.fail_nth = frozenset({sched.faults_seen + nth}) if nth else frozenset()
        return len(data)


@initcall("fs")  # procfs is there from boot
def fail_nth_init(kernel: Kernel) -> None:
    kernel.register_device(FAIL_NTH, lambda proc, flags: FailNthFile(kernel, flags, FAIL_NTH))
