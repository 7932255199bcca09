"""The selftest's ``iommufd_viommu`` fixture (tools/testing/selftests/iommu/iommufd.c;
KERNEL.md §3): VIOMMU_ALLOC on a nest-parent HWPT, nested HWPTs on a vIOMMU, VDEVICE_ALLOC
(EEXIST for a second vDEVICE), vEVENTQ (depth bounds, read sizes, overflow), vIOMMU cache
invalidation with partial progress, the vIOMMU's mmap region, HW_QUEUE_ALLOC (index order,
the IOVA it locks against UNMAP), and the vDEVICE tombstone after its device goes. Variants
no_viommu / mock_viommu. Needs CONFIG_IOMMUFD_TEST."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

from ._iommufd import NODE, RW, U64_MAX, mock_fixture_setup, raises
from ._probe import PAGE

pytestmark = pytest.mark.node(NODE)

VINV = I.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
VCACHE = I.IOMMU_TEST_DEV_CACHE_DEFAULT
HDR = ctypes.sizeof(I.iommufd_vevent_header)
EVT = ctypes.sizeof(I.iommu_viommu_event_selftest)


class Viommu:
    def __init__(self, host, viommu: bool):
        self.host = host
        self.ctx = ctx = mock_fixture_setup(host)
        self.ioas_id = ctx.ioas_alloc()
        self.stdev_id = self.hwpt_id = self.device_id = self.viommu_id = 0
        self.nested_hwpt_id = 0
        if viommu:
            self.stdev_id, _, self.device_id = ctx.mock_domain(self.ioas_id)
            self.hwpt_id = ctx.hwpt_alloc(self.device_id, self.ioas_id,
                                          I.IOMMU_HWPT_ALLOC_NEST_PARENT)
            self.viommu_id = ctx.viommu_alloc(self.device_id, self.hwpt_id)
            self.nested_hwpt_id = ctx.hwpt_alloc_nested(self.device_id, self.viommu_id)

    def need_viommu(self):
        if not self.device_id:
            pytest.skip("the selftest skips this case for variant no_viommu")


@pytest.fixture(params=[False, True], ids=["no_viommu", "mock_viommu"])
def v(request, host):
    st = Viommu(host, request.param)
    yield st
    st.ctx.teardown()


def test_viommu_auto_destroy(v):
    pass


def test_viommu_negative_tests(v):
    ctx, dev = v.ctx, v.device_id
    if not dev:
        raises(errno.ENOENT, ctx.viommu_alloc, dev, v.hwpt_id)
        return
    raises(errno.ENOENT, ctx.viommu_alloc, dev, 0)  # no such HWPT
    hwpt = ctx.hwpt_alloc(dev, v.ioas_id, 0)
    raises(errno.EINVAL, ctx.viommu_alloc, dev, hwpt)  # not a nesting parent
    ctx.destroy(hwpt)
    raises(errno.EOPNOTSUPP, ctx.viommu_alloc, dev, v.hwpt_id, 0xDEAD)  # unsupported type
    raises(errno.EBUSY, ctx.destroy, v.hwpt_id)
    raises(errno.EBUSY, ctx.destroy, v.viommu_id)


def test_viommu_alloc_flags_and_default_type(v):
    """KERNEL.md §3: unknown flags or type DEFAULT EOPNOTSUPP."""
    v.need_viommu()
    raises(errno.EOPNOTSUPP, v.ctx.viommu_alloc, v.device_id, v.hwpt_id, flags=1)
    raises(errno.EOPNOTSUPP, v.ctx.viommu_alloc, v.device_id, v.hwpt_id,
           I.IOMMU_VIOMMU_TYPE_DEFAULT)


def test_viommu_alloc_nested_iopf(v):
    v.need_viommu()
    ctx, dev = v.ctx, v.device_id
    fault_id, fault_fd = ctx.fault_alloc()
    raises(errno.ENOENT, ctx.hwpt_alloc_nested, dev, v.viommu_id, I.IOMMU_HWPT_FAULT_ID_VALID,
           fault_id=0xFFFFFFFF)
    raises(errno.EOPNOTSUPP, ctx.hwpt_alloc_nested, dev, v.viommu_id,
           I.IOMMU_HWPT_FAULT_ID_VALID | 1 << 31, fault_id=fault_id)
    iopf = ctx.hwpt_alloc_nested(dev, v.viommu_id, I.IOMMU_HWPT_FAULT_ID_VALID,
                                 fault_id=fault_id)
    # a vDEVICE must exist before attaching to a nested HWPT on the vIOMMU
    raises(errno.ENOENT, ctx.mock_domain_replace, v.stdev_id, iopf)
    ctx.vdevice_alloc(v.viommu_id, dev, 0x99)
    ctx.mock_domain_replace(v.stdev_id, iopf)
    raises(errno.EBUSY, ctx.destroy, iopf)
    ctx.trigger_iopf(dev, 0x1, fault_fd)
    ctx.mock_domain_replace(v.stdev_id, v.ioas_id)
    ctx.destroy(iopf)
    v.host.close(fault_fd)
    ctx.destroy(fault_id)


def test_viommu_alloc_with_data(v):
    v.need_viommu()
    ctx, host = v.ctx, v.host
    data = I.iommu_viommu_selftest(in_data=0xBEEF)
    viommu = ctx.viommu_alloc(v.device_id, v.hwpt_id, data=data)
    assert data.out_data == data.in_data  # loopback
    off, length = data.out_mmap_offset, data.out_mmap_length
    for bad_len, bad_off in ((length, off + PAGE), (length, off + 2 * PAGE),
                             (length // 2, off), (length * 2, off)):
        raises(errno.ENXIO, host.mmap, 0, bad_len, RW, L.MAP_SHARED, ctx.fd, bad_off)
    addr = host.mmap(0, length, RW, L.MAP_SHARED, ctx.fd, off)
    assert int.from_bytes(host.peek(addr, 4), "little") == data.in_data
    raises(errno.EBUSY, ctx.destroy, viommu)  # the mmap owner is blocked
    host.munmap(addr, length)


def _read_vevents(v, fd, n, virt_id, prev_seq):
    """The selftest's _test_cmd_read_vevents: n events; EOVERFLOW on a lost-events flag or a
    sequence gap (raised as OSError like the C helper's errno)."""
    raw = v.host.read(fd, n * (HDR + EVT))
    assert len(raw) > 0
    for i in range(n):
        rec = raw[i * (HDR + EVT):(i + 1) * (HDR + EVT)]
        hdr = I.iommufd_vevent_header.from_buffer_copy(rec[:HDR])
        if hdr.flags & I.IOMMU_VEVENTQ_FLAG_LOST_EVENTS or hdr.sequence - prev_seq[0] > 1:
            prev_seq[0] = hdr.sequence
            raise OSError(errno.EOVERFLOW, "lost events")
        prev_seq[0] = hdr.sequence
        evt = I.iommu_viommu_event_selftest.from_buffer_copy(rec[HDR:])
        assert evt.virt_id == virt_id


def test_vdevice_alloc(v):
    ctx, dev, viommu = v.ctx, v.device_id, v.viommu_id
    if not dev:
        raises(errno.ENOENT, ctx.vdevice_alloc, viommu, dev, 0x99)
        return
    raises(errno.ENOENT, ctx.mock_domain_replace, v.stdev_id, v.nested_hwpt_id)
    max_depth = 1 << 19
    raises(errno.EINVAL, ctx.veventq_alloc, viommu, 0)
    raises(errno.EINVAL, ctx.veventq_alloc, viommu, max_depth + 1)
    qid, qfd = ctx.veventq_alloc(viommu, max_depth)
    v.host.close(qfd)
    ctx.destroy(qid)
    qid, qfd = ctx.veventq_alloc(viommu, 2)
    raises(errno.EEXIST, ctx.veventq_alloc, viommu, 2)  # one per type per vIOMMU
    raises(errno.EINVAL, v.host.read, qfd, 0)  # bad read sizes on an empty queue
    raises(errno.EINVAL, v.host.read, qfd, HDR - 1)
    vdev = ctx.vdevice_alloc(viommu, dev, 0x99)
    ctx.mock_domain_replace(v.stdev_id, v.nested_hwpt_id)
    ctx.trigger_vevent(dev)
    raises(errno.EINVAL, v.host.read, qfd, 0)
    raises(errno.EINVAL, v.host.read, qfd, HDR)  # the header fits, the payload does not
    prev = [-1]
    _read_vevents(v, qfd, 1, 0x99, prev)
    raises(errno.EEXIST, ctx.vdevice_alloc, viommu, dev, 0x99)  # the device has one
    ctx.mock_domain_replace(v.stdev_id, v.ioas_id)
    ctx.destroy(vdev)
    vdev = ctx.vdevice_alloc(viommu, dev, 0x88)
    ctx.mock_domain_replace(v.stdev_id, v.nested_hwpt_id)
    for _ in range(3):  # overflow a depth-2 queue
        ctx.trigger_vevent(dev)
    raises(errno.EOVERFLOW, _read_vevents, v, qfd, 3, 0x88, prev)
    ctx.trigger_vevent(dev)  # the overflow is gone after the reads
    _read_vevents(v, qfd, 1, 0x88, prev)
    v.host.close(qfd)
    ctx.mock_domain_replace(v.stdev_id, v.ioas_id)
    ctx.destroy(vdev)
    ctx.destroy(qid)


def _vinv(flags=0, vdev_id=0x99, cache_id=0):
    return I.iommu_viommu_invalidate_selftest(flags=flags, vdev_id=vdev_id, cache_id=cache_id)


E = ctypes.sizeof(I.iommu_viommu_invalidate_selftest)


def test_vdevice_cache(v):
    v.need_viommu()
    ctx, dev, viommu = v.ctx, v.device_id, v.viommu_id
    vdev = ctx.vdevice_alloc(viommu, dev, 0x99)
    ctx.check_dev_cache_all(dev, VCACHE)
    inv = ctx.invalidate
    assert inv(viommu, [_vinv()], VINV, E, 0) == (0, 0)
    assert inv(viommu, [_vinv()], I.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, E, 1) == \
        (errno.EINVAL, 0)
    # The mock copies the whole array with iommu_copy_struct_from_full_user_array, which does
    # not bound entry_len by its struct (unlike the nested HWPT's per-entry copy): a longer
    # entry is E2BIG only when its extra bytes are not zero, a shorter one is zero-extended.
    # The selftest's "structure size sanity" cases (sizeof + 1 and 1) are EINVAL because
    # their entry's vdev_id is 0, which has no vDEVICE.
    tail = ctx.put(bytes(_vinv()) + b"\x01" + bytes(PAGE))
    assert inv(viommu, None, VINV, E + 1, 1, uptr=tail) == (errno.E2BIG, 0)
    assert inv(viommu, [_vinv(vdev_id=0)], VINV, E + 1, 1) == (errno.EINVAL, 0)
    assert inv(viommu, [_vinv()], VINV, 1, 1) == (errno.EINVAL, 0)  # vdev_id zero-extended
    assert inv(viommu, [_vinv(0xFFFFFFFF)], VINV, E, 1) == (errno.EOPNOTSUPP, 0)
    assert inv(viommu, None, VINV, E, 1) == (errno.EINVAL, 0)
    assert inv(viommu, [_vinv()], VINV, 0, 1) == (errno.EINVAL, 0)
    bad = I.MOCK_DEV_CACHE_ID_MAX + 1
    assert inv(viommu, [_vinv(cache_id=bad)], VINV, E, 1) == (errno.EINVAL, 0)
    assert inv(viommu, [_vinv(vdev_id=0x9)], VINV, E, 1) == (errno.EINVAL, 0)
    ctx.check_dev_cache_all(dev, VCACHE)  # all of the above changed nothing
    for second, want in ((_vinv(0xFFFFFFFF, cache_id=1), errno.EOPNOTSUPP),
                         (_vinv(cache_id=bad), errno.EINVAL)):
        assert inv(viommu, [_vinv(cache_id=0), second], VINV, E, 2) == (want, 1)
        ctx.check_dev_cache(dev, 0, 0)
        for c in (1, 2, 3):
            ctx.check_dev_cache(dev, c, VCACHE)
    assert inv(viommu, [_vinv(cache_id=1)], VINV, E, 1) == (0, 1)
    ctx.check_dev_cache(dev, 1, 0)
    ctx.check_dev_cache(dev, 2, VCACHE)
    longer = ctx.put(bytes(_vinv(cache_id=2)) + bytes(PAGE))  # zero extra byte: accepted
    assert inv(viommu, None, VINV, E + 1, 1, uptr=longer) == (0, 1)
    ctx.check_dev_cache(dev, 2, 0)
    ctx.check_dev_cache(dev, 3, VCACHE)
    assert inv(viommu, [_vinv(cache_id=2), _vinv(cache_id=3)], VINV, E, 2) == (0, 2)
    ctx.check_dev_cache_all(dev, 0)
    assert inv(viommu, [_vinv(I.IOMMU_TEST_INVALIDATE_FLAG_ALL)], VINV, E, 1) == (0, 1)
    ctx.check_dev_cache_all(dev, 0)
    ctx.destroy(vdev)


def test_hw_queue(v):
    v.need_viommu()
    ctx, viommu, Q = v.ctx, v.viommu_id, I.IOMMU_HW_QUEUE_TYPE_SELFTEST
    iova = I.MOCK_APERTURE_START
    raises(errno.EOPNOTSUPP, ctx.hw_queue_alloc, viommu, I.IOMMU_HW_QUEUE_TYPE_DEFAULT, 0,
           iova, PAGE)
    raises(errno.EINVAL, ctx.hw_queue_alloc, viommu, Q, 0, iova, 0)
    raises(errno.EOVERFLOW, ctx.hw_queue_alloc, viommu, Q, 0, U64_MAX, PAGE)
    raises(errno.ENOENT, ctx.hw_queue_alloc, viommu, Q, 0, iova, PAGE)  # nothing mapped
    iova = ctx.ioas_map(v.ioas_id, ctx.buffer, PAGE)
    iova2 = ctx.ioas_map(v.ioas_id, ctx.buffer + PAGE, PAGE)
    raises(errno.EIO, ctx.hw_queue_alloc, viommu, Q, 1, iova, PAGE)  # must start at index 0
    raises(errno.EINVAL, ctx.hw_queue_alloc, viommu, Q, I.IOMMU_TEST_HW_QUEUE_MAX, iova, PAGE)
    q0 = ctx.hw_queue_alloc(viommu, Q, 0, iova, PAGE)
    raises(errno.EEXIST, ctx.hw_queue_alloc, viommu, Q, 0, iova, PAGE)
    raises(errno.EBUSY, ctx.ioas_unmap, v.ioas_id, iova, PAGE)  # the queue owns the IOVA
    assert ctx.ioas_unmap(v.ioas_id, iova2, PAGE) == PAGE  # the 2nd page is not locked
    q1 = ctx.hw_queue_alloc(viommu, Q, 1, iova + PAGE // 2, PAGE // 2)  # unaligned
    raises(errno.EBUSY, ctx.destroy, q0)  # q1 depends on q0
    ctx.destroy(q1)
    ctx.destroy(q0)
    assert ctx.ioas_unmap(v.ioas_id, iova, PAGE) == PAGE


def test_hw_queue_blocks_unmap_all(v):
    """KERNEL.md §3: an area an in-kernel user locks is EBUSY for IOAS_UNMAP, unmap-all
    included."""
    v.need_viommu()
    ctx = v.ctx
    iova = ctx.ioas_map(v.ioas_id, ctx.buffer, PAGE)
    q = ctx.hw_queue_alloc(v.viommu_id, I.IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE)
    raises(errno.EBUSY, ctx.ioas_unmap, v.ioas_id, 0, U64_MAX)
    ctx.destroy(q)
    assert ctx.ioas_unmap(v.ioas_id, 0, U64_MAX) == PAGE


def test_vdevice_tombstone(v):
    v.need_viommu()
    ctx = v.ctx
    vdev = ctx.vdevice_alloc(v.viommu_id, v.device_id, 0x99)
    ctx.destroy(v.stdev_id)  # the device goes: its vDEVICE is destroyed with it
    raises(errno.ENOENT, ctx.destroy, vdev)
