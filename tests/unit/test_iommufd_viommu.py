"""vIOMMU objects (kernel/iommu/iommufd/viommu.py) and the mock's vIOMMU ops
(selftest_viommu.py) on SimHost: the alloc checks and errnos, the users counts that make
IOMMU_DESTROY EBUSY, vDEVICE uniqueness, vEVENTQ delivery (sequence, lost-events header,
read sizes), vIOMMU cache invalidation with partial progress, the HW queue's lock on its
IOAS area (IOAS_UNMAP EBUSY, unmap-all included) and queue ordering, fd close orders, and
fail_nth over the four alloc ioctls."""

from __future__ import annotations

import ctypes
import errno
import inspect
from typing import Any

import pytest
from iommufd_state import sweep

from passthru import SimHost
from passthru.kernel.iommu.iommufd import device as iommufd_device
from passthru.kernel.iommu.iommufd import driver as iommufd_driver
from passthru.kernel.iommu.iommufd.main import IommufdCtx
from passthru.kernel.iommu.iommufd.viommu import IOMMU_VEVENTQ_MAX_DEPTH, HwQueue, Viommu
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
U64_MAX = (1 << 64) - 1
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
HDR = ctypes.sizeof(I.iommufd_vevent_header)
EVT = ctypes.sizeof(I.iommu_viommu_event_selftest)
VINV = I.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
E = ctypes.sizeof(I.iommu_viommu_invalidate_selftest)
QT = I.IOMMU_HW_QUEUE_TYPE_SELFTEST

#: device.py's iommufd_device_unbind destroys the device's vDEVICE first (the kernel's
#: iommufd_device_pre_destroy). Until it does, a device with a vDEVICE cannot go first.
UNBIND_REMOVES_VDEV = "remove_vdev" in inspect.getsource(iommufd_device.iommufd_device_unbind)
needs_pre_destroy = pytest.mark.skipif(
    not UNBIND_REMOVES_VDEV, reason="device.py: iommufd_device_unbind does not call "
    "viommu.iommufd_device_remove_vdev yet (requested from its owner)")


def sz(struct: Any, **kw: Any) -> Any:
    return struct(size=ctypes.sizeof(struct), **kw)


def raises(err: int, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == err, e.value


class Ctx:
    """An iommufd with an IOAS, a mock device attached to it, a nest-parent HWPT, a vIOMMU
    on it and a nested HWPT on the vIOMMU; a 4-page buffer and a scratch page."""

    def __init__(self, h: SimHost) -> None:
        self.h = h
        self.fd = h.open("/dev/iommu", L.O_RDWR)
        cmd = sz(I.iommu_ioas_alloc)
        self.ioctl(I.IOMMU_IOAS_ALLOC, cmd)
        self.ioas = cmd.out_ioas_id
        self.buf = h.mmap(0, 4 * PAGE, L.PROT_READ | L.PROT_WRITE,
                          L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        h.poke(self.buf, b"\1" * 4 * PAGE)  # populate
        self.scratch = h.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE,
                              L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
        self.stdev, self.dev = self.mock_domain()
        self.hwpt = self.hwpt_alloc(self.dev, self.ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.viommu = self.viommu_alloc()
        self.nested = self.hwpt_alloc(self.dev, self.viommu, 0, I.iommu_hwpt_selftest(
            iotlb=I.IOMMU_TEST_IOTLB_DEFAULT))

    def ioctl(self, req: int, arg: Any) -> int:
        return self.h.ioctl(self.fd, req, arg)

    @property
    def ictx(self) -> IommufdCtx:
        f = self.h.proc.fds[self.fd]
        assert isinstance(f, IommufdCtx)
        return f

    def users(self, oid: int) -> int:
        obj = self.ictx.objects[oid]
        assert obj is not None
        return obj.users.get()

    def test_cmd(self, op: int, oid: int = 0, member: str | None = None, **kw: Any) -> Any:
        cmd = sz(I.iommu_test_cmd, op=op, id=oid)
        if member:
            for k, v in kw.items():
                setattr(getattr(cmd, member), k, v)
        self.ioctl(I.IOMMU_TEST_CMD, cmd)
        return cmd

    def mock_domain(self) -> tuple[int, int]:
        c = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN, self.ioas).mock_domain
        return c.out_stdev_id, c.out_idev_id

    def replace(self, pt_id: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, self.stdev, "mock_domain_replace",
                      pt_id=pt_id)

    def hwpt_alloc(self, dev: int, pt: int, flags: int, data: Any = None) -> int:
        uptr = 0
        if data is not None:
            self.h.poke(self.scratch, bytes(data))
            uptr = self.scratch
        cmd = sz(I.iommu_hwpt_alloc, flags=flags, dev_id=dev, pt_id=pt,
                 data_type=I.IOMMU_HWPT_DATA_SELFTEST if data is not None else 0,
                 data_len=ctypes.sizeof(data) if data is not None else 0, data_uptr=uptr)
        self.ioctl(I.IOMMU_HWPT_ALLOC, cmd)
        return int(cmd.out_hwpt_id)

    def viommu_alloc(self, dev: int | None = None, hwpt: int | None = None,
                     vtype: int = I.IOMMU_VIOMMU_TYPE_SELFTEST, flags: int = 0,
                     data: Any = None) -> int:
        uptr = 0
        if data is not None:
            self.h.poke(self.scratch, bytes(data))
            uptr = self.scratch
        cmd = sz(I.iommu_viommu_alloc, flags=flags, type=vtype,
                 dev_id=self.dev if dev is None else dev,
                 hwpt_id=self.hwpt if hwpt is None else hwpt,
                 data_len=ctypes.sizeof(data) if data is not None else 0, data_uptr=uptr)
        self.ioctl(I.IOMMU_VIOMMU_ALLOC, cmd)
        if data is not None:
            ctypes.memmove(ctypes.addressof(data), self.h.peek(uptr, ctypes.sizeof(data)),
                           ctypes.sizeof(data))
        return int(cmd.out_viommu_id)

    def vdevice_alloc(self, virt_id: int, dev: int | None = None,
                      viommu: int | None = None) -> int:
        cmd = sz(I.iommu_vdevice_alloc, viommu_id=self.viommu if viommu is None else viommu,
                 dev_id=self.dev if dev is None else dev, virt_id=virt_id)
        self.ioctl(I.IOMMU_VDEVICE_ALLOC, cmd)
        return int(cmd.out_vdevice_id)

    def veventq_alloc(self, depth: int, vtype: int = I.IOMMU_VEVENTQ_TYPE_SELFTEST,
                      flags: int = 0) -> tuple[int, int]:
        cmd = sz(I.iommu_veventq_alloc, flags=flags, viommu_id=self.viommu, type=vtype,
                 veventq_depth=depth)
        self.ioctl(I.IOMMU_VEVENTQ_ALLOC, cmd)
        return int(cmd.out_veventq_id), int(cmd.out_veventq_fd)

    def hw_queue_alloc(self, index: int, iova: int, length: int, qtype: int = QT) -> int:
        cmd = sz(I.iommu_hw_queue_alloc, viommu_id=self.viommu, type=qtype, index=index,
                 nesting_parent_iova=iova, length=length)
        self.ioctl(I.IOMMU_HW_QUEUE_ALLOC, cmd)
        return int(cmd.out_hw_queue_id)

    def map(self, va: int, length: int) -> int:
        cmd = sz(I.iommu_ioas_map, flags=RW, ioas_id=self.ioas, user_va=va, length=length)
        self.ioctl(I.IOMMU_IOAS_MAP, cmd)
        return int(cmd.iova)

    def unmap(self, iova: int, length: int) -> int:
        cmd = sz(I.iommu_ioas_unmap, ioas_id=self.ioas, iova=iova, length=length)
        self.ioctl(I.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def destroy(self, oid: int) -> None:
        self.ioctl(I.IOMMU_DESTROY, sz(I.iommu_destroy, id=oid))

    def trigger(self, dev: int | None = None) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_TRIGGER_VEVENT, 0, "trigger_vevent",
                      dev_id=self.dev if dev is None else dev)

    def cache(self, cache_id: int) -> int:
        """The mock device's cache entry (via DEV_CHECK_CACHE's EINVAL on a mismatch)."""
        obj = self.ictx.objects[self.dev]
        return int(obj.dev.cache[cache_id])  # type: ignore[union-attr]

    def invalidate(self, oid: int, reqs: list[Any], data_type: int = VINV,
                   entry_len: int = E) -> tuple[int, int]:
        raw = b"".join(bytes(r) for r in reqs)
        self.h.poke(self.scratch, raw + bytes(64))
        cmd = sz(I.iommu_hwpt_invalidate, hwpt_id=oid, data_uptr=self.scratch,
                 data_type=data_type, entry_len=entry_len, entry_num=len(reqs))
        try:
            self.ioctl(I.IOMMU_HWPT_INVALIDATE, cmd)
        except OSError as e:
            return e.errno or 0, int(cmd.entry_num)
        return 0, int(cmd.entry_num)


@pytest.fixture
def h() -> Any:
    host = SimHost()
    yield host


def test_viommu_alloc_checks_in_order(h: SimHost) -> None:
    c = Ctx(h)
    raises(errno.EOPNOTSUPP, c.viommu_alloc, flags=1)
    raises(errno.EOPNOTSUPP, c.viommu_alloc, vtype=I.IOMMU_VIOMMU_TYPE_DEFAULT)
    raises(errno.EOPNOTSUPP, c.viommu_alloc, dev=999, vtype=I.IOMMU_VIOMMU_TYPE_DEFAULT)
    raises(errno.ENOENT, c.viommu_alloc, dev=999)  # the device before the type
    raises(errno.EOPNOTSUPP, c.viommu_alloc, vtype=0xDEAD)
    raises(errno.EOPNOTSUPP, c.viommu_alloc, vtype=0xDEAD, hwpt=999)  # type before HWPT
    raises(errno.ENOENT, c.viommu_alloc, hwpt=999)
    raises(errno.ENOENT, c.viommu_alloc, hwpt=c.ioas)  # an IOAS is not a HWPT_PAGING
    plain = c.hwpt_alloc(c.dev, c.ioas, 0)
    raises(errno.EINVAL, c.viommu_alloc, hwpt=plain)
    users = c.users(c.hwpt)
    v2 = c.viommu_alloc()
    assert c.users(c.hwpt) == users + 1  # the vIOMMU holds its nest parent
    raises(errno.EBUSY, c.destroy, c.hwpt)
    c.destroy(v2)
    assert c.users(c.hwpt) == users
    c.destroy(plain)
    obj = c.ictx.objects[c.viommu]
    assert isinstance(obj, Viommu) and obj.iommu is obj.hwpt.domain.iommu  # type: ignore


def test_viommu_data_loopback(h: SimHost) -> None:
    c = Ctx(h)
    d1 = I.iommu_viommu_selftest(in_data=0xBEEF)
    c.viommu_alloc(data=d1)
    d2 = I.iommu_viommu_selftest(in_data=0x1234)
    c.viommu_alloc(data=d2)
    assert (d1.out_data, d2.out_data) == (0xBEEF, 0x1234)
    assert d1.out_mmap_length == d2.out_mmap_length == 2 * PAGE
    assert d1.out_mmap_offset % PAGE == 0 and d1.out_mmap_offset >= PAGE
    assert abs(d1.out_mmap_offset - d2.out_mmap_offset) >= 2 * PAGE  # disjoint windows
    short = (ctypes.c_uint32 * 1)(7)  # below offsetofend(out_data)
    raises(errno.EINVAL, c.viommu_alloc, data=short)


def test_vdevice_rules(h: SimHost) -> None:
    c = Ctx(h)
    raises(errno.ENOENT, c.vdevice_alloc, 1, viommu=c.hwpt)  # not a vIOMMU
    raises(errno.ENOENT, c.vdevice_alloc, 1, dev=999)
    vu, du = c.users(c.viommu), c.users(c.dev)
    vdev = c.vdevice_alloc(0x99)
    assert (c.users(c.viommu), c.users(c.dev)) == (vu + 1, du + 1)
    raises(errno.EBUSY, c.destroy, c.viommu)
    raises(errno.EEXIST, c.vdevice_alloc, 0x98)  # the device already has one
    _, dev2 = c.mock_domain()
    raises(errno.EEXIST, c.vdevice_alloc, 0x99, dev=dev2)  # virt_id taken
    assert (c.users(c.viommu), c.users(c.dev)) == (vu + 1, du + 1)  # failures undid all
    vdev2 = c.vdevice_alloc(0x98, dev=dev2)
    c.destroy(vdev)
    assert (c.users(c.viommu), c.users(c.dev)) == (vu + 1, du)
    vdev = c.vdevice_alloc(0x97)  # the device is free again
    c.destroy(vdev)
    c.destroy(vdev2)
    c.destroy(c.nested)
    c.destroy(c.viommu)  # nothing holds it now
    raises(errno.ENOENT, c.destroy, c.viommu)


def test_attach_and_vevent_delivery(h: SimHost) -> None:
    c = Ctx(h)
    raises(errno.EINVAL, c.veventq_alloc, 0)
    raises(errno.EINVAL, c.veventq_alloc, IOMMU_VEVENTQ_MAX_DEPTH + 1)
    raises(errno.EOPNOTSUPP, c.veventq_alloc, 2, vtype=I.IOMMU_VEVENTQ_TYPE_DEFAULT)
    raises(errno.EOPNOTSUPP, c.veventq_alloc, 2, flags=1)
    raises(errno.ENOENT, c.trigger)  # not on a vIOMMU's nested domain
    c.vdevice_alloc(0x99)
    c.replace(c.nested)
    raises(errno.EOPNOTSUPP, c.trigger)  # no vEVENTQ of the selftest type
    qid, qfd = c.veventq_alloc(2)
    raises(errno.EEXIST, c.veventq_alloc, 4)
    raises(errno.EBUSY, c.destroy, c.viommu)
    assert h.read(qfd, 64) == b""  # empty: nothing to read
    c.trigger()
    raises(errno.EINVAL, h.read, qfd, HDR - 1)
    raises(errno.EINVAL, h.read, qfd, HDR)  # the payload does not fit
    raw = h.read(qfd, 4 * (HDR + EVT))
    assert len(raw) == HDR + EVT
    hdr = I.iommufd_vevent_header.from_buffer_copy(raw[:HDR])
    evt = I.iommu_viommu_event_selftest.from_buffer_copy(raw[HDR:])
    assert (hdr.flags, hdr.sequence, evt.virt_id) == (0, 0, 0x99)
    for _ in range(4):  # depth 2: two events, then the lost header (re-sequenced)
        c.trigger()
    raw = h.read(qfd, 10 * (HDR + EVT))
    assert len(raw) == 2 * (HDR + EVT) + HDR
    seqs = [I.iommufd_vevent_header.from_buffer_copy(raw[i:i + HDR])
            for i in (0, HDR + EVT, 2 * (HDR + EVT))]
    assert [(x.flags, x.sequence) for x in seqs] == [
        (0, 1), (0, 2), (I.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 4)]
    c.trigger()
    raw = h.read(qfd, HDR + EVT)
    assert I.iommufd_vevent_header.from_buffer_copy(raw[:HDR]).sequence == 5
    raises(errno.EINVAL, h.write, qfd, b"\0" * 8)  # no write op
    raises(errno.EBUSY, c.destroy, qid)  # the fd holds it
    h.close(qfd)
    c.destroy(qid)
    c.replace(c.ioas)


def test_vdevice_required_for_nested_attach(h: SimHost) -> None:
    if "mock_viommu" not in inspect.getsource(iommufd_driver.MockDriver.attach_dev):
        pytest.skip("driver.py: MockDriver.attach_dev does not check the vDEVICE yet "
                    "(requested from its owner)")
    c = Ctx(h)
    raises(errno.ENOENT, c.replace, c.nested)
    c.vdevice_alloc(0x99)
    c.replace(c.nested)
    c.replace(c.ioas)


def test_viommu_cache_invalidate(h: SimHost) -> None:
    c = Ctx(h)
    default = I.IOMMU_TEST_DEV_CACHE_DEFAULT
    inv = I.iommu_viommu_invalidate_selftest
    c.vdevice_alloc(0x99)
    assert c.invalidate(c.viommu, []) == (0, 0)  # probing the type
    assert c.invalidate(c.viommu, [inv(vdev_id=0x99)], data_type=0x1) == (errno.EINVAL, 0)
    # the full-array copy takes a longer entry_len when the extra bytes are zero
    assert c.invalidate(c.viommu, [inv(vdev_id=0x99, cache_id=3)], entry_len=E + 1) == (0, 1)
    assert c.invalidate(c.viommu, [inv(vdev_id=0x99, cache_id=3), inv(flags=1)],
                        entry_len=E + 1)[0] == errno.E2BIG
    assert c.invalidate(c.viommu, [inv(vdev_id=0x98)]) == (errno.EINVAL, 0)
    assert c.invalidate(c.viommu, [inv(vdev_id=0x99, cache_id=0),
                                   inv(vdev_id=0x99, cache_id=9)]) == (errno.EINVAL, 1)
    assert c.invalidate(c.viommu, [inv(vdev_id=0x99, cache_id=1),
                                   inv(flags=2, vdev_id=0x99)]) == (errno.EOPNOTSUPP, 1)
    assert [c.cache(i) for i in range(4)] == [0, 0, default, 0]
    c.test_cmd(I.IOMMU_TEST_OP_DEV_CHECK_CACHE, c.dev, "check_dev_cache", id=2, cache=default)
    raises(errno.EINVAL, c.test_cmd, I.IOMMU_TEST_OP_DEV_CHECK_CACHE, c.dev,
           "check_dev_cache", id=1, cache=default)
    assert c.invalidate(c.viommu, [inv(flags=I.IOMMU_TEST_INVALIDATE_FLAG_ALL,
                                       vdev_id=0x99)]) == (0, 1)
    assert [c.cache(i) for i in range(4)] == [0] * 4
    assert c.invalidate(c.hwpt, [inv()]) == (errno.EINVAL, 0)  # a paging HWPT
    assert c.invalidate(0xFFFF, [inv()]) == (errno.ENOENT, 0)  # no such object


def test_hw_queue_locks_its_area(h: SimHost) -> None:
    c = Ctx(h)
    raises(errno.EOPNOTSUPP, c.hw_queue_alloc, 0, 0, PAGE, qtype=I.IOMMU_HW_QUEUE_TYPE_DEFAULT)
    raises(errno.EINVAL, c.hw_queue_alloc, 0, 0, 0)
    raises(errno.EOVERFLOW, c.hw_queue_alloc, 0, U64_MAX, 2)
    raises(errno.EOPNOTSUPP, c.hw_queue_alloc, 0, 0, PAGE, qtype=0x1234)
    iova = c.map(c.buf, 2 * PAGE)
    raises(errno.ENOENT, c.hw_queue_alloc, 0, iova + 2 * PAGE, PAGE)  # not mapped
    raises(errno.EIO, c.hw_queue_alloc, 1, iova, PAGE)  # index 0 first
    raises(errno.EINVAL, c.hw_queue_alloc, I.IOMMU_TEST_HW_QUEUE_MAX, iova, PAGE)
    vu = c.users(c.viommu)
    q0 = c.hw_queue_alloc(0, iova, PAGE)
    assert c.users(c.viommu) == vu + 1
    raises(errno.EEXIST, c.hw_queue_alloc, 0, iova, PAGE)
    area = next(a for _, _, a in c.ictx.objects[c.ioas].iopt.areas)  # type: ignore
    assert area.num_locks == 1
    raises(errno.EBUSY, c.unmap, iova, 2 * PAGE)
    raises(errno.EBUSY, c.unmap, 0, U64_MAX)  # unmap-all too
    q1 = c.hw_queue_alloc(1, iova + PAGE + PAGE // 2, PAGE // 2)  # unaligned, 2nd page
    q = c.ictx.objects[q1]
    assert isinstance(q, HwQueue) and q.base_pa % PAGE == PAGE // 2
    raises(errno.EBUSY, c.destroy, q0)  # q1 depends on q0
    raises(errno.EBUSY, c.destroy, c.viommu)
    c.destroy(q1)
    c.destroy(q0)
    assert area.num_locks == 0 and area.num_accesses == 0
    assert c.unmap(0, U64_MAX) == 2 * PAGE
    assert c.users(c.viommu) == vu


def test_hw_queue_unmap_all_blocked_until_destroy(h: SimHost) -> None:
    c = Ctx(h)
    iova = c.map(c.buf, PAGE)
    q = c.hw_queue_alloc(0, iova, PAGE)
    raises(errno.EBUSY, c.unmap, 0, U64_MAX)
    c.destroy(q)
    assert c.unmap(0, U64_MAX) == PAGE


@pytest.mark.parametrize("order", ["iommufd_first", "queue_fd_first"])
def test_close_without_vdevice_leaks_nothing(order: str) -> None:
    h = SimHost()
    c = Ctx(h)
    _, qfd = c.veventq_alloc(4)
    iova = c.map(c.buf, PAGE)
    c.hw_queue_alloc(0, iova, PAGE)
    c.hw_queue_alloc(1, iova, PAGE)
    fds = [c.fd, qfd] if order == "iommufd_first" else [qfd, c.fd]
    for fd in fds:
        h.close(fd)
    h.exit()
    assert h.leaks() == []


@needs_pre_destroy
@pytest.mark.parametrize("order", ["iommufd_first", "queue_fd_first", "exit"])
def test_close_with_vdevice_leaks_nothing(order: str) -> None:
    h = SimHost()
    c = Ctx(h)
    c.vdevice_alloc(0x99)
    c.replace(c.nested)
    _, qfd = c.veventq_alloc(4)
    c.trigger()
    iova = c.map(c.buf, PAGE)
    c.hw_queue_alloc(0, iova, PAGE)
    if order == "iommufd_first":
        h.close(c.fd)
        assert len(h.read(qfd, 64)) == HDR + EVT  # the queue outlives the iommufd fd
        h.close(qfd)
    elif order == "queue_fd_first":
        h.close(qfd)
        h.close(c.fd)
    h.exit()
    assert h.leaks() == []


@needs_pre_destroy
def test_device_going_destroys_its_vdevice(h: SimHost) -> None:
    c = Ctx(h)
    vdev = c.vdevice_alloc(0x99)
    vu = c.users(c.viommu)
    c.destroy(c.stdev)
    raises(errno.ENOENT, c.destroy, vdev)
    assert c.users(c.viommu) == vu - 1


# ----- fail_nth -------------------------------------------------------------------------
def test_fail_nth_viommu_alloc() -> None:
    assert sweep(Ctx, lambda h, c: c.viommu_alloc(data=I.iommu_viommu_selftest(in_data=1))) > 0


def test_fail_nth_vdevice_alloc() -> None:
    def call(h: SimHost, c: Ctx) -> None:
        c.destroy(c.vdevice_alloc(0x99))

    assert sweep(Ctx, call) > 0


def test_fail_nth_veventq_alloc() -> None:
    assert sweep(Ctx, lambda h, c: c.veventq_alloc(4)) > 0


def test_fail_nth_hw_queue_alloc() -> None:
    def setup(h: SimHost) -> Ctx:
        c = Ctx(h)
        c.iova = c.map(c.buf, PAGE)  # type: ignore[attr-defined]
        return c

    assert sweep(setup, lambda h, c: c.hw_queue_alloc(0, c.iova, PAGE)) > 0
