"""VFIO groups, /dev/vfio/<group> (drivers/vfio/group.c, CONFIG_VFIO_GROUP): the legacy path
to a device — open the group, put it in a container (container.py), set the container's
IOMMU, then VFIO_GROUP_GET_DEVICE_FD.

What it models:
- a :class:`VfioGroup` per IOMMU group (vfio_group_find_or_alloc), made at boot when a
  device binds to a VFIO driver (:func:`vfio_device_set_group`, which registers the node);
  its devices are VFIO devices (vfio_main.py) with their iommu-core devices (the DMA
  requesters the container attaches and claims ownership of);
- open (vfio_group_fops_open): EBUSY while a device of the group is bound through its cdev
  (``cdev_device_open_cnt``), and one open file at a time, a second open EBUSY;
- :func:`vfio_device_block_group` / :func:`vfio_device_unblock_group`, the cdev side of the
  exclusion: a cdev bind while the group is open EBUSY, else it counts in
  ``cdev_device_open_cnt`` until its unbind;
- VFIO_GROUP_GET_STATUS: argsz below 8 EINVAL; CONTAINER_SET|VIABLE when in a container,
  else VIABLE unless another owner (iommufd through the cdev, a kernel driver) claimed the
  group's DMA;
- VFIO_GROUP_SET_CONTAINER (the argument points at the container fd): bad fd EBADF; the
  group already has a container EINVAL; an fd that is not a container EBADFD; then
  container.py's attach (EBUSY when the DMA is owned elsewhere);
- VFIO_GROUP_UNSET_CONTAINER: no container EINVAL; a device fd still open EBUSY
  (container_users != 1); else detach (the last group releases the container's IOMMU state);
- VFIO_GROUP_GET_DEVICE_FD (the argument is the device's name, a NUL-terminated string of
  at most PAGE_SIZE - 1 bytes — for PCI its BDF): no such device ENODEV; the group has no
  container EINVAL; the container has no IOMMU driver EINVAL; then a device file
  (:class:`VfioGroupDeviceFile`: the core's VfioDeviceFile, opened through the group, so
  ``access_granted`` from the start, as the cdev is after BIND_IOMMUFD), installed O_CLOEXEC.
  The first open of a device uses the container (``container_users`` + 1) and calls the
  driver's open_device; the device file holds a reference on the group file, so the group
  is released only after its devices; the last close calls close_device and gives the
  container use back. BIND_IOMMUFD on such a file EINVAL; ATTACH/DETACH_IOMMUFD_PT go to the
  driver (vfio-pci: ENOTTY), as group.c's device fd does.
- unknown ioctls ENOTTY; releasing the group file detaches it from its container.

Invariants: ``opened_file`` is the only open file of the group; ``opened_file`` and a
non-zero ``cdev_device_open_cnt`` never hold together; ``container`` set implies the group
is on that container's list and ``container_users`` >= 1 (one for the group, one per opened
device); a device is open through the group or through the cdev, never both (the group
exclusion above, and open_count under dev_set.lock).
Units: none.
Locking: ``group_lock`` (a Mutex, group->group_lock) protects ``container``,
``container_users``, ``opened_file`` and ``cdev_device_open_cnt``; it is taken before the
container's ``group_lock`` and before a device's ``dev_set.lock`` (the kernel's order; a cdev
bind takes and drops it before dev_set.lock). ``VfioGroups`` (the per-kernel
group table, vfio.group_ida + the group list) is written at boot only.
Leaves out: noiommu groups, KVM association (vfio_file_set_kvm), an iommufd given to
SET_CONTAINER (the kernel, with IOMMUFD, binds the group to that context: EBADFD here), the
group's cdev/ida lifetime (groups never go), VFIO_GROUP_FLAGS for noiommu, vf_token names.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...sim import track
from ...sim.fields import Plain
from ...sim.locks import Mutex
from ...sim.track import TrackedDict, TrackedList
from ...uapi import linux as L
from ...uapi import vfio as V
from ..dma_buf.core import strndup_user
from ..fs.file import File, fput
from ..fs.ioctl_table import IoctlTable
from ..init import kernel_static
from .container import (
    vfio_container_attach_group,
    vfio_container_detach_group,
    vfio_container_from_file,
)
from .vfio_main import VfioDevice, VfioDeviceFile

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg

PAGE_SIZE = 4096


def _groups(kernel: Kernel) -> dict[int, VfioGroup]:
    return TrackedDict(label="vfio.groups")


vfio_groups = kernel_static("vfio.groups", _groups)


def _dev_name(device: VfioDevice) -> str:
    """dev_name(device->dev): the PCI BDF for a vfio-pci device."""
    pdev = getattr(device, "pdev", None)
    bdf = getattr(pdev, "bdf", None)
    return str(bdf) if bdf else device.name


class VfioGroup(track.Tracked):
    """struct vfio_group."""

    container = Plain[Any]((0, 1))
    container_users = Plain[int]((1, 2))
    opened_file = Plain[Any]((2, 3))
    cdev_device_open_cnt = Plain[int]((3, 4))

    def __init__(self, kernel: Kernel, group_id: int) -> None:
        self.kernel = kernel
        self.id = group_id
        self.group_lock = Mutex(kernel.sched, f"vfio.group{group_id}.group_lock",
                                "vfio_group.group_lock")
        self.devices: list[tuple[VfioDevice, Any]] = TrackedList(
            label=f"vfio.group{group_id}.device_list")
        self._container: Any = None
        self._container_users = 0
        self._opened_file: Any = None
        self._cdev_device_open_cnt = 0
        self.track_init(f"vfio.group{group_id}")

    def __repr__(self) -> str:
        return f"<vfio_group {self.id}>"

    @property
    def devnode(self) -> str:
        return f"/dev/vfio/{self.id}"

    def iommu_devices(self) -> list[Any]:
        """The iommu-core devices of the group (struct iommu_group's members)."""
        return [d for _, d in self.devices]

    def has_iommu(self) -> bool:
        """vfio_group_has_iommu (group_lock held)."""
        return self.container is not None

    def dma_owner_claimed(self) -> bool:
        """iommu_group_dma_owner_claimed."""
        return any(d.owner.get() is not None for d in self.iommu_devices())


def vfio_device_set_group(kernel: Kernel, device: VfioDevice, iommu_dev: Any,
                          group_id: int | None = None) -> VfioGroup:
    """vfio_device_set_group at probe (boot, from an initcall): the device joins the group of
    its IOMMU group (``group_id``; default: one group per device, numbered from 0), whose
    node /dev/vfio/<id> is registered the first time."""
    groups = vfio_groups(kernel)
    gid = len(groups) if group_id is None else group_id
    group = groups.get(gid)
    if group is None:
        group = VfioGroup(kernel, gid)
        groups[gid] = group
        kernel.device_add(group.devnode, functools.partial(_open, group))
    group.devices.append((device, iommu_dev))
    device.group = group
    return group


def vfio_device_block_group(device: VfioDevice) -> None:
    """vfio_device_block_group (a cdev bind): EBUSY while the group is open, else one more
    cdev user keeps the group from being opened. A device without a group (the stub without
    CONFIG_VFIO_GROUP) is not blocked."""
    group: VfioGroup | None = device.group
    if group is None:
        return
    with group.group_lock:
        if group.opened_file is not None:
            raise kerr(errno.EBUSY, f"VFIO_DEVICE_BIND_IOMMUFD: {device.name}'s group "
                       f"{group.devnode} is open (the legacy path owns it)")
        group.cdev_device_open_cnt = group.cdev_device_open_cnt + 1


def vfio_device_unblock_group(device: VfioDevice) -> None:
    """vfio_device_unblock_group: a failed bind, or the unbind at release."""
    group: VfioGroup | None = device.group
    if group is None:
        return
    with group.group_lock:
        assert group.cdev_device_open_cnt > 0, f"{group!r}: unblocked more than blocked"
        group.cdev_device_open_cnt = group.cdev_device_open_cnt - 1


def _open(group: VfioGroup, proc: Process, flags: int) -> VfioGroupFile:
    return vfio_group_fops_open(group, flags)


# ----- the group file ----------------------------------------------------------------------
def _no_such_ioctl(f: VfioGroupFile, proc: Process, cmd: int, arg: UserArg) -> int:
    raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: not a VFIO group ioctl")


GROUP_IOCTLS = IoctlTable("vfio-group", _no_such_ioctl)


class VfioGroupFile(File):
    """An open /dev/vfio/<group>."""

    kind = "vfio-group"
    ioctl_table = GROUP_IOCTLS

    def __init__(self, group: VfioGroup, flags: int) -> None:
        super().__init__(group.kernel, flags, group.devnode)
        self.group = group

    def release(self) -> None:
        """vfio_group_fops_release: device files hold this file, so none is open."""
        g = self.group
        with g.group_lock:
            if g.container is not None:
                vfio_container_detach_group(g.container, g)
            g.opened_file = None


def vfio_group_fops_open(group: VfioGroup, flags: int) -> VfioGroupFile:
    with group.group_lock:
        if group.cdev_device_open_cnt:
            raise kerr(errno.EBUSY, f"open {group.devnode}: a device of the group is bound "
                       "through its cdev")
        if group.opened_file is not None:
            raise kerr(errno.EBUSY, f"open {group.devnode}: the group is already open")
        if group.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, f"open {group.devnode}: allocation failed (injected)")
        f = VfioGroupFile(group, flags)
        group.opened_file = f
    return f


@GROUP_IOCTLS.handler(V.VFIO_GROUP_GET_STATUS)
def vfio_group_ioctl_get_status(f: VfioGroupFile, proc: Process, arg: UserArg) -> int:
    minsz = ctypes.sizeof(V.vfio_group_status)
    st = arg.copy_from_user(V.vfio_group_status)
    if st.argsz < minsz:
        raise kerr(errno.EINVAL, f"VFIO_GROUP_GET_STATUS: argsz {st.argsz} < {minsz}")
    g = f.group
    st.flags = 0
    with g.group_lock:
        if g.container is not None:
            st.flags |= V.VFIO_GROUP_FLAGS_CONTAINER_SET | V.VFIO_GROUP_FLAGS_VIABLE
        elif not g.dma_owner_claimed():
            st.flags |= V.VFIO_GROUP_FLAGS_VIABLE
    arg.copy_to_user(st)
    return 0


@GROUP_IOCTLS.handler(V.VFIO_GROUP_SET_CONTAINER)
def vfio_group_ioctl_set_container(f: VfioGroupFile, proc: Process, arg: UserArg) -> int:
    fd = int.from_bytes(arg.read(4), "little", signed=True)  # get_user(fd, arg)
    cf = proc.fget(fd, "VFIO_GROUP_SET_CONTAINER")  # EBADF
    try:
        g = f.group
        with g.group_lock:
            if g.has_iommu():
                raise kerr(errno.EINVAL, f"VFIO_GROUP_SET_CONTAINER: group {g.id} already "
                           "has a container")
            c = vfio_container_from_file(cf)
            if c is None:
                raise kerr(errno.EBADFD, f"VFIO_GROUP_SET_CONTAINER: fd {fd} is a "
                           f"{cf.kind}, not a VFIO container")
            vfio_container_attach_group(c, g)
    finally:
        fput(cf)
    return 0


@GROUP_IOCTLS.handler(V.VFIO_GROUP_UNSET_CONTAINER)
def vfio_group_ioctl_unset_container(f: VfioGroupFile, proc: Process, arg: UserArg) -> int:
    g = f.group
    with g.group_lock:
        if not g.has_iommu():
            raise kerr(errno.EINVAL, f"VFIO_GROUP_UNSET_CONTAINER: group {g.id} has no "
                       "container")
        if g.container_users != 1:
            raise kerr(errno.EBUSY, f"VFIO_GROUP_UNSET_CONTAINER: group {g.id} has "
                       f"{g.container_users - 1} open device(s)")
        vfio_container_detach_group(g.container, g)
    return 0


@GROUP_IOCTLS.handler(V.VFIO_GROUP_GET_DEVICE_FD)
def vfio_group_ioctl_get_device_fd(f: VfioGroupFile, proc: Process, arg: UserArg) -> int:
    name = strndup_user(arg, PAGE_SIZE, "VFIO_GROUP_GET_DEVICE_FD")
    g = f.group
    device = next((d for d, _ in g.devices if _dev_name(d) == name and
                   d.try_get_registration()), None)
    if device is None:
        raise kerr(errno.ENODEV, f"VFIO_GROUP_GET_DEVICE_FD: no device {name!r} in group "
                   f"{g.id}")
    try:
        df = vfio_device_open_file(f, device)
    except BaseException:
        device.put_registration()
        raise
    return proc.fd_install(df, True)


# ----- the device file opened through the group ----------------------------------------------
class VfioGroupDeviceFile(VfioDeviceFile):
    """The core's device file, opened through a group (df->group set)."""

    def __init__(self, device: VfioDevice, gfile: VfioGroupFile) -> None:
        super().__init__(device, L.O_RDWR)
        self.name = f"[vfio-device:{_dev_name(device)}]"
        self.group = gfile.group  # type: ignore[assignment]
        self.gfile = gfile

    def ioctl(self, proc: Process, cmd: int, arg: Any) -> int:
        """vfio_device_fops_unl_ioctl with df->group set: BIND_IOMMUFD goes to device_cdev.py,
        which refuses a group's file (EINVAL, after its argument checks)."""
        if cmd in (V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, V.VFIO_DEVICE_DETACH_IOMMUFD_PT):
            return self.device.ioctl(proc, cmd, arg)  # not cdev: the driver's
        return super().ioctl(proc, cmd, arg)

    def release(self) -> None:
        """vfio_device_fops_release -> vfio_df_group_close."""
        g = self.gfile.group
        device = self.device
        assert device.dev_set is not None
        with g.group_lock:
            with device.dev_set.lock:
                n = device.open_count
                assert n > 0, f"{device!r}: closed more than opened"
                if n == 1:
                    device.close_device()
                    g.container_users = g.container_users - 1  # vfio_group_unuse_container
                device.open_count = n - 1
        device.kernel.sched.emit("vfio", "close", dev=device.name, group=g.id)
        fput(self.gfile)  # the group file reference the first open took
        device.put_registration()


def vfio_device_open_file(gfile: VfioGroupFile, device: VfioDevice) -> VfioGroupDeviceFile:
    """vfio_device_open_file -> vfio_df_group_open: the group must have a container with an
    IOMMU driver; the first open uses the container and opens the device."""
    g = gfile.group
    if device.kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "VFIO_GROUP_GET_DEVICE_FD: vfio_allocate_device_file "
                   "(injected)")
    with g.group_lock:
        if not g.has_iommu():
            raise kerr(errno.EINVAL, f"VFIO_GROUP_GET_DEVICE_FD: group {g.id} has no "
                       "container")
        assert device.dev_set is not None
        with device.dev_set.lock:
            n = device.open_count
            if n == 0:
                if g.container.iommu_data.get() is None:  # vfio_group_use_container
                    raise kerr(errno.EINVAL, "VFIO_GROUP_GET_DEVICE_FD: the container has no "
                               "IOMMU driver (VFIO_SET_IOMMU first)")
                g.container_users = g.container_users + 1
                try:
                    device.open_device()
                except BaseException:
                    g.container_users = g.container_users - 1
                    raise
            device.open_count = n + 1
        gfile.get()  # get_file(group->opened_file)
    df = VfioGroupDeviceFile(device, gfile)
    df.access_granted.set(True)  # smp_store_release
    device.kernel.sched.emit("vfio", "open", dev=device.name, group=g.id)
    return df
