"""Device models (PCI functions as hardware) and the machine's devices built from its data.

Models what firmware and PCI enumeration leave behind at boot (drivers/pci/probe.c: the
functions found, their BARs as assigned, drivers/iommu/: the IOMMU unit each is behind): for a
:class:`~passthru.hw.machine.Machine`, :func:`build_devices` makes the PCI topology
(hw/pci.py), the IOMMU units (hw/iommu.py), one device model per :class:`PciDesc` —
:class:`EduDevice` (QEMU's hw/misc/edu.c), :class:`GpuDevice`, :class:`NicDevice` — and
registers every BAR with physical truth (hw/physmem.py's MMIO registry).

Invariants: device names and BDFs are unique; each device's ``fabric`` is the one
:class:`PciFabric` of the machine, which holds the topology and the IOMMU units.
Locking: built at boot, before any task; the structures' own rules are in their modules.
Leaves out: hot-plug, bus numbering, the kernel side (probe, drivers): the caller (the
kernel's vfio set-up) decides what to do with the devices.
"""

from __future__ import annotations

from typing import Any

from ...sim.scheduler import Scheduler
from ..iommu import Iommu
from ..machine import Machine, PciDesc
from ..pci import PciBridge, PciFunction, PciHostBridge, PciSwitch, Topology
from ..pcidev import PciDevice
from ..physmem import PhysMem
from .edu import EduDevice
from .fabric import PciFabric
from .gpu import GpuDevice
from .nic import NicDevice

MODELS: dict[str, type[PciDevice]] = {"edu": EduDevice, "gpu": GpuDevice, "nic": NicDevice}

__all__ = ["MODELS", "EduDevice", "GpuDevice", "NicDevice", "PciFabric", "build_devices"]


def _parent(topo: Topology, desc: PciDesc, ports: dict[str, PciBridge],
            switches: dict[str, PciSwitch]) -> PciBridge | PciSwitch | PciHostBridge:
    def root_port(name: str) -> PciBridge:
        if name not in ports:
            ports[name] = topo.add_root_port(name)
        return ports[name]

    if desc.switch is not None:
        if desc.switch not in switches:
            above = root_port(desc.root_port or f"{desc.switch}.rp")
            switches[desc.switch] = topo.add_switch(desc.switch, above)
        sw = switches[desc.switch]
        return sw
    if desc.root_port is not None:
        return root_port(desc.root_port)
    return topo.host


def build_devices(kernel_or_phys: Any, sched: Scheduler, machine: Machine,
                  iommus: dict[str, Iommu] | None = None) -> dict[str, PciDevice]:
    """The machine's PCI devices by name, their BARs decoding in ``phys``. ``kernel_or_phys``
    is a Kernel (its ``phys`` is used) or a PhysMem. ``iommus`` supplies IOMMU units by name
    (the rest of ``machine.iommus`` are made here); every device's ``fabric.iommus`` has them
    all. ValueError on an unknown model or IOMMU name, a clash of names, BDFs or BARs."""
    phys: PhysMem = getattr(kernel_or_phys, "phys", kernel_or_phys)
    units = dict(iommus or {})
    for name in machine.iommus:
        if name not in units:
            units[name] = Iommu(sched, phys, name)
    topo = Topology(host_p2p=machine.pci_host_p2p)
    fabric = PciFabric(topo, units)
    ports: dict[str, PciBridge] = {}
    switches: dict[str, PciSwitch] = {}
    for desc in machine.pci:
        cls = MODELS.get(desc.model)
        if cls is None:
            raise ValueError(f"build_devices: {desc.name}: unknown model {desc.model!r}")
        if desc.iommu is not None and desc.iommu not in units:
            raise ValueError(f"build_devices: {desc.name}: unknown IOMMU {desc.iommu!r}")
        if desc.name in fabric.devices:
            raise ValueError(f"build_devices: two devices named {desc.name}")
        func = PciFunction(desc.name, desc.bdf, {i: (b, s) for i, b, s in desc.bars})
        parent = _parent(topo, desc, ports, switches)
        topo.add_function(func, parent)
        if desc.acs_redir and isinstance(func.parent, PciBridge):
            func.parent.acs_redir = True
        cls(desc.name, func, phys, sched,
            iommu=units[desc.iommu] if desc.iommu else None, fabric=fabric)
    return dict(fabric.devices)
