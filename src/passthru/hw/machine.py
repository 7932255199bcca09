"""Machines as data: RAM ranges, MMIO windows and devices a SimHost boots with.

Models what firmware tells the kernel about the physical address space (the e820 map, ACPI's
host-bridge windows: arch/x86/kernel/e820.c) and what PCI enumeration finds (the functions,
where they sit in the tree, their BARs as firmware assigned them, the IOMMU unit each one is
behind — the DMAR/IVRS tables). Devices are added by the issues that model their drivers;
the default machine has RAM, one PCI MMIO window, one IOMMU unit, QEMU's edu device and a
GPU-like device (hw/devices/ builds them: ``build_devices``).

Invariants: ``ram`` and ``mmio`` are ``(start, end)`` half-open ranges, page aligned. They are
meant not to overlap, and nothing checks it: where they do, hw/physmem.py's regions say MMIO
but its allocator still hands out the RAM. A :class:`PciDesc`'s BARs are meant to lie in an
``mmio`` window and not to overlap (hw/physmem.py's register_mmio checks both when the devices
are built). Units: bytes.
Locking: none — a Machine is frozen; the kernel reads it at boot.
Leaves out: reserved and ACPI ranges, NUMA nodes, hot-plug memory, PCI bus numbers (a
function's ``bdf`` is a name), I/O-port BARs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class PciDesc:
    """One PCI function as firmware found it.

    ``model``: the device model in hw/devices/ (``"edu"``, ``"gpu"``, ``"nic"``). ``bars``:
    ``(index, base, size)``. ``iommu``: the name of the IOMMU unit (``Machine.iommus``) it is
    behind, None for none. Placement: on the root bus as a root-complex integrated endpoint
    when ``root_port`` and ``switch`` are None; below root port ``root_port``; or below
    switch ``switch`` (its upstream port below ``root_port``, or a root port of its own).
    Functions naming the same port or switch share it. ``acs_redir``: the function's
    downstream port redirects P2P upstream (ACS RR/CR).
    """

    name: str
    model: str
    bdf: str
    bars: tuple[tuple[int, int, int], ...]
    iommu: str | None = None
    root_port: str | None = None
    switch: str | None = None
    acs_redir: bool = False


@dataclass(frozen=True)
class Machine:
    name: str = "default"
    ram: tuple[tuple[int, int], ...] = ((0x0, 3 * GiB), (4 * GiB, 64 * GiB))
    mmio: tuple[tuple[int, int], ...] = ((3 * GiB, 4 * GiB),)
    devices: tuple[str, ...] = field(default=())
    iommus: tuple[str, ...] = ()  # IOMMU units (DMAR units), by name
    pci: tuple[PciDesc, ...] = ()
    pci_host_p2p: bool = False  # the host bridge is on p2pdma.c's whitelist


# QEMU's edu device as QEMU's q35 places it (a root-complex integrated function), behind the
# IOMMU, and a GPU-like device behind a root port, both in the PCI window (3 GiB..4 GiB),
# above the addresses tests use for stand-alone BARs (3 GiB + 1 MiB, 3 GiB + 256 MiB) and
# below the MSI window (0xfee00000).
EDU0 = PciDesc("edu0", "edu", "0000:00:04.0", ((0, 0xF000_0000, 1 * MiB),), iommu="iommu0")
GPU0 = PciDesc("gpu0", "gpu", "0000:01:00.0", ((0, 0xE000_0000, 256 * MiB),),
               iommu="iommu0", root_port="rp1")


def default_machine() -> Machine:
    """The default machine (docs/design.md, contract 2): 63 GiB of RAM, a 1 GiB PCI window
    below 4 GiB, one IOMMU unit, the edu device and a GPU-like device."""
    return Machine(devices=("edu0", "gpu0"), iommus=("iommu0",), pci=(EDU0, GPU0))
