"""Extent maps against a naive per-byte model (hypothesis), and the no-per-page property."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from passthru.extents import ByteStore, RangeCounter, RangeMap

N = 64
ranges = st.tuples(st.integers(0, N), st.integers(0, N)).map(lambda t: (min(t), max(t)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "remove"]), ranges, st.integers(0, 3)),
                max_size=30))
def test_rangemap_matches_naive(ops):
    m: RangeMap[int] = RangeMap()
    naive: dict[int, int] = {}
    for op, (s, e), v in ops:
        if op == "set":
            m.set(s, e, v)
            for i in range(s, e):
                naive[i] = v
        else:
            m.remove(s, e)
            for i in range(s, e):
                naive.pop(i, None)
    for i in range(N + 1):
        assert m.lookup(i) == naive.get(i)
    # Extents never overlap and neighbours with equal values are merged.
    prev = None
    for s, e, v in m:
        assert s < e
        if prev is not None:
            assert prev[1] <= s
            assert not (prev[1] == s and prev[2] == v)
        prev = (s, e, v)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ranges, st.integers(0, 1000)), max_size=20))
def test_linear_rangemap_offsets(ops):
    m: RangeMap[int] = RangeMap(linear=True)
    naive: dict[int, int] = {}
    for (s, e), base in ops:
        m.set(s, e, base)
        for i in range(s, e):
            naive[i] = base + (i - s)
    for i in range(N + 1):
        assert m.lookup(i) == naive.get(i)


def test_linear_neighbours_merge_into_one_extent():
    m: RangeMap[int] = RangeMap(linear=True)
    for i in range(1000):
        m.set(i * 4096, (i + 1) * 4096, 0x100000 + i * 4096)
    assert len(m) == 1  # a contiguous run is one extent, not a thousand pages


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ranges, st.sampled_from([1, -1])), max_size=20))
def test_rangecounter_matches_naive(ops):
    c = RangeCounter()
    naive = [0] * N
    for (s, e), d in ops:
        if d < 0 and any(naive[i] == 0 for i in range(s, e)):
            continue
        c.add(s, e, d)
        for i in range(s, e):
            naive[i] += d
    for i in range(N):
        assert c.max_in(i, i + 1) == naive[i]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["w", "z"]), st.integers(0, 60),
                          st.binary(min_size=0, max_size=10)), max_size=20))
def test_bytestore_matches_naive(ops):
    b = ByteStore()
    naive = bytearray(80)
    for op, at, data in ops:
        if op == "w":
            b.write(at, data)
            naive[at : at + len(data)] = data
        else:
            b.zero(at, at + len(data))
            naive[at : at + len(data)] = bytes(len(data))
    assert b.read(0, 80) == bytes(naive)


def test_bytestore_copy_keeps_holes():
    b = ByteStore()
    b.write(10, b"abc")
    b.copy(0, 100, 20)
    assert b.read(100, 20) == bytes(10) + b"abc" + bytes(7)
