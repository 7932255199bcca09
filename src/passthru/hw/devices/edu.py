"""QEMU's educational PCI device (hw/misc/edu.c) as hardware.

Models EduState: PCI ID 1234:11e8, revision 0x10, class_id PCI_CLASS_OTHERS (0x00ff: base
class 0x00, sub-class 0xff, so the dword at config 0x08 reads 0x00ff0010), INTx pin A, an MSI
capability (64-bit, one vector), and one 1 MiB memory BAR0 of registers:

====== ==== =================================================================================
offset size register
====== ==== =================================================================================
0x00   4    identification, reads 0x010000ed
0x04   4    liveness: reads the bitwise NOT of the last value written
0x08   4    factorial: a write starts computing n! (unless one is computing); read: result
0x20   4    status: bit 0x01 computing (read-only), bit 0x80 raise an IRQ when done
0x24   4    interrupt status (read)
0x60   4    interrupt raise (write: status |= val)
0x64   4    interrupt acknowledge (write: status &= ~val)
0x80   4/8  DMA source address      } writes ignored while a DMA runs
0x88   4/8  DMA destination address }
0x90   4/8  DMA transfer count      }
0x98   4/8  DMA command: 0x1 start, 0x2 direction (1: buffer -> RAM), 0x4 raise IRQ 0x100
====== ==== =================================================================================

Other offsets read all ones and ignore writes; registers below 0x80 accept only 4-byte
accesses, the DMA registers 4 or 8 (anything else reads all ones, writes are ignored). The
DMA engine copies between RAM (an IOVA, clamped to the 28-bit ``dma_mask``) and the device's
4 KiB buffer, which DMA commands address as ``0x40000 + offset`` — the buffer is not visible
through the BAR (reads there return all ones, as in QEMU). Its DMA goes through
:meth:`PciDevice.dma`: through the IOMMU into physical truth, and not at all while BME is
clear. Like the real device: no PM capability, no PCIe capability, no FLR — no reset method.

Invariants: ``addr4``, ``fact``, ``status``, ``irq_status`` are 32-bit; the DMA registers
64-bit; a running DMA (cmd & 0x1) freezes the DMA registers.
Locking: register accesses are bus transactions — ``regs`` is a TrackedDict and ``dma_buf`` a
ByteStore, both ``atomic`` (QEMU serialises them with the BQL and thr_mutex).

Differences from QEMU (the model has no device threads or timers): the factorial thread
finishes at once, in the write that starts it (n! modulo 2^32; computing reads set only
inside that write); the DMA timer (100 ms in QEMU) fires in the command write unless
``defer_dma`` is set, in which case a task calls :meth:`EduDevice.run_dma` — the timer — so a
scenario can put the DMA in flight next to other tasks; a DMA whose buffer range is out of
bounds is logged (``edu/dma-range``) and transfers nothing (QEMU logs and overruns). The
interrupt is an event (``pci/irq``), not delivered.
"""

from __future__ import annotations

from ...extents import ByteStore
from ...sim.scheduler import Scheduler
from ...sim.track import TrackedDict
from ..iommu import Iommu
from ..pci import PciFunction
from ..pcidev import PCI_MSI_FLAGS, PCI_MSI_FLAGS_ENABLE, PciDevice
from ..physmem import PhysMem
from .fabric import PciFabric

EDU_ID = 0x010000ED
FACT_IRQ = 0x00000001
DMA_IRQ = 0x00000100
DMA_START = 0x40000
DMA_SIZE = 4096
EDU_STATUS_COMPUTING = 0x01
EDU_STATUS_IRQFACT = 0x80
EDU_DMA_RUN = 0x1
EDU_DMA_TO_PCI = 0x2  # direction bit: 1 = buffer -> RAM
EDU_DMA_IRQ = 0x4
EDU_BAR_SIZE = 1 << 20
EDU_DMA_MASK = (1 << 28) - 1
U32 = 0xFFFF_FFFF
U64 = (1 << 64) - 1
_DMA_REGS = {0x80: "dma_src", 0x88: "dma_dst", 0x90: "dma_cnt", 0x98: "dma_cmd"}


def factorial_u32(n: int) -> int:
    """n! modulo 2^32 (0 from 34! on: it has 32 factors of two)."""
    if n >= 34:
        return 0
    r = 1
    for k in range(2, n + 1):
        r = r * k & U32
    return r


class EduDevice(PciDevice):
    VENDOR = 0x1234
    DEVICE = 0x11E8
    REVISION = 0x10
    # edu_class_init: k->class_id = PCI_CLASS_OTHERS (0xff), the 16-bit base class and
    # sub-class word at PCI_CLASS_DEVICE: base class 0x00, sub-class 0xff, prog-if 0.
    CLASS = 0x00FF00
    INTERRUPT_PIN = 1

    def __init__(self, name: str, func: PciFunction, phys: PhysMem, sched: Scheduler, *,
                 iommu: Iommu | None = None, fabric: PciFabric | None = None) -> None:
        bar0 = func.bars.get(0)
        if bar0 is None or bar0.size != EDU_BAR_SIZE or set(func.bars) != {0}:
            raise ValueError(f"{name}: the edu device has exactly one 1 MiB BAR0")
        super().__init__(name, func, phys, sched, iommu=iommu, pm=False, msi=True,
                         pcie=False, flr=False, fabric=fabric)
        self.regs: dict[str, int] = TrackedDict(
            {"addr4": 0, "fact": 0, "status": 0, "irq_status": 0, "dma_src": 0,
             "dma_dst": 0, "dma_cnt": 0, "dma_cmd": 0}, label=f"{name}.regs", atomic=True)
        self.dma_buf = ByteStore(label=f"{name}.dma_buf")
        self.dma_buf._atomic = True
        self.dma_mask = EDU_DMA_MASK
        self.defer_dma = False  # configuration: set before any task runs

    # ----- interrupts -------------------------------------------------------------------
    def _raise_irq(self, val: int) -> None:
        status = (self.regs["irq_status"] | val) & U32
        self.regs["irq_status"] = status
        if status:
            msi = self._cfg(self.msi_cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE
            self.sched.emit("pci", "irq", dev=self.name, status=status,
                            via="msi" if msi else "intx")

    def _lower_irq(self, val: int) -> None:
        self.regs["irq_status"] &= ~val & U32

    # ----- registers --------------------------------------------------------------------
    def _reg_read(self, bar: int, off: int, size: int) -> int:
        ones = (1 << 8 * size) - 1
        if size < 4:
            # edu_mmio_ops.valid.min_access_size = 4: QEMU's memory core refuses the access
            # before edu_mmio_read runs and reads it as unassigned memory, 0.
            return 0
        if (off < 0x80 and size != 4) or (off >= 0x80 and size not in (4, 8)):
            return ones
        if off == 0x00:
            val = EDU_ID
        elif off == 0x04:
            val = self.regs["addr4"]
        elif off == 0x08:
            val = self.regs["fact"]
        elif off == 0x20:
            val = self.regs["status"]
        elif off == 0x24:
            val = self.regs["irq_status"]
        elif off in _DMA_REGS:
            val = self.regs[_DMA_REGS[off]]
        else:
            val = U64
        return val & ones

    def _reg_write(self, bar: int, off: int, size: int, val: int) -> None:
        if size < 4 or (off < 0x80 and size != 4) or (off >= 0x80 and size not in (4, 8)):
            return
        regs = self.regs
        if off == 0x04:
            regs["addr4"] = ~val & U32
        elif off == 0x08:
            if regs["status"] & EDU_STATUS_COMPUTING:
                return
            regs["fact"] = val & U32
            regs["status"] |= EDU_STATUS_COMPUTING
            self._fact_thread()
        elif off == 0x20:
            if val & EDU_STATUS_IRQFACT:
                regs["status"] |= EDU_STATUS_IRQFACT
            else:
                regs["status"] &= ~EDU_STATUS_IRQFACT & U32
        elif off == 0x60:
            self._raise_irq(val & U32)
        elif off == 0x64:
            self._lower_irq(val & U32)
        elif off in _DMA_REGS:
            if off == 0x98 and not val & EDU_DMA_RUN:
                return
            if regs["dma_cmd"] & EDU_DMA_RUN:
                return  # dma_rw(): no writes while a transfer runs
            regs[_DMA_REGS[off]] = val & U64
            if off == 0x98 and not self.defer_dma:
                self.run_dma()

    def _fact_thread(self) -> None:
        """edu_fact_thread(), run to completion at once."""
        self.regs["fact"] = factorial_u32(self.regs["fact"])
        self.regs["status"] &= ~EDU_STATUS_COMPUTING & U32
        if self.regs["status"] & EDU_STATUS_IRQFACT:
            self._raise_irq(FACT_IRQ)

    # ----- the DMA engine ---------------------------------------------------------------
    def _clamp(self, addr: int) -> int:
        res = addr & self.dma_mask
        if res != addr:
            self.sched.emit("edu", "dma-clamp", dev=self.name, addr=addr, to=res)
        return res

    def run_dma(self) -> None:
        """edu_dma_timer(): perform the programmed transfer, clear RUN, raise DMA_IRQ if
        asked. Nothing to do unless a transfer is programmed."""
        regs = self.regs
        cmd = regs["dma_cmd"]
        if not cmd & EDU_DMA_RUN:
            return
        cnt = regs["dma_cnt"]
        to_ram = bool(cmd & EDU_DMA_TO_PCI)
        buf_addr = regs["dma_src"] if to_ram else regs["dma_dst"]
        if not (DMA_START <= buf_addr and buf_addr + cnt <= DMA_START + DMA_SIZE):
            self.sched.emit("edu", "dma-range", dev=self.name, start=buf_addr, n=cnt)
        elif cnt:
            pos = buf_addr - DMA_START
            if to_ram:
                self.dma(self._clamp(regs["dma_dst"]), cnt, True,
                         self.dma_buf.read(pos, cnt))
            else:
                got = self.dma(self._clamp(regs["dma_src"]), cnt, False)
                if got is not None:
                    self.dma_buf.write(pos, got)
        regs["dma_cmd"] = cmd & ~EDU_DMA_RUN
        if cmd & EDU_DMA_IRQ:
            self._raise_irq(DMA_IRQ)
