"""Extent maps: the one data structure behind memory, page tables, pins and charges.

A :class:`RangeMap` holds non-overlapping half-open ranges ``[start, end)`` with a value each,
in a SortedDict keyed by start, so lookups and updates cost O(log n + k) in the number of
extents n (k = extents touched) and never depend on the number of pages. Values are either
*flat* (the same for the whole range: an owner, a state, a count) or *linear* (an address that
advances with the range: a physical base). Linear maps split and merge by offset arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from sortedcontainers import SortedDict

V = TypeVar("V")


class RangeMap(Generic[V]):
    """Non-overlapping ``[start, end) -> value`` extents.

    ``linear=True``: the value is an integer base address for ``start``; a piece beginning at
    ``start + d`` has value ``base + d``, and neighbours whose bases continue merge.
    """

    __slots__ = ("_d", "linear")

    def __init__(self, linear: bool = False) -> None:
        self._d: SortedDict = SortedDict()  # start -> (end, value)
        self.linear = linear

    # ----- queries ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._d)

    def __bool__(self) -> bool:
        return bool(self._d)

    def __iter__(self) -> Iterator[tuple[int, int, V]]:
        for s, (e, v) in self._d.items():
            yield s, e, v

    def _val(self, start: int, value: Any, at: int) -> Any:
        return value + (at - start) if self.linear else value

    def get(self, addr: int) -> tuple[int, int, V] | None:
        """The extent containing ``addr``."""
        i = self._d.bisect_right(addr) - 1
        if i < 0:
            return None
        s = self._d.keys()[i]
        e, v = self._d[s]
        return (s, e, v) if addr < e else None

    def lookup(self, addr: int) -> V | None:
        hit = self.get(addr)
        return None if hit is None else self._val(hit[0], hit[2], addr)

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int, V]]:
        """Extents overlapping ``[start, end)``, clipped to it (linear values adjusted)."""
        if start >= end:
            return
        keys = self._d.keys()
        i = max(self._d.bisect_right(start) - 1, 0)
        while i < len(keys):
            s = keys[i]
            if s >= end:
                break
            e, v = self._d[s]
            if e > start:
                cs, ce = max(s, start), min(e, end)
                yield cs, ce, self._val(s, v, cs)
            i += 1

    def covered(self, start: int, end: int) -> bool:
        """True when every byte of ``[start, end)`` lies in some extent."""
        pos = start
        for s, e, _ in self.overlapping(start, end):
            if s > pos:
                return False
            pos = e
        return pos >= end

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        out = []
        pos = start
        for s, e, _ in self.overlapping(start, end):
            if s > pos:
                out.append((pos, s))
            pos = e
        if pos < end:
            out.append((pos, end))
        return out

    def any_in(self, start: int, end: int) -> bool:
        return next(self.overlapping(start, end), None) is not None

    # ----- updates ---------------------------------------------------------------------
    def _split(self, at: int) -> None:
        hit = self.get(at)
        if hit is None or hit[0] == at:
            return
        s, e, v = hit
        self._d[s] = (at, v)
        self._d[at] = (e, self._val(s, v, at))

    def remove(self, start: int, end: int) -> list[tuple[int, int, V]]:
        """Remove ``[start, end)``; return the removed pieces."""
        if start >= end:
            return []
        self._split(start)
        self._split(end)
        keys = self._d.keys()
        i = self._d.bisect_left(start)
        out = []
        while i < len(keys) and keys[i] < end:
            s = keys[i]
            e, v = self._d.pop(s)
            out.append((s, e, v))
        return out

    def set(self, start: int, end: int, value: V) -> None:
        """Map ``[start, end)`` to ``value``, replacing what was there; merges neighbours."""
        if start >= end:
            return
        self.remove(start, end)
        # merge left
        left = self.get(start - 1)
        if left is not None and left[1] == start and self._continues(left, start, value):
            start, value = left[0], left[2]
            del self._d[left[0]]
        right = self._d.get(end)
        if right is not None and self._continues((start, end, value), end, right[1]):
            del self._d[end]
            end = right[0]
        self._d[start] = (end, value)

    def _continues(self, ext: tuple[int, int, Any], at: int, value: Any) -> bool:
        s, _, v = ext
        return (v + (at - s) == value) if self.linear else (v == value)

    def clear(self) -> None:
        self._d.clear()

    def total(self) -> int:
        return sum(e - s for s, e, _ in self)


class RangeCounter:
    """A count per byte range (pins, charges) stored as extents of equal count."""

    __slots__ = ("_m",)

    def __init__(self) -> None:
        self._m: RangeMap[int] = RangeMap()

    def add(self, start: int, end: int, delta: int) -> None:
        pieces = list(self._m.overlapping(start, end))
        for gs, ge in self._m.gaps(start, end):
            pieces.append((gs, ge, 0))
        pieces.sort()
        for s, e, c in pieces:
            n = c + delta
            if n < 0:
                raise ValueError(f"count below zero at [{s:#x}, {e:#x})")
            if n == 0:
                self._m.remove(s, e)
            else:
                self._m.set(s, e, n)

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        return self._m.overlapping(start, end)

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        return self._m.gaps(start, end)

    def max_in(self, start: int, end: int) -> int:
        return max((c for _, _, c in self._m.overlapping(start, end)), default=0)

    def any_in(self, start: int, end: int) -> bool:
        return self._m.any_in(start, end)

    def __len__(self) -> int:
        return len(self._m)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self._m)


class ByteStore:
    """Sparse byte contents: written runs as extents; unwritten bytes read as zero."""

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: SortedDict = SortedDict()  # start -> bytearray

    def _pieces(self, start: int, end: int) -> Iterator[tuple[int, bytearray]]:
        keys = self._runs.keys()
        i = max(self._runs.bisect_right(start) - 1, 0)
        while i < len(keys) and keys[i] < end:
            s = keys[i]
            b = self._runs[s]
            if s + len(b) > start:
                yield s, b
            i += 1

    def read(self, start: int, n: int) -> bytes:
        out = bytearray(n)
        end = start + n
        for s, b in self._pieces(start, end):
            cs, ce = max(s, start), min(s + len(b), end)
            out[cs - start : ce - start] = b[cs - s : ce - s]
        return bytes(out)

    def zero(self, start: int, end: int) -> None:
        for s, b in list(self._pieces(start, end)):
            e = s + len(b)
            del self._runs[s]
            if s < start:
                self._runs[s] = b[: start - s]
            if e > end:
                self._runs[end] = b[end - s :]

    def write(self, start: int, data: bytes) -> None:
        if not data:
            return
        end = start + len(data)
        merged = bytearray()
        new_start = start
        pieces = list(self._pieces(start - 1, end + 1))
        if pieces and pieces[0][0] < start:
            s, b = pieces[0]
            new_start = s
            merged += b[: start - s]
        merged += data
        if pieces:
            s, b = pieces[-1]
            if s + len(b) > end:
                merged += b[end - s :]
        for s, _ in pieces:
            del self._runs[s]
        self._runs[new_start] = merged

    def copy(self, src: int, dst: int, n: int) -> None:
        """Copy ``n`` bytes (only the written runs move; holes stay holes)."""
        self.zero(dst, dst + n)
        for s, b in list(self._pieces(src, src + n)):
            cs, ce = max(s, src), min(s + len(b), src + n)
            self.write(dst + (cs - src), bytes(b[cs - s : ce - s]))

    def __len__(self) -> int:
        return len(self._runs)
