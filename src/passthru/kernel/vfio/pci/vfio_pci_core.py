"""The vfio-pci core device (drivers/vfio/pci/vfio_pci_core.c, struct vfio_pci_core_device
in include/linux/vfio_pci_core.h).

A :class:`VfioPciCoreDevice` is a :class:`~passthru.kernel.vfio.vfio_main.VfioDevice` over one
hw :class:`~passthru.hw.pcidev.PciDevice`, with the iommu core's view of it (``iommu_dev``,
behind the function's hw IOMMU with the generic paging driver). Its ops:

- open (vfio_pci_core_enable): D0, pci_enable_device (COMMAND.MEMORY set), a function reset
  when the device has a reset method (``reset_works``), config saved, the virtual config
  space built (vfio_pci_config.py). Close (vfio_pci_core_close_device): the dma-bufs are
  revoked for good (vfio_pci_dma_buf_cleanup), low power left, D0, bus mastering cleared,
  the virtual config freed, the device reset (when it can be) and the config saved at open
  restored (so MSE comes back as it was at open), bus mastering off.
- ioctls: GET_INFO (flags PCI, RESET only with a reset method; 9 regions, 5 IRQ indexes),
  GET_REGION_INFO (:meth:`get_region_info_caps`: BARs READ|WRITE|MMAP with the BAR's size,
  an unimplemented BAR size 0 and no flags; ROM: size 0, no flags, when the device has no
  ROM; CONFIG READ|WRITE with cfg_size; VGA EINVAL without VGA; an index past the regions
  EINVAL; the MSIX_MAPPABLE capability on the MSI-X BAR — the model's devices have none, so
  no region carries a capability chain), GET_IRQ_INFO (index past 5 EINVAL; ERR only for
  PCIe before 7.3 — profile ``vfio_pci_err_irq_pcie_only`` — then for every device, count 1;
  EVENTFD, INTx MASKABLE|AUTOMASKED with count 1 when INTERRUPT_PIN is set, MSI's count from
  its QMASK, NORESIZE but for MSI-X with ``has_dyn_msix`` — never here: that needs an MSI-X
  capability), RESET (no reset method EINVAL; else zap +
  memory_lock (write), D0, revoke, pci_try_reset_function, un-revoke when memory is
  enabled), GET_PCI_HOT_RESET_INFO and PCI_HOT_RESET (pci_hot_reset.py), anything else
  ENOTTY.
- VFIO_DEVICE_FEATURE (:meth:`device_feature`): LOW_POWER_ENTRY/EXIT (SET only; entry zaps
  and revokes, a second entry EINVAL; exit un-revokes when memory is enabled),
  LOW_POWER_ENTRY_WITH_WAKEUP (the eventfd: EBADF/EINVAL — no eventfds in the model), the
  VF token ENOTTY (not a PF), DMA_BUF to pci/dmabuf.py, anything else ENOTTY.
- region read/write (vfio_pci_rdwr.py); BAR mmap (:meth:`mmap`: MAP_SHARED, a BAR index,
  mmap-able, inside the page-rounded BAR, else EINVAL; VM_IO|VM_PFNMAP|VM_DONTEXPAND|
  VM_DONTDUMP; nothing mapped until a fault) and its fault (:meth:`fault`, the kernel's
  vfio_pci_mmap_huge_fault: under ``memory_lock`` (read, asserted) SIGBUS when memory is
  disabled or the device is in runtime low power, else the pfns inserted while the lock is
  held).
- :meth:`zap_bars` (vfio_pci_zap_bars: unmap_mapping_range of every BAR offset over every
  VMA of the device's inode; ``memory_lock`` held for write, asserted) wherever the kernel
  zaps: COMMAND.MEMORY cleared, D3hot, FLR through DEVCTL, RESET, hot reset, low-power entry
  — each followed by the dma-buf revoke (pci/dmabuf.py's vfio_pci_dma_buf_move).
- the TSM notifier (:meth:`tsm_notify`, kernel/pci/tsm/designs.py; proposed, not merged):
  on a machine with a platform TSM, VFIO_DEVICE_RESET and a virtual BCR_FLR ("flr"), a
  COMMAND write clearing MEMORY or MASTER on the hardware ("mse-clear", "bme-clear"), a
  PMCSR write to D3hot ("d3hot") and close ("close") first tell the profile's coordination
  design, under ``memory_lock`` held for write (asserted) and before the zap, so the TDI's
  owner can unbind it before the device sees the event. Not hooked: hot reset, low-power
  entry.

Invariants: no BAR PTE of the device exists while vfio sees memory disabled (every
transition to disabled zaps under memory_lock held for write; a fault inserts only under the
same lock held for read, after checking); ``dmabufs`` are revoked whenever memory is not
enabled. Units: bytes; region ``i`` starts at file offset ``i << 40``.

Which lock protects which field:
- ``memory_lock`` (vdev->memory_lock, an rw_semaphore): the decision "memory enabled" (the
  virtual COMMAND.MEMORY bit, the power state, ``pm_runtime_engaged``) and every BAR PTE
  inserted or zapped; ``dmabufs`` is written under it (write);
- ``pm_runtime_engaged``: memory_lock — a Plain field;
- ``config``, ``pci_saved_cmd``, ``pm_save_cmd``: made at open and freed at close under
  ``dev_set.lock``; between them only fops of the file that opened the device (and PM
  changes under memory_lock) touch them;
- ``pdev``, ``iommu_dev``, ``reset_works``, ``has_dyn_msix``, ``pci_ops``: set at probe,
  immutable (the kernel sets ``has_dyn_msix`` at each open, from the same capability).
Leaves out: interrupts (SET_IRQS is ENOTTY: no INTx/MSI delivery is modelled), ioeventfd,
region extensions (num_regions beyond 9), the VGA and ROM contents, the MSI-X table hole,
runtime PM beyond the low-power flag (no automatic suspend to D3hot), huge-page faults.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any

from ....errors import Fault, kerr
from ....hw import pcidev as R
from ....sim.fields import Plain
from ....sim.locks import RwSem
from ....sim.track import TrackedList
from ....uapi import vfio as V
from ...dma.p2pdma import pcim_p2pdma_init
from ...iommu.iommufd.driver import Device, IommuDriver
from ...lockdep_assert import lockdep_assert_held, lockdep_assert_held_write
from ...mm.mm import VM_DONTDUMP, VM_DONTEXPAND, VM_IO, VM_PFNMAP, VM_SHARED, page_up
from ...pci.tsm.designs import (
    BME_CLEAR,
    CLOSE,
    D3HOT,
    FLR,
    MSE_CLEAR,
    notifier_active,
    pci_tsm_notify,
)
from .. import iommufd as vfio_iommufd
from ..vfio_main import VfioDevice, VfioInfoCap, vfio_check_feature
from .dmabuf import (
    VFIO_PCI_DEV_OPS,
    VfioPciDeviceOps,
    vfio_pci_core_feature_dma_buf,
    vfio_pci_dma_buf_cleanup,
    vfio_pci_dma_buf_move,
)
from .pci_hot_reset import get_pci_hot_reset_info, pci_hot_reset
from .vfio_pci_config import VfioPciConfig
from .vfio_pci_rdwr import OFFSET_MASK, offset_to_index, vfio_pci_rw

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ...core import Kernel
    from ...fs.process import Process
    from ...fs.uaccess import UserArg
    from ...mm.vma import Vma

GENERIC_IOMMU_DRIVER = IommuDriver()  # drivers/iommu's 4 KiB, 48-bit paging driver
BARS_END = V.vfio_pci_index_to_offset(V.VFIO_PCI_ROM_REGION_INDEX)
_INFO_MIN = ctypes.sizeof(V.vfio_device_info) - 8  # offsetofend(.., num_irqs)
_IRQ_MIN = ctypes.sizeof(V.vfio_irq_info)


class VfioPciMmapOps:
    """The model's stand-in for the inode's i_mmap links of the device's VMAs (the kernel's
    vfio_pci_mmap_ops has no open/close: vma_link does this)."""

    def __init__(self, vdev: VfioPciCoreDevice) -> None:
        self.vdev = vdev

    def open(self, vma: Vma) -> None:
        self.vdev.i_mmap.append(vma)

    def close(self, vma: Vma) -> None:
        self.vdev.i_mmap.remove(vma)


class VfioPciCoreDevice(VfioDevice):
    """struct vfio_pci_core_device (+ its struct vfio_device)."""

    pm_runtime_engaged = Plain[bool]((5, 6))
    has_pasid_ops = True

    def __init__(self, kernel: Kernel, pdev: PciDevice,
                 pci_ops: VfioPciDeviceOps = VFIO_PCI_DEV_OPS) -> None:
        if pdev.iommu is None:
            raise kerr(errno.EINVAL, f"vfio-pci: {pdev.name} has no IOMMU group")
        super().__init__(kernel, pdev.name)
        self.pdev = pdev
        self.pci_ops = pci_ops
        self.iommu_dev = Device(pdev.name, pdev.iommu, GENERIC_IOMMU_DRIVER, is_pci=True)
        if pdev.fabric is not None:  # vfio_pci_core_init_dev: the BARs' p2pdma providers
            pcim_p2pdma_init(pdev.func, pdev.fabric.topology)
        self.memory_lock = RwSem(kernel.sched, f"vfio.{pdev.name}.memory_lock", "memory_lock")
        self.dmabufs: list[Any] = TrackedList(label=f"vfio.{pdev.name}.dmabufs")
        self.reset_works = pdev.has_reset_method
        # vfio_pci_core_enable: pci_msix_can_alloc_dyn() when the function has an MSI-X
        # capability, else false — the model's devices have no MSI-X capability.
        self.has_dyn_msix = False
        self._pm_runtime_engaged = False
        self.config: VfioPciConfig | None = None
        self.pci_saved_cmd = 0  # vdev->pci_saved_state (COMMAND), saved at open
        self.pm_save_cmd = 0  # vdev->pm_save (COMMAND), for NoSoftRst- devices in D3hot

    # ----- memory enable, zap, revoke ------------------------------------------------------
    def memory_enabled(self) -> bool:
        """__vfio_pci_memory_enabled: not in D3hot and the *virtual* COMMAND.MEMORY set."""
        if self.config is None:
            return False
        return (self.pdev.power_state == R.D0
                and bool(self.config.virt_command() & R.PCI_COMMAND_MEMORY))

    def zap_bars(self) -> None:
        """vfio_pci_zap_bars: unmap_mapping_range over the BAR offsets of the inode."""
        lockdep_assert_held_write(self.memory_lock, "vfio_pci_zap_bars")
        for vma in list(self.i_mmap):
            vma.zap_file_range(0, BARS_END)
        self.kernel.sched.emit("vfio", "zap_bars", dev=self.name)

    def zap_and_down_write_memory_lock(self, *tsm_events: str) -> None:
        """memory_lock for write, the TSM told of ``tsm_events`` (before anything else
        touches the device: TSM unbind precedes the zap), then the BARs zapped."""
        self.memory_lock.down_write()
        try:
            for ev in tsm_events:
                self.tsm_notify(ev)
        except BaseException:
            self.memory_lock.up_write()
            raise
        self.zap_bars()

    # ----- the TSM notifier (kernel/pci/tsm/designs.py) ------------------------------------
    def tsm_notify(self, event: str) -> None:
        """Tell the profile's design, before ``event`` reaches the device, so the TDI's
        owner can unbind it first; memory_lock held for write (asserted)."""
        if not notifier_active(self.kernel):
            return
        lockdep_assert_held_write(self.memory_lock, "vfio_pci_tsm_notify")
        pci_tsm_notify(self.kernel, self.pdev, event)

    def tsm_command_events(self, new: int) -> tuple[str, ...]:
        """The notifier events of a COMMAND write of ``new``: MSE/BME set on the hardware
        and cleared by the write (nothing read on a machine without a platform TSM)."""
        if not notifier_active(self.kernel):
            return ()
        cleared = self.pdev.cfg_read(R.PCI_COMMAND, 2) & ~new
        return tuple(ev for bit, ev in ((R.PCI_COMMAND_MEMORY, MSE_CLEAR),
                                        (R.PCI_COMMAND_MASTER, BME_CLEAR)) if cleared & bit)

    def dma_buf_move(self, revoked: bool) -> None:
        vfio_pci_dma_buf_move(self, revoked)

    # ----- power and reset (the PCI core, as vfio calls it) ------------------------------
    def set_power_state(self, state: str) -> None:
        """vfio_pci_set_power_state → pci_set_power_state: D0 or D3hot through PMCSR (D1/D2
        are refused by the PMC: nothing changes); with NoSoftRst- the config is saved on the
        way down and restored on the way up (needs_pm_restore)."""
        pdev = self.pdev
        if not pdev.pm_cap or state not in (R.D0, R.D3HOT) or pdev.power_state == state:
            return
        restore = not pdev.no_soft_reset
        if restore and state == R.D3HOT:
            self.pm_save_cmd = pdev.cfg_read(R.PCI_COMMAND, 2)
        reg = pdev.pm_cap + R.PCI_PM_CTRL
        bits = 3 if state == R.D3HOT else 0
        pdev.cfg_write(reg, 2, (pdev.cfg_read(reg, 2) & ~R.PCI_PM_CTRL_STATE_MASK) | bits)
        if restore and state == R.D0:
            pdev.cfg_write(R.PCI_COMMAND, 2, self.pm_save_cmd)

    def lock_and_set_power_state(self, state: str) -> None:
        """vfio_lock_and_set_power_state (a PMCSR write from userspace)."""
        if state == R.D3HOT:
            self.zap_and_down_write_memory_lock(D3HOT)
            self.dma_buf_move(True)
        else:
            self.memory_lock.down_write()
        try:
            self.set_power_state(state)
            if self.memory_enabled():
                self.dma_buf_move(False)
        finally:
            self.memory_lock.up_write()
        self.kernel.sched.emit("vfio", "power", dev=self.name, state=state)

    def pci_try_reset_function(self) -> int:
        """pci_try_reset_function: save, D0, COMMAND = INTX_DISABLE, reset, restore; 0 or
        -ENOTTY when the device has no reset method."""
        pdev = self.pdev
        self.set_power_state(R.D0)
        cmd = pdev.cfg_read(R.PCI_COMMAND, 2)
        devctl = pdev.cfg_read(pdev.exp_cap + R.PCI_EXP_DEVCTL, 2) if pdev.exp_cap else 0
        pdev.cfg_write(R.PCI_COMMAND, 2, R.PCI_COMMAND_INTX_DISABLE)
        ret = 0
        try:
            pdev.reset()
        except OSError as e:
            ret = -(e.errno or errno.ENOTTY)
        if pdev.exp_cap:
            pdev.cfg_write(pdev.exp_cap + R.PCI_EXP_DEVCTL, 2,
                           devctl & ~R.PCI_EXP_DEVCTL_BCR_FLR)
        pdev.cfg_write(R.PCI_COMMAND, 2, cmd)
        self.kernel.sched.emit("vfio", "reset", dev=self.name, ret=ret)
        return ret

    # ----- vfio_device_ops: open / close ---------------------------------------------------
    def open_device(self) -> None:
        """vfio_pci_core_enable + finish_enable."""
        pdev = self.pdev
        if self.kernel.sched.fault("kzalloc"):  # vfio_config_init's vconfig
            raise kerr(errno.ENOMEM, f"vfio_pci_core_enable({self.name}): vconfig (injected)")
        self.set_power_state(R.D0)
        pdev.cfg_write(R.PCI_COMMAND, 2,
                       pdev.cfg_read(R.PCI_COMMAND, 2) | R.PCI_COMMAND_MEMORY)
        if self.reset_works:
            self.pci_try_reset_function()
        self.pci_saved_cmd = pdev.cfg_read(R.PCI_COMMAND, 2)  # pci_store_saved_state
        self.config = VfioPciConfig(self)

    def close_device(self) -> None:
        """vfio_pci_core_close_device: dma-bufs revoked for good, then vfio_pci_core_disable:
        low power left, D0, bus mastering off, the virtual config freed, COMMAND =
        INTX_DISABLE, a reset when the device has a method, the config saved at open
        restored, pci_disable_device (bus mastering off)."""
        assert self.dev_set is not None
        lockdep_assert_held(self.dev_set.lock, "vfio_pci_core_disable")
        if notifier_active(self.kernel):  # the reset below: the TSM first
            with self.memory_lock.write():
                self.tsm_notify(CLOSE)
        vfio_pci_dma_buf_cleanup(self)
        with self.memory_lock.write():  # vfio_pci_runtime_pm_exit
            self.pm_runtime_engaged = False
        pdev = self.pdev
        self.set_power_state(R.D0)
        pdev.cfg_write(R.PCI_COMMAND, 2,
                       pdev.cfg_read(R.PCI_COMMAND, 2) & ~R.PCI_COMMAND_MASTER)
        self.config = None
        pdev.cfg_write(R.PCI_COMMAND, 2, R.PCI_COMMAND_INTX_DISABLE)
        if self.reset_works:
            try:
                pdev.reset()  # __pci_reset_function_locked
            except OSError:
                pass
        pdev.cfg_write(R.PCI_COMMAND, 2, self.pci_saved_cmd)  # pci_restore_state
        pdev.cfg_write(R.PCI_COMMAND, 2,  # pci_disable_device
                       pdev.cfg_read(R.PCI_COMMAND, 2) & ~R.PCI_COMMAND_MASTER)

    # ----- iommufd ops (vfio/iommufd.py) ----------------------------------------------------
    def bind_iommufd(self, ictx: Any) -> int:
        return vfio_iommufd.vfio_iommufd_physical_bind(self, ictx, self.iommu_dev)

    def unbind_iommufd(self) -> None:
        vfio_iommufd.vfio_iommufd_physical_unbind(self)

    def attach_ioas(self, pt_id: int) -> int:
        return vfio_iommufd.vfio_iommufd_physical_attach_ioas(self, pt_id)

    def detach_ioas(self) -> None:
        vfio_iommufd.vfio_iommufd_physical_detach_ioas(self)

    def pasid_attach_ioas(self, pasid: int, pt_id: int) -> int:
        return vfio_iommufd.vfio_iommufd_physical_pasid_attach_ioas(self, pasid, pt_id)

    def pasid_detach_ioas(self, pasid: int) -> None:
        vfio_iommufd.vfio_iommufd_physical_pasid_detach_ioas(self, pasid)

    # ----- ioctls ---------------------------------------------------------------------------
    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        """vfio_pci_core_ioctl."""
        if cmd == V.VFIO_DEVICE_GET_INFO:
            return self._get_info(arg)
        if cmd == V.VFIO_DEVICE_GET_IRQ_INFO:
            return self._get_irq_info(arg)
        if cmd == V.VFIO_DEVICE_RESET:
            return self._reset()
        if cmd == V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO:
            return get_pci_hot_reset_info(self, arg)
        if cmd == V.VFIO_DEVICE_PCI_HOT_RESET:
            return pci_hot_reset(self, arg)
        raise kerr(errno.ENOTTY, f"{self.name}: vfio-pci has no ioctl {cmd:#x}")

    def _get_info(self, arg: UserArg) -> int:
        info = V.vfio_device_info.from_buffer_copy(arg.read(_INFO_MIN).ljust(
            ctypes.sizeof(V.vfio_device_info), b"\0"))
        if info.argsz < _INFO_MIN:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_GET_INFO: argsz {info.argsz} < {_INFO_MIN}")
        info.flags = V.VFIO_DEVICE_FLAGS_PCI
        if self.reset_works:
            info.flags |= V.VFIO_DEVICE_FLAGS_RESET
        info.num_regions = V.VFIO_PCI_NUM_REGIONS
        info.num_irqs = V.VFIO_PCI_NUM_IRQS
        arg.write(bytes(info)[:_INFO_MIN])
        return 0

    def irq_count(self, index: int) -> int:
        """vfio_pci_get_irq_count."""
        pdev = self.pdev
        if index == V.VFIO_PCI_INTX_IRQ_INDEX:
            assert self.config is not None
            return 1 if self.config.rw(R.PCI_INTERRUPT_PIN, 1, None) != b"\0" else 0
        if index == V.VFIO_PCI_MSI_IRQ_INDEX and pdev.msi_cap:
            flags = pdev.cfg_read(pdev.msi_cap + R.PCI_MSI_FLAGS, 2)
            return 1 << ((flags & 0xE) >> 1)
        if index == V.VFIO_PCI_ERR_IRQ_INDEX:  # before 7.3: PCIe only
            pcie_only = self.kernel.profile.vfio_pci_err_irq_pcie_only
            return 1 if pdev.exp_cap or not pcie_only else 0
        return 1 if index == V.VFIO_PCI_REQ_IRQ_INDEX else 0

    def _get_irq_info(self, arg: UserArg) -> int:
        info = V.vfio_irq_info.from_buffer_copy(arg.read(_IRQ_MIN))
        if info.argsz < _IRQ_MIN or info.index >= V.VFIO_PCI_NUM_IRQS:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_GET_IRQ_INFO: argsz {info.argsz}, index "
                       f"{info.index}")
        if info.index == V.VFIO_PCI_ERR_IRQ_INDEX and not self.pdev.exp_cap \
                and self.kernel.profile.vfio_pci_err_irq_pcie_only:
            raise kerr(errno.EINVAL, "VFIO_DEVICE_GET_IRQ_INFO: ERR needs a PCIe device "
                       "(before 7.3)")
        info.flags = V.VFIO_IRQ_INFO_EVENTFD
        info.count = self.irq_count(info.index)
        if info.index == V.VFIO_PCI_INTX_IRQ_INDEX:
            info.flags |= V.VFIO_IRQ_INFO_MASKABLE | V.VFIO_IRQ_INFO_AUTOMASKED
        elif info.index != V.VFIO_PCI_MSIX_IRQ_INDEX or not self.has_dyn_msix:
            info.flags |= V.VFIO_IRQ_INFO_NORESIZE
        arg.copy_to_user(info)
        return 0

    def _reset(self) -> int:
        """VFIO_DEVICE_RESET."""
        if not self.reset_works:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_RESET: {self.name} has no reset method")
        self.zap_and_down_write_memory_lock(FLR)
        try:
            self.set_power_state(R.D0)
            self.dma_buf_move(True)
            ret = self.pci_try_reset_function()
            if self.memory_enabled():
                self.dma_buf_move(False)
        finally:
            self.memory_lock.up_write()
        if ret:
            raise kerr(-ret, f"VFIO_DEVICE_RESET: pci_try_reset_function({self.name})")
        return 0

    # ----- region info ----------------------------------------------------------------------
    def get_region_info_caps(self, info: V.vfio_region_info, caps: VfioInfoCap) -> None:
        """vfio_pci_ioctl_get_region_info."""
        index = info.index
        pdev = self.pdev
        info.offset = V.vfio_pci_index_to_offset(index)
        if index == V.VFIO_PCI_CONFIG_REGION_INDEX:
            info.size = pdev.cfg_size
            info.flags = V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
        elif index < V.VFIO_PCI_ROM_REGION_INDEX:
            bar = pdev.func.bars.get(index)
            info.size = bar.size if bar is not None else 0
            info.flags = 0
            if bar is not None:
                info.flags = (V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
                              | V.VFIO_REGION_INFO_FLAG_MMAP)  # bar_mmap_supported
        elif index == V.VFIO_PCI_ROM_REGION_INDEX:
            info.size = 0  # no ROM BAR and no shadow ROM
            info.flags = 0
        elif index == V.VFIO_PCI_VGA_REGION_INDEX:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_GET_REGION_INFO: {self.name} is not VGA")
        else:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_GET_REGION_INFO: index {index} past the "
                       f"{V.VFIO_PCI_NUM_REGIONS} regions")

    # ----- features ---------------------------------------------------------------------------
    def device_feature(self, proc: Process, flags: int, arg: UserArg, argsz: int) -> int:
        """vfio_pci_core_ioctl_feature."""
        nr = flags & V.VFIO_DEVICE_FEATURE_MASK
        if nr == V.VFIO_DEVICE_FEATURE_DMA_BUF and self.kernel.profile.vfio_pci_dma_buf:
            return vfio_pci_core_feature_dma_buf(self, flags, arg, argsz)
        if nr == V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY:
            if vfio_check_feature(flags, argsz, V.VFIO_DEVICE_FEATURE_SET, 0):
                self.runtime_pm_entry()
            return 0
        if nr == V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP:
            size = ctypes.sizeof(V.vfio_device_low_power_entry_with_wakeup)
            if not vfio_check_feature(flags, argsz, V.VFIO_DEVICE_FEATURE_SET, size):
                return 0
            entry = V.vfio_device_low_power_entry_with_wakeup.from_buffer_copy(
                arg.read(size, ctypes.sizeof(V.vfio_device_feature)))
            with proc.fdget(entry.wakeup_eventfd, "LOW_POWER_ENTRY_WITH_WAKEUP") as f:
                raise kerr(errno.EINVAL, f"LOW_POWER_ENTRY_WITH_WAKEUP: fd "
                           f"{entry.wakeup_eventfd} is a {f.kind}, not an eventfd")
        if nr == V.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT:
            if vfio_check_feature(flags, argsz, V.VFIO_DEVICE_FEATURE_SET, 0):
                with self.memory_lock.write():
                    self.pm_runtime_engaged = False
                    if self.memory_enabled():
                        self.dma_buf_move(False)
            return 0
        raise kerr(errno.ENOTTY, f"VFIO_DEVICE_FEATURE {nr}: not supported by vfio-pci for "
                   f"{self.name}")

    def runtime_pm_entry(self) -> None:
        """vfio_pci_runtime_pm_entry: zap + revoke under memory_lock; EINVAL if engaged."""
        self.zap_and_down_write_memory_lock()
        try:
            self.dma_buf_move(True)
            if self.pm_runtime_engaged:
                raise kerr(errno.EINVAL, f"LOW_POWER_ENTRY: {self.name} already in low power")
            self.pm_runtime_engaged = True
        finally:
            self.memory_lock.up_write()

    # ----- read / write / mmap / fault --------------------------------------------------------
    def read(self, proc: Process, n: int, pos: int) -> bytes:
        out = vfio_pci_rw(self, pos, n, None)
        assert isinstance(out, bytes)
        return out

    def write(self, proc: Process, data: bytes, pos: int) -> int:
        out = vfio_pci_rw(self, pos, len(data), data)
        assert isinstance(out, int)
        return out

    def mmap(self, proc: Process, vma: Vma) -> None:
        """vfio_pci_core_mmap."""
        index = offset_to_index(vma.pgoff)
        if index >= V.VFIO_PCI_NUM_REGIONS:
            raise kerr(errno.EINVAL, f"mmap {self.name}: region {index} does not exist")
        if not vma.vm_flags & VM_SHARED:
            raise kerr(errno.EINVAL, f"mmap {self.name}: needs MAP_SHARED")
        if index >= V.VFIO_PCI_ROM_REGION_INDEX:
            raise kerr(errno.EINVAL, f"mmap {self.name}: region {index} is not a BAR")
        bar = self.pdev.func.bars.get(index)
        if bar is None:
            raise kerr(errno.EINVAL, f"mmap {self.name}: BAR{index} is not mmap-able")
        start = vma.pgoff & OFFSET_MASK
        if start + (vma.end - vma.start) > page_up(bar.size):
            raise kerr(errno.EINVAL, f"mmap {self.name}: [{start:#x}, +{vma.end - vma.start:#x})"
                       f" past BAR{index} ({bar.size:#x} bytes)")
        if self.kernel.sched.fault("kzalloc"):  # vfio_pci_core_setup_barmap
            raise kerr(errno.ENOMEM, f"mmap {self.name}: barmap (injected)")
        vma.vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        vma.vm_ops = VfioPciMmapOps(self)
        vma.vm_ops.open(vma)

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        """vfio_pci_mmap_huge_fault: file range ``[start, end)``; the pfns are inserted
        under memory_lock (read), so a zap cannot slip between the check and the insert."""
        with self.memory_lock.read():
            lockdep_assert_held(self.memory_lock, "vfio_pci_vmf_insert_pfn")
            addr = vma.start + (start - vma.pgoff)
            if self.pm_runtime_engaged or not self.memory_enabled():
                self.kernel.sched.emit("vfio", "sigbus", dev=self.name, addr=addr)
                raise Fault(addr, "SIGBUS", f"{self.name}: BAR access with memory disabled")
            index = offset_to_index(start)
            bar = self.pdev.func.bars[index]
            phys = bar.base + (start & OFFSET_MASK)
            vma.ptes.set(addr, addr + (end - start), phys)  # vmf_insert_pfn
            return [(start, end, phys)]

