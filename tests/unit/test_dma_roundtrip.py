"""Property: extents -> any descriptor representation -> extents covers the same bytes, in the
same buffer order (contiguous runs merged on both sides)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from passthru.hw.pci import Bar, PciFunction, Topology
from passthru.kernel.dma.chunks import CompressedTable, memory_chunks
from passthru.kernel.dma.p2pdma import pcim_p2pdma_init, pcim_p2pdma_provider
from passthru.kernel.dma.phys_vec import (
    IovaBump,
    dma_buf_free_sgt,
    dma_buf_phys_vec_to_sgt,
    phys_vec_array,
)
from passthru.kernel.dma.scatterlist import PAGE_SIZE, sg_table_from_extents

GiB = 1 << 30
BAR = 1 << 44


def normalise(ranges):
    out: list[list[int]] = []
    for a, n in ranges:
        if n == 0:
            continue
        if out and out[-1][0] + out[-1][1] == a:
            out[-1][1] += n
        else:
            out.append([a, n])
    return [tuple(r) for r in out]


def routes():
    t = Topology(host_p2p=True)
    sw = t.add_switch("sw", t.add_root_port("rp0"))
    gpu = t.add_function(
        PciFunction("gpu", "0000:03:00.0", {0: Bar(BAR, 1 << 43, True, 1 << 45)}), sw
    )
    nic = t.add_function(PciFunction("nic", "0000:04:00.0"), sw)
    nvme = t.add_function(PciFunction("nvme", "0000:05:00.0"), t.add_root_port("rp1"))
    pcim_p2pdma_init(gpu, t)
    return pcim_p2pdma_provider(gpu, 0), nic, nvme


# Ranges placed upward with gaps (0 = contiguous with the previous one), lengths in pages,
# some above the 32-bit segment limit; then optionally shuffled into another buffer order.
pieces = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.one_of(st.integers(1, 64), st.integers((4 * GiB) // PAGE_SIZE - 2, 3 * 2**20)),
    ),
    min_size=1,
    max_size=20,
)


@st.composite
def layouts(draw):
    pos = BAR
    ranges = []
    for gap, pages in draw(pieces):
        pos += gap * PAGE_SIZE
        ranges.append((pos, pages * PAGE_SIZE))
        pos += pages * PAGE_SIZE
    return draw(st.permutations(ranges)) if draw(st.booleans()) else ranges


@settings(max_examples=60, deadline=None)
@given(layouts(), st.sampled_from([256 << 20, GiB, 1 << 32]))
def test_every_representation_preserves_the_covered_bytes(ranges, max_segment):
    want = normalise(ranges)
    size = sum(n for _, n in ranges)
    prov, nic, nvme = routes()

    assert normalise(sg_table_from_extents(ranges, max_segment).cpu_extents()) == want
    assert normalise(phys_vec_array(ranges)) == want
    assert normalise(memory_chunks.from_extents(ranges, prov).extents()) == want
    assert normalise(CompressedTable.from_extents(ranges).extents()) == want
    assert len(CompressedTable.from_extents(ranges)) == len(want)

    vecs = phys_vec_array(ranges)
    for dev, iova in [
        (nic, None),  # BUS_ADDR
        (nvme, None),  # THRU_HOST_BRIDGE, dma-direct
        (nvme, IovaBump()),  # THRU_HOST_BRIDGE, one IOVA range
        (nvme, IovaBump(max_size=4 * GiB)),  # THRU_HOST_BRIDGE, IOVA per range
    ]:
        try:
            sgt = dma_buf_phys_vec_to_sgt(dev, prov, vecs, size, iova=iova)
        except OSError:
            assert iova is not None and iova.max_size is not None  # a range above max_size
            continue
        assert sum(n for _, n in sgt.dma_extents()) == size
        assert normalise(sgt.phys_extents()) == want
        assert sgt.violations == []
        dma_buf_free_sgt(sgt)
