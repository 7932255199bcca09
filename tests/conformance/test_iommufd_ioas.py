"""The selftest's ``iommufd_ioas`` fixture (tools/testing/selftests/iommu/iommufd.c): an IOAS
with 0, 1 or 2 mock domains (and the 16-page memory-limit variant). IOAS_MAP/UNMAP/COPY,
automatic IOVA allocation, reserved and allowed ranges, IOVA_RANGES, OPTION HUGE_PAGES, and
the test accesses (pin, read/write, unmap notification). Where the selftest or KERNEL.md §3
says a failed call changes nothing (or, for UNMAP, what it leaves), the test checks it.

Every variant uses the CONFIG_IOMMUFD_TEST mock (the selftest sets the memory limit in its
setup), so the linux variant skips, naming that config, on a kernel without it.

Automatic IOVAs are aligned to min(roundup_pow_of_two(length), the source address's
alignment), capped at HPAGE_SIZE with CONFIG_TRANSPARENT_HUGEPAGE and at PAGE_SIZE without it
(iopt_alloc_iova, io_pagetable.c). The selftest assumes THP; the cases that depend on it
(area_auto_iova, reserved_overflow) expect what the host's configuration gives (``thp``)."""

from __future__ import annotations

import errno
import os
import random

import pytest

from passthru.uapi import iommufd as I

from ._iommufd import (
    BUFFER_SIZE,
    MAP_RW,
    MOCK_PAGE_SIZE,
    NODE,
    U64_MAX,
    Iommufd,
    is_linux,
    mock_fixture_setup,
    raises,
)
from ._probe import PAGE

pytestmark = pytest.mark.node(NODE)

START = I.MOCK_APERTURE_START
HPAGE_SIZE = 2 << 20  # x86's PMD size


def thp(host) -> bool:
    """Does the host's kernel have CONFIG_TRANSPARENT_HUGEPAGE? LinuxHost: its sysfs directory
    (mm/huge_memory.c) exists; SimHost: the profile's ``thp``."""
    if is_linux(host):
        return os.path.isdir("/sys/kernel/mm/transparent_hugepage")
    return bool(host.kernel.profile.thp)


def auto_iova_align(host, va: int, length: int) -> int:
    """iopt_alloc_iova's alignment for a map of ``length`` bytes from ``va``."""
    align = 1 << (length - 1).bit_length()  # roundup_pow_of_two
    if va:
        align = min(align, va & -va)
    return min(align, HPAGE_SIZE if thp(host) else PAGE)
VARIANTS = {"no_domain": (0, 0), "mock_domain": (1, 0), "two_mock_domain": (2, 0),
            "mock_domain_limit": (1, 16)}


class Ioas:
    def __init__(self, host, mock_domains: int, memory_limit: int):
        # The selftest sets the (mock's) temp memory limit in every variant; the no_domain
        # variant needs nothing else of the mock, so its IOAS-only cases also run on a kernel
        # without CONFIG_IOMMUFD_TEST (those that use a mock op skip there, naming it).
        self.ctx = mock_fixture_setup(host) if mock_domains or memory_limit else Iommufd(host)
        if not (mock_domains or memory_limit) and self.ctx.has_mock():
            self.ctx.set_default_memory_limit()
        self.mock_domains = mock_domains
        self.ioas_id = self.ctx.ioas_alloc()
        if memory_limit:
            self.ctx.set_temp_memory_limit(memory_limit)
        self.stdev_id = self.hwpt_id = self.device_id = 0
        self.base_iova = 0
        for _ in range(mock_domains):
            self.stdev_id, self.hwpt_id, self.device_id = self.ctx.mock_domain(self.ioas_id)
            self.base_iova = START

    # the selftest's self->ioas_id shorthands
    def map(self, va, length, iova=None, flags=MAP_RW):
        return self.ctx.ioas_map(self.ioas_id, va, length, iova, flags)

    def unmap(self, iova, length):
        return self.ctx.ioas_unmap(self.ioas_id, iova, length)


@pytest.fixture(params=list(VARIANTS))
def s(request, host):
    st = Ioas(host, *VARIANTS[request.param])
    yield st
    if st.ctx.has_mock():
        st.ctx.set_default_memory_limit()
    st.ctx.teardown()


def test_ioas_auto_destroy(s):
    pass


def test_ioas_destroy(s):
    if s.stdev_id:
        raises(errno.EBUSY, s.ctx.destroy, s.ioas_id)  # a device's HWPT uses it
        assert s.map(s.ctx.buffer, PAGE) != 0  # and it is still there
    else:
        s.ctx.destroy(s.ioas_id)
        raises(errno.ENOENT, s.ctx.destroy, s.ioas_id)


def test_hwpt_attach(s):
    if s.stdev_id:
        s.ctx.mock_domain(s.hwpt_id)  # a device attached directly to a HWPT
    else:
        raises(errno.ENOENT, s.ctx.mock_domain, s.hwpt_id)


def test_ioas_area_destroy(s):
    s.map(s.ctx.buffer, PAGE, s.base_iova)
    if s.stdev_id:
        raises(errno.EBUSY, s.ctx.destroy, s.ioas_id)
    else:
        s.ctx.destroy(s.ioas_id)


def test_ioas_area_auto_destroy(s):
    for i in range(10):
        s.map(s.ctx.buffer, PAGE, s.base_iova + i * PAGE)


def test_get_hw_info(s):
    ctx = s.ctx
    if not s.device_id:
        raises(errno.ENOENT, ctx.get_hw_info, s.device_id, 8)
        raises(errno.ENOENT, ctx.get_hw_info, s.device_id, 16)
        return
    exact = ctx.get_hw_info(s.device_id)  # zero-size user buffer
    assert exact.out_data_type == I.IOMMU_HW_INFO_TYPE_SELFTEST
    assert exact.data_len == 8
    for n in (8, 16, 4):  # exact, larger (trailing bytes zeroed), smaller (the fields that fit)
        addr = ctx.alloc(n, fill=0xAA)
        cmd = ctx.get_hw_info(s.device_id, n, uptr=addr)
        assert cmd.out_data_type == I.IOMMU_HW_INFO_TYPE_SELFTEST
        assert cmd.data_len == 8
        data = ctx.peek(addr, n)
        assert data[:4] == bytes(4)  # flags
        if n >= 8:
            assert int.from_bytes(data[4:8], "little") == I.IOMMU_HW_INFO_SELFTEST_REGVAL
        assert data[8:] == bytes(n - 8 if n > 8 else 0)
    raises(errno.EOPNOTSUPP, ctx.get_hw_info, s.device_id, 8, I.IOMMU_HW_INFO_TYPE_SELFTEST + 1)
    assert ctx.get_hw_info(s.device_id, 8, I.IOMMU_HW_INFO_TYPE_SELFTEST).data_len == 8
    assert ctx.get_hw_info(s.device_id).out_max_pasid_log2 == 0  # not PASID capable


def test_area(s):
    buf = s.ctx.buffer
    for i in range(10):  # unmap fails if nothing is mapped
        raises(errno.ENOENT, s.unmap, i * PAGE, PAGE)
    for i in range(10):
        s.map(buf, PAGE, s.base_iova + i * PAGE)
    for i in range(10):
        assert s.unmap(s.base_iova + i * PAGE, PAGE) == PAGE
    # split fails, and leaves the area whole
    s.map(buf, 2 * PAGE, s.base_iova + 16 * PAGE)
    raises(errno.ENOENT, s.unmap, s.base_iova + 16 * PAGE, PAGE)
    raises(errno.ENOENT, s.unmap, s.base_iova + 17 * PAGE, PAGE)
    # over map fails
    for length, at in ((2, 16), (1, 16), (1, 17), (2, 15), (3, 15)):
        raises(errno.EEXIST, s.map, buf, length * PAGE, s.base_iova + at * PAGE)
    assert s.unmap(0, U64_MAX) == 2 * PAGE  # unmap all: only the one 2-page area was there
    assert s.unmap(0, U64_MAX) == 0  # and succeeds on an empty IOAS


def test_unmap_not_all_or_nothing(s):
    """KERNEL.md §3 (observed on 7.3): an UNMAP that fails with ENOENT on the area it would
    split has already unmapped the whole areas before it."""
    buf, base = s.ctx.buffer, s.base_iova
    s.map(buf, PAGE, base)
    s.map(buf, 2 * PAGE, base + PAGE)
    raises(errno.ENOENT, s.unmap, base, 2 * PAGE)
    s.map(buf, PAGE, base)  # the first area is gone ...
    raises(errno.EEXIST, s.map, buf, PAGE, base + 2 * PAGE)  # ... the second is intact
    assert s.unmap(base + PAGE, 2 * PAGE) == 2 * PAGE


def test_unmap_fully_contained_areas(s):
    base = s.base_iova + 4 * PAGE
    for i in range(4):
        s.map(s.ctx.buffer, 8 * PAGE, base + i * 16 * PAGE)
    raises(errno.ENOENT, s.unmap, base - 4 * PAGE, 8 * PAGE)
    raises(errno.ENOENT, s.unmap, base + 3 * 16 * PAGE + 8 * PAGE - 4 * PAGE, 8 * PAGE)
    assert s.unmap(base - 4 * PAGE, 3 * 16 * PAGE + 8 * PAGE + 4 * PAGE) == 32 * PAGE


def test_area_auto_iova(s):
    ctx, buf = s.ctx, s.ctx.buffer
    iovas = [s.map(buf, PAGE) for _ in range(10)]  # simple 4k pages
    assert 0 not in iovas and len(set(iovas)) == 10
    for iova in iovas:
        s.unmap(iova, PAGE)
    # the kernel aligns automatic IOVAs (the selftest checks the length's lowest set bit,
    # which THP gives; the alignment the kernel picks is checked here)
    for i in range(10):
        length = PAGE * (i + 1)
        va = buf if s.stdev_id else 1 << 31  # no domain: pinning is lazy, any VA will do
        iovas[i] = s.map(va, length)
        assert iovas[i] % auto_iova_align(ctx.host, va, length) == 0
    for i in range(10):
        s.unmap(iovas[i], PAGE * (i + 1))
    # avoids a reserved region
    rstart, rlen = PAGE * 4, PAGE * 100
    ctx.add_reserved(s.ioas_id, rstart, rlen)
    for i in range(10):
        length = PAGE * (i + 1)
        iovas[i] = s.map(buf, length)
        assert iovas[i] % auto_iova_align(ctx.host, buf, length) == 0
        assert not rstart < iovas[i] < rstart + rlen
    for i in range(10):
        s.unmap(iovas[i], PAGE * (i + 1))
    # an allowed range that intersects a reserved one
    raises(errno.EADDRINUSE, ctx.allow_iovas, s.ioas_id, [(PAGE, PAGE * 600)])
    # allocate from an allowed range
    if s.stdev_id:
        lo, hi = START + PAGE, START + PAGE * 600 - 1
    else:
        lo, hi = PAGE * 200, PAGE * 600 - 1
    ctx.allow_iovas(s.ioas_id, [(lo, hi)])
    for i in range(10):
        length = PAGE * (i + 1)
        iovas[i] = s.map(buf, length)
        assert iovas[i] % auto_iova_align(ctx.host, buf, length) == 0
        assert lo <= iovas[i] and iovas[i] + length <= hi + 1
    for i in range(10):
        s.unmap(iovas[i], PAGE * (i + 1))


def test_auto_iova_alignment_cap(s):
    """The second automatic IOVA: 4 pages from a 2 MiB aligned buffer after one page. With
    THP aligned to 16 KiB; without, only to PAGE_SIZE, so it packs right after the first."""
    first = s.map(s.ctx.buffer, PAGE)
    align = auto_iova_align(s.ctx.host, s.ctx.buffer, 4 * PAGE)
    assert align == (4 * PAGE if thp(s.ctx.host) else PAGE)
    assert s.map(s.ctx.buffer, 4 * PAGE) == -(-(first + PAGE) // align) * align


def test_reserved_overflow(s):
    # lore 685af644.a00a0220.2e5631.0094.GAE@google.com: a reserved range reaching the top
    # leaves the hole [0xffffffffffff8007, ULONG_MAX - PAGE_SIZE]: 0x5000 bytes aligned to
    # 0x8000 (THP) overflow the ALIGN() and do not fit; aligned to PAGE_SIZE they do
    s.ctx.add_reserved(s.ioas_id, 6, 0xFFFFFFFFFFFF8001)
    if s.mock_domains or thp(s.ctx.host):  # a domain's aperture ends far below
        raises(errno.ENOSPC, s.map, s.ctx.buffer, 0x5000)
    else:
        assert s.map(s.ctx.buffer, 0x5000) == 0xFFFFFFFFFFFF9000
        assert s.unmap(0xFFFFFFFFFFFF9000, 0x5000) == 0x5000


def test_area_allowed(s):
    ctx = s.ctx
    lo, hi = s.base_iova, s.base_iova + PAGE * 600
    ctx.allow_iovas(s.ioas_id, [(lo, hi)])
    # reserved intersects an allowed
    raises(errno.EADDRINUSE, ctx.add_reserved, s.ioas_id, lo + PAGE, PAGE)
    ctx.allow_iovas(s.ioas_id, [])
    # allowed intersects a reserved
    ctx.add_reserved(s.ioas_id, lo + PAGE, PAGE)
    raises(errno.EADDRINUSE, ctx.allow_iovas, s.ioas_id, [(lo, hi)])


def test_copy_area(s):
    ctx = s.ctx
    s.map(ctx.buffer, PAGE, s.base_iova)
    ctx.ioas_copy(s.ioas_id, s.ioas_id, PAGE, s.base_iova, s.base_iova + PAGE)  # same IOAS
    dst = ctx.ioas_alloc()
    ctx.ioas_copy(dst, s.ioas_id, PAGE, s.base_iova, 0)  # between IOASes
    raises(errno.EEXIST, ctx.ioas_copy, dst, s.ioas_id, PAGE, s.base_iova, 0)


def test_iova_ranges(s):
    ctx = s.ctx
    n = BUFFER_SIZE // 16
    addr = ctx.alloc(16 * 4)
    cmd = ctx.iova_ranges(s.ioas_id, 4, addr)
    assert cmd.num_iovas == 1
    r = ctx.read_ranges(addr, 1)[0]
    if not s.stdev_id:
        assert r == (0, U64_MAX) and cmd.out_iova_alignment == 1
    else:
        assert r == (START, I.MOCK_APERTURE_LAST)
        assert cmd.out_iova_alignment == MOCK_PAGE_SIZE
    # buffer too small: EMSGSIZE, the count needed written back, the array untouched
    ctx.poke(addr, bytes(64))
    e = _ranges_err(ctx, s.ioas_id, 0, addr)
    assert e == (errno.EMSGSIZE, 1)
    assert ctx.read_ranges(addr, 1)[0] == (0, 0)
    # 2 ranges
    ctx.add_reserved(s.ioas_id, PAGE, PAGE)
    cmd = ctx.iova_ranges(s.ioas_id, n, ctx.alloc(16 * n))
    got = ctx.read_ranges(cmd.allowed_iovas, cmd.num_iovas)
    if not s.stdev_id:
        assert got == [(0, PAGE - 1), (2 * PAGE, U64_MAX)]
    else:
        assert got == [(START, I.MOCK_APERTURE_LAST)]
    ctx.poke(addr, bytes(64))
    if not s.stdev_id:
        assert _ranges_err(ctx, s.ioas_id, 1, addr) == (errno.EMSGSIZE, 2)
        assert ctx.read_ranges(addr, 1)[0] == (0, PAGE - 1)  # what fitted was written
    else:
        cmd = ctx.iova_ranges(s.ioas_id, 1, addr)
        assert cmd.num_iovas == 1
        assert ctx.read_ranges(addr, 1)[0] == (START, I.MOCK_APERTURE_LAST)
    assert ctx.read_ranges(addr, 2)[1] == (0, 0)


def _ranges_err(ctx, ioas, num, addr):
    import ctypes

    cmd = I.iommu_ioas_iova_ranges(size=ctypes.sizeof(I.iommu_ioas_iova_ranges), ioas_id=ioas,
                                   num_iovas=num, allowed_iovas=addr)
    try:
        ctx.ioctl(I.IOMMU_IOAS_IOVA_RANGES, cmd)
    except OSError as e:
        return e.errno, cmd.num_iovas
    return 0, cmd.num_iovas


def test_access_domain_destroy(s):
    ctx = s.ctx
    size = 8 * PAGE
    buf = ctx.mmap_anon(size)
    s.map(buf, size, s.base_iova)
    access = ctx.create_access(s.ioas_id, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    pages = ctx.access_pages(access, s.base_iova + PAGE, PAGE, buf + PAGE)
    if s.stdev_id:
        ctx.destroy(s.stdev_id)
    ctx.destroy_access_pages(access, pages)
    ctx.destroy_access(access)


@pytest.mark.parametrize("npages", [1, 2, 7, 15])
def test_access_pin(s, npages):
    ctx, buf = s.ctx, s.ctx.buffer
    access = ctx.create_access(s.ioas_id, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    length = npages * PAGE
    s.map(buf, BUFFER_SIZE, START)
    ctx.destroy_access_pages(access, ctx.access_pages(access, START, length, buf))
    # double user
    a = ctx.access_pages(access, START, length, buf)
    b = ctx.access_pages(access, START, length, buf)
    assert a != b
    ctx.destroy_access_pages(access, b)
    ctx.destroy_access_pages(access, a)
    # add/remove a domain with a user
    p = ctx.access_pages(access, START, length, buf)
    stdev, hwpt, _ = ctx.mock_domain(s.ioas_id)
    ctx.check_map(hwpt, START, BUFFER_SIZE, buf)
    ctx.destroy(stdev)
    ctx.destroy_access_pages(access, p)
    s.unmap(START, BUFFER_SIZE)
    ctx.destroy_access(access)


def test_access_pin_unmap(s):
    ctx, buf = s.ctx, s.ctx.buffer
    access = ctx.create_access(s.ioas_id, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    s.map(buf, BUFFER_SIZE, START)
    pages = ctx.access_pages(access, START, BUFFER_SIZE, buf)
    assert s.unmap(START, BUFFER_SIZE) == BUFFER_SIZE  # the access is told to unpin
    raises(errno.ENOENT, ctx.destroy_access_pages, access, pages)  # the kernel removed it


def check_access_rw(ctx, access, iova, def_flags):
    """The selftest's check_access_rw, with a sampled sweep (the C one does 100 x 63 calls)."""
    rnd = random.Random(iova ^ def_flags)
    content = bytes(rnd.getrandbits(8) for _ in range(BUFFER_SIZE))
    ctx.poke(ctx.buffer, content)
    tmp = ctx.alloc(64)
    for off in (PAGE - 50, PAGE - 17, PAGE - 1, PAGE, PAGE + 3, PAGE + 49):
        for length in (1, 2, 17, 50, 63):
            at = iova + off
            ctx.poke(tmp, bytes(64))
            ctx.access_rw(access, at, length, tmp, def_flags)
            assert ctx.peek(tmp, length) == ctx.peek(ctx.buffer + off, length)
            data = bytes(rnd.getrandbits(8) for _ in range(length))
            ctx.poke(tmp, data)
            ctx.access_rw(access, at, length, tmp, def_flags | I.MOCK_ACCESS_RW_WRITE)
            assert ctx.peek(ctx.buffer + off, length) == data
    # multi-page
    big = ctx.mmap_anon(BUFFER_SIZE)
    ctx.access_rw(access, iova, BUFFER_SIZE, big, def_flags)
    assert ctx.peek(big, BUFFER_SIZE) == ctx.peek(ctx.buffer, BUFFER_SIZE)


def test_access_rw(s):
    ctx = s.ctx
    access = ctx.create_access(s.ioas_id)
    iova = s.map(ctx.buffer, BUFFER_SIZE)
    check_access_rw(ctx, access, iova, 0)
    check_access_rw(ctx, access, iova, I.MOCK_ACCESS_RW_SLOW_PATH)
    s.unmap(iova, BUFFER_SIZE)
    ctx.destroy_access(access)


def test_access_rw_unaligned(s):
    ctx = s.ctx
    access = ctx.create_access(s.ioas_id)
    iova = s.base_iova + MOCK_PAGE_SIZE
    s.map(ctx.buffer, BUFFER_SIZE, iova)
    check_access_rw(ctx, access, iova, 0)
    s.unmap(iova, BUFFER_SIZE)
    ctx.destroy_access(access)


def test_ioas_option_huge_pages(s):
    ctx, H = s.ctx, I.IOMMU_OPTION_HUGE_PAGES
    assert ctx.option(H, I.IOMMU_OPTION_OP_GET, s.ioas_id, 3) == 1
    ctx.option(H, I.IOMMU_OPTION_OP_SET, s.ioas_id, 0)
    assert ctx.option(H, I.IOMMU_OPTION_OP_GET, s.ioas_id, 3) == 0
    raises(errno.EINVAL, ctx.option, H, I.IOMMU_OPTION_OP_SET, s.ioas_id, 2)
    assert ctx.option(H, I.IOMMU_OPTION_OP_GET, s.ioas_id, 3) == 0  # unchanged
    ctx.option(H, I.IOMMU_OPTION_OP_SET, s.ioas_id, 1)


@pytest.mark.parametrize("length", [1, 2, 511, 2047, 2048, 2049, 4095, 4096, 4097, 6144, 8191])
def test_ioas_iova_alloc(s, length):
    if s.mock_domains and length % MOCK_PAGE_SIZE:
        raises(errno.EINVAL, s.map, s.ctx.buffer, length)
        assert s.unmap(0, U64_MAX) == 0  # nothing was mapped
    else:
        iova = s.map(s.ctx.buffer, length)
        assert s.unmap(iova, length) == length


def test_ioas_map_errors(s):
    """KERNEL.md §3: length 0 EINVAL (auto and fixed), unknown flags EOPNOTSUPP, neither READ
    nor WRITE EINVAL, IOVA overflow EOVERFLOW; each leaves the IOAS empty."""
    buf = s.ctx.buffer
    raises(errno.EINVAL, s.map, buf, 0)
    raises(errno.EINVAL, s.map, buf, 0, s.base_iova)
    raises(errno.EOPNOTSUPP, s.map, buf, PAGE, None, MAP_RW | 1 << 7)
    raises(errno.EINVAL, s.map, buf, PAGE, None, 0)
    raises(errno.EOVERFLOW, s.map, buf, 2 * PAGE, U64_MAX - PAGE + 1)
    assert s.unmap(0, U64_MAX) == 0


def test_ioas_align_change(s):
    if s.mock_domains:
        pytest.skip("the selftest returns early with a domain: the alignment cannot be raised "
                    "by OPTION_HUGE_PAGES while a domain and a map are present")
    ctx, buf = s.ctx, s.ctx.buffer
    H, SET = I.IOMMU_OPTION_HUGE_PAGES, I.IOMMU_OPTION_OP_SET
    s.map(buf, PAGE, START)
    ctx.option(H, SET, s.ioas_id, 0)  # PAGE_SIZE alignment, things are aligned right
    raises(errno.EINVAL, s.map, buf + MOCK_PAGE_SIZE, PAGE, START + PAGE)  # rejected at map
    ctx.option(H, SET, s.ioas_id, 0)
    ctx.option(H, SET, s.ioas_id, 1)  # reduce
    s.map(buf + MOCK_PAGE_SIZE, PAGE, START + PAGE)
    raises(errno.EADDRINUSE, ctx.option, H, SET, s.ioas_id, 0)  # misaligned area blocks it
    s.unmap(START + PAGE, PAGE)
    s.unmap(START, PAGE)


def test_copy_sweep(s):
    ctx = s.ctx
    dst = ctx.ioas_alloc()
    last = START + BUFFER_SIZE - (1 if s.mock_domains else 2)
    s.map(ctx.buffer, last - START + 1, START)
    iova = START - PAGE
    while iova <= last:
        if iova < START or iova + MOCK_PAGE_SIZE - 1 > last:
            raises(errno.ENOENT, ctx.ioas_copy, dst, s.ioas_id, MOCK_PAGE_SIZE, iova, START)
        else:
            ctx.ioas_copy(dst, s.ioas_id, MOCK_PAGE_SIZE, iova, START)
            assert ctx.ioas_unmap(dst, START, MOCK_PAGE_SIZE) == MOCK_PAGE_SIZE
        iova += 511 * 7  # the selftest steps by 511; a coprime multiple keeps it quick
    ctx.destroy(dst)
