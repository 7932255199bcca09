"""VFIO's iommufd glue for physical devices (drivers/vfio/iommufd.c: the
vfio_iommufd_physical_* ops a driver such as vfio-pci installs).

- :func:`vfio_iommufd_physical_bind`: iommufd_device_bind on the device's struct device (the
  iommufd DEVICE object; its id is the devid userspace gets back);
- :func:`vfio_iommufd_physical_unbind`: detach the RID and every PASID still attached, then
  iommufd_device_unbind;
- :func:`vfio_iommufd_physical_attach_ioas`: the first attach attaches, a later one replaces
  (``iommufd_attached``); returns the HWPT id iommufd chose;
- :func:`vfio_iommufd_physical_detach_ioas`: detach when attached (DMA is blocked after);
- the PASID forms track attached PASIDs in ``pasids`` (the kernel's IDA): attach replaces
  when the PASID is known, else allocates it, attaches and frees it again on failure.

Invariants: ``iommufd_device`` is set between bind and unbind; ``iommufd_attached`` iff the
RID is attached through VFIO; ``pasids`` are the PASIDs attached through VFIO.
Locking: every op runs under ``dev_set.lock`` (lockdep_assert_held, as the kernel's).
Leaves out: the emulated-device (iommufd_access) ops, noiommu, the WARN_ONs (a driver bug).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ..iommu.iommufd import device as idev_api
from ..iommu.iommufd.driver import IOMMU_NO_PASID
from ..lockdep_assert import lockdep_assert_held

if TYPE_CHECKING:
    from ..iommu.iommufd.driver import Device
    from .vfio_main import VfioDevice


def _assert_locked(vdev: VfioDevice, what: str) -> None:
    assert vdev.dev_set is not None
    lockdep_assert_held(vdev.dev_set.lock, what)


def vfio_iommufd_physical_bind(vdev: VfioDevice, ictx: Any, dev: Device) -> int:
    """vfio_iommufd_physical_bind: the devid."""
    _assert_locked(vdev, "vfio_iommufd_physical_bind")
    idev = idev_api.iommufd_device_bind(ictx, dev)
    vdev.iommufd_device = idev
    vdev.iommufd_ictx = ictx
    vdev.pasids.clear()
    return idev.id


def vfio_iommufd_physical_unbind(vdev: VfioDevice) -> None:
    """vfio_iommufd_physical_unbind."""
    _assert_locked(vdev, "vfio_iommufd_physical_unbind")
    idev = vdev.iommufd_device
    if idev is None:
        return
    if vdev.iommufd_attached:
        idev_api.iommufd_device_detach(idev, IOMMU_NO_PASID)
        vdev.iommufd_attached = False
    for pasid in sorted(vdev.pasids):
        idev_api.iommufd_device_detach(idev, pasid)
    vdev.pasids.clear()
    idev_api.iommufd_device_unbind(idev)
    vdev.iommufd_device = None
    vdev.iommufd_ictx = None


def vfio_iommufd_physical_attach_ioas(vdev: VfioDevice, pt_id: int) -> int:
    """vfio_iommufd_physical_attach_ioas: attach, or replace when already attached."""
    _assert_locked(vdev, "vfio_iommufd_physical_attach_ioas")
    idev = vdev.iommufd_device
    if idev is None:
        raise kerr(errno.EINVAL, f"{vdev.name}: attach without an iommufd device")
    if vdev.iommufd_attached:
        out = idev_api.iommufd_device_replace(idev, IOMMU_NO_PASID, pt_id)
    else:
        out = idev_api.iommufd_device_attach(idev, IOMMU_NO_PASID, pt_id)
    vdev.iommufd_attached = True
    return out


def vfio_iommufd_physical_detach_ioas(vdev: VfioDevice) -> None:
    """vfio_iommufd_physical_detach_ioas: nothing attached is no error."""
    _assert_locked(vdev, "vfio_iommufd_physical_detach_ioas")
    idev = vdev.iommufd_device
    if idev is None or not vdev.iommufd_attached:
        return
    idev_api.iommufd_device_detach(idev, IOMMU_NO_PASID)
    vdev.iommufd_attached = False


def vfio_iommufd_physical_pasid_attach_ioas(vdev: VfioDevice, pasid: int, pt_id: int) -> int:
    """vfio_iommufd_physical_pasid_attach_ioas."""
    _assert_locked(vdev, "vfio_iommufd_physical_pasid_attach_ioas")
    idev = vdev.iommufd_device
    if idev is None:
        raise kerr(errno.EINVAL, f"{vdev.name}: PASID attach without an iommufd device")
    if pasid in vdev.pasids:
        return idev_api.iommufd_device_replace(idev, pasid, pt_id)
    if vdev.kernel.sched.fault("kzalloc"):  # ida_alloc_range
        raise kerr(errno.ENOMEM, f"{vdev.name}: PASID {pasid}: ida_alloc_range (injected)")
    vdev.pasids[pasid] = True
    try:
        return idev_api.iommufd_device_attach(idev, pasid, pt_id)
    except BaseException:
        del vdev.pasids[pasid]
        raise


def vfio_iommufd_physical_pasid_detach_ioas(vdev: VfioDevice, pasid: int) -> None:
    """vfio_iommufd_physical_pasid_detach_ioas: an unknown PASID is ignored."""
    _assert_locked(vdev, "vfio_iommufd_physical_pasid_detach_ioas")
    idev = vdev.iommufd_device
    if idev is None or pasid not in vdev.pasids:
        return
    idev_api.iommufd_device_detach(idev, pasid)
    del vdev.pasids[pasid]
