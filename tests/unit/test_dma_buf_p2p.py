"""The physical route: a BAR exported as phys_vec and mapped by importers whose place in the
PCI topology decides BUS_ADDR, THRU_HOST_BRIDGE or refusal (KERNEL.md §1)."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.hw.pci import Bar, PciFunction, Topology
from passthru.kernel.dma.p2pdma import PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
from passthru.kernel.dma_buf.importers import DeviceImporter
from passthru.kernel.dma_buf.p2p_exporter import bar_dmabuf

GiB = 1 << 30
BAR_BASE = 3 * GiB + (256 << 20)  # inside the default machine's PCI window


def machine(host_p2p: bool):
    t = Topology(host_p2p=host_p2p)
    rp1, rp2 = t.add_root_port("rp1"), t.add_root_port("rp2")
    sw = t.add_switch("sw", rp1)
    gpu = t.add_function(PciFunction("gpu", "0000:02:00.0", {0: Bar(BAR_BASE, 64 << 20,
                                                                   bus_base=0x8000_0000)}), sw)
    t.add_function(PciFunction("nic", "0000:03:00.0", {}), sw)
    t.add_function(PciFunction("nvme", "0000:04:00.0", {}), rp2)
    return t, gpu


@pytest.mark.parametrize("host_p2p", [False, True])
def test_bus_addr_through_the_switch(host_p2p):
    h = SimHost()
    t, gpu = machine(host_p2p)
    buf = bar_dmabuf(h.kernel, t, gpu, 0, [(0x1000, 0x2000), (0x10000, 0x1000)])
    nic = DeviceImporter("0000:03:00.0")
    nic.attach(buf)
    nic.map()
    m = nic.attach_.mapping
    assert m.sgt.map_type == PCI_P2PDMA_MAP_BUS_ADDR
    # bus addresses (bus_base - base offset), physical truth underneath
    assert [(d, n) for d, n, _ in m.ranges] == [(0x8000_1000, 0x2000), (0x8001_0000, 0x1000)]
    assert [p for _, _, p in m.ranges] == [BAR_BASE + 0x1000, BAR_BASE + 0x10000]
    nic.dma_write(0x1ffc, b"abcdefgh")  # straddles the two ranges
    assert h.kernel.phys.data.read(BAR_BASE + 0x2ffc, 4) == b"abcd"
    assert h.kernel.phys.data.read(BAR_BASE + 0x10000, 4) == b"efgh"
    nic.teardown()
    buf.put()
    assert h.leaks() == [] and h.sched.violations == []


def test_through_the_host_bridge_only_when_it_forwards_p2p():
    for host_p2p, want in ((True, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE), (False, None)):
        h = SimHost()
        t, gpu = machine(host_p2p)
        buf = bar_dmabuf(h.kernel, t, gpu, 0, [(0, 0x1000)])
        nvme = DeviceImporter("0000:04:00.0")
        nvme.attach(buf)
        if want is None:
            with pytest.raises(OSError) as e:
                nvme.map()
            assert e.value.errno == errno.EINVAL and "NOT_SUPPORTED" in str(e.value)
        else:
            nvme.map()
            m = nvme.attach_.mapping
            assert m.sgt.map_type == want and m.ranges[0][0] == BAR_BASE  # dma-direct
        nvme.teardown()
        buf.put()
        assert h.leaks() == []


def test_mmio_export_needs_a_peer2peer_importer():
    h = SimHost()
    t, gpu = machine(True)
    buf = bar_dmabuf(h.kernel, t, gpu, 0, [(0, 0x1000)])
    with pytest.raises(OSError) as e:
        DeviceImporter("0000:03:00.0", p2p=False).attach(buf)
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as e:
        bar_dmabuf(h.kernel, t, gpu, 0, [(64 << 20, 0x1000)])
    assert e.value.errno == errno.EINVAL
    buf.put()
