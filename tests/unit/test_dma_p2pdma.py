"""kernel/dma/p2pdma.py: providers per BAR and pci_p2pdma_map_type()'s routing decision."""

from __future__ import annotations

from passthru.hw.pci import Bar, PciFunction, Topology
from passthru.kernel.dma.p2pdma import (
    PCI_P2PDMA_MAP_BUS_ADDR,
    PCI_P2PDMA_MAP_NOT_SUPPORTED,
    PCI_P2PDMA_MAP_THRU_HOST_BRIDGE,
    PciP2pdmaMapType,
    calc_map_type_and_dist,
    pci_p2pdma_bus_addr_map,
    pci_p2pdma_map_type,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)

GiB = 1 << 30
BAR0 = 0x40_0000_0000


def machine(host_p2p=False, cpu_p2p=False, acs=False):
    """gpu and nic below one switch (rp0); nvme on its own root port (rp1)."""
    t = Topology(host_p2p=host_p2p, cpu_supports_p2pdma=cpu_p2p)
    sw = t.add_switch("sw0", t.add_root_port("rp0"))
    gpu = PciFunction(
        "gpu",
        "0000:03:00.0",
        {
            0: (BAR0, 128 * GiB),
            2: Bar(0x1000, 0x100, p2p=False),
            4: Bar(BAR0 + (1 << 40), 1 << 20, True, 0x1000),
        },
    )
    t.add_function(gpu, sw)
    nic = t.add_function(PciFunction("nic", "0000:04:00.0"), sw)
    nvme = t.add_function(PciFunction("nvme", "0000:05:00.0"), t.add_root_port("rp1"))
    if acs:
        sw.downstream[1].acs_redir = True
    pcim_p2pdma_init(gpu, t)
    return t, sw, gpu, nic, nvme


def test_one_provider_per_p2p_bar():
    _, _, gpu, _, _ = machine()
    p0 = pcim_p2pdma_provider(gpu, 0)
    assert p0 is not None and p0.owner is gpu and p0.bus_offset == 0
    assert pcim_p2pdma_provider(gpu, 2) is None  # cannot do P2P (I/O or non-mappable)
    assert pcim_p2pdma_provider(gpu, 1) is None  # no such BAR
    p4 = pcim_p2pdma_provider(gpu, 4)
    assert p4 is not None and p4.bus_offset == 0x1000 - (BAR0 + (1 << 40))
    assert pci_p2pdma_bus_addr_map(p4, BAR0 + (1 << 40) + 0x10) == 0x1010
    assert pcim_p2pdma_init(gpu, Topology()) is gpu.p2pdma  # idempotent


def test_bus_addr_through_a_switch():
    _, _, gpu, nic, _ = machine()
    assert pci_p2pdma_map_type(pcim_p2pdma_provider(gpu, 0), nic) == PCI_P2PDMA_MAP_BUS_ADDR


def test_same_function_is_bus_addr_at_distance_zero():
    t, _, gpu, _, _ = machine()
    assert calc_map_type_and_dist(t, gpu, gpu) == (PCI_P2PDMA_MAP_BUS_ADDR, 0)


def test_through_the_root_needs_a_whitelisted_host_bridge():
    _, _, gpu, _, nvme = machine(host_p2p=True)
    assert pci_p2pdma_map_type(pcim_p2pdma_provider(gpu, 0), nvme) == (
        PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
    )
    _, _, gpu, _, nvme = machine(host_p2p=False)
    assert pci_p2pdma_map_type(pcim_p2pdma_provider(gpu, 0), nvme) == (PCI_P2PDMA_MAP_NOT_SUPPORTED)


def test_amd_zen_cpus_forward_p2p_without_the_whitelist():
    _, _, gpu, _, nvme = machine(host_p2p=False, cpu_p2p=True)
    assert pci_p2pdma_map_type(pcim_p2pdma_provider(gpu, 0), nvme) == (
        PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
    )


def test_acs_redirect_in_the_switch_sends_traffic_to_the_root():
    t, _, gpu, nic, _ = machine(acs=True)
    assert calc_map_type_and_dist(t, gpu, nic) == (PCI_P2PDMA_MAP_NOT_SUPPORTED, 4)
    t, _, gpu, nic, _ = machine(acs=True, host_p2p=True)
    assert calc_map_type_and_dist(t, gpu, nic) == (PCI_P2PDMA_MAP_THRU_HOST_BRIDGE, 4)


def test_acs_on_the_common_upstream_port_counts():
    t, sw, gpu, nic, _ = machine()
    sw.upstream.acs_redir = True
    assert calc_map_type_and_dist(t, gpu, nic)[0] == PCI_P2PDMA_MAP_NOT_SUPPORTED


def test_the_answer_is_cached_per_client():
    _, sw, gpu, nic, _ = machine()
    prov = pcim_p2pdma_provider(gpu, 0)
    assert pci_p2pdma_map_type(prov, nic) == PCI_P2PDMA_MAP_BUS_ADDR
    sw.downstream[1].acs_redir = True  # too late: the kernel does not recompute
    assert pci_p2pdma_map_type(prov, nic) == PCI_P2PDMA_MAP_BUS_ADDR
    assert gpu.p2pdma.map_types == {nic.bdf: PCI_P2PDMA_MAP_BUS_ADDR}


def test_not_supported_without_provider_init_or_pci_client():
    _, _, gpu, nic, _ = machine()
    assert pci_p2pdma_map_type(pcim_p2pdma_provider(gpu, 2), nic) == PCI_P2PDMA_MAP_NOT_SUPPORTED
    assert pci_p2pdma_map_type(None, nic) == PCI_P2PDMA_MAP_NOT_SUPPORTED
    assert pci_p2pdma_map_type(pcim_p2pdma_provider(gpu, 0), "platform-dev") == (
        PCI_P2PDMA_MAP_NOT_SUPPORTED
    )
    assert pcim_p2pdma_provider(nic, 0) is None  # pcim_p2pdma_init never ran for nic


def test_two_host_bridges():
    t = Topology(host_p2p=True)
    a = t.add_function(PciFunction("a", "0000:01:00.0", {0: (BAR0, 1 << 20)}), t.add_root_port("r"))
    far_hb = t.add_host_bridge("pci0000:80", p2pdma_whitelisted=True)
    b = t.add_function(PciFunction("b", "0000:81:00.0"), t.add_root_port("r80", far_hb))
    assert calc_map_type_and_dist(t, a, b)[0] == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
    far_hb.req_same_host_bridge = True  # e.g. Xeon E5: only within one host bridge
    assert calc_map_type_and_dist(t, a, b)[0] == PCI_P2PDMA_MAP_NOT_SUPPORTED
    t.host.req_same_host_bridge = True
    c = t.add_function(PciFunction("c", "0000:02:00.0"), t.add_root_port("r2"))
    assert calc_map_type_and_dist(t, a, c)[0] == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE


def test_enum_follows_the_kernel_since_6_16():
    assert [m.name for m in PciP2pdmaMapType] == [
        "PCI_P2PDMA_MAP_UNKNOWN",
        "PCI_P2PDMA_MAP_NONE",
        "PCI_P2PDMA_MAP_NOT_SUPPORTED",
        "PCI_P2PDMA_MAP_BUS_ADDR",
        "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE",
    ]
    assert list(PciP2pdmaMapType) == list(range(5))
