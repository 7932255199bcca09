"""Extent maps: the one data structure behind memory, page tables, pins and charges.

A :class:`RangeMap` holds non-overlapping half-open ranges ``[start, end)`` with a value each,
kept as three parallel sorted arrays searched with :mod:`bisect` (C): a lookup is O(log n) in
the number of extents n, an update touches only the extents it overlaps plus one memmove of
the arrays, and nothing depends on the number of pages. (sortedcontainers' SortedDict was the
first choice; it costs 2.5 µs to build an empty one and about a microsecond of Python per
step, which made the model slower per syscall than the kernel — benchmarks/README.md.)

Values are either *flat* (the same for the whole range: an owner, a state, a count) or
*linear* (an address that advances with the range: a physical base). Linear maps split and
merge by offset arithmetic.

The range convention. A map's extents are half-open intervals of an address space, so every
query answers with :class:`Extent` ``(start, end, value)`` and :class:`Gap` ``(start, end)``:
bisect works on the ends, and splitting or merging two extents compares an end with a start
without arithmetic. What the kernel hands a *device* is the other convention, address and
length (``sg_dma_address``/``sg_dma_len``, ``struct phys_vec {paddr, len}``, ``bio_vec``), and
the model keeps the kernel's there: ``DmaRange(dma, length, phys)`` (kernel/dma_buf/core.py),
``phys_vec`` and the (address, length) pairs of kernel/dma. Both are NamedTuples, so a reader
always sees which one a value is; both still unpack as plain tuples.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

from .sim import track as _track

V = TypeVar("V")


class Extent(NamedTuple, Generic[V]):
    """One extent ``[start, end)`` of a map and its value (a linear map's value at ``start``)."""

    start: int
    end: int
    value: V


class Gap(NamedTuple):
    """A hole ``[start, end)`` in a map."""

    start: int
    end: int


# tuple.__new__ bound to the class: builds an Extent/Gap from a tuple in C, without the
# NamedTuple's Python-level __new__ (the maps are on every path of the model).
_extent = partial(tuple.__new__, Extent)
_gap = partial(tuple.__new__, Gap)


class RangeMap(Generic[V]):
    """Non-overlapping ``[start, end) -> value`` extents, sorted.

    ``linear=True``: the value is an integer base address for ``start``; a piece beginning at
    ``start + d`` has value ``base + d``, and neighbours whose bases continue merge.
    """

    # Every query and update is a tracked access over its range (sim/track.py): the map is
    # one location, so the checker sees page-table, page-cache and physical-memory accesses
    # as extents. ``label`` names the map in data-race reports.
    __slots__ = ("_s", "_e", "_v", "linear", "_uid", "_atomic", "label")

    def __init__(self, linear: bool = False, label: str = "", atomic: bool = False) -> None:
        self._s: list[int] = []  # starts, sorted
        self._e: list[int] = []  # ends, sorted too (extents do not overlap)
        self._v: list[Any] = []
        self.linear = linear
        self.label = label
        self._atomic = atomic
        tr = _track._ACTIVE
        self._uid: str | None = tr.new_uid(label) if tr is not None else None

    # ----- queries ---------------------------------------------------------------------
    def __len__(self) -> int:
        if _track._ACTIVE is not None:
            _track.read(self)
        return len(self._s)

    def __bool__(self) -> bool:
        if _track._ACTIVE is not None:
            _track.read(self)
        return bool(self._s)

    def __iter__(self) -> Iterator[Extent[V]]:
        # Lazy: do not mutate the map while iterating it (wrap in list() to do so).
        if _track._ACTIVE is not None:
            _track.read(self)
        return map(_extent, zip(self._s, self._e, self._v, strict=True))

    def get(self, addr: int) -> Extent[V] | None:
        """The extent containing ``addr``."""
        if _track._ACTIVE is not None:
            _track.read(self, addr, addr + 1)
        i = bisect_right(self._s, addr) - 1
        if i >= 0 and addr < self._e[i]:
            return _extent((self._s[i], self._e[i], self._v[i]))
        return None

    def lookup(self, addr: int) -> V | None:
        if _track._ACTIVE is not None:
            _track.read(self, addr, addr + 1)
        i = bisect_right(self._s, addr) - 1
        if i >= 0 and addr < self._e[i]:
            v = self._v[i]
            return v + (addr - self._s[i]) if self.linear else v
        return None

    def overlapping(self, start: int, end: int) -> list[Extent[V]]:
        """Extents overlapping ``[start, end)``, clipped to it (linear values adjusted)."""
        if _track._ACTIVE is not None:
            _track.read(self, start, end)
        if start >= end or not self._s:
            return []
        ss, ee, vv = self._s, self._e, self._v
        i = bisect_right(ee, start)
        j = bisect_left(ss, end)
        out = []
        lin = self.linear
        for k in range(i, j):
            s, e, v = ss[k], ee[k], vv[k]
            cs = s if s > start else start
            ce = e if e < end else end
            out.append(_extent((cs, ce, v + (cs - s) if lin else v)))
        return out

    def iter_from(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The ``(start, end)`` bounds of the extents overlapping ``[start, end)``, lazily
        and unclipped, lowest first: for first-fit searches that stop early (one tracked read
        of the whole range)."""
        if _track._ACTIVE is not None:
            _track.read(self, start, end)
        ss, ee = self._s, self._e
        k = bisect_right(ee, start)
        while k < len(ss) and ss[k] < end:
            yield ss[k], ee[k]
            k += 1

    def covered(self, start: int, end: int) -> bool:
        """True when every byte of ``[start, end)`` lies in some extent."""
        pos = start
        for s, e, _ in self.overlapping(start, end):
            if s > pos:
                return False
            pos = e
        return pos >= end

    def gaps(self, start: int, end: int) -> list[Gap]:
        """The holes of ``[start, end)``: where no extent lies."""
        out = []
        pos = start
        for s, e, _ in self.overlapping(start, end):
            if s > pos:
                out.append(_gap((pos, s)))
            pos = e
        if pos < end:
            out.append(_gap((pos, end)))
        return out

    def any_in(self, start: int, end: int) -> bool:
        if _track._ACTIVE is not None:
            _track.read(self, start, end)
        if start >= end or not self._s:
            return False
        return bisect_right(self._e, start) < bisect_left(self._s, end)

    # ----- updates ---------------------------------------------------------------------
    def remove(self, start: int, end: int) -> list[Extent[V]]:
        """Remove ``[start, end)``; return the removed pieces."""
        if _track._ACTIVE is not None:
            _track.write(self, start, end)
        if start >= end or not self._s:
            return []
        ss, ee, vv = self._s, self._e, self._v
        i = bisect_right(ee, start)
        j = bisect_left(ss, end)
        if i >= j:
            return []
        lin = self.linear
        out = []
        keep_s: list[int] = []
        keep_e: list[int] = []
        keep_v: list[Any] = []
        for k in range(i, j):
            s, e, v = ss[k], ee[k], vv[k]
            cs = s if s > start else start
            ce = e if e < end else end
            out.append(_extent((cs, ce, v + (cs - s) if lin else v)))
            if s < start:
                keep_s.append(s)
                keep_e.append(start)
                keep_v.append(v)
            if e > end:
                keep_s.append(end)
                keep_e.append(e)
                keep_v.append(v + (end - s) if lin else v)
        ss[i:j] = keep_s
        ee[i:j] = keep_e
        vv[i:j] = keep_v
        return out

    def set(self, start: int, end: int, value: V) -> None:
        """Map ``[start, end)`` to ``value``, replacing what was there; merges neighbours."""
        if start >= end:
            return
        if _track._ACTIVE is not None:
            # The merge with a neighbour rewrites its extent too: widen by one on each side.
            _track.write(self, start - 1, end + 1)
        self.remove(start, end)
        ss, ee, vv = self._s, self._e, self._v
        k = bisect_left(ss, start)
        lin = self.linear
        if k > 0 and ee[k - 1] == start and (
            vv[k - 1] + (start - ss[k - 1]) == value if lin else vv[k - 1] == value
        ):
            k -= 1
            start, value = ss[k], vv[k]
            del ss[k], ee[k], vv[k]
        if k < len(ss) and ss[k] == end and (
            value + (end - start) == vv[k] if lin else vv[k] == value  # type: ignore[operator]
        ):
            end = ee[k]
            del ss[k], ee[k], vv[k]
        ss.insert(k, start)
        ee.insert(k, end)
        vv.insert(k, value)

    def clear(self) -> None:
        if _track._ACTIVE is not None:
            _track.write(self)
        self._s.clear()
        self._e.clear()
        self._v.clear()

    def total(self) -> int:
        if _track._ACTIVE is not None:
            _track.read(self)
        return sum(self._e) - sum(self._s)


class RangeCounter:
    """A count per byte range (pins, charges) stored as extents of equal count."""

    __slots__ = ("_m",)

    def __init__(self, label: str = "", atomic: bool = False) -> None:
        self._m: RangeMap[int] = RangeMap(label=label, atomic=atomic)

    def add(self, start: int, end: int, delta: int) -> None:
        pieces = self._m.overlapping(start, end)
        for gs, ge in self._m.gaps(start, end):
            pieces.append(Extent(gs, ge, 0))
        pieces.sort()
        for s, e, c in pieces:
            n = c + delta
            if n < 0:
                raise ValueError(f"count below zero at [{s:#x}, {e:#x})")
            if n == 0:
                self._m.remove(s, e)
            else:
                self._m.set(s, e, n)

    def overlapping(self, start: int, end: int) -> list[Extent[int]]:
        return self._m.overlapping(start, end)

    def gaps(self, start: int, end: int) -> list[Gap]:
        return self._m.gaps(start, end)

    def max_in(self, start: int, end: int) -> int:
        return max((c for _, _, c in self._m.overlapping(start, end)), default=0)

    def any_in(self, start: int, end: int) -> bool:
        return self._m.any_in(start, end)

    def __len__(self) -> int:
        return len(self._m)

    def __iter__(self) -> Iterator[Extent[int]]:
        return iter(self._m)


class ByteStore:
    """Sparse byte contents: written runs as extents; unwritten bytes read as zero."""

    __slots__ = ("_s", "_b", "_uid", "_atomic", "label")

    def __init__(self, label: str = "") -> None:
        self._s: list[int] = []  # run starts, sorted; runs never overlap
        self._b: list[bytearray] = []
        self.label = label
        self._atomic = False
        tr = _track._ACTIVE
        self._uid: str | None = tr.new_uid(label) if tr is not None else None

    def _range(self, start: int, end: int) -> tuple[int, int]:
        """Indexes [i, j) of the runs overlapping ``[start, end)``."""
        i = bisect_right(self._s, start) - 1
        if i < 0 or self._s[i] + len(self._b[i]) <= start:
            i += 1
        j = bisect_left(self._s, end)
        return i, max(i, j)

    def read(self, start: int, n: int) -> bytes:
        end = start + n
        if _track._ACTIVE is not None:
            _track.read(self, start, end)
        i, j = self._range(start, end)
        if j == i + 1:
            s, b = self._s[i], self._b[i]
            if s <= start and s + len(b) >= end:
                return bytes(b[start - s : end - s])
        out = bytearray(n)
        for k in range(i, j):
            s, b = self._s[k], self._b[k]
            cs, ce = max(s, start), min(s + len(b), end)
            out[cs - start : ce - start] = b[cs - s : ce - s]
        return bytes(out)

    def zero(self, start: int, end: int) -> None:
        if _track._ACTIVE is not None:
            _track.write(self, start, end)
        if not self._s or start >= end:
            return
        i, j = self._range(start, end)
        keep_s: list[int] = []
        keep_b: list[bytearray] = []
        for k in range(i, j):
            s, b = self._s[k], self._b[k]
            e = s + len(b)
            if s < start:
                keep_s.append(s)
                keep_b.append(b[: start - s])
            if e > end:
                keep_s.append(end)
                keep_b.append(b[end - s :])
        self._s[i:j] = keep_s
        self._b[i:j] = keep_b

    def write(self, start: int, data: bytes) -> None:
        if not data:
            return
        end = start + len(data)
        if _track._ACTIVE is not None:
            _track.write(self, start, end)
        # Runs touching [start - 1, end + 1) merge with the new data into one run.
        i, j = self._range(start - 1, end + 1)
        if j == i + 1:
            s, b = self._s[i], self._b[i]
            if s <= start and s + len(b) >= end:
                b[start - s : end - s] = data  # overwrite in place
                return
        merged = bytearray()
        new_start = start
        if i < j and self._s[i] < start:
            new_start = self._s[i]
            merged += self._b[i][: start - new_start]
        merged += data
        if i < j:
            s, b = self._s[j - 1], self._b[j - 1]
            if s + len(b) > end:
                merged += b[end - s :]
        self._s[i:j] = [new_start]
        self._b[i:j] = [merged]

    def copy(self, src: int, dst: int, n: int) -> None:
        """Copy ``n`` bytes (only the written runs move; holes stay holes)."""
        i, j = self._range(src, src + n)
        pieces = [(self._s[k], bytes(self._b[k])) for k in range(i, j)]
        self.zero(dst, dst + n)
        for s, b in pieces:
            cs, ce = max(s, src), min(s + len(b), src + n)
            self.write(dst + (cs - src), b[cs - s : ce - s])

    def __len__(self) -> int:
        return len(self._s)
