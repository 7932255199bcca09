"""VFIO_DEVICE_GET_PCI_HOT_RESET_INFO and VFIO_DEVICE_PCI_HOT_RESET for cdev (iommufd) users
(drivers/vfio/pci/vfio_pci_core.c: vfio_pci_ioctl_get_pci_hot_reset_info,
vfio_pci_ioctl_pci_hot_reset, vfio_pci_dev_set_hot_reset, vfio_pci_dev_set_resettable).

A hot reset is a secondary bus reset of the bus the device sits on: every function on that
bus is reset, so every one must belong to the caller. The checks, in the kernel's order:

- INFO: argsz below the header EINVAL; no slot or bus reset possible ENODEV; argsz too small
  for ``count`` entries: ``count`` written back, ENOSPC; else one vfio_pci_dependent_device
  per function on the bus (segment, bus, devfn) with, since the caller is an iommufd user,
  VFIO_PCI_HOT_RESET_FLAG_DEV_ID and each entry's ``devid``: the iommufd device id when the
  function is bound to the caller's iommufd, VFIO_PCI_DEVID_NOT_OWNED otherwise (not a
  vfio device of the same device set, or bound elsewhere); DEV_ID_OWNED is set when no entry
  is NOT_OWNED.
- HOT_RESET: argsz below the header or flags != 0 EINVAL; a non-zero ``count`` (group fds)
  from a cdev user EINVAL; no bus reset ENODEV; then under ``dev_set.lock``: a function of the
  bus that is not in the device set EINVAL; a device of the set not bound to the caller's
  iommufd EINVAL ("the iommufd-based proof"); a device whose memory_lock cannot be taken at
  once EBUSY; each locked device is revoked and zapped; all go to D0; the bus is reset; each
  device is un-revoked when its memory is enabled, and unlocked (in reverse order).

Where a bus reset is possible: the function sits below a bridge (a root bus cannot be
reset: pci_probe_reset_bus is -ENOTTY there), whose ``secondary_bus_reset()`` (hw/pci.py)
resets every function the fabric placed on its secondary bus. The edu of the default machine
is root-complex integrated, so its hot reset is ENODEV as on QEMU's q35; the GPU behind its
root port can be hot reset.
Locking: ``dev_set.lock`` for the reset; each device's ``memory_lock`` for write.
Leaves out: slot resets (no hotplug slots), the group-fd form, runtime-PM gets.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....hw.pci import PciBridge
from ....uapi import vfio as V

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ...fs.uaccess import UserArg
    from .vfio_pci_core import VfioPciCoreDevice

_HDR = ctypes.sizeof(V.vfio_pci_hot_reset_info)  # offsetofend(.., count) == 12
_ENTRY = ctypes.sizeof(V.vfio_pci_dependent_device)


def _bus_reset(pdev: PciDevice) -> Callable[[], Any] | None:
    """pci_probe_reset_bus: the bridge's reset, or None (-ENOTTY)."""
    bridge = pdev.func.parent
    if not isinstance(bridge, PciBridge):
        return None
    fn: Callable[[], Any] | None = getattr(bridge, "secondary_bus_reset", None)
    return fn


def _bus_devices(pdev: PciDevice) -> list[PciDevice]:
    """vfio_pci_for_each_slot_or_bus: the functions on the device's bus."""
    fabric = pdev.fabric
    if fabric is None:
        return [pdev]
    return [d for d in fabric.devices.values() if d.func.parent is pdev.func.parent]


def _vfio_dev(vdev: VfioPciCoreDevice, pdev: PciDevice) -> VfioPciCoreDevice | None:
    """vfio_find_device_in_devset."""
    assert vdev.dev_set is not None
    for d in vdev.dev_set.devices:
        if getattr(d, "pdev", None) is pdev:
            return d  # type: ignore[return-value]
    return None


def _bdf(pdev: PciDevice) -> tuple[int, int, int]:
    seg, bus, devfn = pdev.bdf.split(":")
    dev, fn = devfn.split(".")
    return int(seg, 16), int(bus, 16), int(dev, 16) << 3 | int(fn, 16)


def get_pci_hot_reset_info(vdev: VfioPciCoreDevice, arg: UserArg) -> int:
    hdr = V.vfio_pci_hot_reset_info.from_buffer_copy(arg.read(_HDR))
    if hdr.argsz < _HDR:
        raise kerr(errno.EINVAL, f"GET_PCI_HOT_RESET_INFO: argsz {hdr.argsz} < {_HDR}")
    hdr.flags = 0
    if _bus_reset(vdev.pdev) is None:
        raise kerr(errno.ENODEV, f"GET_PCI_HOT_RESET_INFO: {vdev.name} has no slot or bus "
                   "reset")
    devs = _bus_devices(vdev.pdev)
    if hdr.argsz < _HDR + len(devs) * _ENTRY:
        hdr.count = len(devs)
        arg.write(bytes(hdr)[:_HDR])
        raise kerr(errno.ENOSPC, f"GET_PCI_HOT_RESET_INFO: argsz {hdr.argsz} has no room for "
                   f"{len(devs)} devices")
    hdr.flags = V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
    ictx = vdev.iommufd_ictx
    out = bytearray()
    for pdev in devs:
        entry = V.vfio_pci_dependent_device()
        entry.segment, entry.bus, entry.devfn = _bdf(pdev)
        other = _vfio_dev(vdev, pdev)
        if other is not None and other.iommufd_ictx is ictx and other.iommufd_device:
            entry.devid = other.iommufd_device.id
        else:
            entry.devid = V.VFIO_PCI_DEVID_NOT_OWNED & 0xFFFFFFFF
            hdr.flags &= ~V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        out += bytes(entry)
    hdr.count = len(devs)
    arg.write(bytes(out), _HDR)
    arg.write(bytes(hdr)[:_HDR])
    return 0


def pci_hot_reset(vdev: VfioPciCoreDevice, arg: UserArg) -> int:
    hdr = V.vfio_pci_hot_reset.from_buffer_copy(arg.read(_HDR))
    if hdr.argsz < _HDR or hdr.flags:
        raise kerr(errno.EINVAL, f"PCI_HOT_RESET: argsz {hdr.argsz}, flags {hdr.flags:#x}")
    if hdr.count:  # !!hdr.count == vfio_device_cdev_opened()
        raise kerr(errno.EINVAL, "PCI_HOT_RESET: group fds given by a cdev (iommufd) user")
    reset = _bus_reset(vdev.pdev)
    if reset is None:
        raise kerr(errno.ENODEV, f"PCI_HOT_RESET: {vdev.name} has no slot or bus reset")
    dev_set = vdev.dev_set
    assert dev_set is not None
    ictx = vdev.iommufd_ictx
    with dev_set.lock:
        for pdev in _bus_devices(vdev.pdev):  # vfio_pci_dev_set_resettable
            if _vfio_dev(vdev, pdev) is None:
                raise kerr(errno.EINVAL, f"PCI_HOT_RESET: {pdev.name} on the bus is not a "
                           "vfio-pci device of this device set")
        locked: list[Any] = []
        try:
            for d in dev_set.devices:
                if d.iommufd_ictx is not ictx or ictx is None:
                    raise kerr(errno.EINVAL, f"PCI_HOT_RESET: {d.name} is not owned by the "
                               "caller's iommufd")
                if not d.memory_lock.down_write_trylock():  # type: ignore[attr-defined]
                    raise kerr(errno.EBUSY, f"PCI_HOT_RESET: {d.name}'s memory_lock is busy")
                locked.append(d)
                d.dma_buf_move(True)  # type: ignore[attr-defined]
                d.zap_bars()  # type: ignore[attr-defined]
            for d in locked:
                d.set_power_state("D0")
            reset()
            vdev.kernel.sched.emit("vfio", "hot_reset", dev=vdev.name, devs=len(locked))
        finally:
            for d in reversed(locked):
                if d.memory_enabled():
                    d.dma_buf_move(False)
                d.memory_lock.up_write()
    return 0
