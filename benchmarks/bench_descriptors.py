"""Descriptor sizes: how many bytes each way of describing a buffer to a device costs.

    python benchmarks/bench_descriptors.py [--repeat N] [--seed S] [--markdown]

Four layouts, each built from extents ``(paddr, len)`` in buffer order:

(a) 1 GiB of scattered 4 KiB pages: 262144 ranges, no two adjacent;
(b) 1 GiB of 2 MiB folios, scattered: 512 ranges;
(c) 1 GiB fragmented: folios of random order 0..9 (4 KiB..2 MiB); each follows the previous
    one physically with probability 1/2, else starts after a random gap (seeded);
(d) a 128 GiB BAR: one range.

Representations (the kernel/dma model, C sizes on x86-64):

sg_table            struct sg_table (16) + struct scatterlist (32) per entry, one entry per
                    contiguous run cut at 4 GiB - 4 KiB, chained in chunks of 128
DMA-only, per range dma_buf_phys_vec_to_sgt() with PCI_P2PDMA_MAP_BUS_ADDR (or dma-direct):
                    the same structs with one entry per input range, inside struct
                    dma_buf_dma (32 with the sg_table)
DMA-only, one IOVA  the same with PCI_P2PDMA_MAP_THRU_HOST_BRIDGE behind an IOMMU: one IOVA
                    range for the whole buffer (+16 for struct dma_iova_state); the IOMMU page
                    tables that make it contiguous are not counted
phys_vec[]          16 bytes per input range (phys_addr_t + size_t)
memory_chunks       one chunk: 16 (array header) + 16 (chunk header) + 16 per bio_vec
                    (assumed sizes, see kernel/dma/chunks.py; bio_vec length is 32-bit)
compressed          16 bytes per contiguous range (u64 addr + u64 len), nothing else

"limit" is 16 bytes per contiguous range: the least a list of physical ranges can cost.
Build time is the median of --repeat runs of the model's builder (time.perf_counter); every
builder is O(entries): nothing loops per 4 KiB page unless the layout is pages.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from passthru.hw.pci import PciFunction, Topology
from passthru.kernel.dma.chunks import COMPRESSED_ENTRY_SIZE, CompressedTable, memory_chunks
from passthru.kernel.dma.p2pdma import (
    p2pdma_provider,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)
from passthru.kernel.dma.phys_vec import (
    IovaBump,
    dma_buf_phys_vec_to_sgt,
    phys_vec,
    phys_vec_array,
    phys_vec_bytes,
)
from passthru.kernel.dma.scatterlist import sg_table_from_extents

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
RAM_BASE = 4 * GiB
BAR_BASE = 1 << 44
Range = tuple[int, int]


# ----- layouts -----------------------------------------------------------------------------
def scattered(rng: random.Random, total: int, unit: int) -> list[Range]:
    """``total`` bytes in ``unit``-sized pieces at random even slots: never adjacent."""
    n = total // unit
    slots = list(range(n))
    rng.shuffle(slots)
    return [(RAM_BASE + 2 * s * unit, unit) for s in slots]


def fragmented(rng: random.Random, total: int) -> list[Range]:
    out: list[Range] = []
    pos, left = RAM_BASE, total
    while left:
        size = min(PAGE << rng.randrange(10), left)
        if out and rng.random() >= 0.5:
            pos += PAGE * rng.randint(1, 512)
        out.append((pos, size))
        pos += size
        left -= size
    return out


def layouts(seed: int) -> list[tuple[str, list[Range], bool]]:
    """(name, ranges, is_mmio)."""
    rng = random.Random(seed)
    return [
        ("(a) 1 GiB of 4 KiB pages", scattered(rng, GiB, PAGE), False),
        ("(b) 1 GiB of 2 MiB folios", scattered(rng, GiB, 2 * MiB), False),
        ("(c) 1 GiB fragmented", fragmented(rng, GiB), False),
        ("(d) 128 GiB BAR", [(BAR_BASE, 128 * GiB)], True),
    ]


# ----- the devices dma_buf_phys_vec_to_sgt() maps for ----------------------------------------
def devices() -> tuple[p2pdma_provider, PciFunction, PciFunction]:
    """A provider covering every layout's addresses; a peer below the same switch (BUS_ADDR)
    and one on another root port of a whitelisted host bridge (THRU_HOST_BRIDGE)."""
    t = Topology(host_p2p=True)
    sw = t.add_switch("sw0", t.add_root_port("rp0"))
    gpu = t.add_function(PciFunction("gpu", "0000:03:00.0", {0: (0, 1 << 46)}), sw)
    nic = t.add_function(PciFunction("nic", "0000:04:00.0"), sw)
    nvme = t.add_function(PciFunction("nvme", "0000:05:00.0"), t.add_root_port("rp1"))
    pcim_p2pdma_init(gpu, t)
    prov = pcim_p2pdma_provider(gpu, 0)
    assert prov is not None
    return prov, nic, nvme


@dataclass
class Ctx:
    """One layout, ready to be described: its ranges, phys_vecs and the devices."""

    ranges: list[Range]
    vecs: list[phys_vec]
    size: int
    owner: p2pdma_provider | None  # memory_chunks provider: the BAR's, or None for RAM
    prov: p2pdma_provider
    nic: PciFunction  # BUS_ADDR peer
    nvme: PciFunction  # THRU_HOST_BRIDGE peer


# Each builder returns (entries, bytes) of what it built.
def build_sg_table(c: Ctx) -> tuple[int, int]:
    t = sg_table_from_extents(c.ranges)
    return t.alloc_nents, t.c_bytes()


def build_dma_per_range(c: Ctx) -> tuple[int, int]:
    t = dma_buf_phys_vec_to_sgt(c.nic, c.prov, c.vecs, c.size)
    return t.nents, t.c_bytes()


def build_dma_one_iova(c: Ctx) -> tuple[int, int]:
    t = dma_buf_phys_vec_to_sgt(c.nvme, c.prov, c.vecs, c.size, iova=IovaBump())
    assert t.state is not None
    return t.nents, t.c_bytes()


def build_phys_vec(c: Ctx) -> tuple[int, int]:
    v = phys_vec_array(c.ranges)
    return len(v), phys_vec_bytes(len(v))


def build_memory_chunks(c: Ctx) -> tuple[int, int]:
    m = memory_chunks.from_extents(c.ranges, c.owner)
    return m.nr_bvecs(), m.c_bytes()


def build_compressed(c: Ctx) -> tuple[int, int]:
    t = CompressedTable.from_extents(c.ranges)
    return len(t), t.c_bytes()


BUILDERS: list[tuple[str, Callable[[Ctx], tuple[int, int]]]] = [
    ("sg_table (struct page)", build_sg_table),
    ("DMA-only sg_table, per range", build_dma_per_range),
    ("DMA-only sg_table, one IOVA", build_dma_one_iova),
    ("phys_vec[]", build_phys_vec),
    ("memory_chunks", build_memory_chunks),
    ("compressed table", build_compressed),
]


def timed(fn: Callable[[Ctx], tuple[int, int]], ctx: Ctx, repeat: int) -> tuple[int, int, float]:
    """(entries, bytes, median seconds); the garbage collector is off while timing, as in
    timeit."""
    samples = []
    out = (0, 0)
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            out = fn(ctx)
            samples.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return out[0], out[1], statistics.median(samples)


def measure(repeat: int, seed: int) -> list[dict[str, Any]]:
    prov, nic, nvme = devices()
    rows: list[dict[str, Any]] = []
    for name, ranges, mmio in layouts(seed):
        size = sum(n for _, n in ranges)
        contiguous = len(CompressedTable.from_extents(ranges))
        limit = COMPRESSED_ENTRY_SIZE * contiguous
        ctx = Ctx(ranges, phys_vec_array(ranges), size, prov if mmio else None, prov, nic, nvme)
        for rep, build in BUILDERS:
            entries, nbytes, secs = timed(build, ctx, repeat)
            rows.append(
                dict(
                    layout=name,
                    ranges=len(ranges),
                    contiguous=contiguous,
                    representation=rep,
                    entries=entries,
                    bytes=nbytes,
                    limit=limit,
                    ratio=nbytes / limit,
                    build_ms=secs * 1e3,
                )
            )
        comp = rows[-1]
        assert comp["ratio"] <= 1.1, f"{name}: compressed table {comp['ratio']:.2f}x the limit"
    return rows


def fmt_bytes(n: int) -> str:
    for unit, div in (("MiB", MiB), ("KiB", KiB)):
        if n >= div:
            return f"{n / div:,.2f} {unit}"
    return f"{n} B"


def print_rich(rows: list[dict[str, Any]]) -> None:
    t = Table(title="Descriptor sizes (C sizes, x86-64) and model build time")
    for col, just in [
        ("layout", "left"),
        ("ranges / contiguous", "right"),
        ("representation", "left"),
        ("entries", "right"),
        ("bytes", "right"),
        ("x limit", "right"),
        ("build", "right"),
    ]:
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    last = None
    for r in rows:
        first = r["layout"] != last
        if first and last is not None:
            t.add_section()
        last = r["layout"]
        t.add_row(
            r["layout"] if first else "",
            f"{r['ranges']:,} / {r['contiguous']:,}" if first else "",
            r["representation"],
            f"{r['entries']:,}",
            fmt_bytes(r["bytes"]),
            f"{r['ratio']:.2f}",
            f"{r['build_ms']:.2f} ms",
        )
    Console(width=max(Console().width, 132)).print(t)


def print_markdown(rows: list[dict[str, Any]]) -> None:
    print("| layout | ranges / contiguous | representation | entries | bytes | × limit | build |")
    print("|---|--:|---|--:|--:|--:|--:|")
    last = None
    for r in rows:
        first = r["layout"] != last
        last = r["layout"]
        layout = r["layout"] if first else ""
        counts = f"{r['ranges']:,} / {r['contiguous']:,}" if first else ""
        print(
            f"| {layout} | {counts} | {r['representation']} | {r['entries']:,} "
            f"| {fmt_bytes(r['bytes'])} | {r['ratio']:.2f} | {r['build_ms']:.2f} ms |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per builder (median)")
    ap.add_argument("--seed", type=int, default=2026, help="seed of the random layouts")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table instead")
    args = ap.parse_args()
    rows = measure(args.repeat, args.seed)
    (print_markdown if args.markdown else print_rich)(rows)


if __name__ == "__main__":
    main()
