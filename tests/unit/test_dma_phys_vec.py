"""kernel/dma/phys_vec.py: dma_buf_phys_vec_to_sgt() for each route, and its limits."""

from __future__ import annotations

import errno

import pytest

from passthru.hw.pci import Bar, PciFunction, Topology
from passthru.kernel.dma.p2pdma import (
    PCI_P2PDMA_MAP_BUS_ADDR,
    PCI_P2PDMA_MAP_THRU_HOST_BRIDGE,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)
from passthru.kernel.dma.phys_vec import (
    IovaBump,
    dma_buf_free_sgt,
    dma_buf_phys_vec,
    dma_buf_phys_vec_to_sgt,
    phys_vec,
    phys_vec_array,
)
from passthru.kernel.dma.scatterlist import MAX_SG_ENT_SZ, sg_table_bytes

MiB, GiB = 1 << 20, 1 << 30
BAR = 0x40_0000_0000
BUS = 0x80_0000_0000  # the BAR's bus address: bus_offset = BUS - BAR


def machine(host_p2p=True):
    t = Topology(host_p2p=host_p2p)
    sw = t.add_switch("sw0", t.add_root_port("rp0"))
    gpu = t.add_function(
        PciFunction("gpu", "0000:03:00.0", {0: Bar(BAR, 128 * GiB, True, BUS)}), sw
    )
    nic = t.add_function(PciFunction("nic", "0000:04:00.0"), sw)
    nvme = t.add_function(PciFunction("nvme", "0000:05:00.0"), t.add_root_port("rp1"))
    pcim_p2pdma_init(gpu, t)
    return pcim_p2pdma_provider(gpu, 0), nic, nvme


def test_phys_vec_is_the_619_dma_buf_phys_vec():
    assert dma_buf_phys_vec is phys_vec
    assert phys_vec_array([(1, 2), (3, 4)]) == [phys_vec(1, 2), phys_vec(3, 4)]


def test_bus_addr_entries_are_bus_addresses_split_at_the_segment_limit():
    prov, nic, _ = machine()
    sgt = dma_buf_phys_vec_to_sgt(nic, prov, [phys_vec(BAR, 128 * GiB)], 128 * GiB)
    assert sgt.map_type == PCI_P2PDMA_MAP_BUS_ADDR and sgt.state is None
    segs = sgt.dma_extents()
    assert MAX_SG_ENT_SZ == (1 << 32) - 4096  # ALIGN_DOWN(UINT_MAX, PAGE_SIZE)
    assert len(segs) == 33  # 128 GiB / (4 GiB - 4 KiB), rounded up
    assert all(n == MAX_SG_ENT_SZ for _, n in segs[:-1]) and segs[-1][1] == 32 * 4096
    assert segs[0][0] == BUS and sum(n for _, n in segs) == 128 * GiB
    assert all(a + n == b for (a, n), (b, _) in zip(segs, segs[1:], strict=False))
    assert sgt.orig_nents == 0 and sgt.nents == 33 and not sgt.pages_valid
    assert sgt.phys_extents()[0] == (BAR, MAX_SG_ENT_SZ)


def test_segment_limit_boundaries():
    prov, nic, _ = machine()
    one = dma_buf_phys_vec_to_sgt(nic, prov, [phys_vec(BAR, MAX_SG_ENT_SZ)], MAX_SG_ENT_SZ)
    assert len(one.dma_extents()) == 1
    two = dma_buf_phys_vec_to_sgt(nic, prov, [phys_vec(BAR, 4 * GiB)], 4 * GiB)
    assert two.dma_extents() == [(BUS, MAX_SG_ENT_SZ), (BUS + MAX_SG_ENT_SZ, 4096)]


def test_thru_host_bridge_uses_one_iova_range_when_it_fits():
    prov, _, nvme = machine()
    iova = IovaBump(base=1 << 40)
    vecs = [phys_vec(BAR + 8 * MiB, MiB), phys_vec(BAR, 2 * MiB), phys_vec(BAR + 64 * MiB, MiB)]
    sgt = dma_buf_phys_vec_to_sgt(nvme, prov, vecs, 4 * MiB, iova=iova)
    assert sgt.map_type == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
    assert sgt.state == (1 << 40, 4 * MiB)
    assert sgt.dma_extents() == [(1 << 40, 4 * MiB)]  # three ranges, one entry
    assert sgt.phys_extents() == [(a, n) for a, n in vecs]
    dma_buf_free_sgt(sgt)
    assert not iova.map


def test_one_iova_range_larger_than_a_segment_is_split_too():
    prov, _, nvme = machine()
    vecs = [phys_vec(BAR + i * 4 * GiB, 3 * GiB) for i in range(3)]  # 9 GiB, non-contiguous
    sgt = dma_buf_phys_vec_to_sgt(nvme, prov, vecs, 9 * GiB, iova=IovaBump())
    assert [n for _, n in sgt.dma_extents()] == [
        MAX_SG_ENT_SZ,
        MAX_SG_ENT_SZ,
        9 * GiB - 2 * MAX_SG_ENT_SZ,
    ]


def test_thru_host_bridge_falls_back_to_an_iova_per_range():
    prov, _, nvme = machine()
    iova = IovaBump(base=1 << 40, max_size=2 * MiB)  # no hole for all 4 MiB at once
    vecs = [phys_vec(BAR, MiB), phys_vec(BAR + 8 * MiB, 2 * MiB), phys_vec(BAR + 64 * MiB, MiB)]
    sgt = dma_buf_phys_vec_to_sgt(nvme, prov, vecs, 4 * MiB, iova=iova)
    assert sgt.state is None
    assert sgt.dma_extents() == [
        (1 << 40, MiB),
        ((1 << 40) + MiB, 2 * MiB),
        ((1 << 40) + 3 * MiB, MiB),
    ]
    assert sgt.phys_extents() == [tuple(v) for v in vecs]
    dma_buf_free_sgt(sgt)
    assert not iova.map
    with pytest.raises(OSError) as e:
        dma_buf_free_sgt(sgt)
    assert e.value.errno == errno.EINVAL


def test_per_range_iova_failure_is_enomem_and_unmaps_what_was_mapped():
    prov, _, nvme = machine()
    iova = IovaBump(base=0, limit=3 * MiB, max_size=2 * MiB)
    vecs = [phys_vec(BAR, 2 * MiB), phys_vec(BAR + 8 * MiB, 2 * MiB)]
    with pytest.raises(OSError) as e:
        dma_buf_phys_vec_to_sgt(nvme, prov, vecs, 4 * MiB, iova=iova)
    assert e.value.errno == errno.ENOMEM and "dma_map_phys" in str(e.value)
    assert not iova.map


def test_thru_host_bridge_without_iommu_is_dma_direct():
    prov, _, nvme = machine()
    sgt = dma_buf_phys_vec_to_sgt(nvme, prov, [phys_vec(BAR + MiB, MiB)], MiB)
    assert sgt.dma_extents() == [(BAR + MiB, MiB)]  # DMA address == physical address
    assert sgt.c_bytes() == sg_table_bytes(1) + 16 + 16  # dma_buf_dma rest + dma_iova_state


def test_refusals_are_einval():
    prov, nic, nvme = machine(host_p2p=False)
    for dev, p, vecs in [
        (nvme, prov, [phys_vec(BAR, MiB)]),  # NOT_SUPPORTED: host bridge not whitelisted
        (nic, None, [phys_vec(BAR, MiB)]),  # no provider: not MMIO
        (nic, prov, []),  # sg_alloc_table(0)
    ]:
        with pytest.raises(OSError) as e:
            dma_buf_phys_vec_to_sgt(dev, p, vecs, MiB)
        assert e.value.errno == errno.EINVAL
