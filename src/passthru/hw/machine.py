"""Machines as data: RAM ranges, MMIO windows and devices a SimHost boots with.

Models what firmware tells the kernel about the physical address space (the e820 map, ACPI's
host-bridge windows: arch/x86/kernel/e820.c). Devices are added by the issues that model their
drivers; the default machine has RAM and one PCI MMIO window.

Invariants: ``ram`` and ``mmio`` are ``(start, end)`` half-open ranges, page aligned. They are
meant not to overlap, and nothing checks it: where they do, hw/physmem.py's regions say MMIO
but its allocator still hands out the RAM. Units: bytes.
Locking: none — a Machine is frozen; the kernel reads it at boot.
Leaves out: reserved and ACPI ranges, NUMA nodes, hot-plug memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1 << 30


@dataclass(frozen=True)
class Machine:
    name: str = "default"
    ram: tuple[tuple[int, int], ...] = ((0x0, 3 * GiB), (4 * GiB, 64 * GiB))
    mmio: tuple[tuple[int, int], ...] = ((3 * GiB, 4 * GiB),)
    devices: tuple[str, ...] = field(default=())


def default_machine() -> Machine:
    """The default machine (docs/design.md, contract 2): 63 GiB of RAM and a 1 GiB PCI
    window below 4 GiB."""
    return Machine()
