"""The PCI devices of one machine on its topology: who decodes a bus address, and how a
peer-to-peer TLP travels.

Models the routing the PCIe fabric does in hardware, whose kernel-side mirror is
drivers/pci/p2pdma.c's calc_map_type_and_dist(): a TLP whose address falls in a peer's BAR
is forwarded by the lowest bridge (switch) both sit below when no port on the way has ACS
redirect set; otherwise it goes up to the root complex (and through the requester's IOMMU).

Invariants: device names are unique; each device's ``fabric`` is this object.
Locking: ``devices`` and ``iommus`` are written while the machine is built (boot), read-only
afterwards (untracked, like physmem's regions); ``topology`` is hw/pci.py's (immutable).
Leaves out: bus-address windows of bridges (a BAR's bus address is its ``bus_base``), the
host bridge's P2P whitelist (the root complex forwards every peer access), multicast.
"""

from __future__ import annotations

from ..iommu import Iommu
from ..pci import PciBridge, Topology, upstream_chain
from ..pcidev import PciDevice


class PciFabric:
    """The devices on one :class:`Topology`: who decodes a bus address and how a peer TLP
    travels (a switch routes it, or it goes up to the root complex and its IOMMU)."""

    def __init__(self, topology: Topology, iommus: dict[str, Iommu] | None = None) -> None:
        self.topology = topology
        self.iommus: dict[str, Iommu] = dict(iommus or {})
        self.devices: dict[str, PciDevice] = {}

    def add(self, dev: PciDevice) -> None:
        if dev.name in self.devices:
            raise ValueError(f"PciFabric: {dev.name} already present")
        self.devices[dev.name] = dev
        dev.fabric = self
        parent = dev.func.parent
        if isinstance(parent, PciBridge):  # it will be reset with the bridge's bus
            parent.secondary.append(dev)

    def decode(self, bus_addr: int, n: int) -> tuple[PciDevice, int, int] | None:
        """The device, BAR and offset whose bus window holds ``[bus_addr, +n)``."""
        for dev in self.devices.values():
            for i, bar in dev.func.bars.items():
                lo = bar.base + bar.bus_offset
                if lo <= bus_addr and bus_addr + n <= lo + bar.size:
                    return dev, i, bus_addr - lo
        return None

    @staticmethod
    def route(src: PciDevice, dst: PciDevice) -> str:
        """``"switch"`` when a bridge both sit below forwards the TLP with no ACS redirect on
        the way (calc_map_type_and_dist()'s walk), else ``"host"`` (the root complex)."""
        up_dst = list(upstream_chain(dst.func))
        acs = 0
        for node in upstream_chain(src.func):
            acs += node.acs_redir
            if node in up_dst:
                acs += sum(b.acs_redir for b in up_dst[:up_dst.index(node)])
                ok = isinstance(node, PciBridge) or node is dst.func
                return "switch" if ok and not acs else "host"
        return "host"
