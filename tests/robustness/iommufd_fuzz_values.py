"""The iommufd fuzzer's values and its observation of state (test_iommufd_fuzz.py uses them):
each Field's sane and garbage values, raw ioctl numbers and argument bytes, the snapshot a
failed call must leave unchanged, and the one partial state the real kernel leaves behind
(IOAS_UNMAP, :func:`unmap_partial_ok`).

Models: nothing (test helper). Snapshot = tests/unit/iommufd_state.snapshot (objects and
users, per-IOAS areas/reserved/allowed/alignment/domain and access counts, pins, locked_vm,
live counts, fds) plus the process's VMAs and each IOAS's area pin state.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from passthru import SimHost
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.uapi import vfio as V
from passthru.uapi.ioctl import _IO


def _load_state_module() -> Any:
    """tests/unit/iommufd_state.py (tests/unit is no package: load it by path once)."""
    mod = sys.modules.get("iommufd_state")
    if mod is None:
        path = Path(__file__).resolve().parents[1] / "unit" / "iommufd_state.py"
        spec = importlib.util.spec_from_file_location("iommufd_state", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["iommufd_state"] = mod
        spec.loader.exec_module(mod)
    return mod


iommufd_snapshot = _load_state_module().snapshot

PAGE = L.PAGE_SIZE
U64_MAX = (1 << 64) - 1
MAP_RW = I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE
APERTURE = I.MOCK_APERTURE_START

U64_EDGES = [0, 1, PAGE - 1, PAGE, I.MOCK_PAGE_SIZE, 1 << 24, (1 << 31) - 1, 1 << 31,
             (1 << 32) - 1, 1 << 47, 1 << 63, U64_MAX - PAGE + 1, U64_MAX]
U32_EDGES = [0, 1, 0xFFFF, 1 << 16, 1 << 31, (1 << 32) - 1]
u64 = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, U64_MAX))
u32 = st.one_of(st.sampled_from(U32_EDGES), st.integers(0, (1 << 32) - 1))
misaligned = st.integers(1, 16 * PAGE).filter(lambda x: x % I.MOCK_PAGE_SIZE)
bad_fd = st.sampled_from([0, 1, 2, 999, -1, (1 << 31) - 1])


class Field:
    """The values one argument takes: ``sane`` ones, and ``garbage`` mixed in otherwise."""

    def __init__(self, sane: st.SearchStrategy[Any], *garbage: st.SearchStrategy[Any]) -> None:
        self.sane = sane
        self.wild = st.one_of(sane, *garbage)


def flag_subsets(*flags: int) -> st.SearchStrategy[int]:
    return st.lists(st.sampled_from(flags), unique=True).map(lambda xs: sum(xs, 0))


def with_junk(sane: st.SearchStrategy[int], *junk: int) -> st.SearchStrategy[int]:
    return st.tuples(sane, st.sampled_from(junk) | u32).map(lambda t: t[0] | t[1])


# IOVAs inside the mock aperture, page aligned (what a VMM picks), and the edges around it
IOVA = Field(st.integers(0, 63).map(lambda k: APERTURE + k * PAGE),
             st.sampled_from([0, APERTURE - PAGE, I.MOCK_APERTURE_LAST + 1 - PAGE]),
             misaligned.map(lambda x: APERTURE + x), u64)
NPAGES = st.integers(1, 8)
LENGTH = Field(NPAGES.map(lambda n: n * PAGE), st.just(0), misaligned, u64,
               st.sampled_from([U64_MAX, 1 << 40]))
MAP_FLAGS = Field(st.sampled_from([MAP_RW, I.IOMMU_IOAS_MAP_READABLE,
                                   I.IOMMU_IOAS_MAP_WRITEABLE]),
                  st.just(0), with_junk(st.just(MAP_RW), 1 << 3, 1 << 31))
FIXED = Field(st.booleans())
HWPT_FLAGS = Field(flag_subsets(I.IOMMU_HWPT_ALLOC_NEST_PARENT, I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                                I.IOMMU_HWPT_ALLOC_PASID),
                   flag_subsets(I.IOMMU_HWPT_ALLOC_NEST_PARENT,
                                I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, I.IOMMU_HWPT_FAULT_ID_VALID,
                                I.IOMMU_HWPT_ALLOC_PASID),
                   with_junk(st.just(0), 1 << 4, 1 << 31))
HWPT_DATA_TYPE = Field(st.sampled_from([I.IOMMU_HWPT_DATA_NONE, I.IOMMU_HWPT_DATA_SELFTEST]),
                       u32)
DEV_FLAGS = Field(flag_subsets(I.MOCK_FLAGS_DEVICE_NO_DIRTY, I.MOCK_FLAGS_DEVICE_PASID),
                  with_junk(st.just(0), 1 << 1, 1 << 8))
ACCESS_FLAGS = Field(st.sampled_from([0, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES]), u32)
PAGES_FLAGS = Field(st.sampled_from([0, I.MOCK_FLAGS_ACCESS_WRITE]),
                    st.just(I.MOCK_FLAGS_ACCESS_SYZ), u32)
RW_FLAGS = Field(flag_subsets(I.MOCK_ACCESS_RW_WRITE, I.MOCK_ACCESS_RW_SLOW_PATH), u32)
RW_LEN = Field(st.integers(1, 2 * PAGE), st.just(0), u64)
PASID = Field(st.integers(1, 4), st.sampled_from([0, (1 << I.MOCK_PASID_WIDTH),
                                                 (1 << 32) - 1]))
VIRT_ID = Field(st.integers(0, 4), u64)
DEPTH = Field(st.integers(1, 4), st.sampled_from([0, 1 << 31, (1 << 32) - 1]))
QINDEX = Field(st.integers(0, I.IOMMU_TEST_HW_QUEUE_MAX - 1), u32)
RESERVED = Field(st.just(0), u32)
OPTION = Field(st.tuples(st.sampled_from([I.IOMMU_OPTION_RLIMIT_MODE, I.IOMMU_OPTION_HUGE_PAGES]),
                         st.sampled_from([I.IOMMU_OPTION_OP_GET, I.IOMMU_OPTION_OP_SET]),
                         st.integers(0, 1)),
               st.tuples(u32, u32, u64))
MEMLIMIT = Field(st.sampled_from([65536, 16, 4]), u32)
EVENT_READ = Field(st.sampled_from([ctypes.sizeof(I.iommu_hwpt_pgfault),
                                    2 * ctypes.sizeof(I.iommu_hwpt_pgfault), 64, 4096]),
                   st.integers(0, 3 * PAGE), st.sampled_from([1 << 31, U64_MAX >> 1]))
RESPONSE_CODE = Field(st.sampled_from([I.IOMMUFD_PAGE_RESP_SUCCESS,
                                       I.IOMMUFD_PAGE_RESP_INVALID]), u32)

# Raw ioctl numbers: every iommufd op, its neighbours, with direction/size bits set, and the
# VFIO compat numbers that /dev/iommu answers.
IOMMUFD_NRS = range(0x7E, 0x98)
VFIO_NRS = range(100, 120)
RAW_REQUEST = st.one_of(
    st.sampled_from(IOMMUFD_NRS).map(lambda nr: _IO(I.IOMMUFD_TYPE, nr)),
    st.sampled_from(VFIO_NRS).map(lambda nr: (V.VFIO_TYPE << 8) | nr),
    st.tuples(st.sampled_from(IOMMUFD_NRS), st.integers(1, 3), st.integers(0, 0x3FFF)).map(
        lambda t: (t[1] << 30) | (t[2] << 16) | (I.IOMMUFD_TYPE << 8) | t[0]),
    u32,
)


@st.composite
def raw_bytes(draw: Any) -> bytearray:
    """An argument whose size prefix may lie: the true length, shorter, longer, or huge;
    the body random or zeros; trailing non-zero bytes past a plausible struct."""
    n = draw(st.integers(0, 96))
    body = draw(st.one_of(st.binary(min_size=n, max_size=n), st.just(bytes(n))))
    size = draw(st.sampled_from(["true", "short", "long", "huge", "random"]))
    if size == "true":
        prefix = len(body) + 4
    elif size == "short":
        prefix = draw(st.integers(0, len(body) + 4))
    elif size == "long":
        prefix = len(body) + 4 + draw(st.integers(1, 64))
    elif size == "huge":
        prefix = draw(st.sampled_from([PAGE, 1 << 20, (1 << 32) - 1]))
    else:
        prefix = draw(u32)
    raw = bytearray(prefix.to_bytes(4, "little") + body)
    if draw(st.booleans()):
        raw += draw(st.binary(min_size=1, max_size=16))
    return raw


# ---------------------------------------------------------------------------------------------
# Observable state
# ---------------------------------------------------------------------------------------------


def snapshot(host: SimHost) -> dict[str, Any]:
    """iommufd_state.snapshot plus the VMAs and the cloexec set."""
    out = iommufd_snapshot(host)
    out["vmas"] = tuple((v.start, v.end, v.vm_flags, v.file) for v in host.proc.mm.vmas.values())
    out["cloexec"] = frozenset(host.proc.cloexec)
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [k for k in set(before) | set(after) if before.get(k) != after.get(k)]


def unmap_partial_ok(before: dict[str, Any], after: dict[str, Any], iova: int,
                     length: int) -> str | None:
    """The real kernel's iopt_unmap_iova_range (io_pagetable.c) unmaps the areas of
    [iova, iova + length - 1] one by one, in IOVA order, and stops with ENOENT at the first
    area the range would split (or EBUSY at one that is locked or has no pages): the areas
    before it stay unmapped (KERNEL.md §3). Returns None if ``after`` is ``before`` minus
    such a prefix (with pins, locked_vm and live counts allowed to drop), else why not."""
    if length == 0:
        return "length 0 unmaps nothing"
    last = min(iova + length - 1, U64_MAX)
    changed = diff(before, after)
    loose = {"pins", "locked_vm", "live"}
    fds = [k for k in changed if k not in loose]
    for k in fds:
        if not k.startswith("fd") or k not in before or k not in after:
            return f"{k} changed"
        b, a = before[k], after[k]
        if set(b) != set(a):
            return f"{k}: objects changed"
        for oid in b:
            if b[oid] == a[oid]:
                continue
            if not (isinstance(oid, str) and oid.endswith(".iopt")):
                return f"{k}[{oid}] changed {b[oid]!r} -> {a[oid]!r}"
            areas_b, areas_a = b[oid][0], a[oid][0]
            if b[oid][1:] != a[oid][1:]:
                return f"{k}[{oid}]: more than the areas changed"
            kept = {(x[0], x[1]) for x in areas_a}
            if not kept <= {(x[0], x[1]) for x in areas_b}:
                return f"{k}[{oid}]: an area appeared"
            inrange = [x for x in areas_b if x[1] >= iova and x[0] <= last]
            gone = [x for x in areas_b if (x[0], x[1]) not in kept]
            if not gone or gone != inrange[:len(gone)]:
                return f"{k}[{oid}]: removed {gone} is not a prefix of {inrange}"
            if any(x[0] < iova or x[1] > last for x in gone):
                return f"{k}[{oid}]: removed an area not inside the range"
    if not fds and any(before[k] != after[k] for k in loose if k in before):
        return "pins/live changed but no area went"
    return None
