"""Table dispatch of a file's ioctls, the way kvm_vm_ioctl's switch and iommufd's
``iommufd_ioctl_ops[]`` read (virt/kvm/kvm_main.c, drivers/iommu/iommufd/main.c).

A file class owns one :class:`IoctlTable`; each handler is registered for its request number
with ``@TABLE.handler(NR)`` (optionally ``when=``, a predicate on the kernel profile: an
ioctl a profile does not have falls through to the table's default, as a compiled-out case
does). ``dispatch`` finds the handler or calls the default, which gives the errno the kernel
gives for an unknown request (ENOTTY for most files; EINVAL for /dev/kvm's arch fallback).
Each handler then reads validate → get → act → respond → put.

Leaves out: the size/flags checks of iommufd's ucmd (the iommufd issue adds them here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[..., int]  # (file, proc, arg) -> int
Default = Callable[..., int]  # (file, proc, cmd, arg) -> int


@dataclass(frozen=True)
class _Entry:
    fn: Handler
    when: Callable[[Any], bool] | None


class IoctlTable:
    """Request number → handler for one kind of file."""

    def __init__(self, name: str, default: Default) -> None:
        self.name = name
        self.default = default
        self._table: dict[int, _Entry] = {}

    def handler(self, *cmds: int, when: Callable[[Any], bool] | None = None
                ) -> Callable[[Handler], Handler]:
        """Register ``fn`` for ``cmds`` (a request may be registered once)."""

        def deco(fn: Handler) -> Handler:
            for cmd in cmds:
                if cmd in self._table:
                    raise ValueError(f"{self.name}: ioctl {cmd:#x} registered twice")
                self._table[cmd] = _Entry(fn, when)
            return fn

        return deco

    def dispatch(self, file: Any, proc: Any, cmd: int, arg: Any) -> int:
        e = self._table.get(cmd)
        if e is None or (e.when is not None and not e.when(file.kernel.profile)):
            return self.default(file, proc, cmd, arg)
        return e.fn(file, proc, arg)

    def __contains__(self, cmd: int) -> bool:
        return cmd in self._table
