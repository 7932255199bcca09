"""The VFIO core: struct vfio_device, its device sets, the device file and its fops
(drivers/vfio/vfio_main.c, drivers/vfio/vfio.h, include/linux/vfio.h).

A :class:`VfioDevice` is what a VFIO driver (vfio-pci: pci/vfio_pci_core.py) registers; the
driver's ``struct vfio_device_ops`` are the methods a subclass overrides (``open_device``,
``close_device``, ``ioctl``, ``read``, ``write``, ``mmap``, ``device_feature``,
``get_region_info_caps``, and the iommufd ops of vfio/iommufd.py). A :class:`VfioDeviceFile`
is one open of the device's cdev (struct vfio_device_file + vfio_device_fops):

- ``ioctl``: VFIO_DEVICE_BIND_IOMMUFD first (device_cdev.py); then, until a bind succeeded
  (``access_granted``), every other ioctl is EINVAL; then the cdev-only ATTACH/DETACH_
  IOMMUFD_PT, VFIO_DEVICE_FEATURE (:func:`vfio_ioctl_device_feature`: argsz below the header
  EINVAL, unknown flag bits EINVAL, GET and SET together without PROBE EINVAL, migration and
  dirty-logging features without the driver's ops ENOTTY, the rest to the driver),
  VFIO_DEVICE_GET_REGION_INFO (:func:`vfio_get_region_info`: argsz below the fixed struct
  EINVAL; a capability chain is copied after the struct when argsz has room for it, else
  argsz says how much is needed and cap_offset is 0), and everything else to the driver's
  ``ioctl`` (none: EINVAL).
- ``read``/``write``/``mmap``: EINVAL before the bind, then the driver's op (none: EINVAL).
- ``release``: unbind (close the device if this file opened it), drop the registration.

Open counting (vfio_df_open/vfio_df_close): the cdev path opens the device once — a second
file's bind while ``open_count`` != 0 is EINVAL; the first open binds iommufd, then calls
``open_device``; the last close calls ``close_device``, then unbinds iommufd.

Device sets (struct vfio_device_set): devices a reset affects together share one set and its
``lock`` (dev_set->lock); a driver picks the set key (vfio_assign_device_set).

Invariants: ``open_count`` is 0 or 1 on the cdev path; ``access_granted`` implies the device
is open and bound through this file; ``i_mmap`` holds every live VMA of every file of the
device (the device inode's address_space that unmap_mapping_range walks).
Units: file offsets in bytes (vfio-pci puts region ``i`` at ``i << 40``).

Which lock protects which field:
- ``VfioDevice.open_count``, ``cdev_opened``, ``iommufd_device``, ``iommufd_attached``,
  ``iommufd_ictx``, ``pasids``: ``dev_set.lock`` (lockdep_assert_held in vfio_df_open/close
  and the iommufd ops) — Plain fields and a tracked dict;
- ``VfioDevice.registration``: refcount_t, an ``atomic`` cell;
- ``VfioDevice.i_mmap``: the inode's i_mmap_rwsem, implicit: an ``atomic`` list;
- ``VfioDeviceFile.access_granted``: written with smp_store_release after a bind, read with
  smp_load_acquire by every fop: an ``atomic`` cell (release/acquire);
- ``VfioDeviceFile.iommufd``/``devid``: written under ``dev_set.lock`` before
  ``access_granted`` is published, read after it or under the lock;
- ``VfioDeviceSet.devices``: written at probe (boot), read-only afterwards.
The group/container path is group.py and container.py (``df.group`` is set only on the
device files a group hands out; ``VfioDevice.group`` is the device's group, set at probe).
Leaves out: noiommu, KVM references, runtime PM get/put around ioctls, device unregistration
(vfio_unregister_group_dev: devices stay registered), debugfs, the VF token on bind.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any

from ...errors import Fault, kerr
from ...sim import track
from ...sim.fields import Plain
from ...sim.locks import Mutex
from ...sim.track import Cell, TrackedDict, TrackedList
from ...uapi import vfio as V
from ..fs.file import File
from ..init import kernel_static
from ..lockdep_assert import lockdep_assert_held

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

FEATURE_HDR = ctypes.sizeof(V.vfio_device_feature)  # offsetofend(.., flags) == 8
REGION_INFO_MIN = ctypes.sizeof(V.vfio_region_info)  # offsetofend(.., offset) == 32
CAP_HDR = ctypes.sizeof(V.vfio_info_cap_header)


class VfioDeviceSet(track.Tracked):
    """struct vfio_device_set: the devices one reset touches, and their lock."""

    def __init__(self, kernel: Kernel, key: str) -> None:
        self.key = key
        self.lock = Mutex(kernel.sched, f"vfio.dev_set.{key}.lock", "dev_set->lock")
        self.devices: list[VfioDevice] = TrackedList(label=f"vfio.dev_set.{key}.devices")
        self.track_init(f"vfio.dev_set.{key}")


def _dev_sets(kernel: Kernel) -> dict[str, VfioDeviceSet]:
    return {}  # written at probe (boot) only


vfio_dev_sets = kernel_static("vfio.dev_sets", _dev_sets)


def vfio_assign_device_set(device: VfioDevice, key: str) -> VfioDeviceSet:
    """vfio_assign_device_set: join (or make) the set named ``key``."""
    sets = vfio_dev_sets(device.kernel)
    dev_set = sets.get(key)
    if dev_set is None:
        dev_set = sets[key] = VfioDeviceSet(device.kernel, key)
    dev_set.devices.append(device)
    device.dev_set = dev_set
    return dev_set


class VfioInfoCap:
    """struct vfio_info_cap: a capability chain being built (vfio_info_cap_add,
    vfio_info_add_capability, vfio_info_cap_shift). Each entry starts with struct
    vfio_info_cap_header {u16 id, u16 version, u32 next}; ``next`` is an offset from the
    start of the chain until shifted by the size of the info struct it follows."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._last = -1

    @property
    def size(self) -> int:
        return len(self.buf)

    def add(self, cap_id: int, version: int, body: bytes) -> None:
        """vfio_info_cap_add: append ``body`` (after its header), 8-byte aligned."""
        off = (len(self.buf) + 7) & ~7
        self.buf.extend(bytes(off - len(self.buf)))
        hdr = V.vfio_info_cap_header(id=cap_id, version=version, next=0)
        self.buf.extend(bytes(hdr) + body)
        if self._last >= 0:
            prev = V.vfio_info_cap_header.from_buffer(self.buf, self._last)
            prev.next = off
        self._last = off

    def shift(self, offset: int) -> None:
        """vfio_info_cap_shift: make every ``next`` relative to the user's struct."""
        pos = 0 if self.buf else -1
        while pos >= 0:
            hdr = V.vfio_info_cap_header.from_buffer(self.buf, pos)
            nxt = hdr.next
            if nxt:
                hdr.next = nxt + offset
            pos = nxt if nxt else -1


class VfioDevice(track.Tracked):
    """struct vfio_device with its vfio_device_ops as overridable methods."""

    open_count = Plain[int]((0, 1))
    cdev_opened = Plain[bool]((1, 2))
    iommufd_device = Plain[Any]((2, 3))
    iommufd_attached = Plain[bool]((3, 4))
    iommufd_ictx = Plain[Any]((4, 5))

    def __init__(self, kernel: Kernel, name: str) -> None:
        self.kernel = kernel
        self.name = name
        self.index = kernel.next_id("vfio_device") - 1
        self.dev_set: VfioDeviceSet | None = None
        self.group: Any = None  # device->group (group.py's VfioGroup), set at probe
        self._open_count = 0
        self._cdev_opened = False
        self._iommufd_device: Any = None
        self._iommufd_attached = False
        self._iommufd_ictx: Any = None
        self.pasids: dict[int, bool] = TrackedDict(label=f"vfio.{name}.pasids")
        self.registration: Cell[int] = Cell(1, label=f"vfio.{name}.refcount", atomic=True)
        self.i_mmap: list[Vma] = TrackedList(label=f"vfio.{name}.i_mmap", atomic=True)
        self.track_init(f"vfio.{name}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def devnode(self) -> str:
        return f"/dev/vfio/devices/vfio{self.index}"

    # ----- registration (vfio_device_try_get_registration / put) ------------------------
    def try_get_registration(self) -> bool:
        n = self.registration.get()
        if n == 0:
            return False
        self.registration.set(n + 1)
        return True

    def put_registration(self) -> None:
        n = self.registration.get()
        assert n > 0, f"{self!r}: registration put below zero"
        self.registration.set(n - 1)

    # ----- struct vfio_device_ops (defaults: the op is absent) ---------------------------
    def open_device(self) -> None:
        pass

    def close_device(self) -> None:
        pass

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        raise kerr(errno.EINVAL, f"{self.name}: ioctl {cmd:#x}: the driver has no ioctl op")

    def read(self, proc: Process, n: int, pos: int) -> bytes:
        raise kerr(errno.EINVAL, f"{self.name}: read: the driver has no read op")

    def write(self, proc: Process, data: bytes, pos: int) -> int:
        raise kerr(errno.EINVAL, f"{self.name}: write: the driver has no write op")

    def mmap(self, proc: Process, vma: Vma) -> None:
        raise kerr(errno.EINVAL, f"{self.name}: mmap: the driver has no mmap op")

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        raise Fault(vma.start + (start - vma.pgoff), "SIGBUS", f"{self.name}: no fault op")

    def device_feature(self, proc: Process, flags: int, arg: UserArg, argsz: int) -> int:
        raise kerr(errno.ENOTTY, f"{self.name}: feature {flags & 0xFFFF}: no device_feature op")

    def get_region_info_caps(self, info: V.vfio_region_info, caps: VfioInfoCap) -> None:
        raise kerr(errno.EINVAL, f"{self.name}: no get_region_info_caps op")

    # vfio/iommufd.py's physical-device ops; set by drivers that have them.
    def bind_iommufd(self, ictx: Any) -> int:
        raise kerr(errno.EINVAL, f"{self.name}: no bind_iommufd op")

    def unbind_iommufd(self) -> None:
        pass

    def attach_ioas(self, pt_id: int) -> int:
        raise kerr(errno.EINVAL, f"{self.name}: no attach_ioas op")

    def detach_ioas(self) -> None:
        pass

    has_pasid_ops = False

    def pasid_attach_ioas(self, pasid: int, pt_id: int) -> int:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: no pasid_attach_ioas op")

    def pasid_detach_ioas(self, pasid: int) -> None:
        pass


# ----- open / close (vfio_df_open, vfio_df_close) -------------------------------------------
def vfio_df_open(df: VfioDeviceFile) -> None:
    """vfio_df_open (dev_set->lock held): EINVAL when the cdev device is already open; the
    first open binds iommufd, then opens the device (undone on failure)."""
    device = df.device
    assert device.dev_set is not None
    lockdep_assert_held(device.dev_set.lock, "vfio_df_open")
    if device.open_count != 0:
        raise kerr(errno.EINVAL, f"{device.name}: already opened through another cdev fd "
                   "(open_count != 0 and not the group path)")
    device.open_count = 1
    try:
        df.devid = device.bind_iommufd(df.iommufd)  # vfio_df_iommufd_bind
        try:
            device.open_device()
        except BaseException:
            device.unbind_iommufd()
            raise
    except BaseException:
        device.open_count = 0
        raise
    device.kernel.sched.emit("vfio", "open", dev=device.name, devid=df.devid)


def vfio_df_close(df: VfioDeviceFile) -> None:
    """vfio_df_close (dev_set->lock held): the last close closes the device, then unbinds."""
    device = df.device
    assert device.dev_set is not None
    lockdep_assert_held(device.dev_set.lock, "vfio_df_close")
    n = device.open_count
    assert n > 0, f"{device!r}: closed more than opened"
    if n == 1:
        device.close_device()
        device.unbind_iommufd()
    device.open_count = n - 1
    device.kernel.sched.emit("vfio", "close", dev=device.name)


# ----- VFIO_DEVICE_FEATURE and VFIO_DEVICE_GET_REGION_INFO (vfio_main.c) --------------------
_FEATURE_FLAGS = (V.VFIO_DEVICE_FEATURE_MASK | V.VFIO_DEVICE_FEATURE_SET
                  | V.VFIO_DEVICE_FEATURE_GET | V.VFIO_DEVICE_FEATURE_PROBE)
_CORE_FEATURES = {  # handled by the core, ENOTTY without the driver's mig_ops / log_ops
    V.VFIO_DEVICE_FEATURE_MIGRATION: "mig_ops",
    V.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: "mig_ops",
    V.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: "mig_ops",
    V.VFIO_DEVICE_FEATURE_DMA_LOGGING_START: "log_ops",
    V.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: "log_ops",
    V.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: "log_ops",
}


def vfio_ioctl_device_feature(device: VfioDevice, proc: Process, arg: UserArg) -> int:
    """vfio_ioctl_device_feature: the header's checks, then the core's features or the
    driver's device_feature with the payload size (argsz - the header)."""
    feature = V.vfio_device_feature.from_buffer_copy(arg.read(FEATURE_HDR))
    if feature.argsz < FEATURE_HDR:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE: argsz {feature.argsz} < {FEATURE_HDR}")
    flags = feature.flags
    if flags & ~_FEATURE_FLAGS:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE: unknown flags {flags & ~_FEATURE_FLAGS:#x}")
    if (not flags & V.VFIO_DEVICE_FEATURE_PROBE and flags & V.VFIO_DEVICE_FEATURE_SET
            and flags & V.VFIO_DEVICE_FEATURE_GET):
        raise kerr(errno.EINVAL, "VFIO_DEVICE_FEATURE: GET and SET together without PROBE")
    nr = flags & V.VFIO_DEVICE_FEATURE_MASK
    ops = _CORE_FEATURES.get(nr)
    if ops is not None:
        raise kerr(errno.ENOTTY, f"VFIO_DEVICE_FEATURE {nr}: {device.name} has no {ops}")
    return device.device_feature(proc, flags, arg, feature.argsz - FEATURE_HDR)


def vfio_check_feature(flags: int, argsz: int, supported_ops: int, minsz: int) -> bool:
    """vfio_check_feature (include/linux/vfio.h): an op not supported EINVAL; PROBE: False
    (the ioctl returns 0); neither GET nor SET EINVAL; argsz below ``minsz`` EINVAL; True:
    go on."""
    ops = flags & (V.VFIO_DEVICE_FEATURE_GET | V.VFIO_DEVICE_FEATURE_SET)
    if ops & ~supported_ops:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE {flags & 0xFFFF}: op {ops:#x} not "
                   f"supported ({supported_ops:#x})")
    if flags & V.VFIO_DEVICE_FEATURE_PROBE:
        return False
    if not ops:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE {flags & 0xFFFF}: neither GET nor SET")
    if argsz < minsz:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE {flags & 0xFFFF}: argsz {argsz} < "
                   f"{minsz}")
    return True


def vfio_get_region_info(device: VfioDevice, arg: UserArg) -> int:
    """vfio_get_region_info: the driver fills ``info`` and ``caps``; the chain goes right
    after the struct when argsz leaves room, else argsz tells the size needed."""
    info = V.vfio_region_info.from_buffer_copy(arg.read(REGION_INFO_MIN))
    if info.argsz < REGION_INFO_MIN:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_GET_REGION_INFO: argsz {info.argsz} < "
                   f"{REGION_INFO_MIN}")
    caps = VfioInfoCap()
    device.get_region_info_caps(info, caps)
    if caps.size:
        info.flags |= V.VFIO_REGION_INFO_FLAG_CAPS
        if info.argsz < REGION_INFO_MIN + caps.size:
            info.argsz = REGION_INFO_MIN + caps.size
            info.cap_offset = 0
        else:
            caps.shift(REGION_INFO_MIN)
            arg.write(bytes(caps.buf), REGION_INFO_MIN)
            info.cap_offset = REGION_INFO_MIN
    arg.copy_to_user(info)
    return 0


# ----- the device file (struct vfio_device_file + vfio_device_fops) -------------------------
class VfioDeviceFile(File):
    """An open /dev/vfio/devices/vfioN (vfio_device_fops_cdev_open)."""

    kind = "vfio-device"
    fmode_pread = True  # vfio_device_fops: pread/pwrite at region offsets

    def __init__(self, device: VfioDevice, flags: int) -> None:
        super().__init__(device.kernel, flags, device.devnode)
        self.device = device
        self.access_granted: Cell[bool] = Cell(False, label=f"{self.name}.access_granted",
                                               atomic=True)
        self.iommufd: Any = None  # the bound iommufd context (a File reference)
        self.devid = 0
        self.group = None  # df->group: None on a cdev file (group.py's files set it)
        self.i_mmap_writable = 0  # the inode's count of writable shared maps (mm/vma.py)

    def granted(self) -> bool:
        """smp_load_acquire(&df->access_granted)."""
        return self.access_granted.get()

    def _gate(self, what: str) -> None:
        if not self.granted():
            raise kerr(errno.EINVAL, f"{what} on {self.name}: not bound to an iommufd yet "
                       "(VFIO_DEVICE_BIND_IOMMUFD first)")

    def ioctl(self, proc: Process, cmd: int, arg: Any) -> int:
        """vfio_device_fops_unl_ioctl."""
        from . import device_cdev  # device_cdev.py imports this module: a cycle

        device = self.device
        if cmd == V.VFIO_DEVICE_BIND_IOMMUFD:
            return device_cdev.vfio_df_ioctl_bind_iommufd(self, proc, arg)
        self._gate(f"ioctl {cmd:#x}")
        if cmd == V.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            return device_cdev.vfio_df_ioctl_attach_pt(self, proc, arg)
        if cmd == V.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            return device_cdev.vfio_df_ioctl_detach_pt(self, proc, arg)
        if cmd == V.VFIO_DEVICE_FEATURE:
            return vfio_ioctl_device_feature(device, proc, arg)
        if cmd == V.VFIO_DEVICE_GET_REGION_INFO:
            return vfio_get_region_info(device, arg)
        return device.ioctl(proc, cmd, arg)

    def read(self, proc: Process, n: int, pos: int | None) -> bytes:
        self._gate("read")
        at = self.f_pos if pos is None else pos
        out = self.device.read(proc, n, at)
        if pos is None:
            self.f_pos = at + len(out)
        return out

    def write(self, proc: Process, data: bytes, pos: int | None) -> int:
        self._gate("write")
        at = self.f_pos if pos is None else pos
        n = self.device.write(proc, data, at)
        if pos is None:
            self.f_pos = at + n
        return n

    def mmap(self, proc: Process, vma: Vma) -> None:
        self._gate("mmap")
        self.device.mmap(proc, vma)

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        """vm_ops->fault of the driver's mappings."""
        return self.device.fault(vma, start, end, write)

    def release(self) -> None:
        """vfio_device_fops_release: unbind (cdev), then drop the registration."""
        from .device_cdev import vfio_df_unbind_iommufd  # device_cdev imports this module

        vfio_df_unbind_iommufd(self)
        self.device.put_registration()


def vfio_device_fops_cdev_open(device: VfioDevice, flags: int) -> VfioDeviceFile:
    """vfio_device_fops_cdev_open: a registration reference (gone: ENODEV), then the file
    (kzalloc)."""
    if not device.try_get_registration():
        raise kerr(errno.ENODEV, f"open {device.devnode}: device is being unregistered")
    if device.kernel.sched.fault("kzalloc"):
        device.put_registration()
        raise kerr(errno.ENOMEM, f"open {device.devnode}: vfio_allocate_device_file (injected)")
    return VfioDeviceFile(device, flags)


def vfio_register_device(kernel: Kernel, device: VfioDevice) -> None:
    """vfio_register_group_dev's cdev half: the node /dev/vfio/devices/vfioN (from an
    initcall: devices are probed at boot)."""
    kernel.device_add(device.devnode,
                           lambda proc, flags: vfio_device_fops_cdev_open(device, flags))
