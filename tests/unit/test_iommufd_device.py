"""iommufd devices and HWPTs (kernel/iommu/iommufd/device.py, hw_pagetable.py, driver.py,
selftest_mock.py): the kernel-internal bind/attach/replace/detach API VFIO uses, the mock's
IOMMU_TEST_CMD ops, pinning tied to the first and last domain of an IOAS, and device DMA
through the hw IOMMU reaching the mapped user memory."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru import SimHost
from passthru.kernel.iommu.iommufd import device as D
from passthru.kernel.iommu.iommufd.driver import mock_dev_create, mock_dev_destroy
from passthru.kernel.iommu.iommufd.hw_pagetable import HwptPaging
from passthru.kernel.iommu.iommufd.ioas import Ioas
from passthru.kernel.iommu.iommufd.main import IommufdCtx
from passthru.kernel.mm import mlock
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
START = I.MOCK_APERTURE_START
RW = I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE


def _errno(fn, *a) -> int:
    with pytest.raises(OSError) as e:
        fn(*a)
    return e.value.errno


class Env:
    def __init__(self) -> None:
        self.h = SimHost()
        self.fd = self.h.open("/dev/iommu", L.O_RDWR)
        self.ictx: IommufdCtx = self.h.proc.fds[self.fd]  # type: ignore[assignment]

    def ioctl(self, req: int, cmd) -> None:  # type: ignore[no-untyped-def]
        self.h.ioctl(self.fd, req, cmd)

    def ioas(self) -> int:
        c = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        self.ioctl(I.IOMMU_IOAS_ALLOC, c)
        return c.out_ioas_id

    def map(self, ioas: int, va: int, length: int, iova: int) -> None:
        c = I.iommu_ioas_map(size=ctypes.sizeof(I.iommu_ioas_map), ioas_id=ioas, user_va=va,
                             length=length, iova=iova,
                             flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA)
        self.ioctl(I.IOMMU_IOAS_MAP, c)

    def test_cmd(self, op: int, oid: int, member: str | None = None, **kw: int):  # type: ignore[no-untyped-def]
        c = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd), op=op, id=oid)
        for k, v in kw.items():
            setattr(getattr(c, member), k, v)  # type: ignore[arg-type]
        self.ioctl(I.IOMMU_TEST_CMD, c)
        return c

    def mock_domain(self, pt_id: int) -> tuple[int, int, int]:
        c = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id).mock_domain
        return c.out_stdev_id, c.out_hwpt_id, c.out_idev_id

    def destroy(self, oid: int) -> None:
        self.ioctl(I.IOMMU_DESTROY, I.iommu_destroy(size=ctypes.sizeof(I.iommu_destroy),
                                                     id=oid))

    def alignment(self, ioas: int) -> tuple[int, list[tuple[int, int]]]:
        arr = self.h.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE,
                          L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        c = I.iommu_ioas_iova_ranges(size=ctypes.sizeof(I.iommu_ioas_iova_ranges),
                                     ioas_id=ioas, num_iovas=8, allowed_iovas=arr)
        self.ioctl(I.IOMMU_IOAS_IOVA_RANGES, c)
        rs = (I.iommu_iova_range * c.num_iovas).from_buffer_copy(
            self.h.peek(arr, 16 * c.num_iovas))
        return c.out_iova_alignment, [(r.start, r.last) for r in rs]

    def buf(self, n: int) -> int:
        va = self.h.mmap(0, n, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS,
                         -1, 0)
        self.h.poke(va, b"\x11" * n)
        return va

    def pins(self, va: int, n: int) -> list[int]:
        mm = self.h.proc.mm
        mm.mmap_lock.down_read()
        try:
            pieces = mm.resolve(va, n, False)
        finally:
            mm.mmap_lock.up_read()
        pins = self.h.kernel.phys.pins
        return sorted({v for s, e, p in pieces for _, _, v in pins.overlapping(p, p + e - s)}
                      | ({0} if any(pins.gaps(p, p + e - s) for s, e, p in pieces) else set()))

    def ioas_obj(self, oid: int) -> Ioas:
        obj = self.ictx.objects[oid]
        assert isinstance(obj, Ioas)
        return obj


def test_kernel_api_attach_detach_replace() -> None:
    env = Env()
    k = env.h.kernel
    a, b = env.ioas(), env.ioas()
    dev = mock_dev_create(k, 0)
    idev = D.iommufd_device_bind(env.ictx, dev)
    assert dev.iommu.domain_of(dev.name) is dev.iommu.blocked  # bound: DMA blocked
    h1 = D.iommufd_device_attach(idev, None, a)
    hw = env.ictx.objects[h1]
    assert isinstance(hw, HwptPaging) and hw.auto_domain and hw.ioas.id == a
    assert dev.iommu.domain_of(dev.name) is hw.domain
    assert _errno(D.iommufd_device_attach, idev, None, a) == errno.EBUSY
    # replace to another IOAS: a new auto domain, the old one goes with its last device
    h2 = D.iommufd_device_replace(idev, None, b)
    assert h2 != h1 and h1 not in env.ictx.objects
    assert D.iommufd_device_replace(idev, None, h2) == h2  # same HWPT: nothing
    assert _errno(D.iommufd_device_replace, idev, None, 9999) == errno.ENOENT
    assert _errno(D.iommufd_device_replace, idev, None, idev.id) == errno.EINVAL
    assert _errno(D.iommufd_device_replace, idev, 5, a) == errno.EINVAL  # nothing at PASID 5
    D.iommufd_device_detach(idev, None)
    assert h2 not in env.ictx.objects
    assert dev.iommu.domain_of(dev.name) is dev.iommu.blocked
    D.iommufd_device_detach(idev, None)  # nothing attached: no error
    D.iommufd_device_unbind(idev)
    mock_dev_destroy(k, dev)
    env.h.exit()
    assert env.h.leaks() == []


def test_second_device_shares_the_auto_domain_and_ebusy_ioas() -> None:
    env = Env()
    ioas = env.ioas()
    s1, h1, _ = env.mock_domain(ioas)
    s2, h2, _ = env.mock_domain(ioas)
    assert h1 == h2  # the compatible auto domain is reused
    assert _errno(env.destroy, ioas) == errno.EBUSY
    assert _errno(env.destroy, h1) == errno.EBUSY
    env.destroy(s1)
    assert h1 in env.ictx.objects
    env.destroy(s2)
    assert h1 not in env.ictx.objects  # gone with its last device
    env.destroy(ioas)


def test_alignment_and_aperture_after_mock_attach() -> None:
    env = Env()
    ioas = env.ioas()
    assert env.alignment(ioas) == (1, [(0, (1 << 64) - 1)])
    stdev, _, _ = env.mock_domain(ioas)
    align, ranges = env.alignment(ioas)
    assert align == I.MOCK_PAGE_SIZE
    assert ranges == [(I.MOCK_APERTURE_START, I.MOCK_APERTURE_LAST)]
    env.destroy(stdev)
    assert env.alignment(ioas) == (1, [(0, (1 << 64) - 1)])


def test_pins_follow_first_and_last_domain_and_check_map() -> None:
    env = Env()
    env.h.proc.caps = env.h.proc.caps - {"CAP_IPC_LOCK"}  # ACCOUNT_USER: charges show
    ioas = env.ioas()
    va = env.buf(4 * PAGE)
    env.map(ioas, va, 4 * PAGE, START)
    assert env.pins(va, 4 * PAGE) == [0]  # lazy: no domain yet
    assert mlock.charged(env.h.kernel, env.h.proc)[0] == 0
    s1, h1, _ = env.mock_domain(ioas)
    assert env.pins(va, 4 * PAGE) == [1]
    assert mlock.charged(env.h.kernel, env.h.proc)[0] == 4
    env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_REFS, 0, "check_refs", length=4 * PAGE, uptr=va,
                 refs=1)
    env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, h1, "check_map", iova=START,
                 length=4 * PAGE, uptr=va)
    with pytest.raises(OSError) as e:  # shifted by one mock page: not the same pages
        env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, h1, "check_map", iova=START,
                     length=2 * PAGE, uptr=va + I.MOCK_PAGE_SIZE)
    assert e.value.errno == errno.EINVAL
    hw2 = I.iommu_hwpt_alloc(size=ctypes.sizeof(I.iommu_hwpt_alloc), dev_id=0, pt_id=ioas)
    hw2.dev_id = env.ictx.objects[s1].idev.id  # type: ignore[union-attr]
    env.ioctl(I.IOMMU_HWPT_ALLOC, hw2)  # a second domain adds no pins
    assert env.pins(va, 4 * PAGE) == [1]
    env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, hw2.out_hwpt_id, "check_map", iova=START,
                 length=4 * PAGE, uptr=va)
    env.destroy(hw2.out_hwpt_id)
    env.destroy(s1)  # the last domain: unpinned, uncharged
    assert env.pins(va, 4 * PAGE) == [0]
    assert mlock.charged(env.h.kernel, env.h.proc)[0] == 0


def test_dma_through_the_mock_device_reaches_user_memory() -> None:
    env = Env()
    ioas = env.ioas()
    va = env.buf(2 * PAGE)
    env.map(ioas, va, 2 * PAGE, START)
    stdev, _, _ = env.mock_domain(ioas)
    sobj = env.ictx.objects[stdev]
    dev = sobj.mdev  # type: ignore[union-attr]
    assert dev is not None
    out = dev.iommu.dma(dev.name, START + PAGE + 8, 5, True, b"hello", expect_ok=True)
    assert out == b""
    assert env.h.peek(va + PAGE + 8, 5) == b"hello"
    assert dev.iommu.dma(dev.name, START, 4, False) == b"\x11" * 4
    # outside the IOAS mapping: a fault, nothing written
    assert dev.iommu.dma(dev.name, START + 2 * PAGE, 4, True, b"nope") is None
    env.destroy(stdev)
    assert dev.iommu.dma(dev.name, START, 4, False) is None  # detached: blocked


def test_replace_through_mock_ops_and_hwpt_alloc_errors() -> None:
    env = Env()
    ioas = env.ioas()
    stdev, h1, idev = env.mock_domain(ioas)
    c = I.iommu_hwpt_alloc(size=ctypes.sizeof(I.iommu_hwpt_alloc), dev_id=idev, pt_id=ioas,
                           flags=I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    env.ioctl(I.IOMMU_HWPT_ALLOC, c)
    parent = c.out_hwpt_id
    c.flags = 1 << 30
    assert _errno(env.ioctl, I.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    c.flags, c.pt_id = 0, h1  # an auto domain is no nest parent
    assert _errno(env.ioctl, I.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP  # no user data
    r = env.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, "mock_domain_replace",
                     pt_id=parent)
    assert r.mock_domain_replace.pt_id == parent
    assert h1 not in env.ictx.objects
    assert _errno(env.destroy, parent) == errno.EBUSY
    r = env.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, "mock_domain_replace",
                     pt_id=ioas)
    env.destroy(parent)
    assert env.ictx.objects[r.mock_domain_replace.pt_id].type == "HWPT_PAGING"


def test_get_hw_info_and_add_reserved() -> None:
    env = Env()
    ioas = env.ioas()
    _, _, idev = env.mock_domain(ioas)
    arr = env.buf(PAGE)
    c = I.iommu_hw_info(size=ctypes.sizeof(I.iommu_hw_info), dev_id=idev, data_len=16,
                        data_uptr=arr)
    env.ioctl(I.IOMMU_GET_HW_INFO, c)
    info = I.iommu_test_hw_info.from_buffer_copy(env.h.peek(arr, 8))
    assert info.test_reg == I.IOMMU_HW_INFO_SELFTEST_REGVAL
    assert env.h.peek(arr + 8, 8) == bytes(8)  # trailing bytes zeroed
    assert c.data_len == 8 and c.out_data_type == I.IOMMU_HW_INFO_TYPE_SELFTEST
    assert c.out_capabilities & I.IOMMU_HW_CAP_DIRTY_TRACKING
    assert c.out_max_pasid_log2 == 0
    c.flags = 2
    assert _errno(env.ioctl, I.IOMMU_GET_HW_INFO, c) == errno.EOPNOTSUPP
    ioas2 = env.ioas()
    env.test_cmd(I.IOMMU_TEST_OP_ADD_RESERVED, ioas2, "add_reserved", start=PAGE,
                 length=PAGE)
    assert env.alignment(ioas2)[1] == [(0, PAGE - 1), (2 * PAGE, (1 << 64) - 1)]


def test_close_with_devices_attached_leaves_nothing() -> None:
    env = Env()
    ioas = env.ioas()
    va = env.buf(2 * PAGE)
    env.map(ioas, va, 2 * PAGE, START)
    _, h1, idev = env.mock_domain(ioas)
    env.mock_domain(h1)
    env.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas, "mock_domain_flags",
                 dev_flags=I.MOCK_FLAGS_DEVICE_PASID)
    assert env.pins(va, 2 * PAGE) == [1]
    env.h.close(env.fd)
    assert env.pins(va, 2 * PAGE) == [0]
    env.h.exit()
    assert env.h.leaks() == []


# ----- pinned-page accounting of file (memfd) pages and IOAS_CHANGE_PROCESS ---------------------
# Model tests: the accounting is only visible to a process without CAP_IPC_LOCK (a
# CAP_IPC_LOCK one's pages are ACCOUNT_NONE), and the real-kernel lanes run as root, so a
# LinuxHost half is not possible; the behaviour is read from 7.3's pages.c iopt_alloc_pages,
# io_pagetable.c iopt_map_common and ioas.c iommufd_ioas_change_process.
MEMLOCK_PAGES = 8


def _unprivileged(h: SimHost, uid: int, memlock_pages: int = MEMLOCK_PAGES) -> None:
    """Drop CAP_IPC_LOCK, set the uid and RLIMIT_MEMLOCK (before the process maps)."""
    h.proc.caps = h.proc.caps - {"CAP_IPC_LOCK"}
    h.proc.uid = uid
    h.proc.rlimit_memlock = memlock_pages * PAGE


def _map_memfd(env: Env, ioas: int, npages: int, iova: int) -> None:
    mfd = env.h.memfd_create("pinned", 0)
    env.h.ftruncate(mfd, npages * PAGE)
    c = I.iommu_ioas_map_file(size=ctypes.sizeof(I.iommu_ioas_map_file), ioas_id=ioas,
                              fd=mfd, start=0, length=npages * PAGE, iova=iova,
                              flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA)
    try:
        env.ioctl(I.IOMMU_IOAS_MAP_FILE, c)
    finally:
        env.h.close(mfd)


def _rlimit_mode_mm(env: Env) -> None:
    env.ioctl(I.IOMMU_OPTION, I.iommu_option(size=ctypes.sizeof(I.iommu_option),
                                             option_id=I.IOMMU_OPTION_RLIMIT_MODE,
                                             op=I.IOMMU_OPTION_OP_SET, val64=1))


def _unprivileged_env(mode: str) -> tuple[Env, int]:
    """An Env whose process has no CAP_IPC_LOCK (uid 1000), charging its user ("user") or
    its mm ("mm", IOMMU_OPTION_RLIMIT_MODE 1), and one IOAS."""
    env = Env()
    _unprivileged(env.h, 1000)
    if mode == "mm":
        _rlimit_mode_mm(env)
    return env, env.ioas()


def _charged(h: SimHost, mode: str) -> int:
    """Pages charged to ``h``'s user (ACCOUNT_USER) or mm (ACCOUNT_MM)."""
    user, mm = mlock.charged(h.kernel, h.proc)
    return user if mode == "user" else mm


def _pinned_pages(h: SimHost) -> int:
    return h.kernel.live.get("iopt_pinned_bytes", 0) // PAGE


def _change_process(h: SimHost, fd: int) -> None:
    h.ioctl(fd, I.IOMMU_IOAS_CHANGE_PROCESS, I.iommu_ioas_change_process(
        size=ctypes.sizeof(I.iommu_ioas_change_process)))


@pytest.mark.parametrize("mode", ["user", "mm"])
def test_memfd_pins_are_charged_and_limited_by_rlimit_memlock(mode: str) -> None:
    """IOAS_MAP_FILE of a memfd is charged like IOAS_MAP of user memory (iopt_alloc_pages is
    common to both): at the domain attach that pins it, to the user's locked_vm (or the mm's
    with IOMMU_OPTION_RLIMIT_MODE 1); past RLIMIT_MEMLOCK ENOMEM, nothing charged or
    pinned."""
    env, ioas = _unprivileged_env(mode)
    _map_memfd(env, ioas, 4, START)
    assert _charged(env.h, mode) == 0 and _pinned_pages(env.h) == 0  # lazy: no domain
    s1, _, _ = env.mock_domain(ioas)
    assert _charged(env.h, mode) == 4 and _pinned_pages(env.h) == 4
    assert mlock.charged(env.h.kernel, env.h.proc)[mode == "user"] == 0  # not the other
    # 4 + 5 > 8: the map fills the new area into the domain, and fails.
    assert _errno(_map_memfd, env, ioas, 5, START + 0x100000) == errno.ENOMEM
    assert _charged(env.h, mode) == 4 and _pinned_pages(env.h) == 4
    env.destroy(s1)
    assert _charged(env.h, mode) == 0 and _pinned_pages(env.h) == 0
    # A 9-page map is fine without a domain; the attach that pins it is ENOMEM.
    ioas2 = env.ioas()
    _map_memfd(env, ioas2, MEMLOCK_PAGES + 1, START)
    assert _errno(env.mock_domain, ioas2) == errno.ENOMEM
    assert _charged(env.h, mode) == 0 and _pinned_pages(env.h) == 0
    env.h.exit()
    assert env.h.leaks() == []


def test_memfd_pins_of_a_cap_ipc_lock_process_are_not_charged() -> None:
    """iopt_alloc_pages: a process with CAP_IPC_LOCK makes ACCOUNT_NONE pages — no ledger,
    no limit (even in RLIMIT_MODE mm: only ACCOUNT_USER is turned into ACCOUNT_MM)."""
    env = Env()
    env.h.proc.rlimit_memlock = MEMLOCK_PAGES * PAGE
    _rlimit_mode_mm(env)
    ioas = env.ioas()
    _map_memfd(env, ioas, 2 * MEMLOCK_PAGES, START)
    env.mock_domain(ioas)
    assert _pinned_pages(env.h) == 2 * MEMLOCK_PAGES
    assert dict(mlock.locked_vm(env.h.kernel)) == {}
    env.h.exit()
    assert env.h.leaks() == []


@pytest.mark.parametrize("mode", ["user", "mm"])
def test_change_process_moves_the_charge(mode: str) -> None:
    """IOAS_CHANGE_PROCESS from another process (the iommufd passed to it): the new process
    is charged, the old one uncharged, and later unpins uncharge the new one."""
    env, ioas = _unprivileged_env(mode)
    _map_memfd(env, ioas, 4, START)
    env.mock_domain(ioas)
    # IOAS_COPY shares the pages object: its pins are counted and moved once.
    ioas2 = env.ioas()
    env.ioctl(I.IOMMU_IOAS_COPY, I.iommu_ioas_copy(
        size=ctypes.sizeof(I.iommu_ioas_copy), dst_ioas_id=ioas2, src_ioas_id=ioas,
        length=4 * PAGE, src_iova=START, dst_iova=START,
        flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA))
    assert _charged(env.h, mode) == 4
    new = env.h.process("new")
    _unprivileged(new, 1001)
    nfd = new.proc.fd_install(env.h.proc.fget(env.fd))
    _change_process(new, nfd)
    assert _charged(env.h, mode) == 0 and _charged(new, mode) == 4
    assert _pinned_pages(env.h) == 4  # the pins stay
    _map_memfd(env, ioas, 1, START + 0x100000)  # a later map is the mapper's again
    assert _charged(env.h, mode) == 1 and _charged(new, mode) == 4
    env.h.exit()  # the old process goes; the iommufd lives on in the new one
    assert _charged(new, mode) == 4
    new.exit()  # the last unpin uncharges the new process
    assert env.h.leaks() == []


@pytest.mark.parametrize("mode", ["user", "mm"])
def test_change_process_enomem_leaves_both_as_they_were(mode: str) -> None:
    """charge_current charges the new process before the old one is uncharged: past the new
    one's RLIMIT_MEMLOCK it is ENOMEM and nothing moves. With ACCOUNT_USER and the same uid,
    the user's locked_vm holds both charges for a moment: 4 + 4 pages against a 6-page limit
    fail although only 4 would stay."""
    env, ioas = _unprivileged_env(mode)
    _map_memfd(env, ioas, 4, START)
    env.mock_domain(ioas)
    small = env.h.process("small")
    _unprivileged(small, 1001, memlock_pages=3)
    sfd = small.proc.fd_install(env.h.proc.fget(env.fd))
    assert _errno(_change_process, small, sfd) == errno.ENOMEM
    assert _charged(env.h, mode) == 4 and _charged(small, mode) == 0
    sibling = env.h.process("sibling")  # same uid, its own mm
    _unprivileged(sibling, 1000, memlock_pages=6)
    bfd = sibling.proc.fd_install(env.h.proc.fget(env.fd))
    if mode == "user":
        assert _errno(_change_process, sibling, bfd) == errno.ENOMEM
        assert _charged(env.h, mode) == 4
    else:  # separate mms: 4 <= 6
        _change_process(sibling, bfd)
        assert _charged(env.h, mode) == 0 and _charged(sibling, mode) == 4
    for h in (env.h, small, sibling):
        h.exit()
    assert env.h.leaks() == []


def test_change_process_of_a_user_va_map_is_einval_and_moves_nothing() -> None:
    env = Env()
    _unprivileged(env.h, 1000)
    ioas = env.ioas()
    _map_memfd(env, ioas, 2, START)
    va = env.buf(2 * PAGE)
    env.map(ioas, va, 2 * PAGE, START + 0x100000)
    env.mock_domain(ioas)
    new = env.h.process("new")
    _unprivileged(new, 1001)
    nfd = new.proc.fd_install(env.h.proc.fget(env.fd))
    assert _errno(_change_process, new, nfd) == errno.EINVAL
    assert _charged(env.h, "user") == 4 and _charged(new, "user") == 0
    env.h.exit()
    new.exit()
    assert env.h.leaks() == []
