"""passthru.vmm.iommufd: IOAS map/unmap/copy/iova_ranges/allow_iovas, options, object
ownership, and the CONFIG_IOMMUFD_TEST mock (mock domain, access, HWPT, vIOMMU), on SimHost
and LinuxHost (the linux half needs /dev/iommu; the mock tests also CONFIG_IOMMUFD_TEST)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.vmm import Hwpt, Ioas, Iommufd, Mapping, Memfd, MockDomain

pytestmark = pytest.mark.node("/dev/iommu")

PAGE = L.PAGE_SIZE
U64_MAX = (1 << 64) - 1
START = I.MOCK_APERTURE_START
CONFIG_SKIP = ("the running kernel has no CONFIG_IOMMUFD_TEST (IOMMU_TEST_CMD is ENOTTY): "
               "the iommufd mock device is absent")


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno is not None
    return e.value.errno


def anon(host, length: int) -> Mapping:
    """A shared anonymous mapping of the calling process, filled with a pattern."""
    addr = host.mmap(0, length, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS,
                     -1, 0)
    m = Mapping(host, addr, length)
    m.write(0, bytes(range(256)) * (length // 256))
    return m


def is_sim(host) -> bool:
    return hasattr(host, "leaks")


@pytest.fixture
def mock(host):
    """An Iommufd on a kernel with the mock (the linux half skips without it)."""
    ictx = Iommufd(host)
    if not ictx.has_test_ops():
        ictx.close()
        pytest.skip(CONFIG_SKIP)
    yield ictx
    ictx.close()


# -- IOAS ------------------------------------------------------------------------------------
def test_ioas_map_unmap_round_trip(host, assert_released):
    buf = anon(host, 4 * PAGE)
    with Iommufd(host) as ictx:
        ioas = ictx.alloc_ioas()
        assert isinstance(ioas, Ioas) and ioas.id != 0
        auto = ioas.map(buf.addr, 2 * PAGE)
        assert auto % PAGE == 0
        fixed = ioas.map(buf.addr + 2 * PAGE, PAGE, iova=0x100000, writeable=False)
        assert fixed == 0x100000
        # the fixed range is taken now; a second fixed map on it is EEXIST
        assert errno_of(ioas.map, buf.addr, PAGE, iova=0x100000) == errno.EEXIST
        assert errno_of(ioas.map, buf.addr, PAGE, readable=False, writeable=False) \
            == errno.EINVAL
        assert ioas.unmap(fixed, PAGE) == PAGE
        assert errno_of(ioas.unmap, fixed, PAGE) == errno.ENOENT
        ioas.map(buf.addr, PAGE, iova=0x200000)
        assert ioas.unmap_all() == 3 * PAGE
        assert ioas.unmap_all() == 0
    assert ioas.closed and ictx.closed
    buf.close()
    assert_released(host)


def test_ioas_map_file(host, assert_released):
    with Memfd(host, "ram", size=4 * PAGE) as mfd, Iommufd(host) as ictx:
        ioas = ictx.alloc_ioas()
        iova = ioas.map_file(mfd, PAGE, 2 * PAGE)
        assert ioas.map_file(mfd.fd, 0, PAGE, iova=0x400000) == 0x400000
        assert errno_of(ioas.map_file, mfd, PAGE, 0) == errno.EINVAL  # length 0
        # start + length - 1 wraps (io_pagetable.c iopt_map_file_pages: check_add_overflow)
        assert errno_of(ioas.map_file, mfd, U64_MAX - PAGE + 1, 2 * PAGE) == errno.EOVERFLOW
        # Past the end of the file: IOAS_MAP_FILE does not look at the file's size, and with
        # no domain attached nothing is pinned, so it maps (the pin is what fails, EINVAL:
        # test_mock_map_file_past_the_end_fails_at_the_pin)
        past = ioas.map_file(mfd, 3 * PAGE, 2 * PAGE)
        assert ioas.unmap(past, 2 * PAGE) == 2 * PAGE
        assert ioas.unmap(iova, 2 * PAGE) == 2 * PAGE
        assert ioas.unmap_all() == PAGE
    assert_released(host)


def test_ioas_copy(host, assert_released):
    buf = anon(host, 2 * PAGE)
    with Iommufd(host) as ictx:
        src, dst = ictx.alloc_ioas(), ictx.alloc_ioas()
        iova = src.map(buf.addr, 2 * PAGE, iova=0x10000)
        assert dst.copy(src, iova, 2 * PAGE, dst_iova=0x80000) == 0x80000
        auto = dst.copy(src.id, iova + PAGE, PAGE)
        assert auto not in range(0x80000, 0x80000 + 2 * PAGE)
        # the copy is independent of the source mapping
        assert src.unmap_all() == 2 * PAGE
        assert errno_of(dst.copy, src, iova, PAGE) == errno.ENOENT
        assert dst.unmap(0x80000, 2 * PAGE) == 2 * PAGE
        assert dst.unmap(auto, PAGE) == PAGE
    buf.close()
    assert_released(host)


def test_iova_ranges_and_allow_iovas(host, assert_released):
    buf = anon(host, 2 * PAGE)
    with Iommufd(host) as ictx:
        ioas = ictx.alloc_ioas()
        # no domain attached: everything is usable, alignment 1 byte
        assert ioas.iova_ranges() == [(0, U64_MAX)]
        assert ioas.iova_alignment == 1
        ioas.allow_iovas([(0x300000, 0x3fffff), (0x800000, 0x800000 + PAGE - 1)])
        iova = ioas.map(buf.addr, 2 * PAGE)
        assert 0x300000 <= iova <= 0x400000 - 2 * PAGE  # only the first range has room
        # allowed ranges do not change the usable (reserved-hole) ranges
        assert ioas.iova_ranges() == [(0, U64_MAX)]
        assert errno_of(ioas.allow_iovas, [(0x10, 0x10)]) == errno.EINVAL
        assert errno_of(ioas.allow_iovas, [(0x0, 0xfff), (0x800, 0x1fff)]) == errno.EINVAL
        ioas.allow_iovas([(0x800000, 0x800000 + PAGE - 1)])
        assert ioas.map(buf.addr, PAGE) == 0x800000
        assert errno_of(ioas.map, buf.addr, PAGE) == errno.ENOSPC  # the allowed page is used
        ioas.allow_iovas([])  # lifts the restriction
        assert ioas.map(buf.addr, PAGE) not in (0x800000, iova)
    buf.close()
    assert_released(host)


def test_options(host, assert_released):
    with Iommufd(host) as ictx:
        assert ictx.rlimit_mode in (False, True)
        ioas = ictx.alloc_ioas()
        assert ioas.huge_pages is True  # the default of a new IOAS
        ioas.huge_pages = False
        assert ioas.huge_pages is False
        # RLIMIT_MODE cannot change while objects exist (or without CAP_SYS_RESOURCE)
        assert errno_of(setattr, ictx, "rlimit_mode", True) in (errno.EBUSY, errno.EPERM)
        assert errno_of(ictx.option, 99, I.IOMMU_OPTION_OP_GET) == errno.EOPNOTSUPP
    assert_released(host)


def test_destroy_and_misuse(host, assert_released):
    with Iommufd(host) as ictx:
        ioas = ictx.alloc_ioas()
        ictx.destroy(ioas)
        assert ioas.closed
        with pytest.raises(ValueError):
            ioas.map(0x1000, PAGE)
        with pytest.raises(ValueError):
            ictx.alloc_hwpt(1, ioas)  # a closed wrapper as an id
        assert errno_of(ictx.destroy, ioas.id) == errno.ENOENT
        raw = ictx.alloc_ioas()
        ictx.destroy(raw.id)  # a plain id: the wrapper does not know
        assert errno_of(raw.map, 0x1000, PAGE) == errno.ENOENT
        # its IOMMU_DESTROY fails: the error propagates, the wrapper still counts as closed
        assert errno_of(raw.close) == errno.ENOENT
        assert raw.closed
    assert_released(host)


def test_close_destroys_children_newest_first(host, assert_released):
    buf = anon(host, PAGE)
    ictx = Iommufd(host)
    ioases = [ictx.alloc_ioas() for _ in range(3)]
    for i, ioas in enumerate(ioases):
        ioas.map(buf.addr, PAGE, iova=(i + 1) * 0x100000)
    ictx.close()
    assert all(i.closed for i in ioases)
    ictx.close()  # idempotent
    with pytest.raises(ValueError):
        ictx.alloc_ioas()
    buf.close()
    assert_released(host)
    if is_sim(host):
        host.exit()
        assert host.leaks() == []


def test_close_with_children_false_leaves_wrappers(host, assert_released):
    ictx = Iommufd(host)
    ioas = ictx.alloc_ioas()
    ictx.close(children=False)
    assert not ioas.closed
    ioas.close()  # the object died with the fd: nothing to destroy
    assert_released(host)


# -- CONFIG_IOMMUFD_TEST mock ----------------------------------------------------------------
def test_mock_domain_map_and_check(mock, host):
    buf = anon(host, 4 * PAGE)
    ioas = mock.alloc_ioas()
    md = mock.mock_domain(ioas)
    assert isinstance(md, MockDomain) and md.hwpt_id and md.idev_id
    assert ioas.iova_alignment == I.MOCK_PAGE_SIZE
    ranges = ioas.iova_ranges()
    assert (START, I.MOCK_APERTURE_LAST) in ranges
    ioas.map(buf.addr, 4 * PAGE, iova=START)
    md.check_map(START, 4 * PAGE, buf.addr)
    mock.check_map(md.hwpt_id, START + PAGE, PAGE, buf.addr + PAGE)
    mock.check_refs(buf.addr, 4 * PAGE, 1)
    # the wrong user pages for that IOVA
    assert errno_of(md.check_map, START, PAGE, buf.addr + PAGE) == errno.EINVAL
    assert ioas.unmap(START, 4 * PAGE) == 4 * PAGE
    mock.check_refs(buf.addr, 4 * PAGE, 0)
    md.close()  # destroys the selftest device; the automatic HWPT goes with it
    assert errno_of(mock.destroy, md.hwpt_id) == errno.ENOENT
    buf.close()


def test_mock_iova_ranges_grow_past_initial_array(mock, host):
    ioas = mock.alloc_ioas()
    for i in range(6):  # 6 holes: 7 ranges, more than the first array's 4
        ioas.add_reserved(0x100000 * (i + 1), 0x1000)
    ranges = ioas.iova_ranges()
    assert len(ranges) == 7
    assert ranges[0] == (0, 0xfffff)
    assert ranges[-1] == (0x601000, U64_MAX)


def test_mock_domain_replace(mock):
    ioas, other = mock.alloc_ioas(), mock.alloc_ioas()
    md = mock.mock_domain(ioas)
    first = md.hwpt_id
    second = md.replace(other)
    assert second == md.hwpt_id and second != first
    # the automatic HWPT of the first attach is gone with the replace
    assert errno_of(md.replace, first) == errno.ENOENT
    assert md.replace(ioas) == md.hwpt_id


def test_mock_map_file_past_the_end_fails_at_the_pin(mock, host):
    """A memfd range past the end of the file maps (nothing pinned); each later pin of it —
    a domain's fill, an access's pin or read — goes to memfd_pin_folios, which refuses a range
    reaching i_size (EINVAL) and takes one inside the file; a grown file pins."""
    mfd = Memfd(host, "ram", size=4 * PAGE)
    view = mfd.mmap()
    view.write(3 * PAGE, b"last page")
    ioas = mock.alloc_ioas()
    # file page 3, and one page past the end
    assert ioas.map_file(mfd, 3 * PAGE, 2 * PAGE, iova=START) == START
    assert errno_of(mock.mock_domain, ioas) == errno.EINVAL  # the fill pins both pages
    access = mock.create_access(ioas, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    pages = access.pin(START, PAGE, view.addr + 3 * PAGE)  # inside the file: pinned
    assert errno_of(access.pin, START, 2 * PAGE, 0) == errno.EINVAL
    assert access.rw(START, 9) == b"last page"
    assert errno_of(access.rw, START + PAGE, 8) == errno.EINVAL
    access.unpin(pages)
    mfd.truncate(5 * PAGE)  # i_size is read at each pin: the range fits now
    md = mock.mock_domain(ioas)
    grown = mfd.mmap()
    md.check_map(START, 2 * PAGE, grown.addr + 3 * PAGE)
    md.close()
    access.close()
    assert ioas.unmap_all() == 2 * PAGE
    mfd.close()


def test_mock_access_pin_and_rw(mock, host):
    buf = anon(host, 2 * PAGE)
    ioas = mock.alloc_ioas()
    iova = ioas.map(buf.addr, 2 * PAGE)
    access = mock.create_access(ioas, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    pages = access.pin(iova, 2 * PAGE, buf.addr)
    assert access.rw(iova + 3, 5) == buf.read(3, 5)
    assert access.rw(iova + PAGE, b"through the access") == b""
    assert buf.read(PAGE, 18) == b"through the access"
    access.unpin(pages)
    assert errno_of(access.unpin, pages) == errno.ENOENT
    access.close()
    assert ioas.unmap_all() == 2 * PAGE
    buf.close()


def test_mock_hw_info_and_nested_hwpt(mock):
    ioas = mock.alloc_ioas()
    md = mock.mock_domain(ioas)
    info = mock.get_hw_info(md.idev_id)
    assert info.data_type == I.IOMMU_HW_INFO_TYPE_SELFTEST
    assert info.data_len == ctypes.sizeof(I.iommu_test_hw_info) == len(info.data)
    assert I.iommu_test_hw_info.from_buffer_copy(info.data).test_reg \
        == I.IOMMU_HW_INFO_SELFTEST_REGVAL
    parent = mock.alloc_hwpt(md.idev_id, ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert isinstance(parent, Hwpt)
    nested = mock.alloc_hwpt(md.idev_id, parent, 0, I.IOMMU_HWPT_DATA_SELFTEST,
                             I.iommu_hwpt_selftest(iotlb=I.IOMMU_TEST_IOTLB_DEFAULT))
    # the parent is in use by its nested child
    assert errno_of(mock.destroy, parent.id) == errno.EBUSY
    inv = I.iommu_hwpt_invalidate_selftest(flags=I.IOMMU_TEST_INVALIDATE_FLAG_ALL)
    assert nested.invalidate(I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, [inv]) == 1
    mock.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_IOTLB, nested.id, "check_iotlb", id=0, iotlb=0)
    bad = I.iommu_hwpt_invalidate_selftest(flags=0xFFFFFFFF)
    assert errno_of(nested.invalidate, I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, [bad]) \
        == errno.EOPNOTSUPP
    with pytest.raises(ValueError):
        nested.invalidate(I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, [inv, b"short"])
    # closing the Iommufd (the fixture) destroys nested, then parent, md, ioas


def test_mock_viommu_vdevice(mock):
    ioas = mock.alloc_ioas()
    md = mock.mock_domain(ioas)
    parent = mock.alloc_hwpt(md.idev_id, ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = mock.alloc_viommu(md.idev_id, parent, I.IOMMU_VIOMMU_TYPE_SELFTEST,
                               I.iommu_viommu_selftest(in_data=0xbeef))
    out = I.iommu_viommu_selftest.from_buffer_copy(viommu.data)
    assert out.out_data == 0xbeef  # the mock driver's loopback
    vdev = viommu.alloc_vdevice(md.idev_id, 0x99)
    assert vdev.virt_id == 0x99 and vdev.dev_id == md.idev_id
    # a vIOMMU in use by a vDEVICE cannot be destroyed
    assert errno_of(mock.destroy, viommu.id) == errno.EBUSY
    assert errno_of(viommu.alloc_vdevice, md.idev_id, 0x99) == errno.EEXIST
    viommu.close()  # closes its vDEVICE first
    assert vdev.closed
    assert errno_of(mock.destroy, vdev.id) == errno.ENOENT


def test_mock_dirty_tracking(mock, host):
    mp = I.MOCK_PAGE_SIZE
    buf = anon(host, 64 * mp)
    ioas = mock.alloc_ioas()
    # PAGE_SIZE IOMMU pages, as the selftest's dirty fixture: a dirty bit is a leaf PTE's,
    # and with huge pages on the leaves follow the buffer's physical contiguity
    ioas.huge_pages = False
    md = mock.mock_domain(ioas)
    hwpt = mock.alloc_hwpt(md.idev_id, ioas, I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    md.replace(hwpt)
    ioas.map(buf.addr, 64 * mp, iova=START)
    hwpt.set_dirty_tracking(True)
    assert hwpt.get_dirty_bitmap(START, 64 * mp, mp) == bytes(8)
    # the mock IOMMU marks mock pages 0 and 4 dirty (IOMMU_TEST_OP_DIRTY takes a bitmap):
    # each dirties its whole PAGE_SIZE PTE, mock pages 0-1 and 4-5
    marks = anon(host, PAGE)
    marks.write(0, b"\x11" + bytes(7))
    cmd = mock.test_cmd(I.IOMMU_TEST_OP_DIRTY, hwpt.id, "dirty", iova=START,
                        length=64 * mp, page_size=mp, uptr=marks.addr)
    assert cmd.dirty.out_nr_dirty == 2
    flags = I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
    assert hwpt.get_dirty_bitmap(START, 64 * mp, mp, flags) == b"\x33" + bytes(7)
    assert hwpt.get_dirty_bitmap(START, 64 * mp, mp) == b"\x33" + bytes(7)  # read and clear
    assert hwpt.get_dirty_bitmap(START, 64 * mp, mp) == bytes(8)
    # a range with nothing mapped reads nothing, and is no error
    assert hwpt.get_dirty_bitmap(START + 64 * mp, 2 * mp, mp) == bytes(8)
    hwpt.set_dirty_tracking(False)
    md.replace(ioas)
    marks.close()
    buf.close()


def test_mock_close_leaves_nothing(host, assert_released):
    buf = anon(host, 2 * PAGE)
    ictx = Iommufd(host)
    if not ictx.has_test_ops():
        ictx.close()
        buf.close()
        pytest.skip(CONFIG_SKIP)
    ioas = ictx.alloc_ioas()
    md = ictx.mock_domain(ioas)
    ioas.map(buf.addr, 2 * PAGE, iova=START)
    access = ictx.create_access(ioas, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    access.pin(START, PAGE, buf.addr)
    hwpt = ictx.alloc_hwpt(md.idev_id, ioas)
    ictx.close()
    assert all(o.closed for o in (ioas, md, access, hwpt))
    buf.close()
    assert_released(host)
    if is_sim(host):
        host.exit()
        assert host.leaks() == []


def test_mock_unmap_under_pinned_access(mock, host):
    buf = anon(host, 2 * PAGE)
    ioas = mock.alloc_ioas()
    iova = ioas.map(buf.addr, 2 * PAGE)
    access = mock.create_access(ioas, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    pages = access.pin(iova, PAGE, buf.addr)
    # the test access drops its pins in its unmap callback, so the unmap goes through
    assert ioas.unmap_all() == 2 * PAGE
    assert errno_of(access.unpin, pages) == errno.ENOENT
    assert errno_of(access.rw, iova, 8) == errno.ENOENT
    buf.close()


def test_access_close_leaves_nothing(host, assert_released):
    buf = anon(host, 2 * PAGE)
    ictx = Iommufd(host)
    if not ictx.has_test_ops():
        ictx.close()
        buf.close()
        pytest.skip(CONFIG_SKIP)
    ioas = ictx.alloc_ioas()
    iova = ioas.map(buf.addr, 2 * PAGE)
    access = ictx.create_access(ioas, I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    access.pin(iova, 2 * PAGE, buf.addr)
    ictx.close()  # closes the access (its pins go) before destroying the IOAS
    assert access.closed and ioas.closed
    buf.close()
    assert_released(host)
    if is_sim(host):
        host.exit()
        assert host.leaks() == []
