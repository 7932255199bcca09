"""Machines as data: RAM ranges, MMIO windows and devices a SimHost boots with.

Models what firmware (e820 / ACPI) tells the kernel about the physical address space. Devices
are added by the issues that model their drivers; the foundation's default machine has RAM and
one PCI MMIO window.
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
    """DESIGN.md's default machine: 63 GiB of RAM and a 1 GiB PCI window below 4 GiB."""
    return Machine()
