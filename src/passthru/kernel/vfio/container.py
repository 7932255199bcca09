"""The legacy VFIO container, /dev/vfio/vfio (drivers/vfio/container.c, CONFIG_VFIO_CONTAINER).

Which container: Debian's 7.3 kernel (the real-kernel lane 2, shared/realkernel/README.md)
has no IOMMUFD and no VFIO cdev, so /dev/vfio/vfio is container.c with the type1 driver
(vfio_iommu_type1.py), not iommufd's compat container (CONFIG_IOMMUFD_VFIO_CONTAINER needs
IOMMUFD and !VFIO_CONTAINER; iommufd's vfio_compat.py models that one). The container here
maps straight into hw IOMMU domains (hw/iommu.py) through the type1 backend.

What it models: the container file and its ioctls —
- VFIO_GET_API_VERSION: VFIO_API_VERSION (0);
- VFIO_CHECK_EXTENSION: with no IOMMU driver set, asks each registered driver (type1 only
  here) with no state and returns the first positive answer (0 for an unknown extension);
  with a driver set, asks that driver with its state;
- VFIO_SET_IOMMU: no group in the container, or a driver already set, EINVAL; otherwise the
  first driver that answers CHECK_EXTENSION(arg) positively is opened with ``arg`` and every
  group of the container attached to it (a failure releases the driver's state and tries
  the next, returning the last error: an extension that is not an IOMMU type, such as
  VFIO_UNMAP_ALL, passes the check and fails type1's open with EINVAL); no driver answers:
  ENODEV;
- every other request goes to the driver (type1's GET_INFO, MAP_DMA, UNMAP_DMA), or ENOTTY
  while none is set.
Groups join and leave through :func:`vfio_container_attach_group` and
:func:`vfio_container_detach_group` (called by group.py with the group's ``group_lock``
held): joining claims DMA ownership of the group's devices (EBUSY when another owner — a
kernel driver, or iommufd through the cdev — has them) and, when a driver is set, attaches
the group to it; the last group to leave releases the driver's state (every mapping goes)
and the container returns to the unset state. A group holds a reference on the container
file.

Invariants: ``iommu_driver`` is set only while ``groups`` is non-empty; every group in
``groups`` has ``container`` pointing here; each group holds one reference on this file.
Units: none (the mappings' units are type1's).
Locking: ``group_lock`` (a RwSem, container->group_lock) protects ``groups``,
``iommu_driver`` and ``iommu_data``: written under it for write (SET_IOMMU, attach, detach),
read under it for read (CHECK_EXTENSION and the forwarded ioctls).
Leaves out: the noiommu driver (VFIO_NOIOMMU_IOMMU, CAP_SYS_RAWIO), the driver registry's
module references, the spapr TCE driver, VFIO_UPDATE_VADDR's pinning rules.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...sim.locks import RwSem
from ...sim.track import Cell, TrackedList
from ...uapi import vfio as V
from ..fs.file import File
from ..fs.ioctl_table import IoctlTable
from ..init import initcall
from ..lockdep_assert import lockdep_assert_held
from . import vfio_iommu_type1 as T1

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg

CONTAINER_PATH = "/dev/vfio/vfio"


def _default(c: VfioContainer, proc: Process, cmd: int, arg: UserArg) -> int:
    """The ioctl's default case: the IOMMU driver's, or EINVAL while none is set
    (vfio_fops_unl_ioctl's ``long ret = -EINVAL``)."""
    with c.group_lock.read():
        data = c.iommu_data.get()
        if data is None:
            raise kerr(errno.EINVAL, f"ioctl {cmd:#x}: the container has no IOMMU driver "
                       "(VFIO_SET_IOMMU first)")
        return T1.vfio_iommu_type1_ioctl(data, proc, cmd, arg)


CONTAINER_IOCTLS = IoctlTable("vfio-container", _default)


class VfioContainer(File):
    """struct vfio_container, the /dev/vfio/vfio file's private data (one per open)."""

    kind = "vfio-container"

    ioctl_table = CONTAINER_IOCTLS

    def __init__(self, kernel: Kernel, flags: int) -> None:
        super().__init__(kernel, flags, f"vfio-container{kernel.next_id('vfio-container')}")
        self.group_lock = RwSem(kernel.sched, f"{self.name}.group_lock",
                                "vfio_container.group_lock")
        self.groups: list[Any] = TrackedList(label=f"{self.name}.group_list")
        self.iommu_data: Cell[T1.VfioIommu | None] = Cell(None,
                                                          label=f"{self.name}.iommu_data")

    def release(self) -> None:
        assert not self.groups, f"{self.name} released with groups attached (they hold refs)"


@CONTAINER_IOCTLS.handler(V.VFIO_GET_API_VERSION)
def vfio_get_api_version(c: VfioContainer, proc: Process, arg: UserArg) -> int:
    return V.VFIO_API_VERSION


@CONTAINER_IOCTLS.handler(V.VFIO_CHECK_EXTENSION)
def vfio_container_ioctl_check_extension(c: VfioContainer, proc: Process,
                                         arg: UserArg) -> int:
    with c.group_lock.read():
        return T1.vfio_iommu_type1_check_extension(c.iommu_data.get(), arg.as_int())


@CONTAINER_IOCTLS.handler(V.VFIO_SET_IOMMU)
def vfio_ioctl_set_iommu(c: VfioContainer, proc: Process, arg: UserArg) -> int:
    kind = arg.as_int()
    with c.group_lock.write():
        if not c.groups or c.iommu_data.get() is not None:
            raise kerr(errno.EINVAL, "VFIO_SET_IOMMU: the container has no group, or its "
                       "IOMMU driver is already set")
        if T1.vfio_iommu_type1_check_extension(None, kind) <= 0:
            raise kerr(errno.ENODEV, f"VFIO_SET_IOMMU: no IOMMU driver supports type {kind}")
        # an extension that is not a type (UNMAP_ALL ...) passes the check and fails open:
        # its EINVAL is what the loop returns
        data = T1.vfio_iommu_type1_open(c.kernel, kind, c.name)
        attached: list[Any] = []
        try:
            for g in c.groups:
                T1.vfio_iommu_type1_attach_group(data, g)
                attached.append(g)
        except OSError:
            for g in attached:
                T1.vfio_iommu_type1_detach_group(data, g)
            T1.vfio_iommu_type1_release(data)
            raise
        c.iommu_data.set(data)
    c.kernel.sched.emit("vfio", "set_iommu", container=c.name, type=kind)
    return 0


# ----- groups joining and leaving (group.py) ------------------------------------------------
def vfio_container_attach_group(c: VfioContainer, group: Any) -> None:
    """vfio_container_attach_group (the group's group_lock held)."""
    lockdep_assert_held(group.group_lock, "vfio_container_attach_group")
    with c.group_lock.write():
        claimed: list[Any] = []
        try:
            for dev in group.iommu_devices():
                dev.claim_dma_owner(group)  # iommu_group_claim_dma_owner: EBUSY if owned
                claimed.append(dev)
            data = c.iommu_data.get()
            if data is not None:
                T1.vfio_iommu_type1_attach_group(data, group)
        except OSError:
            for dev in claimed:
                dev.release_dma_owner()
            raise
        group.container = c
        group.container_users = 1
        c.groups.append(group)
        c.get()  # vfio_container_get
    c.kernel.sched.emit("vfio", "container_attach", container=c.name, group=group.id)


def vfio_container_detach_group(c: VfioContainer, group: Any) -> None:
    """vfio_group_detach_container (the group's group_lock held): detach from the driver,
    release DMA ownership; the last group releases the driver's state."""
    lockdep_assert_held(group.group_lock, "vfio_group_detach_container")
    with c.group_lock.write():
        data = c.iommu_data.get()
        if data is not None:
            T1.vfio_iommu_type1_detach_group(data, group)
        for dev in group.iommu_devices():
            dev.release_dma_owner()
        group.container = None
        group.container_users = 0
        c.groups.remove(group)
        if not c.groups and data is not None:
            T1.vfio_iommu_type1_release(data)
            c.iommu_data.set(None)
    c.kernel.sched.emit("vfio", "container_detach", container=c.name, group=group.id)
    c.put()  # vfio_container_put


def vfio_container_from_file(f: File) -> VfioContainer | None:
    return f if isinstance(f, VfioContainer) else None


@initcall("device")  # module_init(vfio_init) -> vfio_container_init: misc_register
def vfio_container_init(kernel: Kernel) -> None:
    kernel.register_device(CONTAINER_PATH, lambda proc, flags: VfioContainer(kernel, flags))
