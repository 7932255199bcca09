"""iommufd devices: binding a device to an iommufd, attaching it (or one of its PASIDs) to an
IOAS or a HWPT, and IOMMU_GET_HW_INFO (drivers/iommu/iommufd/device.c).

The kernel-internal API VFIO uses:
- :func:`iommufd_device_bind` claims DMA ownership of the device (its RID goes to the
  blocking domain; another owner EBUSY; a device without cache coherency EINVAL) and makes a
  finalized DEVICE object holding one extra user for the caller until
  :func:`iommufd_device_unbind`.
- :func:`iommufd_device_attach` (``pasid`` None: the RID) with ``pt_id`` a HWPT attaches it;
  with an IOAS it reuses the first compatible auto domain of that IOAS (one whose attach does
  not fail with EINVAL) or allocates one (attached immediately, then added to the IOAS) —
  iommufd_device_auto_get_domain; it returns the HWPT id. A PASID (or RID) already attached:
  EBUSY. Any other object: EINVAL. Each attach holds a user of the device and of the HWPT.
- :func:`iommufd_device_replace` swaps what is attached (nothing attached: EINVAL; the same
  HWPT: nothing), :func:`iommufd_device_detach` undoes attach (the RID is blocked afterwards,
  a PASID entry cleared; detaching nothing is no error). A replaced or detached auto domain
  is destroyed with its last device.
Attach order (iommufd_hw_pagetable_attach): for the RID on a paging HWPT the device's reserved
regions are reserved in its IOAS (iopt_table_enforce_dev_resv_regions, conflicts EADDRINUSE;
PASID attaches reserve nothing), then
the PASID compatibility rule (a PASID needs a PASID-compatible HWPT and a RID on one; a RID on
a non-compatible HWPT needs no PASID attached: EINVAL), then the iommu core (a PASID beyond
the device's width EINVAL) and the driver's attach (e.g. the mock's NO_DIRTY EINVAL), then the
hw context/PASID entry. A failure undoes the reservation.

Invariants: ``attached`` maps each attached PASID (IOMMU_NO_PASID = the RID) to its HWPT, and
the hw Iommu translates the device (and PASID) through that HWPT's domain; the device's
reservations are in the IOAS of every paging HWPT it is attached to; users = 1 (table) + 1
(bound driver) + one per attachment. Units: bytes; PASIDs are ints.
Locking: ``attached`` under ``lock`` (igroup->lock, one device per group); hw context entries
under it too (the iommu core's group->mutex is taken inside).
Leaves out: groups with several devices (device_list, per-group HWPT), sw_msi page install,
IOPF enable/disable for fault-capable HWPTs (fault.py), allow_unsafe_interrupts (every model
platform isolates MSIs), the 10 s wait of iommufd_object_destroy_user.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from ....errors import kerr
from ....sim.locks import Mutex
from ....sim.track import TrackedDict
from ....uapi import iommufd as I
from ...lockdep_assert import lockdep_assert_held
from ...profile import IOMMUFD_DETACH_AFTER_FREE
from .driver import IOMMU_NO_PASID, RESV_DIRECT, Device
from .hw_pagetable import (
    HwPagetable,
    HwptNested,
    HwptPaging,
    find_hwpt_paging,
    hwpt_put,
    ioas_mutex,
    iommufd_hwpt_paging_alloc,
)
from .ioas import Ioas, write_user
from .main import IommufdCtx, IommufdObject, Ucmd, ioctl_op

AttachFn = Callable[["IommufdDevice", int, HwPagetable], "HwPagetable | None"]


class IommufdDevice(IommufdObject):
    """struct iommufd_device (with its one-device iommufd_group)."""

    type = "DEVICE"

    def __init__(self, ictx: IommufdCtx, dev: Device) -> None:
        super().__init__(ictx)
        self.dev = dev
        self.lock = Mutex(ictx.kernel.sched, f"{dev.name}.igroup.lock", "igroup->lock")
        self.attached: dict[int, HwPagetable] = TrackedDict(label=f"{dev.name}.pasid_attach")
        # idev->vdev (viommu.py) and idev->destroying, both under ``lock``.
        self.vdev: Any = None
        self.destroying = False

    def destroy(self) -> None:
        """iommufd_device_destroy: give DMA ownership back."""
        assert not self.attached, f"{self!r} destroyed while attached"
        self.dev.release_dma_owner()

    def abort(self) -> None:
        pass  # bind finalizes at once: an abort means DMA ownership was never taken


def get_device(ucmd: Ucmd, oid: int, what: str) -> IommufdDevice:
    return ucmd.ictx.get_object(oid, IommufdDevice, what)


def _pasid(pasid: int | None) -> int:
    return IOMMU_NO_PASID if pasid is None else pasid


# ----- bind / unbind -----------------------------------------------------------------------
def iommufd_device_bind(ictx: IommufdCtx, dev: Device) -> IommufdDevice:
    """iommufd_device_bind: a finalized DEVICE (``.id`` is the dev_id for userspace)."""
    if not dev.driver.capable(dev, "cache_coherency"):
        raise kerr(errno.EINVAL, f"iommufd_device_bind({dev.name}): no IOMMU cache coherency")
    dev.claim_dma_owner(ictx)
    try:
        idev = ictx.object_alloc(IommufdDevice(ictx, dev))
    except BaseException:
        dev.release_dma_owner()
        raise
    idev.get()  # the calling driver is a user until iommufd_device_unbind
    ictx.finalize(idev)
    return idev


def iommufd_device_unbind(idev: IommufdDevice) -> None:
    """iommufd_device_unbind (iommufd_object_destroy_user): the caller detached first; the
    device's vDEVICE goes first (iommufd_device_pre_destroy)."""
    from .viommu import iommufd_device_remove_vdev  # viommu.py imports this module: a cycle

    iommufd_device_remove_vdev(idev)
    idev.put()
    try:
        idev.ictx.object_remove(idev.id, "iommufd_device_unbind")
    except OSError:
        idev.get()  # still attached (a caller bug the kernel WARNs about): keep it bound
        raise


# ----- attach core (iommufd_hw_pagetable_attach / _detach) ----------------------------------
def enforce_resv_regions(idev: IommufdDevice, hwpt_paging: HwptPaging) -> None:
    """iopt_table_enforce_dev_resv_regions: reserve the device's regions in the IOAS
    (owner: the device); all or nothing."""
    iopt = hwpt_paging.ioas.iopt
    with iopt.iova_rwsem.write():
        try:
            for start, last, kind in idev.dev.resv_regions:
                if kind == RESV_DIRECT:
                    continue  # identity-mapped regions are not reserved (not modelled)
                iopt.reserve_iova(start, last, idev.dev)
        except BaseException:
            iopt.remove_reserved(idev.dev)
            raise


def remove_resv_regions(idev: IommufdDevice, hwpt_paging: HwptPaging) -> None:
    """iopt_remove_reserved_iova(iopt, dev)."""
    iopt = hwpt_paging.ioas.iopt
    with iopt.iova_rwsem.write():
        iopt.remove_reserved(idev.dev)


def pasid_compat(hwpt: HwPagetable, idev: IommufdDevice, pasid: int) -> None:
    """iommufd_hwpt_pasid_compat (igroup->lock held)."""
    lockdep_assert_held(idev.lock, "iommufd_hwpt_pasid_compat")
    if pasid == IOMMU_NO_PASID:
        if not hwpt.pasid_compat and any(p != IOMMU_NO_PASID for p in idev.attached):
            raise kerr(errno.EINVAL, f"attach RID of {idev.dev.name} to {hwpt!r}: PASIDs are "
                       "attached and the HWPT is not PASID-compatible")
        return
    if not hwpt.pasid_compat:
        raise kerr(errno.EINVAL, f"attach PASID {pasid} to {hwpt!r}: not allocated with "
                   "IOMMU_HWPT_ALLOC_PASID")
    rid = idev.attached.get(IOMMU_NO_PASID)
    if rid is not None and not rid.pasid_compat:
        raise kerr(errno.EINVAL, f"attach PASID {pasid}: the RID of {idev.dev.name} is on "
                   f"the non-PASID-compatible {rid!r}")


def _hw_set(idev: IommufdDevice, hwpt: HwPagetable, pasid: int,
            old: HwPagetable | None) -> None:
    """The iommu core's attach/replace (group or PASID) plus the driver's op, then the hw
    context or PASID entry."""
    dev = idev.dev
    assert hwpt.domain is not None
    if hwpt.domain.iommu is not dev.iommu:
        raise kerr(errno.EINVAL, f"attach {dev.name}: {hwpt!r} belongs to another IOMMU")
    if pasid != IOMMU_NO_PASID and (not dev.max_pasids or pasid >= dev.max_pasids):
        raise kerr(errno.EINVAL, f"iommu_attach_device_pasid: PASID {pasid} beyond "
                   f"{dev.name}'s {dev.max_pasids} PASIDs")
    if idev.kernel.sched.fault("kzalloc"):  # the attach handle
        raise kerr(errno.ENOMEM, "iommufd attach handle: kzalloc failed (injected)")
    dev.driver.attach_dev(hwpt.domain, dev, pasid, old.domain if old is not None else None)
    dev.iommu.attach(dev.name, hwpt.domain, None if pasid == IOMMU_NO_PASID else pasid)


def iommufd_hw_pagetable_attach(hwpt: HwPagetable, idev: IommufdDevice, pasid: int) -> None:
    """iommufd_hw_pagetable_attach: EBUSY when ``pasid`` already has a HWPT."""
    hwpt_paging = find_hwpt_paging(hwpt) if pasid == IOMMU_NO_PASID else None
    with idev.lock:
        if pasid in idev.attached:
            raise kerr(errno.EBUSY, f"attach {idev.dev.name} PASID {pasid}: already attached "
                       f"to {idev.attached[pasid]!r}")
        if hwpt_paging is not None:
            enforce_resv_regions(idev, hwpt_paging)
        try:
            pasid_compat(hwpt, idev, pasid)
            _hw_set(idev, hwpt, pasid, None)
        except BaseException:
            if hwpt_paging is not None:
                remove_resv_regions(idev, hwpt_paging)
            raise
        hwpt.get()
        idev.attached[pasid] = hwpt


def iommufd_hw_pagetable_detach(idev: IommufdDevice, pasid: int) -> HwPagetable | None:
    """iommufd_hw_pagetable_detach: the HWPT that was attached (the caller puts it), None
    when nothing was."""
    with idev.lock:
        hwpt = idev.attached.pop(pasid, None)
        if hwpt is None:
            return None
        dev = idev.dev
        if pasid == IOMMU_NO_PASID:
            dev.iommu.attach(dev.name, dev.iommu.blocked)
        else:
            dev.iommu.attach(dev.name, None, pasid)
        hwpt_paging = find_hwpt_paging(hwpt)
        if hwpt_paging is not None and pasid == IOMMU_NO_PASID:
            remove_resv_regions(idev, hwpt_paging)
        return hwpt


def iommufd_device_do_attach(idev: IommufdDevice, pasid: int,
                             hwpt: HwPagetable) -> HwPagetable | None:
    iommufd_hw_pagetable_attach(hwpt, idev, pasid)
    return None


def iommufd_device_do_replace(idev: IommufdDevice, pasid: int,
                              hwpt: HwPagetable) -> HwPagetable | None:
    """iommufd_device_do_replace: the old HWPT (the caller puts it)."""
    rid = pasid == IOMMU_NO_PASID
    hwpt_paging = find_hwpt_paging(hwpt) if rid else None
    with idev.lock:
        old = idev.attached.get(pasid)
        if old is None:
            raise kerr(errno.EINVAL, f"replace {idev.dev.name} PASID {pasid}: nothing "
                       "attached")
        if old is hwpt:
            return None
        old_paging = find_hwpt_paging(old) if rid else None
        new_ioas = hwpt_paging is not None and (old_paging is None
                                                or old_paging.ioas is not hwpt_paging.ioas)
        if new_ioas:
            assert hwpt_paging is not None
            enforce_resv_regions(idev, hwpt_paging)
        try:
            pasid_compat(hwpt, idev, pasid)
            _hw_set(idev, hwpt, pasid, old)
        except BaseException:
            if new_ioas:
                assert hwpt_paging is not None
                remove_resv_regions(idev, hwpt_paging)
            raise
        if old_paging is not None and (hwpt_paging is None
                                       or hwpt_paging.ioas is not old_paging.ioas):
            remove_resv_regions(idev, old_paging)
        hwpt.get()
        idev.attached[pasid] = hwpt
        return old


def iommufd_device_auto_get_domain(idev: IommufdDevice, pasid: int, ioas: Ioas,
                                   do_attach: AttachFn) -> tuple[HwPagetable | None, int]:
    """iommufd_device_auto_get_domain: (HWPT to put, the HWPT id used)."""
    ictx = idev.ictx
    immediate = do_attach is iommufd_device_do_attach
    with ioas_mutex(ioas):
        for hwpt in list(ioas.hwpt_list):
            if not isinstance(hwpt, HwptPaging) or not hwpt.auto_domain:
                continue
            if hwpt.users.get() == 0:  # iommufd_lock_obj failed: being destroyed
                continue
            hwpt.get()
            try:
                destroy = do_attach(idev, pasid, hwpt)
            except OSError as e:
                hwpt.put()
                if e.errno == errno.EINVAL:
                    continue  # incompatible with this device: try the next one
                raise
            hwpt.put()
            return destroy, hwpt.id
        new = iommufd_hwpt_paging_alloc(ictx, ioas, idev, pasid, 0, immediate, None)
        destroy = None
        if not immediate:
            try:
                destroy = do_attach(idev, pasid, new)
            except BaseException:
                ictx.abort_and_destroy(new)
                raise
        new.auto_domain = True
        ictx.finalize(new)
        return destroy, new.id


def iommufd_device_change_pt(idev: IommufdDevice, pasid: int, pt_id: int,
                             do_attach: AttachFn) -> int:
    """iommufd_device_change_pt: the HWPT id now attached."""
    ictx = idev.ictx
    pt = ictx.get_object(pt_id, IommufdObject, "iommufd_device_change_pt")
    try:
        if isinstance(pt, (HwptPaging, HwptNested)):
            destroy = do_attach(idev, pasid, pt)
        elif isinstance(pt, Ioas):
            destroy, pt_id = iommufd_device_auto_get_domain(idev, pasid, pt, do_attach)
        else:
            raise kerr(errno.EINVAL, f"attach {idev.dev.name}: pt_id {pt_id} is a {pt.type}, "
                       "not an IOAS or a HWPT")
    finally:
        ictx.put_object(pt)
    if destroy is not None:
        hwpt_put(ictx, destroy)
    return pt_id


def iommufd_device_attach(idev: IommufdDevice, pasid: int | None, pt_id: int) -> int:
    """iommufd_device_attach: the HWPT id (VFIO writes it back to userspace)."""
    out = iommufd_device_change_pt(idev, _pasid(pasid), pt_id, iommufd_device_do_attach)
    idev.get()  # pairs with iommufd_device_detach
    return out


def iommufd_device_replace(idev: IommufdDevice, pasid: int | None, pt_id: int) -> int:
    """iommufd_device_replace: as detach + attach, but nothing changes on failure."""
    return iommufd_device_change_pt(idev, _pasid(pasid), pt_id, iommufd_device_do_replace)


def iommufd_device_detach(idev: IommufdDevice, pasid: int | None) -> None:
    """iommufd_device_detach: DMA (at ``pasid``) is blocked afterwards."""
    if idev.kernel.profile.has_bug(IOMMUFD_DETACH_AFTER_FREE):
        _detach_after_free(idev, _pasid(pasid))
        return
    hwpt = iommufd_hw_pagetable_detach(idev, _pasid(pasid))
    if hwpt is None:
        return
    hwpt_put(idev.ictx, hwpt)
    idev.put()


def _detach_after_free(idev: IommufdDevice, pasid: int) -> None:
    """The seeded bug IOMMUFD_DETACH_AFTER_FREE: the HWPT is put first (an automatic domain
    is freed with its last user) and only then is the device's entry pointed away from it."""
    with idev.lock:
        hwpt = idev.attached.pop(pasid, None)
    if hwpt is None:
        return
    hwpt_put(idev.ictx, hwpt)
    with idev.lock:
        dev = idev.dev
        if pasid == IOMMU_NO_PASID:
            dev.iommu.attach(dev.name, dev.iommu.blocked)
        else:
            dev.iommu.attach(dev.name, None, pasid)
        hwpt_paging = find_hwpt_paging(hwpt)
        if hwpt_paging is not None and pasid == IOMMU_NO_PASID:
            remove_resv_regions(idev, hwpt_paging)
    idev.put()


def iommufd_device_attached(idev: IommufdDevice, pasid: int | None = None) -> HwPagetable | None:
    """The HWPT attached at ``pasid`` (for tests and VFIO's checks)."""
    return idev.attached.get(_pasid(pasid))


# ----- IOMMU_GET_HW_INFO -----------------------------------------------------------------------
@ioctl_op(I.IOMMU_GET_HW_INFO, I.iommu_hw_info, "__reserved")
def iommufd_get_hw_info(ucmd: Ucmd) -> int:
    """IOMMU_GET_HW_INFO: unknown flags or __reserved EOPNOTSUPP; without
    IOMMU_HW_INFO_FLAG_INPUT_TYPE the type is DEFAULT; the driver's data is copied up to
    ``data_len`` and the rest of the user buffer zeroed; ``data_len`` becomes the kernel's
    length; capabilities and out_max_pasid_log2 from the device."""
    cmd = ucmd.cmd
    if cmd.flags & ~I.IOMMU_HW_INFO_FLAG_INPUT_TYPE or any(getattr(cmd, "__reserved")):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_GET_HW_INFO: unknown flags or __reserved")
    if not cmd.flags & I.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        cmd.in_data_type = I.IOMMU_HW_INFO_TYPE_DEFAULT
    idev = get_device(ucmd, cmd.dev_id, "IOMMU_GET_HW_INFO")
    try:
        dev = idev.dev
        if ucmd.ictx.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "IOMMU_GET_HW_INFO: hw_info kzalloc (injected)")
        got = dev.driver.hw_info(dev, cmd.in_data_type)
        data, out_type = got if got is not None else (b"", I.IOMMU_HW_INFO_TYPE_NONE)
        cmd.out_data_type = out_type
        if cmd.data_len:
            n = min(cmd.data_len, len(data))
            write_user(ucmd, cmd.data_uptr, data[:n] + bytes(cmd.data_len - n))
        cmd.data_len = len(data)
        caps = 0
        if dev.driver.capable(dev, "dirty_tracking"):
            caps |= I.IOMMU_HW_CAP_DIRTY_TRACKING
        cmd.out_max_pasid_log2 = 0
        if dev.max_pasids:
            cmd.out_max_pasid_log2 = dev.max_pasids.bit_length() - 1
            if dev.is_pci:
                caps |= I.IOMMU_HW_CAP_PCI_PASID_EXEC | I.IOMMU_HW_CAP_PCI_PASID_PRIV
        cmd.out_capabilities = caps
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(idev)
    return 0

