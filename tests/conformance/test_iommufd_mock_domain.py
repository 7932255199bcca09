"""The selftest's ``iommufd_mock_domain`` and ``vfio_compat_mock_domain`` fixtures, and its
``alloc_hwpt_nested`` case (tools/testing/selftests/iommu/iommufd.c): mock domains checked
page by page through MD_CHECK_MAP / MD_CHECK_REFS, MOCK_PAGE_SIZE (2048) granularity, domain
replace, paging and nested HWPT allocation, HWPT_INVALIDATE with partial progress, and the
VFIO type1 compatibility layer on an IOAS with a mock domain. All need CONFIG_IOMMUFD_TEST
(the linux variant skips, naming it, without)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

from ._iommufd import (
    BUFFER_SIZE,
    MAP_RW,
    MOCK_PAGE_SIZE,
    NODE,
    RW,
    U64_MAX,
    mock_fixture_setup,
    raises,
)
from ._probe import PAGE

pytestmark = pytest.mark.node(NODE)

START = I.MOCK_APERTURE_START
INV = I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
DEFAULT = I.IOMMU_TEST_IOTLB_DEFAULT


class MockDomain:
    def __init__(self, host, mock_domains: int, file: bool = False):
        self.host = host
        self.ctx = mock_fixture_setup(host)
        self.ioas_id = self.ctx.ioas_alloc()
        self.file = file
        self.stdev_ids, self.hwpt_ids, self.idev_ids = [0, 0], [0, 0], [0, 0]
        for i in range(mock_domains):
            self.stdev_ids[i], self.hwpt_ids[i], self.idev_ids[i] = \
                self.ctx.mock_domain(self.ioas_id)
            self.ctx.check_dev_cache_all(self.idev_ids[0], I.IOMMU_TEST_DEV_CACHE_DEFAULT)
        self.mock_domains = mock_domains
        self.hwpt_id = self.hwpt_ids[0]
        self.buf_size = 8 * PAGE

    def check_mock_iova(self, ptr, iova, length):
        """Have the kernel check that the user pages made it to the (every) iommu_domain."""
        self.ctx.check_map(self.hwpt_id, iova, length, ptr)
        if self.hwpt_ids[1]:
            self.ctx.check_map(self.hwpt_ids[1], iova, length, ptr)

    def memfd_mmap(self, length, flags=L.MAP_SHARED):
        mfd = self.host.memfd_create("buffer", 0)
        self.host.ftruncate(mfd, length)
        return self.host.mmap(0, length, RW, flags, mfd, 0), mfd


VARIANTS = {"one_domain": (1, False), "two_domains": (2, False), "one_domain_file": (1, True)}


@pytest.fixture(params=list(VARIANTS))
def s(request, host):
    st = MockDomain(host, *VARIANTS[request.param])
    yield st
    st.ctx.teardown()


def test_basic(s):
    ctx = s.ctx
    if s.file:
        buf, mfd = s.memfd_mmap(BUFFER_SIZE)
        iova = ctx.ioas_map_file(s.ioas_id, mfd, 0, PAGE)
        s.check_mock_iova(buf, iova, PAGE)
        tbuf, tmp = s.memfd_mmap(s.buf_size)
        raises(errno.EINVAL, ctx.ioas_map_file, s.ioas_id, tmp, 0, s.buf_size + 1)
        s.host.ftruncate(tmp, 0)
        raises(errno.EINVAL, ctx.ioas_map_file, s.ioas_id, tmp, 0, s.buf_size)
    else:
        iova = ctx.ioas_map(s.ioas_id, ctx.buffer, PAGE)
        s.check_mock_iova(ctx.buffer, iova, PAGE)
        buf = ctx.mmap_anon(s.buf_size)
        s.host.munmap(buf + s.buf_size // 2, s.buf_size // 2)
        raises(errno.EFAULT, ctx.ioas_map, s.ioas_id, buf, s.buf_size)  # half way through
        s.host.munmap(buf, s.buf_size // 2)
        raises(errno.EFAULT, ctx.ioas_map, s.ioas_id, buf, s.buf_size)  # on the first page
    # the failed maps left nothing behind: only the first page is mapped
    assert ctx.ioas_unmap(s.ioas_id, 0, U64_MAX) == PAGE


def test_ro_unshare(s):
    """A READABLE-only map of a private file page, then a CPU write: the COW must not change
    the page the domain holds (the selftest maps /proc/self/exe; a memfd here)."""
    ctx = s.ctx
    mfd = s.host.memfd_create("ro", 0)
    s.host.ftruncate(mfd, PAGE)
    buf = s.host.mmap(0, PAGE, RW, L.MAP_PRIVATE, mfd, 0)
    iova = ctx.ioas_map(s.ioas_id, buf, PAGE, flags=I.IOMMU_IOAS_MAP_READABLE)
    s.check_mock_iova(buf, iova, PAGE)
    ctx.poke(buf, b"\x01" * PAGE)
    s.check_mock_iova(buf, iova, PAGE)


def _map(s, buf, mfd, start, length):
    if s.file:
        return s.ctx.ioas_map_file(s.ioas_id, mfd, start, length)
    return s.ctx.ioas_map(s.ioas_id, buf + start, length)


def _buf(s):
    if s.file:
        return s.memfd_mmap(s.buf_size)
    return s.ctx.mmap_anon(s.buf_size), -1


def test_all_aligns(s):
    ctx = s.ctx
    buf, mfd = _buf(s)
    ctx.check_refs(buf, s.buf_size, 0)
    for start in range(0, s.buf_size, MOCK_PAGE_SIZE):
        for end in range(start + MOCK_PAGE_SIZE, s.buf_size, MOCK_PAGE_SIZE * 3):
            length = end - start
            iova = _map(s, buf, mfd, start, length)
            s.check_mock_iova(buf + start, iova, length)
            lo, hi = start // PAGE * PAGE, end // PAGE * PAGE
            ctx.check_refs(buf + lo, hi - lo, 1)
            ctx.ioas_unmap(s.ioas_id, iova, length)
    ctx.check_refs(buf, s.buf_size, 0)


def test_all_aligns_copy(s):
    ctx = s.ctx
    buf, mfd = _buf(s)
    ctx.check_refs(buf, s.buf_size, 0)
    for start in range(0, s.buf_size, MOCK_PAGE_SIZE * 3):
        for end in range(start + MOCK_PAGE_SIZE, s.buf_size, MOCK_PAGE_SIZE * 5):
            length = end - start
            iova = _map(s, buf, mfd, start, length)
            old = s.hwpt_ids[1]  # add and destroy a domain while the area exists
            stdev, s.hwpt_ids[1], _ = ctx.mock_domain(s.ioas_id)
            s.check_mock_iova(buf + start, iova, length)
            lo, hi = start // PAGE * PAGE, end // PAGE * PAGE
            ctx.check_refs(buf + lo, hi - lo, 1)
            ctx.destroy(stdev)
            s.hwpt_ids[1] = old
            ctx.ioas_unmap(s.ioas_id, iova, length)
    ctx.check_refs(buf, s.buf_size, 0)


def test_user_copy(s):
    ctx = s.ctx
    if s.file:
        buf, mfd = s.memfd_mmap(BUFFER_SIZE)

        def mapit(ioas):
            return ctx.ioas_map_file(ioas, mfd, 0, BUFFER_SIZE)
    else:
        buf = ctx.buffer

        def mapit(ioas):
            return ctx.ioas_map(ioas, buf, BUFFER_SIZE)
    # pin the pages in an IOAS with no domains, then copy to the IOAS with domains
    ioas = ctx.ioas_alloc()
    src = mapit(ioas)
    access = ctx.create_access(ioas, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    ctx.access_pages(access, src, BUFFER_SIZE, buf)
    ctx.ioas_copy(s.ioas_id, ioas, BUFFER_SIZE, src, START)
    s.check_mock_iova(buf, START, BUFFER_SIZE)
    # now replace the access's IOAS with a new one
    new = ctx.ioas_alloc()
    src = mapit(new)
    ctx.access_replace_ioas(access, new)
    assert ctx.ioas_unmap(s.ioas_id, START, BUFFER_SIZE) == BUFFER_SIZE
    ctx.destroy(ioas)
    pages = ctx.access_pages(access, src, BUFFER_SIZE, buf)
    ctx.ioas_copy(s.ioas_id, new, BUFFER_SIZE, src, START)
    s.check_mock_iova(buf, START, BUFFER_SIZE)
    ctx.destroy_access_pages(access, pages)
    ctx.destroy_access(access)
    ctx.destroy(new)


def test_replace(s):
    ctx = s.ctx
    ioas = ctx.ioas_alloc()
    ctx.mock_domain_replace(s.stdev_ids[0], ioas)
    if s.mock_domains == 1:  # the prior HWPT was auto-destroyed
        raises(errno.ENOENT, ctx.mock_domain_replace, s.stdev_ids[0], s.hwpt_ids[0])
    ctx.mock_domain_replace(s.stdev_ids[0], ioas)
    if s.mock_domains >= 2:
        ctx.mock_domain_replace(s.stdev_ids[0], s.hwpt_ids[1])
        ctx.mock_domain_replace(s.stdev_ids[0], s.hwpt_ids[1])
        ctx.mock_domain_replace(s.stdev_ids[0], s.hwpt_ids[0])
    ctx.mock_domain_replace(s.stdev_ids[0], s.ioas_id)
    ctx.destroy(ioas)


def test_alloc_hwpt(s):
    ctx = s.ctx
    for i in range(s.mock_domains):
        raises(errno.EOPNOTSUPP, ctx.hwpt_alloc, s.idev_ids[i], s.ioas_id,
               ~I.IOMMU_HWPT_ALLOC_NEST_PARENT)
        h0 = ctx.hwpt_alloc(s.idev_ids[i], s.ioas_id, 0)
        h1 = ctx.hwpt_alloc(s.idev_ids[i], s.ioas_id, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
        # a hw_pagetable rotation
        ctx.mock_domain_replace(s.stdev_ids[i], h0)
        raises(errno.EBUSY, ctx.destroy, h0)
        ctx.mock_domain_replace(s.stdev_ids[i], h1)
        raises(errno.EBUSY, ctx.destroy, h1)
        ctx.mock_domain_replace(s.stdev_ids[i], s.ioas_id)
        ctx.destroy(h1)
        stdev, _, _ = ctx.mock_domain(h0)
        ctx.destroy(stdev)
        ctx.destroy(h0)


def _inv(flags=0, iotlb_id=0):
    return I.iommu_hwpt_invalidate_selftest(flags=flags, iotlb_id=iotlb_id)


E = ctypes.sizeof(I.iommu_hwpt_invalidate_selftest)


def test_alloc_hwpt_nested(host):
    """iommufd_ioas.alloc_hwpt_nested, mock_domain variant (the no_domain half is below)."""
    ctx = mock_fixture_setup(host)
    ioas = ctx.ioas_alloc()
    stdev, _, dev = ctx.mock_domain(ioas)
    data = I.iommu_hwpt_selftest(iotlb=DEFAULT)
    min_len = I.iommu_hwpt_selftest.iotlb.offset + I.iommu_hwpt_selftest.iotlb.size
    raises(errno.ENOENT, ctx.hwpt_alloc, ioas, dev)  # an IOAS as the device
    raises(errno.EINVAL, ctx.hwpt_alloc, dev, dev)  # a device as the page table
    parent = ctx.hwpt_alloc(dev, ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    not_parent = ctx.hwpt_alloc(dev, ioas, 0)
    nested = ctx.hwpt_alloc_nested
    raises(errno.EINVAL, nested, dev, parent, data_type=I.IOMMU_HWPT_DATA_NONE)
    raises(errno.EOPNOTSUPP, nested, dev, parent, data_type=I.IOMMU_HWPT_DATA_SELFTEST + 1)
    raises(errno.EINVAL, nested, dev, parent, data_len=min_len - 1)
    raises(errno.EFAULT, nested, dev, parent, data_uptr=0, data_len=ctypes.sizeof(data))
    raises(errno.EOPNOTSUPP, nested, dev, parent, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    raises(errno.EINVAL, nested, dev, not_parent)
    n0, n1 = nested(dev, parent), nested(dev, parent)
    ctx.check_iotlb_all(n0, DEFAULT)
    ctx.check_iotlb_all(n1, DEFAULT)
    raises(errno.EINVAL, nested, dev, n0)  # nested on nested
    raises(errno.EBUSY, ctx.destroy, parent)  # parent now has children
    # HWPT_INVALIDATE only on a user-managed (nested) HWPT or a vIOMMU: any other object is
    # EINVAL (iommufd_hwpt_invalidate, since 6.14; 6.8-6.13 said ENOENT), an unknown id ENOENT
    assert ctx.invalidate(parent, [_inv()], INV, E, 1) == (errno.EINVAL, 0)
    assert ctx.invalidate(ioas, [_inv()], INV, E, 1) == (errno.EINVAL, 0)
    assert ctx.invalidate(0xFFFF, [_inv()], INV, E, 1) == (errno.ENOENT, 0)
    assert ctx.invalidate(n0, [_inv()], INV, E, 0) == (0, 0)  # zero-length array: type check
    assert ctx.invalidate(n0, [_inv()], I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, E, 1) \
        == (errno.EINVAL, 0)
    assert ctx.invalidate(n0, [_inv()], INV, E + 1, 1) == (errno.EINVAL, 0)
    assert ctx.invalidate(n0, [_inv()], INV, 1, 1) == (errno.EINVAL, 0)
    assert ctx.invalidate(n0, [_inv()], INV, PAGE + 1, 1) == (errno.EINVAL, 0)
    assert ctx.invalidate(n0, [_inv(0xFFFFFFFF)], INV, E, 1) == (errno.EOPNOTSUPP, 0)
    assert ctx.invalidate(n0, None, INV, E, 1) == (errno.EINVAL, 0)  # NULL array
    assert ctx.invalidate(n0, [_inv()], INV, 0, 1) == (errno.EINVAL, 0)
    bad_id = I.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1
    assert ctx.invalidate(n0, [_inv(0, bad_id)], INV, E, 1) == (errno.EINVAL, 0)
    ctx.check_iotlb_all(n0, DEFAULT)  # every failure above changed nothing
    # the 1st entry is done, the 2nd fails (bad flags, then bad id): entry_num says 1
    for second in (_inv(0xFFFFFFFF, 1), _inv(0, bad_id)):
        want = errno.EOPNOTSUPP if second.flags else errno.EINVAL
        assert ctx.invalidate(n0, [_inv(0, 0), second], INV, E, 2) == (want, 1)
        ctx.check_iotlb(n0, 0, 0)
        for i in (1, 2, 3):
            ctx.check_iotlb(n0, i, DEFAULT)
    assert ctx.invalidate(n0, [_inv(0, 1)], INV, E, 1) == (0, 1)
    ctx.check_iotlb(n0, 1, 0)
    ctx.check_iotlb(n0, 2, DEFAULT)
    assert ctx.invalidate(n0, [_inv(0, 2), _inv(0, 3)], INV, E, 2) == (0, 2)
    ctx.check_iotlb_all(n0, 0)
    assert ctx.invalidate(n1, [_inv(I.IOMMU_TEST_INVALIDATE_FLAG_ALL)], INV, E, 1) == (0, 1)
    ctx.check_iotlb_all(n1, 0)
    # attach, switch, detach
    ctx.mock_domain_replace(stdev, n0)
    raises(errno.EBUSY, ctx.destroy, n0)
    ctx.mock_domain_replace(stdev, n1)
    raises(errno.EBUSY, ctx.destroy, n1)
    ctx.destroy(n0)
    ctx.mock_domain_replace(stdev, parent)
    ctx.destroy(n1)
    ctx.mock_domain_replace(stdev, ioas)
    ctx.destroy(parent)
    ctx.destroy(not_parent)
    ctx.teardown()


def test_alloc_hwpt_nested_no_domain(host):
    ctx = mock_fixture_setup(host)
    ioas = ctx.ioas_alloc()
    raises(errno.ENOENT, ctx.hwpt_alloc, 0, ioas)
    raises(errno.ENOENT, ctx.hwpt_alloc_nested, 0, 0)
    raises(errno.ENOENT, ctx.mock_domain_replace, 0, 0)
    ctx.teardown()


def test_alloc_hwpt_iopf(host):
    """alloc_hwpt_nested's IOPF part: FAULT_QUEUE_ALLOC, a fault-capable nested HWPT, and a
    fault injected through the mock, read from and answered on the fault fd."""
    ctx = mock_fixture_setup(host)
    ioas = ctx.ioas_alloc()
    stdev, _, dev = ctx.mock_domain(ioas)
    parent = ctx.hwpt_alloc(dev, ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    fault_id, fault_fd = ctx.fault_alloc()
    raises(errno.ENOENT, ctx.hwpt_alloc_nested, dev, parent, I.IOMMU_HWPT_FAULT_ID_VALID,
           fault_id=0xFFFFFFFF)
    raises(errno.EOPNOTSUPP, ctx.hwpt_alloc_nested, dev, parent,
           I.IOMMU_HWPT_FAULT_ID_VALID | 1 << 31, fault_id=fault_id)
    iopf = ctx.hwpt_alloc_nested(dev, parent, I.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
    ctx.mock_domain_replace(stdev, iopf)
    raises(errno.EBUSY, ctx.destroy, iopf)
    ctx.trigger_iopf(dev, 0x1, fault_fd)
    ctx.mock_domain_replace(stdev, parent)
    ctx.destroy(iopf)
    ctx.mock_domain_replace(stdev, ioas)
    ctx.destroy(parent)
    host.close(fault_fd)
    ctx.destroy(fault_id)
    ctx.teardown()


# -- vfio_compat_mock_domain ----------------------------------------------------------------


@pytest.fixture(params=[V.VFIO_TYPE1v2_IOMMU, V.VFIO_TYPE1_IOMMU], ids=["Ver1v2", "Ver1v0"])
def compat(request, host):
    ctx = mock_fixture_setup(host)
    ioas = ctx.ioas_alloc()
    ctx.mock_domain(ioas)  # what VFIO would consider a group
    cmd = I.iommu_vfio_ioas(size=ctypes.sizeof(I.iommu_vfio_ioas), op=I.IOMMU_VFIO_IOAS_SET,
                            ioas_id=ioas)
    ctx.ioctl(I.IOMMU_VFIO_IOAS, cmd)
    ctx.ioctl(V.VFIO_SET_IOMMU, request.param)
    yield ctx, ioas, request.param
    ctx.teardown()


def test_compat_simple_close(compat):
    pass


def test_compat_option_huge_pages(compat):
    ctx, ioas, version = compat
    val = ctx.option(I.IOMMU_OPTION_HUGE_PAGES, I.IOMMU_OPTION_OP_GET, ioas, 3)
    assert val == (0 if version == V.VFIO_TYPE1_IOMMU else 1)


def _check_buf(ctx, buf, n):
    """ioctl_check_buf: the kernel writes nothing past argsz."""
    argsz = int.from_bytes(buf[:4], "little")
    buf[argsz:] = b"\xaa" * (n - argsz)
    ctx.ioctl(V.VFIO_IOMMU_GET_INFO, buf)
    assert buf[argsz:] == b"\xaa" * (n - argsz)


def test_compat_get_info(compat):
    ctx = compat[0]
    n = 1024
    want_flags = V.VFIO_IOMMU_INFO_PGSIZES | V.VFIO_IOMMU_INFO_CAPS
    buf = bytearray(n)
    buf[:4] = V.vfio_iommu_type1_info.cap_offset.offset.to_bytes(4, "little")  # pre-cap ABI
    _check_buf(ctx, buf, n)
    info = V.vfio_iommu_type1_info.from_buffer_copy(buf[:24])
    assert info.iova_pgsizes != 0 and info.flags == want_flags
    buf = bytearray(n)
    buf[:4] = (24).to_bytes(4, "little")  # read the cap chain size
    _check_buf(ctx, buf, n)
    info = V.vfio_iommu_type1_info.from_buffer_copy(buf[:24])
    assert info.iova_pgsizes != 0 and info.flags == want_flags
    assert info.cap_offset == 0 and info.argsz > 24
    caplen = info.argsz
    for argsz in range(24, caplen + 1):
        buf = bytearray(n)
        buf[:4] = argsz.to_bytes(4, "little")
        _check_buf(ctx, buf, n)
        info = V.vfio_iommu_type1_info.from_buffer_copy(buf[:24])
        assert info.flags == want_flags
        # DMA_AVAIL (12 bytes) comes first, at 24, once it fits; its next points at the
        # 8-byte aligned 40 once argsz reaches there, even before IOVA_RANGE itself fits
        dma = V.vfio_info_cap_header.from_buffer_copy(buf, 24)
        if argsz >= 24 + ctypes.sizeof(V.vfio_iommu_type1_info_dma_avail):
            assert (dma.id, dma.next) == (V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
                                          40 if argsz >= 40 else 0)
        else:
            assert not any(buf[24:argsz])
        if info.cap_offset:
            _check_cap_chain(buf, info)


def _check_cap_chain(buf, info):
    off = info.cap_offset
    assert info.argsz >= off + 8
    while True:
        hdr = V.vfio_info_cap_header.from_buffer_copy(buf[off:off + 8])
        size = (hdr.next or info.argsz) - off
        if hdr.id == V.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            assert hdr.version == 1
            nr = int.from_bytes(buf[off + 8:off + 12], "little")
            assert nr == 1
            start = int.from_bytes(buf[off + 16:off + 24], "little")
            end = int.from_bytes(buf[off + 24:off + 32], "little")
            assert (start, end) == (START, I.MOCK_APERTURE_LAST)
        elif hdr.id == V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            assert hdr.version == 1
            # each capability starts 8-byte aligned (vfio_compat.c: cap_size = ALIGN(cap_size,
            # sizeof(u64)), 6.6), so the 12-byte struct spans 16; iommufd's limit is U32_MAX
            assert size == 16 == -(-ctypes.sizeof(V.vfio_iommu_type1_info_dma_avail) // 8) * 8
            avail = V.vfio_iommu_type1_info_dma_avail.from_buffer_copy(buf, off)
            assert avail.avail == 0xFFFFFFFF
        else:
            raise AssertionError(f"unexpected capability {hdr.id}")
        if not hdr.next:
            break
        assert info.argsz >= hdr.next + 8 and hdr.next >= off
        off = hdr.next


def test_compat_map(compat):
    ctx = compat[0]
    buf = ctx.buffer
    m = V.vfio_iommu_type1_dma_map(argsz=ctypes.sizeof(V.vfio_iommu_type1_dma_map),
                                   flags=V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE,
                                   vaddr=buf, size=BUFFER_SIZE, iova=START)
    u = V.vfio_iommu_type1_dma_unmap(argsz=ctypes.sizeof(V.vfio_iommu_type1_dma_unmap),
                                     size=BUFFER_SIZE, iova=START)
    ctx.ioctl(V.VFIO_IOMMU_MAP_DMA, m)
    ctx.ioctl(V.VFIO_IOMMU_UNMAP_DMA, u)
    assert u.size == BUFFER_SIZE
    u.size = BUFFER_SIZE
    ctx.ioctl(V.VFIO_IOMMU_UNMAP_DMA, u)  # unmap of empty is success
    ctx.ioctl(V.VFIO_IOMMU_MAP_DMA, m)
    u.flags, u.size = V.VFIO_DMA_UNMAP_FLAG_ALL, BUFFER_SIZE
    raises(errno.EINVAL, ctx.ioctl, V.VFIO_IOMMU_UNMAP_DMA, u)  # ALL needs iova/size 0
    u.iova, u.size = 0, 0
    ctx.ioctl(V.VFIO_IOMMU_UNMAP_DMA, u)
    assert u.size == BUFFER_SIZE
    pages = [START + i * PAGE for i in range(BUFFER_SIZE // PAGE)]
    for i, iova in enumerate(pages):  # small pages, unmapped in another order
        m.iova, m.vaddr, m.size = iova, buf + i * PAGE, PAGE
        ctx.ioctl(V.VFIO_IOMMU_MAP_DMA, m)
    u.flags, u.size = 0, PAGE
    for iova in pages[1::2] + pages[0::2]:
        u.iova, u.size = iova, PAGE
        ctx.ioctl(V.VFIO_IOMMU_UNMAP_DMA, u)


def test_iova_alignment_is_mock_page(host):
    """KERNEL.md §3: with the mock domain attached the IOAS alignment is 2048, so a
    1024-aligned fixed map is EINVAL and a 2048-aligned one works."""
    ctx = mock_fixture_setup(host)
    ioas = ctx.ioas_alloc()
    ctx.mock_domain(ioas)
    assert ctx.iova_ranges(ioas, 1).out_iova_alignment == MOCK_PAGE_SIZE
    raises(errno.EINVAL, ctx.ioas_map, ioas, ctx.buffer, MOCK_PAGE_SIZE, START + 1024)
    raises(errno.EINVAL, ctx.ioas_map, ioas, ctx.buffer + 1024, MOCK_PAGE_SIZE, START)
    ctx.ioas_map(ioas, ctx.buffer + MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, START + MOCK_PAGE_SIZE,
                 MAP_RW)
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == MOCK_PAGE_SIZE
    ctx.teardown()
