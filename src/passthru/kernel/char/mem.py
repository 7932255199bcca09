"""/dev/null (drivers/char/mem.c): reads return end of file, writes are swallowed.

Modelled because VMMs and tests use it as "some fd that is not what you expect"
(e.g. F_ADD_SEALS on a non-memfd file). Registered by its initcall, fs_initcall(chr_dev_init)
as in the kernel. No state beyond struct file's, so no invariants, units or locks of its own.
Leaves out /dev/zero, /dev/mem, /dev/full.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..fs.file import File
from ..init import initcall

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process


class NullFile(File):
    kind = "null"
    fmode_pread = True

    def read(self, proc: Process, n: int, pos: int | None) -> bytes:
        return b""

    def write(self, proc: Process, data: bytes, pos: int | None) -> int:
        return len(data)


@initcall("fs")  # fs_initcall(chr_dev_init)
def mem_init(kernel: Kernel) -> None:
    kernel.register_device("/dev/null", lambda proc, flags: NullFile(kernel, flags, "/dev/null"))
