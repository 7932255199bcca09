"""kernel/dma/scatterlist.py: C sizes with chaining, building from extents, the page rule."""

from __future__ import annotations

import pytest

from passthru.kernel.dma.scatterlist import (
    MAX_SG_ENT_SZ,
    PAGE_VIOLATION,
    SCATTERLIST_SIZE,
    SG_MAX_SINGLE_ALLOC,
    SG_TABLE_SIZE,
    SgTable,
    sg_alloc_slots,
    sg_table_bytes,
    sg_table_from_extents,
)

PAGE, MiB, GiB = 4096, 1 << 20, 1 << 30


def test_c_sizes_on_x86_64():
    assert (SCATTERLIST_SIZE, SG_TABLE_SIZE, SG_MAX_SINGLE_ALLOC) == (32, 16, 128)
    assert sg_table_bytes(1) == 16 + 32


@pytest.mark.parametrize(
    ("nents", "slots"),
    [(1, 1), (128, 128), (129, 130), (255, 256), (256, 258), (262144, 262144 + 2064)],
)
def test_chaining_gives_the_last_slot_of_each_full_chunk_to_the_link(nents, slots):
    # lib/scatterlist.c __sg_alloc_table: chunks of 128, each full one holds 127 entries
    assert sg_alloc_slots(nents) == slots


def test_one_entry_per_contiguous_run_and_split_at_max_segment():
    ext = [(0, PAGE), (PAGE, PAGE), (16 * PAGE, 2 * PAGE), (8 * GiB, 9 * GiB)]
    sgt = sg_table_from_extents(ext)
    assert sgt.cpu == [
        (0, 2 * PAGE),
        (16 * PAGE, 2 * PAGE),
        (8 * GiB, MAX_SG_ENT_SZ),
        (8 * GiB + MAX_SG_ENT_SZ, MAX_SG_ENT_SZ),
        (8 * GiB + 2 * MAX_SG_ENT_SZ, 9 * GiB - 2 * MAX_SG_ENT_SZ),
    ]
    assert sgt.orig_nents == sgt.nents == 5
    small = sg_table_from_extents([(0, 10 * PAGE)], max_segment=4 * PAGE + 123)  # aligned down
    assert [n for _, n in small.cpu] == [4 * PAGE, 4 * PAGE, 2 * PAGE]
    with pytest.raises(ValueError):
        sg_table_from_extents([(0, PAGE)], max_segment=PAGE - 1)


def test_a_huge_contiguous_run_is_a_few_entries_not_a_page_each():
    sgt = sg_table_from_extents([(0, 1 << 40)])  # 1 TiB: 268M pages, 257 entries
    assert len(sgt) == -(-(1 << 40) // MAX_SG_ENT_SZ) == 257


def test_page_table_entries_have_pages():
    seen = []
    sgt = sg_table_from_extents([(3 * PAGE + 16, 100)], on_page_access=seen.append)
    sg = sgt[0]
    assert (sg.page, sg.offset, sg.length) == (3 * PAGE, 16, 100)
    assert seen == [] and sgt.violations == []
    assert [s.index for s in sgt.for_each_sgtable_sg()] == [0]


def test_importer_reaching_for_struct_page_on_a_dma_only_table_is_recorded():
    seen: list[str] = []
    sgt = SgTable([(0x1000_0000, MiB), (0x2000_0000, MiB)], False, seen.append)
    assert (sgt.nents, sgt.orig_nents) == (2, 0)
    assert [(s.dma_address, s.dma_length) for s in sgt] == [(0x1000_0000, MiB), (0x2000_0000, MiB)]
    assert seen == []  # the DMA list is fine to use
    assert list(sgt.for_each_sgtable_sg()) == []  # no CPU list to walk
    assert sgt[1].page is None
    assert len(seen) == 1 and seen[0].startswith(PAGE_VIOLATION) and "entry 1" in seen[0]
    _ = sgt[0].page_link
    assert len(sgt.violations) == 2


def test_dma_only_table_without_callback_still_records():
    sgt = SgTable([(0, PAGE)], False)
    assert sgt[0].page is None and sgt.violations and sgt[0].length == 0


def test_mapped_page_table_may_have_fewer_dma_entries():
    sgt = SgTable([(0, PAGE), (8 * PAGE, PAGE)], True, dma=[(1 << 40, 2 * PAGE)])  # IOMMU merge
    assert (sgt.orig_nents, sgt.nents) == (2, 1)
    assert list(sgt.for_each_sgtable_dma_sg()) == [(1 << 40, 2 * PAGE)]
    assert sgt[1].dma_address == 0
    assert sgt.c_bytes() == sg_table_bytes(2)
