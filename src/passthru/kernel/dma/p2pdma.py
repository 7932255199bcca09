"""PCI peer-to-peer DMA: providers and the routing decision (drivers/pci/p2pdma.c,
include/linux/pci-p2pdma.h).

A :class:`p2pdma_provider` describes one BAR's MMIO to the DMA API: its owner (the PCI
function) and ``bus_offset``, the bus address minus the CPU physical address. pcim_p2pdma_init()
gives a function its :class:`pci_p2pdma` state with one provider per BAR; a BAR that cannot do
P2P (not IORESOURCE_MEM, or ``non_mappable_bars``) has none, and pcim_p2pdma_provider() returns
None for it.

:func:`pci_p2pdma_map_type` decides how a client device reaches a provider's memory, as
calc_map_type_and_dist() does, read from the kernel source:

1. Walk up from the provider, starting with the provider itself; for each node, walk up from
   the client, starting with the client. The first node on both walks is the nearest common
   upstream bridge (or the function itself). ACS redirect (RR|CR|EC) counts on every node the
   provider's walk visited, up to and including the common one, and on the client's walk below
   it.
2. A common bridge and no ACS redirect: PCI_P2PDMA_MAP_BUS_ADDR (the TLPs turn around in a
   switch or port; program the device with bus addresses, no IOMMU in the path).
3. Otherwise (no common bridge, or ACS redirect) the traffic goes through the root complex:
   PCI_P2PDMA_MAP_THRU_HOST_BRIDGE when cpu_supports_p2pdma() (AMD Zen+) or the host bridges
   are whitelisted (same host bridge: its entry; two host bridges: both entries, neither with
   REQ_SAME_HOST_BRIDGE), else PCI_P2PDMA_MAP_NOT_SUPPORTED.
4. The result is cached per client in the provider's ``map_types`` (an xarray keyed by
   domain/bus/devfn in the kernel, by BDF here) and never recomputed: a later ACS change does
   not alter an answer already given.
A provider whose owner never ran pcim_p2pdma_init(), or a client that is not a PCI device,
gets PCI_P2PDMA_MAP_NOT_SUPPORTED.

Enum values: since the 6.16 refactor ("PCI/P2PDMA: Refactor the p2pdma mapping helpers") the
enum has PCI_P2PDMA_MAP_NONE ("not a P2P transfer") at 1, so NOT_SUPPORTED is 2, BUS_ADDR 3 and
THRU_HOST_BRIDGE 4 (read in include/linux/pci-p2pdma.h of the 6.19 dma-buf series); older
kernels, and shared/spec/KERNEL.md §1, number them 0-3 without NONE. Code uses the names only.

Invariants: a client's cached answer never changes once stored; a BAR without P2P has no
provider. Units: ``bus_offset`` in bytes (bus address minus CPU physical address).

Which lock protects which field (sim/track.py):
- ``pci_p2pdma.map_types`` (``<bdf>.p2pdma.map_types``): an xarray — xa_load under RCU,
  xa_store under the xarray's spinlock — so an atomic structure; two clients mapping at once
  may both compute and store the same answer, as in the kernel;
- ``pci_p2pdma.mem`` and every provider's fields: written by pcim_p2pdma_init (probe), read-only
  afterwards: no lock.

Model deviations: ``pci_p2pdma_map_type(None, dev)`` returns NOT_SUPPORTED where the kernel
would dereference NULL (its callers check first). Leaves out: the p2pmem pool (gen_pool,
ZONE_DEVICE pages, pci_alloc_p2pmem, sysfs), pci_p2pdma_distance_many's client lists, warnings,
the provider's dma_mapping_flags.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ...hw.pci import (
    PCI_STD_NUM_BARS,
    PciFunction,
    PciHostBridge,
    Topology,
    pci_find_host_bridge,
    upstream_chain,
)
from ...sim.track import TrackedDict


class PciP2pdmaMapType(enum.IntEnum):
    """enum pci_p2pdma_map_type (renamed: Python cannot share the function's name)."""

    PCI_P2PDMA_MAP_UNKNOWN = 0
    PCI_P2PDMA_MAP_NONE = 1
    PCI_P2PDMA_MAP_NOT_SUPPORTED = 2
    PCI_P2PDMA_MAP_BUS_ADDR = 3
    PCI_P2PDMA_MAP_THRU_HOST_BRIDGE = 4


PCI_P2PDMA_MAP_UNKNOWN = PciP2pdmaMapType.PCI_P2PDMA_MAP_UNKNOWN
PCI_P2PDMA_MAP_NONE = PciP2pdmaMapType.PCI_P2PDMA_MAP_NONE
PCI_P2PDMA_MAP_NOT_SUPPORTED = PciP2pdmaMapType.PCI_P2PDMA_MAP_NOT_SUPPORTED
PCI_P2PDMA_MAP_BUS_ADDR = PciP2pdmaMapType.PCI_P2PDMA_MAP_BUS_ADDR
PCI_P2PDMA_MAP_THRU_HOST_BRIDGE = PciP2pdmaMapType.PCI_P2PDMA_MAP_THRU_HOST_BRIDGE


@dataclass(slots=True, eq=False)
class p2pdma_provider:  # noqa: N801 - kernel name
    """struct p2pdma_provider {owner, bus_offset}: one BAR's MMIO, as the DMA API sees it.

    ``bar`` and ``p2pdma`` are the model's container_of(): which BAR of the owner, and the
    owner's :class:`pci_p2pdma` (where the kernel embeds the provider). Compared by identity,
    as a pointer is.
    """

    owner: PciFunction
    bus_offset: int
    bar: int
    p2pdma: pci_p2pdma

    def __repr__(self) -> str:
        return f"p2pdma_provider({self.owner.bdf} BAR{self.bar}, bus_offset={self.bus_offset:#x})"


class pci_p2pdma:  # noqa: N801 - kernel name
    """struct pci_p2pdma: a function's providers (``mem[]``) and its cached map types."""

    def __init__(self, pdev: PciFunction, topology: Topology) -> None:
        self.pdev = pdev
        self.topology = topology
        self.map_types: TrackedDict[str, PciP2pdmaMapType] = TrackedDict(
            label=f"{pdev.bdf}.p2pdma.map_types", atomic=True)
        self.mem: list[p2pdma_provider | None] = [None] * PCI_STD_NUM_BARS
        for i, bar in pdev.bars.items():
            if bar.p2p:
                self.mem[i] = p2pdma_provider(pdev, bar.bus_offset, i, self)


def pcim_p2pdma_init(pdev: PciFunction, topology: Topology) -> pci_p2pdma:
    """Give ``pdev`` its P2P state (idempotent, as in the kernel)."""
    if pdev.p2pdma is None:
        pdev.p2pdma = pci_p2pdma(pdev, topology)
    state: pci_p2pdma = pdev.p2pdma
    return state


def pcim_p2pdma_provider(pdev: PciFunction, bar: int) -> p2pdma_provider | None:
    """The provider of BAR ``bar``: None when the BAR cannot do P2P or init never ran (the
    kernel WARNs for the latter)."""
    state: pci_p2pdma | None = pdev.p2pdma
    if state is None or not 0 <= bar < PCI_STD_NUM_BARS:
        return None
    return state.mem[bar]


def _host_bridge_whitelist(topology: Topology, a: PciFunction, b: PciFunction) -> bool:
    ha, hb = pci_find_host_bridge(a), pci_find_host_bridge(b)

    def ok(h: PciHostBridge, same: bool) -> bool:
        return h.p2pdma_whitelisted and (same or not h.req_same_host_bridge)

    if ha is hb:
        return ok(ha, True)
    return ok(ha, False) and ok(hb, False)


def calc_map_type_and_dist(
    topology: Topology, provider: PciFunction, client: PciFunction
) -> tuple[PciP2pdmaMapType, int]:
    """The routing decision and the hop distance (see the module docstring, steps 1-3)."""
    up_b = list(upstream_chain(client))
    acs = 0
    dist_a = 0
    common = None
    for a in upstream_chain(provider):
        acs += a.acs_redir
        if a in up_b:
            common = a
            break
        dist_a += 1
    if common is not None:
        dist_b = up_b.index(common)
        acs += sum(bb.acs_redir for bb in up_b[:dist_b])
        if not acs:
            return PCI_P2PDMA_MAP_BUS_ADDR, dist_a + dist_b
        dist = dist_a + dist_b
    else:
        dist = dist_a + len(up_b)
    if topology.cpu_supports_p2pdma or _host_bridge_whitelist(topology, provider, client):
        return PCI_P2PDMA_MAP_THRU_HOST_BRIDGE, dist
    return PCI_P2PDMA_MAP_NOT_SUPPORTED, dist


def pci_p2pdma_map_type(provider: p2pdma_provider | None, dev: Any) -> PciP2pdmaMapType:
    """How ``dev`` (the importing device) reaches ``provider``'s memory; cached per client."""
    if provider is None:
        return PCI_P2PDMA_MAP_NOT_SUPPORTED
    state: pci_p2pdma | None = provider.owner.p2pdma
    if state is None or not isinstance(dev, PciFunction):
        return PCI_P2PDMA_MAP_NOT_SUPPORTED
    cached = state.map_types.get(dev.bdf, PCI_P2PDMA_MAP_UNKNOWN)
    if cached != PCI_P2PDMA_MAP_UNKNOWN:
        return cached
    map_type, _ = calc_map_type_and_dist(state.topology, provider.owner, dev)
    state.map_types[dev.bdf] = map_type
    return map_type


def pci_p2pdma_bus_addr_map(provider: p2pdma_provider, paddr: int) -> int:
    """The bus address of CPU physical ``paddr`` for a BUS_ADDR transfer: paddr + bus_offset."""
    return paddr + provider.bus_offset
