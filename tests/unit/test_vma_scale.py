"""The address space at a few thousand VMAs: lookup, the gap search, merging of adjacent
anonymous mappings (vma_merge_new_range) and splitting on partial munmap; merging never
changes a syscall's result (issue 9 §1)."""

from __future__ import annotations

import random

import pytest

from passthru import Fault, SimHost
from passthru.kernel.mm import vma as vma_mod
from passthru.uapi import linux as L

PAGE = 4096
RW = L.PROT_READ | L.PROT_WRITE
ANON = L.MAP_PRIVATE | L.MAP_ANONYMOUS
FIXED = ANON | L.MAP_FIXED


def _reference_free_area(mm: vma_mod.Mm, length: int) -> int | None:
    """The old linear scan (unmapped_area_topdown over every VMA)."""
    top = vma_mod.MMAP_BASE
    for v in reversed(list(mm.vmas.values())):
        if v.start >= top:
            continue
        if v.end <= top - length:
            return top - length
        top = min(top, v.start)
    return None if top - length < vma_mod.MMAP_MIN_ADDR else top - length


def test_thousands_of_vmas_lookup_and_gaps() -> None:
    h = SimHost()
    mm = h.proc.mm
    n = 3000
    addrs = [h.mmap(0, PAGE, L.PROT_READ if i % 2 else RW, ANON, -1, 0) for i in range(n)]
    assert len(mm.vmas) == n  # alternating protections never merge
    assert addrs == [vma_mod.MMAP_BASE - (i + 1) * PAGE for i in range(n)]
    for a in addrs[::97]:
        v = mm.find_vma(a)
        assert v is not None and v.start == a and v.end == a + PAGE
    assert mm.find_vma(addrs[-1] - 1) is None
    # punch holes of varied sizes; each mmap takes the highest gap that fits
    rng = random.Random(7)
    for i in range(0, n - 8, 11):
        h.munmap(addrs[i], PAGE * rng.randint(1, 4))
    for _ in range(300):
        length = PAGE * rng.randint(1, 6)
        want = _reference_free_area(mm, length)
        got = h.mmap(0, length, L.PROT_EXEC, ANON, -1, 0)
        assert got == want
        if rng.random() < 0.3:
            h.munmap(got, length)
    h.exit()
    assert h.leaks() == []


def test_adjacent_anonymous_mmaps_merge_and_split_on_partial_munmap() -> None:
    h = SimHost()
    mm = h.proc.mm
    n = 2000
    addrs = [h.mmap(0, PAGE, RW, ANON, -1, 0) for _ in range(n)]
    assert len(mm.vmas) == 1
    (v,) = mm.vmas.values()
    assert (v.start, v.end) == (addrs[-1], addrs[0] + PAGE)
    for i, a in enumerate(addrs[1::50]):
        h.poke(a, f"page{i}".encode())
    mid = addrs[1000]
    h.munmap(mid, PAGE)
    assert len(mm.vmas) == 2
    with pytest.raises(Fault):
        h.peek(mid, 1)
    for i, a in enumerate(addrs[1::50]):
        assert h.peek(a, len(f"page{i}")) == f"page{i}".encode()
    # the hole is the highest gap: a new page goes there and merges both sides back
    assert h.mmap(0, PAGE, RW, ANON, -1, 0) == mid
    assert len(mm.vmas) == 1
    assert h.peek(mid, 4) == bytes(4)
    h.munmap(addrs[-1], n * PAGE)
    assert mm.vmas == {}
    h.exit()
    assert h.leaks() == []


def test_no_merge_across_different_flags_files_or_anon_vmas() -> None:
    h = SimHost()
    mm = h.proc.mm
    base = 0x40000000
    h.mmap(base, PAGE, RW, FIXED, -1, 0)
    h.mmap(base + PAGE, PAGE, L.PROT_READ, FIXED, -1, 0)  # other protection
    assert len(mm.vmas) == 2
    m = h.memfd_create("f", 0)
    h.ftruncate(m, PAGE)
    h.mmap(base + 2 * PAGE, PAGE, RW, L.MAP_PRIVATE | L.MAP_FIXED, m, 0)  # a file
    h.mmap(base + 3 * PAGE, PAGE, RW, L.MAP_SHARED | L.MAP_ANONYMOUS | L.MAP_FIXED, -1, 0)
    assert len(mm.vmas) == 4
    # two written (so each has its own anon_vma) VMAs: a page between merges with one only
    lo, hi = 0x50000000, 0x50000000 + 2 * PAGE
    h.mmap(lo, PAGE, RW, FIXED, -1, 0)
    h.mmap(hi, PAGE, RW, FIXED, -1, 0)
    h.poke(lo, b"lo")
    h.poke(hi, b"hi")
    h.mmap(lo + PAGE, PAGE, RW, FIXED, -1, 0)
    assert len(mm.vmas) == 6
    assert h.peek(lo, 2) == b"lo" and h.peek(hi, 2) == b"hi"
    h.exit()
    assert h.leaks() == []


def _episode(seed: int) -> list[object]:
    """Random anonymous mmap/munmap/poke/peek; every syscall's result (or errno/fault)."""
    rng = random.Random(seed)
    h = SimHost()
    out: list[object] = []
    base = 0x60000000
    for _ in range(400):
        op = rng.randrange(5)
        prot = rng.choice([RW, RW, L.PROT_READ])
        pages = rng.randint(1, 4)
        at = base + PAGE * rng.randrange(64)
        try:
            if op == 0:
                out.append(h.mmap(0, pages * PAGE, prot, ANON, -1, 0))
            elif op == 1:
                out.append(h.mmap(at, pages * PAGE, prot, FIXED, -1, 0))
            elif op == 2:
                out.append(h.munmap(at, pages * PAGE))
            elif op == 3:
                h.poke(at + rng.randrange(PAGE), bytes([rng.randrange(256)]) * 100)
                out.append("poked")
            else:
                out.append(h.peek(at, pages * PAGE))
        except OSError as e:
            out.append(("errno", e.errno))
        except Fault as f:
            out.append(("fault", f.kind, f.address))
    h.exit()
    out.append(h.leaks())
    return out


@pytest.mark.parametrize("seed", range(4))
def test_merging_is_invisible_to_syscall_results(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged = _episode(seed)
    monkeypatch.setattr(vma_mod.Mm, "_merge_new_range", lambda self, new: False)
    assert _episode(seed) == merged


def _free_from_vmas(mm: vma_mod.Mm) -> list[tuple[int, int]]:
    """The gaps as the complement of the VMAs inside [MMAP_MIN_ADDR, MMAP_BASE)."""
    out, pos = [], vma_mod.MMAP_MIN_ADDR
    for v in mm.vmas.values():
        s = min(max(v.start, vma_mod.MMAP_MIN_ADDR), vma_mod.MMAP_BASE)
        if s > pos:
            out.append((pos, s))
        pos = max(pos, min(v.end, vma_mod.MMAP_BASE))
    if pos < vma_mod.MMAP_BASE:
        out.append((pos, vma_mod.MMAP_BASE))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_gap_index_follows_fixed_mappings_merges_and_splits(seed: int) -> None:
    rng = random.Random(seed)
    h = SimHost()
    mm = h.proc.mm
    top = vma_mod.MMAP_BASE
    for _ in range(300):
        r = rng.random()
        length = PAGE * rng.randint(1, 8)
        prot = rng.choice([RW, L.PROT_READ])
        if r < 0.4:
            want = _reference_free_area(mm, length)
            assert h.mmap(0, length, prot, ANON, -1, 0) == want
        elif r < 0.6:  # MAP_FIXED, some straddling MMAP_BASE
            h.mmap(top + PAGE * rng.randint(-40, 10), length, prot, FIXED, -1, 0)
        else:
            h.munmap(top + PAGE * rng.randint(-60, 10), length)
        free = mm._free
        assert list(zip(free._starts, free._ends, strict=True)) == _free_from_vmas(mm)
        bounds = [(v.start, v.end) for v in mm.vmas.values()]
        assert all(b <= c for (_, b), (c, _) in zip(bounds, bounds[1:], strict=False))
    h.exit()
    assert h.leaks() == []
