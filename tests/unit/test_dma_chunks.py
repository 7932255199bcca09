"""kernel/dma/chunks.py: memory_chunks queries and the compressed one-entry-per-range table."""

from __future__ import annotations

from passthru.hw.pci import PciFunction, Topology
from passthru.kernel.dma.chunks import (
    PRIVATE,
    CompressedTable,
    Private,
    bio_vec,
    memory_chunk,
    memory_chunks,
)
from passthru.kernel.dma.p2pdma import pcim_p2pdma_init, pcim_p2pdma_provider
from passthru.kernel.dma.scatterlist import MAX_SG_ENT_SZ

PAGE, MiB, GiB = 4096, 1 << 20, 1 << 30


def provider():
    t = Topology()
    gpu = t.add_function(PciFunction("gpu", "0000:03:00.0", {0: (1 << 40, GiB)}))
    pcim_p2pdma_init(gpu, t)
    return pcim_p2pdma_provider(gpu, 0)


def test_cpu_memory_chunk():
    c = memory_chunks.from_extents([(0, PAGE), (PAGE, PAGE), (10 * PAGE, PAGE)])
    assert not c.is_p2p and c.cpu_mappable and c.total_length == 3 * PAGE
    assert c.chunks[0].bvecs == [bio_vec(0, 2 * PAGE), bio_vec(10 * PAGE, PAGE)]
    assert c.c_bytes() == 16 + 16 + 2 * 16


def test_p2p_private_and_mixed():
    p2p = memory_chunk.from_extents([(1 << 40, GiB)], provider())
    priv = memory_chunk.from_extents([(0, MiB)], Private("vm1"))
    ram = memory_chunk.from_extents([(4 * GiB, MiB)])
    assert p2p.is_p2p and p2p.cpu_mappable and not p2p.is_private
    assert priv.is_private and not priv.cpu_mappable and not priv.is_p2p
    mixed = memory_chunks([ram, p2p])
    assert mixed.is_p2p and mixed.cpu_mappable and mixed.total_length == GiB + MiB
    assert not memory_chunks([ram, priv]).cpu_mappable
    assert PRIVATE == Private()
    locked = memory_chunk.from_extents([(1 << 40, MiB)], provider(), cpu_mappable=False)
    assert not memory_chunks([locked]).cpu_mappable


def test_bvec_length_is_32_bit():
    c = memory_chunk.from_extents([(0, 8 * GiB)])
    assert [b.len for b in c.bvecs] == [MAX_SG_ENT_SZ, MAX_SG_ENT_SZ, 8 * GiB - 2 * MAX_SG_ENT_SZ]


def test_compressed_table_is_exactly_one_entry_per_contiguous_range():
    ext = [
        (0, PAGE),
        (PAGE, PAGE),  # continues the first
        (16 * PAGE, PAGE),
        (17 * PAGE, 0),  # empty: ignored
        (17 * PAGE, 2 * PAGE),  # continues the third
        (8 * PAGE, PAGE),  # below, not after: a new range
        (9 * PAGE, 1 << 40),  # 1 TiB, one entry (u64 length)
    ]
    t = CompressedTable.from_extents(ext)
    assert t.extents() == [(0, 2 * PAGE), (16 * PAGE, 3 * PAGE), (8 * PAGE, PAGE + (1 << 40))]
    assert len(t) == 3 and t.c_bytes() == 48
    assert t.total_length == sum(n for _, n in ext)
    assert len(CompressedTable.from_extents([])) == 0
