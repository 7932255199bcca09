"""A PCI function as hardware: its config space, BAR decoding, master abort and DMA.

Models what a PCI(e) endpoint does with the transactions that reach it, as drivers/pci/ sees
it (layout and IDs from include/uapi/linux/pci_regs.h):

- Config space: 256 bytes (conventional) or 4 KiB (PCIe), little endian, in one ByteStore:
  the type-0 header (IDs, COMMAND with MEMORY (MSE) and MASTER (BME), STATUS.CAP_LIST, class,
  BARs 0-5, capability pointer, interrupt pin/line); capabilities from 0x40 (PM with PMCSR
  D0/D3hot, MSI, PCIe with DEVCAP.FLR, DEVCAP.TEE and DEVCTL.BCR_FLR); extended capabilities
  from 0x100 (DOE 0x2E, IDE 0x30), headers only. TDISP has no extended capability ID in
  pci_regs.h: pci-tsm detects it by DEVCAP bit 30 (``PCI_EXP_DEVCAP_TEE``), which ``tdisp``
  sets.
- Writes honour a per-byte write mask. A BAR's address bits below its size are hard-wired
  zero, so writing all ones reads back ``~(size - 1) | flags`` (__pci_read_base()); BARs
  ending above 4 GiB are 64-bit and take two slots.
- Side effects: COMMAND (logged); PMCSR D0 <-> D3hot (D3hot -> D0 resets the function unless
  PMCSR.NO_SOFT_RESET; D1/D2 are not supported and ignored); DEVCTL.BCR_FLR starts an FLR
  when DEVCAP.FLR is set (the bit reads back 0).
- FLR, chosen design: *synchronous with a scheduling point in the middle*. The registers
  (COMMAND, STATUS, PMCSR, DEVCTL, MSI control) get their power-on values and the device's
  state is reset (:meth:`PciDevice._reset_state`), then ``sched.point(f"{name}.flr", "w")``
  lets another task run while ``in_flr`` (pcie_flr()'s 100 ms), then the FLR completes.
  While ``in_flr`` BAR accesses master-abort, DMA stays in the device, config reads return
  all ones and config writes are dropped (the function is not ready; pci_dev_wait() polls).
- Master abort: a BAR access while MSE is clear, in D3hot or in an FLR reads all ones and
  drops writes (``pci/master-abort``); DMA while BME is clear, in D3hot or in an FLR does not
  leave the device (``pci/dma-blocked``). Otherwise DMA goes through the function's IOMMU
  (Iommu.dma with the function's name as requester ID) into physical truth; with no IOMMU
  the bus address is the physical address (x86: bus_offset 0 for RAM).
- Every BAR is registered with :meth:`PhysMem.register_mmio` at construction, so a CPU, vCPU
  or peer access inside it reaches :meth:`PciDevice.mmio_read_bytes`/``mmio_write_bytes``
  (each a scheduling point ``mmio:<name>``). A device may belong to a :class:`PciFabric`
  (hw/devices/fabric.py: who decodes a bus address, how a peer TLP is routed).

Invariants: ``cfg`` holds ``cfg_size`` meaningful bytes; BAR registers' bits below the size
are zero; ``in_flr`` is True only inside :meth:`PciDevice._do_flr`; BARs stay registered.
Units: offsets in bytes; config accesses of 1, 2 or 4 bytes, naturally aligned; MMIO of any
length (a register BAR splits it as a CPU would); values little endian.

Locking and tracking (sim/track.py): a config or MMIO access is one bus transaction, atomic in
the hardware (the kernel serialises config accesses with pci_lock): ``cfg`` (ByteStore) and
``_in_flr`` (Cell) are ``atomic``; models' registers are ``atomic`` tracked structures, their
memory (VRAM) marked like physmem.data. ``name``, ``bdf``, ``func``, ``iommu``, ``phys``,
``sched``, ``fabric``, capability offsets and write masks: set at construction.

Events (``pci``): ``command``, ``power``, ``flr-start``, ``flr-done``, ``reset``,
``master-abort`` (dev, bar, off, size, write, why, who), ``dma-blocked`` (dev, iova, n,
write, why), ``cfg-during-flr``, ``irq``, ``p2p`` (src, dst, route).

Leaves out: I/O BARs, the expansion ROM (reads 0), BAR reassignment (a device decodes at its
``func.bars`` address whatever its BAR register holds — the kernel sizes with decode off and
pci_restore_state() writes the same values back; an FLR keeps the BAR registers for that
reason), CRS, AER and STATUS error bits, MSI/MSI-X/INTx delivery (an interrupt is an event),
D1/D2/D3cold, ATS/PRI, DOE/IDE/TDISP behaviour, bus resets, and the P2P whitelist question
(the root complex forwards every peer access; pci_p2pdma_map_type() is the kernel's side).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import kerr
from ..extents import ByteStore
from ..sim import kinds, track
from ..sim.scheduler import Scheduler
from ..sim.track import Cell
from .iommu import Iommu
from .pci import Bar, PciFunction
from .physmem import PhysMem
from .tdi import Tdi, ranges_from_bars
from .tdisp import function_id_of

if TYPE_CHECKING:
    from .devices.fabric import PciFabric

# include/uapi/linux/pci_regs.h — the type-0 header
# A host access to a locked TDI's private MMIO (the device refuses it: physical truth).
TDI_PRIVATE_MMIO = kinds.register("tdi-private-mmio", "hw")

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_CFG_SPACE_SIZE = 256
PCI_CFG_SPACE_EXP_SIZE = 4096
# capabilities
PCI_CAP_LIST_ID = 0
PCI_CAP_LIST_NEXT = 1
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_EXP = 0x10
PCI_PM_PMC = 2
PCI_PM_CTRL = 4
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET = 0x0008
PCI_PM_SIZEOF = 8
PCI_MSI_FLAGS = 2
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_EXP_FLAGS = 2
PCI_EXP_TYPE_ENDPOINT = 0x0
PCI_EXP_TYPE_RC_END = 0x9
PCI_EXP_DEVCAP = 4
PCI_EXP_DEVCAP_FLR = 0x10000000
PCI_EXP_DEVCAP_TEE = 0x40000000  # TEE-IO (TDISP) supported
PCI_EXP_DEVCTL = 8
PCI_EXP_DEVCTL_BCR_FLR = 0x8000
PCI_EXP_DEVSTA = 0x0A
PCI_CAP_EXP_ENDPOINT_SIZEOF_V2 = 0x3C
# extended capabilities (header: ID 15:0, version 19:16, next 31:20)
PCI_EXT_CAP_ID_DOE = 0x2E
PCI_EXT_CAP_ID_IDE = 0x30
PCI_DOE_CAP_SIZEOF = 0x18
PCI_IDE_CAP_SIZEOF = 0x20  # the capability and control registers; streams not modelled

D0, D3HOT = "D0", "D3hot"
_PM_STATE = {0: D0, 3: D3HOT}


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class BarWindow:
    """What :class:`PhysMem` calls for an access inside one BAR (its MMIO handler)."""

    def __init__(self, dev: PciDevice, bar: int) -> None:
        self.dev = dev
        self.bar = bar
        self.base = dev.func.bars[bar].base

    def read(self, addr: int, n: int, who: str) -> bytes:
        return self.dev.mmio_read_bytes(self.bar, addr - self.base, n, who)

    def write(self, addr: int, data: bytes, who: str) -> None:
        self.dev.mmio_write_bytes(self.bar, addr - self.base, data, who)

    def __repr__(self) -> str:
        return f"<BarWindow {self.dev.name} BAR{self.bar}>"


class PciDevice(track.Tracked):
    """One PCI function as hardware (see the module docstring). Models subclass it and
    override :meth:`_read_bar`/:meth:`_write_bar` (or :meth:`_reg_read`/:meth:`_reg_write`)
    and :meth:`_reset_state`."""

    VENDOR = 0xFFFF
    DEVICE = 0xFFFF
    REVISION = 0
    CLASS = 0xFF0000  # class << 16 | subclass << 8 | prog-if
    INTERRUPT_PIN = 0
    PREFETCH: frozenset[int] = frozenset()  # prefetchable BAR indexes

    def __init__(self, name: str, func: PciFunction, phys: PhysMem, sched: Scheduler, *,
                 iommu: Iommu | None = None, pm: bool = True, no_soft_reset: bool = True,
                 msi: bool = False, pcie: bool = True, flr: bool = True, doe: bool = False,
                 ide: bool = False, tdisp: bool = False, rc_integrated: bool = False,
                 fabric: PciFabric | None = None) -> None:
        if (flr or doe or ide or tdisp) and not pcie:
            raise ValueError(f"{name}: FLR, DOE, IDE and TDISP need the PCIe capability")
        self.track_init(f"pcidev.{name}", atomic=True)
        self.name = name
        self.bdf = func.bdf
        self.func = func
        self.phys = phys
        self.sched = sched
        self.iommu = iommu
        self.vendor = self.VENDOR
        self.device = self.DEVICE
        self.has_flr = flr
        self.no_soft_reset = no_soft_reset
        self.cfg_size = PCI_CFG_SPACE_EXP_SIZE if pcie else PCI_CFG_SPACE_SIZE
        self.cfg = ByteStore(label=f"{name}.cfg")
        self.cfg._atomic = True
        self._in_flr = Cell(False, label=f"{name}.in_flr", atomic=True)
        self.pm_cap = self.msi_cap = self.exp_cap = 0
        self.doe_cap = self.ide_cap = 0
        self.tdisp = tdisp
        self._wmask = bytearray(self.cfg_size)
        self._bar_mask: dict[int, tuple[int, int]] = {}  # slot -> (address mask, flags)
        img = self._build_config(pm, msi, pcie, flr, doe, ide, tdisp, rc_integrated)
        self._defaults = bytes(img)
        with track.untracked():
            self.cfg.write(0, self._defaults)
        self.fabric = fabric
        # The TDISP responder (hw/tdi.py): its DOE mailbox is not a security-relevant
        # register (TDISP messages arrive through it), so writes there keep the TDI locked.
        self.tdi: Tdi | None = None
        if tdisp:
            exempt = [(self.doe_cap, self.doe_cap + PCI_DOE_CAP_SIZEOF)] if self.doe_cap else []
            self.tdi = Tdi(sched, name, function_id_of(func.bdf), ranges_from_bars(func.bars),
                           config_exempt=exempt)
        self.windows = [BarWindow(self, i) for i in sorted(func.bars)]
        for w in self.windows:
            bar = func.bars[w.bar]
            phys.register_mmio(bar.base, bar.end, w)
        if fabric is not None:
            fabric.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.bdf}>"

    @property
    def has_reset_method(self) -> bool:
        """pci_reset_function() has a method: FLR, or a PM reset (D3hot -> D0 without
        NO_SOFT_RESET). A bus reset is not offered (the model has no secondary bus reset)."""
        return self.has_flr or (self.pm_cap != 0 and not self.no_soft_reset)

    # ----- building the config space ------------------------------------------------------
    def _build_config(self, pm: bool, msi: bool, pcie: bool, flr: bool, doe: bool, ide: bool,
                      tdisp: bool, rc_integrated: bool) -> bytearray:
        img = bytearray(self.cfg_size)
        wm = self._wmask

        def put(off: int, size: int, val: int, mask: int = 0) -> None:
            img[off:off + size] = val.to_bytes(size, "little")
            wm[off:off + size] = mask.to_bytes(size, "little")

        put(PCI_VENDOR_ID, 2, self.VENDOR)
        put(PCI_DEVICE_ID, 2, self.DEVICE)
        put(PCI_COMMAND, 2, 0, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY
            | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE)
        put(PCI_REVISION_ID, 4, self.CLASS << 8 | self.REVISION)
        put(PCI_CACHE_LINE_SIZE, 1, 0, 0xFF)
        put(PCI_LATENCY_TIMER, 1, 0, 0xFF)
        put(PCI_SUBSYSTEM_VENDOR_ID, 2, self.VENDOR)
        put(PCI_SUBSYSTEM_ID, 2, self.DEVICE)
        put(PCI_INTERRUPT_LINE, 1, 0, 0xFF)
        put(PCI_INTERRUPT_PIN, 1, self.INTERRUPT_PIN)
        for i, bar in self.func.bars.items():
            self._place_bar(i, bar, put)
        caps: list[tuple[int, int]] = []  # (id, size) in list order
        if pm:
            caps.append((PCI_CAP_ID_PM, PCI_PM_SIZEOF))
        if msi:
            caps.append((PCI_CAP_ID_MSI, 14))
        if pcie:
            caps.append((PCI_CAP_ID_EXP, PCI_CAP_EXP_ENDPOINT_SIZEOF_V2))
        off = 0x40
        prev = PCI_CAPABILITY_LIST
        for cid, size in caps:
            img[prev] = off
            put(off + PCI_CAP_LIST_ID, 1, cid)
            if cid == PCI_CAP_ID_PM:
                self.pm_cap = off
                put(off + PCI_PM_PMC, 2, 3)  # version 3, no D1/D2, no PME
                put(off + PCI_PM_CTRL, 2, PCI_PM_CTRL_NO_SOFT_RESET if self.no_soft_reset
                    else 0, PCI_PM_CTRL_STATE_MASK)
            elif cid == PCI_CAP_ID_MSI:
                self.msi_cap = off
                put(off + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_64BIT, PCI_MSI_FLAGS_ENABLE)
                put(off + 4, 8, 0, 0xFFFF_FFFF_FFFF_FFFC)  # message address
                put(off + 12, 2, 0, 0xFFFF)  # message data
            else:
                self.exp_cap = off
                kind = PCI_EXP_TYPE_RC_END if rc_integrated else PCI_EXP_TYPE_ENDPOINT
                put(off + PCI_EXP_FLAGS, 2, kind << 4 | 2)
                put(off + PCI_EXP_DEVCAP, 4, (PCI_EXP_DEVCAP_FLR if flr else 0)
                    | (PCI_EXP_DEVCAP_TEE if tdisp else 0))
                put(off + PCI_EXP_DEVCTL, 2, 0x2810, 0x7FFF | (PCI_EXP_DEVCTL_BCR_FLR
                                                               if flr else 0))
            prev = off + PCI_CAP_LIST_NEXT
            off += (size + 0xF) & ~0xF
        if caps:
            img[PCI_STATUS] |= PCI_STATUS_CAP_LIST
        ext: list[tuple[int, int]] = []
        if doe:
            ext.append((PCI_EXT_CAP_ID_DOE, PCI_DOE_CAP_SIZEOF))
        if ide:
            ext.append((PCI_EXT_CAP_ID_IDE, PCI_IDE_CAP_SIZEOF))
        off = PCI_CFG_SPACE_SIZE
        for k, (cid, size) in enumerate(ext):
            nxt = off + size if k + 1 < len(ext) else 0
            put(off, 4, nxt << 20 | 1 << 16 | cid)
            if cid == PCI_EXT_CAP_ID_DOE:
                self.doe_cap = off
            else:
                self.ide_cap = off
            off += size
        return img

    def _place_bar(self, i: int, bar: Bar, put: Any) -> None:
        size = bar.size
        if size < 16 or size & (size - 1) or bar.base & (size - 1):
            raise ValueError(f"{self.name}: BAR{i} [{bar.base:#x}, +{size:#x}) is not a "
                             "naturally aligned power of two of at least 16 bytes")
        flags = PCI_BASE_ADDRESS_MEM_PREFETCH if i in self.PREFETCH else 0
        wide = bar.end > 1 << 32
        if wide:
            flags |= PCI_BASE_ADDRESS_MEM_TYPE_64
            if i + 1 in self.func.bars or i + 1 >= 6:
                raise ValueError(f"{self.name}: 64-bit BAR{i} needs slot {i + 1} free")
        mask = ~(size - 1) & 0xFFFF_FFFF_FFFF_FFF0
        if wide:
            self._bar_mask[i] = (mask & 0xFFFF_FFF0, flags)
            self._bar_mask[i + 1] = (mask >> 32, 0)
            put(PCI_BASE_ADDRESS_0 + 4 * i, 8, bar.base | flags, 0xFFFF_FFFF_FFFF_FFFF)
        else:
            self._bar_mask[i] = (mask & 0xFFFF_FFF0, flags)
            put(PCI_BASE_ADDRESS_0 + 4 * i, 4, bar.base | flags, 0xFFFF_FFFF)

    # ----- state as the hardware shows it ------------------------------------------------
    def _cfg(self, off: int, size: int) -> int:
        return int.from_bytes(self.cfg.read(off, size), "little")

    @property
    def in_flr(self) -> bool:
        return self._in_flr.get()

    @property
    def command(self) -> int:
        return self._cfg(PCI_COMMAND, 2)

    @property
    def power_state(self) -> str:
        if not self.pm_cap:
            return D0
        return _PM_STATE.get(self._cfg(self.pm_cap + PCI_PM_CTRL, 2) & 3, D3HOT)

    @property
    def memory_enabled(self) -> bool:
        """COMMAND.MSE set, in D0 and not in an FLR: the BARs decode."""
        return self._why_not_memory() is None

    @property
    def bus_master(self) -> bool:
        return bool(self.command & PCI_COMMAND_MASTER)

    def _why_not_memory(self) -> str | None:
        if self.in_flr:
            return "flr"
        if self.power_state != D0:
            return "d3hot"
        if not self.command & PCI_COMMAND_MEMORY:
            return "mse-clear"
        return None

    def _why_no_dma(self) -> str | None:
        if self.in_flr:
            return "flr"
        if self.power_state != D0:
            return "d3hot"
        if not self.command & PCI_COMMAND_MASTER:
            return "bme-clear"
        return None

    # ----- config space -------------------------------------------------------------------
    @staticmethod
    def _check_cfg(off: int, size: int) -> None:
        if size not in (1, 2, 4) or off % size or not 0 <= off <= PCI_CFG_SPACE_EXP_SIZE - size:
            raise ValueError(f"config access of {size} bytes at {off:#x}: not a naturally "
                             "aligned 1, 2 or 4 byte access inside 4 KiB")

    def cfg_read(self, off: int, size: int) -> int:
        """A config read (pci_bus_read_config_*): the register's value, little endian."""
        self._check_cfg(off, size)
        if off >= self.cfg_size or self.in_flr:
            if self.in_flr:
                self.sched.emit("pci", "cfg-during-flr", dev=self.name, off=off, write=False)
            return _ones(size)
        return self._cfg(off, size)

    def cfg_write(self, off: int, size: int, val: int) -> None:
        """A config write: read-only bits keep their value; then the side effects of COMMAND,
        PMCSR and DEVCTL (see the module docstring)."""
        self._check_cfg(off, size)
        if off >= self.cfg_size:
            return
        if self.in_flr:
            self.sched.emit("pci", "cfg-during-flr", dev=self.name, off=off, write=True)
            return
        end = off + size

        def touches(reg: int, n: int) -> bool:
            return off < reg + n and reg < end

        old_cmd = self.command if touches(PCI_COMMAND, 2) else None
        pm_reg = self.pm_cap + PCI_PM_CTRL
        old_pm = self._cfg(pm_reg, 2) & 3 if self.pm_cap and touches(pm_reg, 2) else None
        old = self.cfg.read(off, size)
        data = (val & _ones(size)).to_bytes(size, "little")
        new = bytearray(size)
        for k in range(size):
            m = self._wmask[off + k]
            new[k] = (old[k] & ~m & 0xFF) | (data[k] & m)
        self.cfg.write(off, bytes(new))
        for slot, (amask, flags) in self._bar_mask.items():
            reg = PCI_BASE_ADDRESS_0 + 4 * slot
            if touches(reg, 4):
                self.cfg.write(reg, ((self._cfg(reg, 4) & amask) | flags).to_bytes(4, "little"))
        if old_cmd is not None and old_cmd != self.command:
            self.sched.emit("pci", "command", dev=self.name, old=old_cmd, new=self.command)
        if self.tdi is not None:
            self._tdi_config_write(off, size, old_cmd, touches)
        if old_pm is not None:
            self._pm_write(old_pm)
        devctl_reg = self.exp_cap + PCI_EXP_DEVCTL
        if self.exp_cap and touches(devctl_reg, 2):
            devctl = self._cfg(devctl_reg, 2)
            if devctl & PCI_EXP_DEVCTL_BCR_FLR:  # self-clearing: reads back 0
                self.cfg.write(devctl_reg,
                               (devctl & ~PCI_EXP_DEVCTL_BCR_FLR).to_bytes(2, "little"))
                self._do_flr()

    def _tdi_config_write(self, off: int, size: int, old_cmd: int | None,
                          touches: Callable[[int, int], bool]) -> None:
        """Tell the TDI what a config write touched: COMMAND (MSE/BME cleared), a BAR, the
        IDE capability, anything else (the TDI exempts COMMAND, STATUS and DOE itself)."""
        tdi = self.tdi
        assert tdi is not None
        if old_cmd is not None:
            tdi.on_command_write(old_cmd, self.command)
        for slot in self._bar_mask:
            if touches(PCI_BASE_ADDRESS_0 + 4 * slot, 4):
                tdi.on_bar_write(slot)
        if self.ide_cap and touches(self.ide_cap, PCI_IDE_CAP_SIZEOF):
            tdi.on_ide_change()
        tdi.on_config_write(off, size)

    def _pm_write(self, old_bits: int) -> None:
        """PMCSR written: an unsupported state (D1, D2) leaves the state as it was."""
        reg = self.pm_cap + PCI_PM_CTRL
        val = self._cfg(reg, 2)
        new_bits = val & 3
        if new_bits not in _PM_STATE:
            self.cfg.write(reg, ((val & ~3) | old_bits).to_bytes(2, "little"))
            return
        if new_bits == old_bits:
            return
        self.sched.emit("pci", "power", dev=self.name, old=_PM_STATE[old_bits],
                        new=_PM_STATE[new_bits])
        if new_bits == 0 and not self.no_soft_reset:
            self._reset_registers()
            self._reset_state()
            if self.tdi is not None:
                self.tdi.on_flr()
            self.sched.emit("pci", "reset", dev=self.name, how="pm")

    def _reset_registers(self) -> None:
        """The power-on values of what a reset clears (BARs and INTERRUPT_LINE are kept:
        see Leaves out)."""
        d = self._defaults
        regs = [(PCI_COMMAND, 4)]
        if self.pm_cap:
            regs.append((self.pm_cap + PCI_PM_CTRL, 2))
        if self.msi_cap:
            regs.append((self.msi_cap + PCI_MSI_FLAGS, 2))
        if self.exp_cap:
            regs.append((self.exp_cap + PCI_EXP_DEVCTL, 4))
        for off, n in regs:
            self.cfg.write(off, d[off:off + n])

    def _do_flr(self) -> None:
        """The function-level reset: registers and device state reset, then a scheduling
        point while ``in_flr`` (pcie_flr()'s wait), then the function is ready again."""
        self.sched.emit("pci", "flr-start", dev=self.name)
        self._in_flr.set(True)
        self._reset_registers()
        self._reset_state()
        if self.tdi is not None:
            self.tdi.on_flr()
        self.sched.point(f"{self.name}.flr", "w")
        self._in_flr.set(False)
        self.sched.emit("pci", "flr-done", dev=self.name)

    def flr(self) -> None:
        """pcie_flr(): set DEVCTL.BCR_FLR through config space. ENOTTY without DEVCAP.FLR."""
        if not self.has_flr or not self.exp_cap:
            raise kerr(errno.ENOTTY, f"pcie_flr: {self.name} has no FLR capability")
        reg = self.exp_cap + PCI_EXP_DEVCTL
        self.cfg_write(reg, 2, self.cfg_read(reg, 2) | PCI_EXP_DEVCTL_BCR_FLR)

    def reset(self) -> None:
        """The device's own reset, in pci_reset_function()'s order: FLR, else a PM reset
        (D3hot then D0); ENOTTY when it has none."""
        if self.has_flr:
            self.flr()
            return
        if not self.has_reset_method:
            raise kerr(errno.ENOTTY, f"pci_reset_function: {self.name} has no reset method")
        reg = self.pm_cap + PCI_PM_CTRL
        self.cfg_write(reg, 2, (self.cfg_read(reg, 2) & ~3) | 3)
        self.cfg_write(reg, 2, self.cfg_read(reg, 2) & ~3)

    def bus_reset(self) -> None:
        """A conventional reset from the bridge above (Secondary Bus Reset): like an FLR,
        registers and device state go back to their power-on values."""
        self.sched.emit("pci", "bus-reset", dev=self.name)
        self._reset_registers()
        self._reset_state()
        if self.tdi is not None:
            self.tdi.on_flr()

    def _reset_state(self) -> None:
        """The device-specific state a reset clears (models override)."""

    # ----- BAR access ---------------------------------------------------------------------
    def _bar_size(self, bar: int, off: int, n: int) -> None:
        b = self.func.bars.get(bar)
        if b is None or off < 0 or n <= 0 or off + n > b.size:
            raise ValueError(f"{self.name}: access [{off:#x}, +{n:#x}) outside BAR{bar}")

    def _abort(self, bar: int, off: int, n: int, write: bool, who: str) -> bool:
        """Master abort if the BARs do not decode now (logged); True when aborted."""
        why = self._why_not_memory()
        if why is None:
            return False
        self.sched.emit("pci", "master-abort", dev=self.name, bar=bar, off=off, size=n,
                        write=write, why=why, who=who)
        return True

    def mmio_read(self, bar: int, off: int, size: int, who: str = "cpu") -> int:
        """A load of ``size`` bytes at ``off`` in BAR ``bar``: all ones on master abort."""
        return int.from_bytes(self.mmio_read_bytes(bar, off, size, who), "little")

    def mmio_write(self, bar: int, off: int, size: int, val: int, who: str = "cpu") -> None:
        """A store: dropped on master abort."""
        self.mmio_write_bytes(bar, off, (val & _ones(size)).to_bytes(size, "little"), who)

    def mmio_read_bytes(self, bar: int, off: int, n: int, who: str = "cpu") -> bytes:
        self._bar_size(bar, off, n)
        self.sched.point(f"mmio:{self.name}", "r")
        if self._abort(bar, off, n, False, who) or self._tdi_refuses(bar, off, n, False, who):
            return b"\xff" * n
        return self._read_bar(bar, off, n)

    def mmio_write_bytes(self, bar: int, off: int, data: bytes, who: str = "cpu") -> None:
        self._bar_size(bar, off, len(data))
        self.sched.point(f"mmio:{self.name}", "w")
        if (self._abort(bar, off, len(data), True, who)
                or self._tdi_refuses(bar, off, len(data), True, who)):
            return
        self._write_bar(bar, off, data)

    def _tdi_refuses(self, bar: int, off: int, n: int, write: bool, who: str) -> bool:
        """TDISP: the device refuses a host access to its TDI's private MMIO while the TDI
        is locked, running or failed (a ``tdi-private-mmio`` violation: physical truth, like
        a host access to a cVM's private page), and a TEE access (``who`` starting "tee")
        unless the TDI runs (logged: the guest sees the refusal, nothing leaked)."""
        tdi = self.tdi
        if tdi is None:
            return False
        addr = self.func.bars[bar].base + off
        if who.startswith("tee"):
            if tdi.tee_may_access(addr, n):
                return False
            self.sched.emit("pci", "tee-refused", dev=self.name, bar=bar, off=off, size=n,
                            write=write, who=who, state=tdi.tdi_state.name)
            return True
        if tdi.host_may_access_private_mmio(addr, n):
            return False
        verb = "writes" if write else "reads"
        self.sched.violation(TDI_PRIVATE_MMIO, f"{who} {verb} private MMIO of {self.name} "
                             f"BAR{bar} [{off:#x}, +{n:#x}) while its TDI is "
                             f"{tdi.tdi_state.name}")
        return True

    @staticmethod
    def _chunks(off: int, n: int) -> list[tuple[int, int]]:
        """A register access split as a CPU would issue it: one access when natural, else
        4-byte pieces (and the bytes left over)."""
        if n in (1, 2, 4, 8) and off % n == 0:
            return [(off, n)]
        out = []
        pos, end = off, off + n
        while pos < end:
            step = 4 if pos % 4 == 0 and end - pos >= 4 else 1
            out.append((pos, step))
            pos += step
        return out

    def _read_bar(self, bar: int, off: int, n: int) -> bytes:
        """Bytes of a BAR that decodes; the default goes through the register hooks."""
        return b"".join(self._reg_read(bar, o, k).to_bytes(k, "little")
                        for o, k in self._chunks(off, n))

    def _write_bar(self, bar: int, off: int, data: bytes) -> None:
        for o, k in self._chunks(off, len(data)):
            self._reg_write(bar, o, k, int.from_bytes(data[o - off:o - off + k], "little"))

    def _reg_read(self, bar: int, off: int, size: int) -> int:
        return _ones(size)  # no register there: reads float high

    def _reg_write(self, bar: int, off: int, size: int, val: int) -> None:
        return None

    # ----- DMA ----------------------------------------------------------------------------
    def dma(self, iova: int, n: int, write: bool, data: bytes | None = None,
            pasid: int | None = None) -> bytes | None:
        """The device's DMA engine: through its IOMMU (or straight to physical memory),
        None when it does not leave the device (BME clear, D3hot, FLR: logged) or faults."""
        why = self._why_no_dma()
        if why is not None:
            self.sched.emit("pci", "dma-blocked", dev=self.name, iova=iova, n=n, write=write,
                            why=why)
            return None
        if self.iommu is not None:
            return self.iommu.dma(self.name, iova, n, write, data, pasid)
        who = f"dma:{self.name}"
        self.sched.point(who, "w" if write else "r")
        if write:
            assert data is not None and len(data) == n
            self.phys.write(iova, data, who)
            return b""
        return self.phys.read(iova, n, who)
