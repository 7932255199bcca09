"""PCI topology as data: functions with BARs, bridges, switches and host bridges.

Models what the PCI core knows about the tree (include/linux/pci.h: struct pci_dev, its
``bus->self`` upstream bridge and its host bridge) and the properties drivers/pci/p2pdma.c
consults to route peer-to-peer traffic: ACS redirect on a port and the host-bridge whitelist.

Shape of the tree: a :class:`PciHostBridge` (root complex) has a root bus; on it sit root
ports (:class:`PciBridge` kind ``"root_port"``) and root-complex integrated endpoints. A
:class:`PciSwitch` is an upstream port (a bridge) with one downstream port (a bridge) per
slot. :func:`pci_upstream_bridge` walks one step up, as the kernel's does: a function on a
root bus has no upstream bridge (``None``), and neither has a root port.

Invariants: a BAR index is 0..5; a function's ``bdf`` is unique in its :class:`Topology`;
every node's ``parent`` chain ends at a :class:`PciHostBridge`.

Units: addresses and sizes in bytes. A BAR's ``bus_base`` is the address a peer uses on the
PCI bus; the kernel's ``bus_offset`` is ``bus_base - base`` (pci_bus_address() -
pci_resource_start()).

Locking (which field may change, and when):
- ``Bar`` and the tree's shape (``parent``, ``bars``, ``Topology.functions``): built before
  boot, immutable afterwards (the kernel's pci_bus_sem guards enumeration, which the model
  does not do at run time).
- ``acs_redir``: configuration, set while the topology is built.
- ``PciFunction.p2pdma`` (``pdev->p2pdma``): set once by pcim_p2pdma_init() at an exporter's
  probe, idempotently, and untracked — probes run in a scenario's set-up, before any task.

Leaves out: config space, bus numbers and enumeration, PCI domains beyond naming, SR-IOV
(``pci_physfn``), I/O-port BARs beyond "cannot do P2P", the vendor/device IDs the whitelist
matches (a host bridge carries the whitelist's answer as two flags instead), hot-plug.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PCI_STD_NUM_BARS = 6


@dataclass(frozen=True)
class Bar:
    """A BAR: ``[base, base + size)`` in the physical address space.

    ``p2p`` False stands for what makes pcim_p2pdma_provider() return NULL: not an
    IORESOURCE_MEM BAR, or a device with ``non_mappable_bars``. ``bus_base`` defaults to
    ``base`` (bus_offset 0, the usual case on x86).
    """

    base: int
    size: int
    p2p: bool = True
    bus_base: int | None = None

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def bus_offset(self) -> int:
        return (self.base if self.bus_base is None else self.bus_base) - self.base


class PciHostBridge:
    """A root complex (struct pci_host_bridge) and the P2P whitelist's verdict for it.

    ``p2pdma_whitelisted``: the device at devfn 00.0 (or the first root port) of this host
    bridge matches pci_p2pdma_whitelist[]. ``req_same_host_bridge``: the entry carries
    REQ_SAME_HOST_BRIDGE, so it forwards P2P only between ports of this same host bridge.
    """

    def __init__(
        self, name: str, p2pdma_whitelisted: bool = False, req_same_host_bridge: bool = False
    ) -> None:
        self.name = name
        self.p2pdma_whitelisted = p2pdma_whitelisted
        self.req_same_host_bridge = req_same_host_bridge

    def __repr__(self) -> str:
        return f"PciHostBridge({self.name!r})"


class PciBridge:
    """A PCI-PCI bridge: a root port, or a switch's upstream or downstream port.

    ``parent`` is the bridge above (pci_upstream_bridge()) or, for a root port, the host
    bridge whose root bus it sits on. ``acs_redir``: the port's ACS control has any of
    RR | CR | EC set, which sends P2P TLPs up to the root complex.
    """

    KINDS = ("root_port", "switch_upstream", "switch_downstream")

    def __init__(
        self, name: str, kind: str, parent: PciBridge | PciHostBridge, acs_redir: bool = False
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"PciBridge {name}: kind {kind!r} not one of {self.KINDS}")
        self.name = name
        self.kind = kind
        self.parent = parent
        self.acs_redir = acs_redir
        # The hardware models on this bridge's secondary bus (hw/devices/fabric.py fills it),
        # for the Secondary Bus Reset bit of its bridge control register.
        self.secondary: list[Any] = []

    def __repr__(self) -> str:
        return f"PciBridge({self.name!r}, {self.kind})"

    def secondary_bus_reset(self) -> None:
        """PCI_BRIDGE_CTL_BUS_RESET pulsed (pci_reset_secondary_bus): every function on the
        secondary bus is reset."""
        for dev in list(self.secondary):
            dev.bus_reset()


class PciSwitch:
    """A PCIe switch: one upstream port and a downstream port per slot, made on demand."""

    def __init__(self, name: str, upstream: PciBridge) -> None:
        self.name = name
        self.upstream = upstream
        self.downstream: list[PciBridge] = []

    def port(self, index: int | None = None) -> PciBridge:
        """Downstream port ``index``; a new one when ``index`` is None or one past the end."""
        if index is None or index == len(self.downstream):
            p = PciBridge(
                f"{self.name}.dp{len(self.downstream)}", "switch_downstream", self.upstream
            )
            self.downstream.append(p)
            return p
        return self.downstream[index]

    def __repr__(self) -> str:
        return f"PciSwitch({self.name!r})"


class PciFunction:
    """A PCI function (struct pci_dev): name, ``bdf`` ("0000:01:00.0"), BARs by index.

    ``bars`` accepts :class:`Bar` or ``(base, size)`` tuples (P2P-capable, bus_offset 0).
    ``parent`` is set by :meth:`Topology.add_function`: the bridge above, or the host
    bridge for a root-complex integrated endpoint.
    """

    def __init__(
        self,
        name: str,
        bdf: str,
        bars: dict[int, Bar | tuple[int, int]] | None = None,
        acs_redir: bool = False,
    ) -> None:
        self.name = name
        self.bdf = bdf
        self.bars: dict[int, Bar] = {}
        for i, b in (bars or {}).items():
            if not 0 <= i < PCI_STD_NUM_BARS:
                raise ValueError(f"{name}: BAR index {i} outside 0..{PCI_STD_NUM_BARS - 1}")
            self.bars[i] = b if isinstance(b, Bar) else Bar(b[0], b[1])
        self.acs_redir = acs_redir
        self.parent: PciBridge | PciHostBridge | None = None
        self.p2pdma: Any = None  # kernel state: pdev->p2pdma (kernel/dma/p2pdma.py)

    def __repr__(self) -> str:
        return f"PciFunction({self.name!r}, {self.bdf})"


Node = PciFunction | PciBridge


def pci_upstream_bridge(dev: Node) -> PciBridge | None:
    """The bridge directly above ``dev``; None on a root bus (drivers/pci: bus->self)."""
    p = dev.parent
    return p if isinstance(p, PciBridge) else None


def upstream_chain(dev: Node) -> Iterator[Node]:
    """``dev`` itself, then each upstream bridge, as calc_map_type_and_dist() walks them."""
    cur: Node | None = dev
    while cur is not None:
        yield cur
        cur = pci_upstream_bridge(cur)


def pci_find_host_bridge(dev: Node) -> PciHostBridge:
    cur: Any = dev
    while isinstance(cur, PciFunction | PciBridge):
        cur = cur.parent
    if not isinstance(cur, PciHostBridge):
        raise ValueError(f"{dev!r} is not attached to a host bridge")
    return cur


class Topology:
    """A machine's PCI tree. ``cpu_supports_p2pdma`` is p2pdma.c's cpu_supports_p2pdma()
    (AMD Zen or newer: every host bridge forwards P2P)."""

    def __init__(self, host_p2p: bool = False, cpu_supports_p2pdma: bool = False) -> None:
        self.cpu_supports_p2pdma = cpu_supports_p2pdma
        self.host_bridges: list[PciHostBridge] = []
        self.functions: dict[str, PciFunction] = {}
        self.host = self.add_host_bridge("pci0000:00", p2pdma_whitelisted=host_p2p)

    def add_host_bridge(
        self, name: str, p2pdma_whitelisted: bool = False, req_same_host_bridge: bool = False
    ) -> PciHostBridge:
        hb = PciHostBridge(name, p2pdma_whitelisted, req_same_host_bridge)
        self.host_bridges.append(hb)
        return hb

    def add_root_port(
        self, name: str, host: PciHostBridge | None = None, acs_redir: bool = False
    ) -> PciBridge:
        return PciBridge(name, "root_port", host or self.host, acs_redir)

    def add_switch(self, name: str, parent: PciBridge | PciSwitch) -> PciSwitch:
        """A switch whose upstream port sits below ``parent`` (a root or downstream port)."""
        above = parent.port() if isinstance(parent, PciSwitch) else parent
        return PciSwitch(name, PciBridge(f"{name}.up", "switch_upstream", above))

    def add_function(
        self, fn: PciFunction, parent: PciBridge | PciSwitch | PciHostBridge | None = None
    ) -> PciFunction:
        """Attach ``fn`` below ``parent``: a bridge, a switch (a new downstream port), or a
        host bridge (a root-complex integrated endpoint); default the first host bridge."""
        if fn.bdf in self.functions:
            raise ValueError(f"add_function: {fn.bdf} already present")
        if isinstance(parent, PciSwitch):
            fn.parent = parent.port()
        else:
            fn.parent = parent if parent is not None else self.host
        self.functions[fn.bdf] = fn
        return fn

    # ----- queries ---------------------------------------------------------------------
    @staticmethod
    def common_upstream(a: Node, b: Node) -> Node | None:
        """The nearest node both sit below, counting ``a`` and ``b`` themselves (so a
        function is its own common upstream); None when only the root complex joins them."""
        up_b = list(upstream_chain(b))
        for x in upstream_chain(a):
            if x in up_b:
                return x
        return None

    def path(self, a: Node, b: Node) -> list[Any]:
        """The nodes a TLP from ``a`` to ``b`` crosses, ends included. Without a common
        upstream bridge it climbs to the host bridge(s) and descends again."""
        up_a = list(upstream_chain(a))
        up_b = list(upstream_chain(b))
        top = self.common_upstream(a, b)
        if top is not None:
            return up_a[: up_a.index(top) + 1] + list(reversed(up_b[: up_b.index(top)]))
        ha, hb = pci_find_host_bridge(a), pci_find_host_bridge(b)
        middle: list[Any] = [ha] if ha is hb else [ha, hb]
        return up_a + middle + list(reversed(up_b))

    @staticmethod
    def distance(a: Node, b: Node) -> int:
        """calc_map_type_and_dist()'s hop count: 0 same function, 2 two functions on one
        port, 4 across one switch; through the root complex, the hops to each root."""
        up_a = list(upstream_chain(a))
        up_b = list(upstream_chain(b))
        top = Topology.common_upstream(a, b)
        if top is None:
            return len(up_a) + len(up_b)
        return up_a.index(top) + up_b.index(top)
