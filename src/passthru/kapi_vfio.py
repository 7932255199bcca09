"""passthru.kapi's VFIO part: what a scenario needs beyond the uAPI to assign PCI functions
with vfio-pci and watch what can still reach their BARs (re-exported by passthru.kapi).

- :func:`pci_dev` / :func:`nic_of` — the hardware PCI function (hw/pcidev.py) by name;
- :func:`vfio_device_of` — the vfio-pci core device behind a cdev fd
  (drivers/vfio/pci/vfio_pci_core.c's struct vfio_pci_core_device);
- :func:`vfio_pci_bind` — bind a function to vfio-pci after boot, as ``echo <vendor>
  <device> > /sys/bus/pci/drivers/vfio-pci/new_id`` does (vfio_pci_probe, kernel/vfio/pci/
  vfio_pci.py); the default machine binds only the edu (VFIO_PCI_IDS);
- :func:`hotplug_nic` — a P2P-capable NIC (hw/devices/nic.py) added to the machine's root bus
  behind an IOMMU unit (the default machine has none);
- :func:`vfio_open` — open a cdev, VFIO_DEVICE_BIND_IOMMUFD and optionally
  VFIO_DEVICE_ATTACH_IOMMUFD_PT (device_cdev.py), as a VMM does;
- :func:`cfg_write` / :func:`set_command` — the guest's config writes through the config
  region (vfio_pci_config.py: COMMAND.MEMORY clear zaps and revokes under memory_lock);
- :func:`export_bar` — VFIO_DEVICE_FEATURE_DMA_BUF of one BAR range (pci/dmabuf.py);
- :func:`mmap_bar` — mmap a BAR region of a cdev (VM_PFNMAP; faulted under memory_lock);
- :func:`edu_dma_in_flight` — program QEMU's edu DMA engine with its timer deferred, so a
  task's :meth:`EduDevice.run_dma` is the DMA in flight;
- invariants: :func:`sptes_reach_disabled_bar` (a vCPU's stage-2 maps a BAR that does not
  decode: the vCPU reaches a device in reset or with memory disabled) and
  :func:`iommu_reaches_disabled_bar` (a peer's IOMMU translation lands in such a BAR).

Leaves out: hot-unplug (a function added stays until the machine goes), sysfs unbind.
Locking: the binding helpers run in a scenario's set-up, before any task (the kernel's device
table is written only there); the invariants read hardware and page tables unlocked, as the
checker's step checks do.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

from .hw.devices.edu import EduDevice
from .hw.devices.nic import NicDevice
from .hw.pci import PciFunction
from .kernel.kvm.kvm_main import KvmVmFile
from .kernel.vfio.pci import vfio_pci as _vfio_pci
from .kernel.vfio.pci.vfio_pci import pci_devices
from .kernel.vfio.pci.vfio_pci_core import VfioPciCoreDevice
from .kernel.vfio.vfio_main import VfioDeviceFile
from .uapi import linux as L
from .uapi import vfio as V

if TYPE_CHECKING:
    from .host.sim import SimHost
    from .hw.pcidev import PciDevice

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
CFG_REGION = V.vfio_pci_index_to_offset(V.VFIO_PCI_CONFIG_REGION_INDEX)


def pci_dev(host: SimHost, name: str) -> PciDevice:
    """The PCI function ``name`` of the machine, as hardware (KeyError if none)."""
    return pci_devices(host.kernel)[name]


def nic_of(host: SimHost, name: str = "nic0") -> NicDevice:
    """The NIC ``name`` (see :func:`hotplug_nic`)."""
    dev = pci_dev(host, name)
    if not isinstance(dev, NicDevice):
        raise TypeError(f"{name} is a {type(dev).__name__}, not a NIC")
    return dev


def vfio_device_of(host: SimHost, fd: int) -> VfioPciCoreDevice:
    """The vfio-pci device behind a cdev fd (TypeError for another kind of file)."""
    f = host.proc.lookup_fd(fd, "kapi.vfio_device_of")
    if not isinstance(f, VfioDeviceFile) or not isinstance(f.device, VfioPciCoreDevice):
        raise TypeError(f"fd {fd} is a {f.kind}, not a vfio-pci device")
    return f.device


def vfio_pci_bind(host: SimHost, name: str) -> str:
    """Bind PCI function ``name`` to vfio-pci (the new_id/driver_override route,
    kernel/vfio/pci/vfio_pci.py ``vfio_pci_bind``); its cdev path. Already bound: the path it
    has."""
    return str(_vfio_pci.vfio_pci_bind(host.kernel, name).devnode)


def hotplug_nic(host: SimHost, name: str = "nic0", bdf: str = "0000:00:05.0",
                bar0: int = 0xF010_0000, iommu: str = "iommu0",
                beside: str | None = None) -> NicDevice:
    """A NIC with a 16 KiB BAR0 at ``bar0``, behind IOMMU unit ``iommu``: on the root bus (a
    root-complex integrated endpoint), or below the same bridge as device ``beside`` (a P2P
    path through that bridge: pci_p2pdma_map_type() BUS_ADDR). No driver."""
    some = next(iter(pci_devices(host.kernel).values()))
    fabric = some.fabric
    if fabric is None or iommu not in fabric.iommus:
        raise ValueError(f"hotplug_nic: no fabric with IOMMU {iommu}")
    func = PciFunction(name, bdf, {0: (bar0, 0x4000)})
    parent = pci_dev(host, beside).func.parent if beside else fabric.topology.host
    assert parent is not None
    fabric.topology.add_function(func, parent)
    nic = NicDevice(name, func, host.kernel.phys, host.kernel.sched,
                    iommu=fabric.iommus[iommu], fabric=fabric)
    pci_devices(host.kernel)[name] = nic
    return nic


def vfio_open(host: SimHost, path: str, iommufd: int, pt_id: int | None = None) -> int:
    """open(cdev) + VFIO_DEVICE_BIND_IOMMUFD (+ VFIO_DEVICE_ATTACH_IOMMUFD_PT to ``pt_id``)."""
    fd = host.open(path, L.O_RDWR)
    bind = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                      iommufd=iommufd)
    host.ioctl(fd, V.VFIO_DEVICE_BIND_IOMMUFD, bind)
    if pt_id is not None:
        at = V.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(V.vfio_device_attach_iommufd_pt), pt_id=pt_id)
        host.ioctl(fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at)
    return fd


def cfg_read(host: SimHost, fd: int, off: int, size: int) -> int:
    return int.from_bytes(host.pread(fd, size, CFG_REGION + off), "little")


def cfg_write(host: SimHost, fd: int, off: int, size: int, val: int) -> None:
    """A config write through the device's config region (vfio_pci_config.py)."""
    host.pwrite(fd, val.to_bytes(size, "little"), CFG_REGION + off)


def set_command(host: SimHost, fd: int, bits: int, on: bool) -> None:
    """Set or clear COMMAND ``bits`` (PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER) through vfio."""
    cmd = cfg_read(host, fd, PCI_COMMAND, 2)
    cfg_write(host, fd, PCI_COMMAND, 2, cmd | bits if on else cmd & ~bits)


def export_bar(host: SimHost, fd: int, bar: int, length: int, offset: int = 0) -> int:
    """VFIO_DEVICE_FEATURE_DMA_BUF of ``[offset, offset + length)`` of BAR ``bar``: its fd."""
    arg = V.feature_dma_buf(bar, [(offset, length)], L.O_RDWR | L.O_CLOEXEC)
    return host.ioctl(fd, V.VFIO_DEVICE_FEATURE, arg)


def mmap_bar(host: SimHost, fd: int, bar: int, length: int) -> int:
    """mmap(MAP_SHARED) of the first ``length`` bytes of BAR ``bar``: the address."""
    return host.mmap(0, length, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, fd,
                     V.vfio_pci_index_to_offset(bar))


def edu_dma_in_flight(edu: PciDevice, iova: int, n: int, to_ram: bool = True) -> EduDevice:
    """Program the edu's DMA engine (buffer <-> ``iova``) through its BAR with the timer
    deferred: the DMA runs when a task calls ``run_dma()`` on the result."""
    if not isinstance(edu, EduDevice):
        raise TypeError(f"{edu.name} is not an edu device")
    edu.defer_dma = True
    buf = 0x40000
    src, dst = (buf, iova) if to_ram else (iova, buf)
    edu.mmio_write(0, 0x80, 8, src)
    edu.mmio_write(0, 0x88, 8, dst)
    edu.mmio_write(0, 0x90, 8, n)
    edu.mmio_write(0, 0x98, 8, 0x1 | (0x2 if to_ram else 0))
    return edu


# ----- invariants ---------------------------------------------------------------------------


def _bars(pdev: PciDevice) -> list[tuple[int, int, int]]:
    return [(i, b.base, b.base + b.size) for i, b in sorted(pdev.func.bars.items())]


def _why(pdev: PciDevice) -> str:
    return pdev._why_not_memory() or "?"  # noqa: SLF001 - the device's own reason


def sptes_reach_disabled_bar(host: SimHost, vm_fd: int,
                             pdev: PciDevice) -> Callable[[], str | None]:
    """Invariant: no SPTE of the VM behind ``vm_fd`` maps a BAR of ``pdev`` while the BAR
    does not decode (MSE clear, D3hot, in an FLR): else the guest's vCPU reaches a device in
    reset. vfio zaps the VMM's BAR PTEs first, and KVM's mmu_notifier follows the zap."""
    f = host.proc.lookup_fd(vm_fd, "kapi.sptes_reach_disabled_bar")
    if not isinstance(f, KvmVmFile):
        raise TypeError(f"fd {vm_fd} is a {f.kind}, not a KVM VM")
    mmu = f.kvm.mmu
    bars = _bars(pdev)

    def check() -> str | None:
        if pdev.memory_enabled:
            return None
        for gs, ge, p in mmu.spte:
            for i, lo, hi in bars:
                if p < hi and lo < p + (ge - gs):
                    return (f"SPTE gpa [{gs:#x}, {ge:#x}) maps {pdev.name} BAR{i} (phys "
                            f"{p:#x}) while its memory is off ({_why(pdev)}): the vCPU "
                            f"reaches a device in reset")
        return None

    return check


def iommu_reaches_disabled_bar(dev: PciDevice, iova: int, length: int,
                               pdev: PciDevice) -> Callable[[], str | None]:
    """Invariant: ``dev``'s IOMMU does not translate ``[iova, iova + length)`` into a BAR of
    ``pdev`` while that BAR does not decode: revoking the dma-buf unmaps it first."""
    bars = _bars(pdev)
    assert dev.iommu is not None
    unit = dev.iommu

    def check() -> str | None:
        if pdev.memory_enabled:
            return None
        dom = unit.domain_of(dev.name)
        if dom is None or dom.kind != "paging":
            return None
        assert dom.table is not None
        for s, e, p, _prot in dom.table.mapped(iova, iova + length):  # extents, not pages
            for i, lo, hi in bars:
                if p < hi and lo < p + (e - s):
                    a = s + max(lo - p, 0)
                    return (f"{dev.name}'s IOMMU maps iova {a:#x} to {pdev.name} BAR{i} "
                            f"(phys {p + a - s:#x}) while its memory is off ({_why(pdev)}): "
                            f"its DMA reaches a BAR that does not decode")
        return None

    return check


__all__ = [
    "PCI_COMMAND_MASTER", "PCI_COMMAND_MEMORY", "cfg_read", "cfg_write", "edu_dma_in_flight",
    "export_bar", "hotplug_nic", "iommu_reaches_disabled_bar", "mmap_bar", "nic_of",
    "pci_dev", "set_command", "sptes_reach_disabled_bar", "vfio_device_of", "vfio_open",
    "vfio_pci_bind",
]
