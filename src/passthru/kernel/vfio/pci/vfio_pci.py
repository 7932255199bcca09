"""The vfio-pci driver: binding PCI functions to vfio (drivers/vfio/pci/vfio_pci.c), and —
standing in for the PCI core's enumeration — the machine's PCI devices.

At boot (``@initcall("device")``, module_init(vfio_pci_init)): the machine's PCI functions are
built as hardware (hw/devices ``build_devices``: what firmware and drivers/pci/probe.c leave
behind) and kept in the static :data:`pci_devices`; each function whose vendor:device is in
:data:`VFIO_PCI_IDS` (the ``vfio-pci.ids=`` module parameter; by default QEMU's edu,
1234:11e8) is probed (:func:`vfio_pci_probe`): a :class:`VfioPciCoreDevice` joins its device
set (vfio_pci_core_register_device: its own set on a root bus, else the bus's), its IOMMU
group (group.py: one group per device, node /dev/vfio/<id>) and its cdev
/dev/vfio/devices/vfioN are registered (__vfio_register_dev's order).
:data:`vfio_pci_devices` maps device names to them.

Invariants: a function is bound at most once; device nodes exist only for bound functions.
Locking: both statics are written at boot only, before any task; read-only afterwards.
Leaves out: driver_override and
runtime bind/unbind through sysfs, SR-IOV (sriov_configure), the VGA arbiter, IGD quirks, a
real PCI core (kernel/pci/ would own :data:`pci_devices`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ....hw.devices import build_devices
from ....hw.pci import PciBridge
from ...init import initcall, kernel_static
from ..group import vfio_device_set_group
from ..vfio_main import vfio_assign_device_set, vfio_register_device
from .vfio_pci_core import VfioPciCoreDevice

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ...core import Kernel

#: vfio-pci.ids=: the (vendor, device) pairs the driver binds.
VFIO_PCI_IDS: tuple[tuple[int, int], ...] = ((0x1234, 0x11E8),)


def _no_devices(kernel: Kernel) -> dict[str, PciDevice]:
    return {}


def _no_vfio_devices(kernel: Kernel) -> dict[str, VfioPciCoreDevice]:
    return {}


pci_devices = kernel_static("pci.devices", _no_devices)
vfio_pci_devices = kernel_static("vfio_pci.devices", _no_vfio_devices)


def vfio_pci_probe(kernel: Kernel, pdev: PciDevice) -> VfioPciCoreDevice:
    """vfio_pci_probe → vfio_pci_core_register_device: the device set, then the cdev."""
    vdev = VfioPciCoreDevice(kernel, pdev)
    parent = pdev.func.parent
    key = f"bus:{parent.name}" if isinstance(parent, PciBridge) else f"dev:{pdev.name}"
    vfio_assign_device_set(vdev, key)
    vfio_device_set_group(kernel, vdev, vdev.iommu_dev)  # /dev/vfio/<group> (group.py)
    vfio_register_device(kernel, vdev)
    vfio_pci_devices(kernel)[pdev.name] = vdev
    return vdev


def vfio_pci_bind(kernel: Kernel, name: str) -> VfioPciCoreDevice:
    """Bind PCI device ``name`` to vfio-pci after boot (driver_override + bind, or new_id):
    the probe runs as at boot and creates its nodes. Bound already: that device. A device
    behind no IOMMU: EINVAL (vfio-pci refuses it without noiommu); no such device: ENODEV."""
    bound = vfio_pci_devices(kernel)
    if name in bound:
        return bound[name]
    pdev = pci_devices(kernel).get(name)
    if pdev is None:
        raise kerr(errno.ENODEV, f"vfio-pci bind: no PCI device {name}")
    if pdev.iommu is None:
        raise kerr(errno.EINVAL, f"vfio-pci bind: {name} is behind no IOMMU (no noiommu mode)")
    return vfio_pci_probe(kernel, pdev)


@initcall("device")  # module_init(vfio_pci_init)
def vfio_pci_init(kernel: Kernel) -> None:
    devices = pci_devices(kernel)
    devices.update(build_devices(kernel, kernel.sched, kernel.machine))
    for name in sorted(devices):
        pdev = devices[name]
        if (pdev.vendor, pdev.device) in VFIO_PCI_IDS and pdev.iommu is not None:
            vfio_pci_probe(kernel, pdev)
