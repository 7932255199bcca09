"""The test mock's vIOMMU (drivers/iommu/iommufd/selftest.c, 7.x: mock_get_viommu_size,
mock_viommu_init/destroy, mock_viommu_alloc_domain_nested, mock_viommu_cache_invalidate,
mock_viommu_get_hw_queue_size, mock_hw_queue_init_phys/destroy, iommufd_test_trigger_vevent).

What it models:
- vIOMMU type IOMMU_VIOMMU_TYPE_SELFTEST only (others: get_viommu_size 0, EOPNOTSUPP). With
  data (struct iommu_viommu_selftest, short EINVAL) the mock loops ``in_data`` back into
  ``out_data`` and reports the mmap window of its two register pages (``out_mmap_offset``:
  the lowest free page-aligned offset from PAGE_SIZE in the context, ``out_mmap_length``:
  2 pages).
- Nested domains on the vIOMMU: flags other than PASID or data type other than
  IOMMU_HWPT_DATA_SELFTEST EOPNOTSUPP; the domain remembers the vIOMMU (``mock_viommu``),
  which the mock's attach uses to require a vDEVICE for the device (ENOENT).
- Cache invalidation (IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST): a zero-length array of that
  type is fine (probing); otherwise the whole array is copied first
  (iommu_copy_struct_from_full_user_array: a wrong type EINVAL; any entry_len is taken,
  zero-extended when short, E2BIG when long with non-zero extra bytes; nothing done on
  failure), then entry by entry: unknown flags EOPNOTSUPP, cache_id above
  MOCK_DEV_CACHE_ID_MAX EINVAL, a vdev_id with no vDEVICE EINVAL; an entry clears one cache
  entry of the device (all with IOMMU_TEST_INVALIDATE_FLAG_ALL); ``entry_num`` is written
  back with the entries done.
- HW queues of type IOMMU_HW_QUEUE_TYPE_SELFTEST: index >= IOMMU_TEST_HW_QUEUE_MAX EINVAL,
  a used index EEXIST, index i > 0 needs queue i - 1 (EIO) and depends on it (queue i - 1's
  IOMMU_DESTROY is EBUSY until queue i goes); the physical address the core computed must be
  what the nest parent translates the queue's IOVA to (EFAULT: a core bug).
- IOMMU_TEST_OP_TRIGGER_VEVENT: the device must be attached (RID) to a nested domain of a
  vIOMMU and have a vDEVICE with a non-zero virt_id there (ENOENT); an
  iommu_viommu_event_selftest {virt_id} goes to the vIOMMU's vEVENTQ of type
  IOMMU_VEVENTQ_TYPE_SELFTEST (none: EOPNOTSUPP).

Invariants: ``hw_queue[i]`` is the live queue of index i or None; a queue i > 0 holds a users
reference on queue i - 1. Units: bytes. Locking: ``hw_queue`` under ``queue_mutex``; the
device's vIOMMU is read under the device's lock (the mock's viommu_rwsem).
Leaves out: the
mock_iommu users/completion (module unload), the mdev->viommu/vdev_id copy taken at
attach time (TRIGGER_VEVENT looks the vDEVICE up when it runs: a vDEVICE destroyed while the
device stays attached makes it ENOENT, where the kernel still reports the stale virt_id).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from ....errors import kerr
from ....hw.iommu import IommuDomain
from ....hw.physmem import Owner
from ....sim.locks import Mutex
from ....sim.track import TrackedList
from ....uapi import iommufd as I
from ...fs.uaccess import UserArg
from ...mm.mm import PAGE
from .device import get_device
from .driver import (
    IOMMU_NO_PASID,
    MOCK_DRIVER,
    Device,
    MockNestedDomain,
    UserData,
    UserDataArray,
    offsetofend,
)
from .hw_pagetable import HwptNested
from .main import Ucmd, iommufd_alloc_mmap, iommufd_destroy_mmap
from .selftest import test_op
from .viommu import (
    HwQueue,
    Viommu,
    ViommuDriver,
    ViommuOps,
    hw_queue_depend,
    hw_queue_undepend,
    register_viommu_driver,
)


class MockViommuNestedDomain(MockNestedDomain):
    """struct mock_iommu_domain_nested made through a vIOMMU (``mock_viommu`` set)."""

    mock_viommu: Viommu


@dataclass
class MockViommuData:
    """struct mock_viommu's own fields."""

    queue_mutex: Mutex
    hw_queue: list[HwQueue | None]
    mmap_offset: int = 0
    page_value: int = 0  # the first u32 of the register pages (in_data)
    pages: tuple[int, int] | None = None  # the two register pages, physical
    extra: dict[str, Any] = field(default_factory=dict)


def _mock(viommu: Viommu) -> MockViommuData:
    data = viommu.priv
    assert isinstance(data, MockViommuData)
    return data


class MockViommuOps(ViommuOps):
    """mock_viommu_ops."""

    def destroy(self, viommu: Viommu) -> None:
        """mock_viommu_destroy: the mmap window and pages go."""
        m = _mock(viommu)
        if m.mmap_offset:
            iommufd_destroy_mmap(viommu.ictx, m.mmap_offset)
            m.mmap_offset = 0
        if m.pages is not None:
            viommu.kernel.phys.release(*m.pages)
            m.pages = None

    def alloc_domain_nested(self, viommu: Viommu, flags: int,
                            user_data: UserData) -> IommuDomain:
        """mock_viommu_alloc_domain_nested."""
        if flags & ~I.IOMMU_HWPT_ALLOC_PASID:
            raise kerr(errno.EOPNOTSUPP, f"mock_viommu_alloc_domain_nested: flags {flags:#x}")
        if user_data.type != I.IOMMU_HWPT_DATA_SELFTEST:
            raise kerr(errno.EOPNOTSUPP, f"__mock_domain_alloc_nested: data type "
                       f"{user_data.type:#x}")
        cfg = user_data.copy(I.iommu_hwpt_selftest, I.IOMMU_HWPT_DATA_SELFTEST, "iotlb")
        if viommu.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "__mock_domain_alloc_nested: kzalloc (injected)")
        parent = viommu.hwpt.domain
        assert parent is not None
        dom = MockViommuNestedDomain(viommu.iommu, "nested", parent=parent)
        dom.mock_iotlb = TrackedList([cfg.iotlb] * I.MOCK_NESTED_DOMAIN_IOTLB_NUM,
                                     label=f"{dom.name}.mock_iotlb", atomic=True)
        dom.mock_viommu = viommu
        return dom

    def cache_invalidate(self, viommu: Viommu, array: UserDataArray) -> None:
        """mock_viommu_cache_invalidate."""
        if array.entry_num == 0 and array.type == I.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST:
            return
        done = 0
        try:
            if viommu.kernel.sched.fault("kzalloc"):
                raise kerr(errno.ENOMEM, "mock_viommu_cache_invalidate: kzalloc (injected)")
            cmds = array.copy_full(I.iommu_viommu_invalidate_selftest,
                                   I.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST)
            for i, cur in enumerate(cmds):
                if cur.flags & ~I.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise kerr(errno.EOPNOTSUPP, f"mock vIOMMU invalidate: entry {i} flags "
                               f"{cur.flags:#x}")
                if cur.cache_id > I.MOCK_DEV_CACHE_ID_MAX:
                    raise kerr(errno.EINVAL, f"mock vIOMMU invalidate: entry {i} cache_id "
                               f"{cur.cache_id}")
                dev = viommu.find_dev(cur.vdev_id)
                if dev is None:
                    raise kerr(errno.EINVAL, f"mock vIOMMU invalidate: entry {i} vdev_id "
                               f"{cur.vdev_id:#x} has no vDEVICE in {viommu!r}")
                if cur.flags & I.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    for j in range(I.MOCK_DEV_CACHE_NUM):
                        dev.cache[j] = 0
                else:
                    dev.cache[cur.cache_id] = 0
                done += 1
        finally:
            array.entry_num = done

    def get_hw_queue_size(self, viommu: Viommu, qtype: int) -> int:
        return 1 if qtype == I.IOMMU_HW_QUEUE_TYPE_SELFTEST else 0

    def hw_queue_init_phys(self, q: HwQueue, index: int, base_pa: int) -> None:
        """mock_hw_queue_init_phys."""
        viommu = q.viommu
        assert viommu is not None
        m = _mock(viommu)
        if index >= I.IOMMU_TEST_HW_QUEUE_MAX:
            raise kerr(errno.EINVAL, f"mock HW queue: index {index} >= "
                       f"{I.IOMMU_TEST_HW_QUEUE_MAX}")
        with m.queue_mutex:
            if m.hw_queue[index] is not None:
                raise kerr(errno.EEXIST, f"mock HW queue: index {index} is in use")
            prev = None
            if index:
                prev = m.hw_queue[index - 1]
                if prev is None:
                    raise kerr(errno.EIO, f"mock HW queue: index {index} needs queue "
                               f"{index - 1} first")
            parent = viommu.hwpt.domain
            assert parent is not None
            if base_pa != parent.iova_to_phys(q.base_addr):
                raise kerr(errno.EFAULT, f"mock HW queue: the core's physical address "
                           f"{base_pa:#x} is not what {parent.name} maps {q.base_addr:#x} to")
            if prev is not None:
                hw_queue_depend(q, prev)
            q.priv = prev
            m.hw_queue[index] = q
            q.driver_destroy = self._hw_queue_destroy

    @staticmethod
    def _hw_queue_destroy(q: HwQueue) -> None:
        """mock_hw_queue_destroy."""
        viommu = q.viommu
        assert viommu is not None
        m = _mock(viommu)
        with m.queue_mutex:
            m.hw_queue[q.index] = None
            if q.priv is not None:
                hw_queue_undepend(q, q.priv)
                q.priv = None


MOCK_VIOMMU_OPS = MockViommuOps()


class MockViommuDriver(ViommuDriver):
    """mock_ops.get_viommu_size / viommu_init."""

    def get_viommu_size(self, dev: Device, vtype: int) -> int:
        return 1 if vtype == I.IOMMU_VIOMMU_TYPE_SELFTEST else 0

    def viommu_init(self, viommu: Viommu, parent: IommuDomain,
                    user_data: UserData | None) -> None:
        """mock_viommu_init."""
        ictx = viommu.ictx
        m = MockViommuData(Mutex(ictx.kernel.sched, f"{ictx.label}.mock_viommu.queue_mutex",
                                 "mock_viommu->queue_mutex"),
                           TrackedList([None] * I.IOMMU_TEST_HW_QUEUE_MAX,
                                       label=f"{ictx.label}.mock_viommu.hw_queue"))
        if user_data is not None:
            data = user_data.copy(I.iommu_viommu_selftest, I.IOMMU_VIOMMU_TYPE_SELFTEST,
                                  "out_data")
            if ictx.kernel.sched.fault("alloc_pages"):
                raise kerr(errno.ENOMEM, "mock_viommu_init: __get_free_pages (injected)")
            kernel = ictx.kernel
            (start, end), = kernel.phys.alloc(2 * PAGE, Owner(f"{ictx.label}.mock_viommu"))
            try:
                # The register pages: the first u32 holds in_data (the selftest reads it back
                # through the mmap).
                kernel.phys.write(start, int(data.in_data).to_bytes(4, "little"), "kernel")
                off = iommufd_alloc_mmap(ictx, viommu, start, 2 * PAGE)
                try:
                    data.out_data = data.in_data
                    data.out_mmap_length = 2 * PAGE
                    data.out_mmap_offset = off
                    n = min(user_data.len,
                            offsetofend(I.iommu_viommu_selftest, "out_mmap_length"))
                    UserArg(user_data.proc, user_data.uptr).write(bytes(data)[:n])  # EFAULT
                except OSError:
                    iommufd_destroy_mmap(ictx, off)
                    raise
            except OSError:
                kernel.phys.release(start, end)
                raise
            m.mmap_offset = off
            m.page_value = data.in_data
            m.pages = (start, end)
        viommu.priv = m
        viommu.ops = MOCK_VIOMMU_OPS


register_viommu_driver(MOCK_DRIVER, MockViommuDriver())


@test_op(I.IOMMU_TEST_OP_TRIGGER_VEVENT)
def test_trigger_vevent(ucmd: Ucmd) -> int:
    """iommufd_test_trigger_vevent."""
    c = ucmd.cmd.trigger_vevent
    idev = get_device(ucmd, c.dev_id, "TRIGGER_VEVENT")
    try:
        with idev.lock:
            hwpt = idev.attached.get(IOMMU_NO_PASID)
            dom = hwpt.domain if isinstance(hwpt, HwptNested) else None
            viommu = dom.mock_viommu if isinstance(dom, MockViommuNestedDomain) else None
            virt_id = 0
            if viommu is not None:
                try:
                    virt_id = viommu.get_vdev_id(idev.dev)
                except OSError:
                    virt_id = 0
            if viommu is None or not virt_id:
                raise kerr(errno.ENOENT, f"TRIGGER_VEVENT: {idev.dev.name} is not attached "
                           "to a vIOMMU's nested domain with a vDEVICE")
            viommu.get()
        try:
            event = I.iommu_viommu_event_selftest(virt_id=virt_id)
            viommu.report_event(I.IOMMU_VEVENTQ_TYPE_SELFTEST, bytes(event))
        finally:
            viommu.put()
    finally:
        ucmd.ictx.put_object(idev)
    return 0
