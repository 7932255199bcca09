"""A NIC-like PCIe function whose DMA engine writes to (or reads from) any bus address — RAM
or another device's BAR (peer-to-peer).

No single kernel file: it is the peer of drivers/pci/p2pdma.c (a device that DMAs into a
provider's BAR, e.g. an RDMA NIC importing a GPU's dma-buf). The IDs are an e1000e's
(8086:10d3) but not its registers. Where a TLP goes is decided as the hardware does
(:meth:`PciFabric.route`): a bus address inside a peer's BAR below a common switch with no ACS
redirect on the way is routed by the switch straight to the peer (the IOMMU never sees it);
anything else goes up to the root complex — through the NIC's IOMMU when it has one, where
the address is an IOVA, and on to physical truth, whose MMIO registry sends an address inside
a BAR to its device (P2P through the host bridge).

BAR0 registers (4-byte accesses; other sizes and offsets read all ones, writes ignored):

====== ===========================================================================
0x00   DMA address, low 32 bits          0x04   DMA address, high 32 bits
0x08   DMA length (at most 4096)         0x0c   command: 0x1 go, 0x2 to the address
0x10   status: 0x1 done, 0x2 error (the transfer did not happen or faulted)
0x1000 the 4 KiB packet buffer (any access size): the data a transfer moves
====== ===========================================================================

Locking: registers and buffer are bus-transaction state — ``regs`` (TrackedDict) and
``buffer`` (ByteStore), both ``atomic``.
Leaves out: rings, descriptors, interrupts, the network.
"""

from __future__ import annotations

from ...extents import ByteStore
from ...sim.scheduler import Scheduler
from ...sim.track import TrackedDict
from ..iommu import Iommu
from ..pci import PciFunction
from ..pcidev import PciDevice
from ..physmem import PhysMem
from .fabric import PciFabric

NIC_DMA_ADDR_LO = 0x00
NIC_DMA_ADDR_HI = 0x04
NIC_DMA_LEN = 0x08
NIC_CMD = 0x0C
NIC_STATUS = 0x10
NIC_CMD_GO = 0x1
NIC_CMD_TO_ADDR = 0x2
NIC_STATUS_DONE = 0x1
NIC_STATUS_ERROR = 0x2
NIC_BUF = 0x1000
NIC_BUF_SIZE = 0x1000
_REGS = {NIC_DMA_ADDR_LO: "addr_lo", NIC_DMA_ADDR_HI: "addr_hi", NIC_DMA_LEN: "len",
         NIC_CMD: "cmd", NIC_STATUS: "status"}


class NicDevice(PciDevice):
    VENDOR = 0x8086
    DEVICE = 0x10D3
    REVISION = 0x00
    CLASS = 0x020000  # network controller, Ethernet
    INTERRUPT_PIN = 1

    def __init__(self, name: str, func: PciFunction, phys: PhysMem, sched: Scheduler, *,
                 iommu: Iommu | None = None, fabric: PciFabric | None = None) -> None:
        if 0 not in func.bars or func.bars[0].size < NIC_BUF + NIC_BUF_SIZE:
            raise ValueError(f"{name}: the NIC needs a BAR0 of at least 8 KiB")
        super().__init__(name, func, phys, sched, iommu=iommu, pm=True, no_soft_reset=True,
                         msi=True, pcie=True, flr=True, fabric=fabric)
        self.regs: dict[str, int] = TrackedDict({v: 0 for v in _REGS.values()},
                                                label=f"{name}.regs", atomic=True)
        self.buffer = ByteStore(label=f"{name}.buffer")
        self.buffer._atomic = True

    def _reset_state(self) -> None:
        for k in _REGS.values():
            self.regs[k] = 0
        self.buffer.zero(0, NIC_BUF_SIZE)

    # ----- the DMA engine, as a peer ------------------------------------------------------
    def transfer(self, addr: int, n: int, write: bool,
                 data: bytes | None = None) -> bytes | None:
        """One DMA of ``n`` bytes at bus address ``addr``: the bytes read, b"" for a write
        that left the device, None when it did not (BME clear, D3hot, FLR) or faulted."""
        fabric = self.fabric
        hit = fabric.decode(addr, n) if fabric is not None else None
        if hit is None or hit[0] is self or PciFabric.route(self, hit[0]) != "switch":
            return self.dma(addr, n, write, data)
        peer, bar, off = hit
        why = self._why_no_dma()
        if why is not None:
            self.sched.emit("pci", "dma-blocked", dev=self.name, iova=addr, n=n, write=write,
                            why=why)
            return None
        self.sched.emit("pci", "p2p", src=self.name, dst=peer.name, bar=bar, off=off, n=n,
                        write=write, route="switch")
        who = f"dma:{self.name}"
        if write:
            assert data is not None and len(data) == n
            peer.mmio_write_bytes(bar, off, data, who)
            return b""
        return peer.mmio_read_bytes(bar, off, n, who)

    def dma_to(self, addr: int, data: bytes) -> bool:
        """Write ``data`` at bus address ``addr``; False when it did not leave the device
        or faulted."""
        return self.transfer(addr, len(data), True, data) is not None

    def dma_from(self, addr: int, n: int) -> bytes | None:
        return self.transfer(addr, n, False)

    # ----- registers ----------------------------------------------------------------------
    def _read_bar(self, bar: int, off: int, n: int) -> bytes:
        if bar == 0 and off >= NIC_BUF and off + n <= NIC_BUF + NIC_BUF_SIZE:
            return self.buffer.read(off - NIC_BUF, n)
        return super()._read_bar(bar, off, n)

    def _write_bar(self, bar: int, off: int, data: bytes) -> None:
        if bar == 0 and off >= NIC_BUF and off + len(data) <= NIC_BUF + NIC_BUF_SIZE:
            self.buffer.write(off - NIC_BUF, data)
        else:
            super()._write_bar(bar, off, data)

    def _reg_read(self, bar: int, off: int, size: int) -> int:
        if bar == 0 and size == 4 and off in _REGS:
            return self.regs[_REGS[off]]
        return (1 << 8 * size) - 1

    def _reg_write(self, bar: int, off: int, size: int, val: int) -> None:
        if bar != 0 or size != 4 or off not in _REGS or off == NIC_STATUS:
            return
        self.regs[_REGS[off]] = val
        if off == NIC_CMD and val & NIC_CMD_GO:
            self._run(bool(val & NIC_CMD_TO_ADDR))

    def _run(self, to_addr: bool) -> None:
        regs = self.regs
        addr = regs["addr_hi"] << 32 | regs["addr_lo"]
        n = regs["len"]
        ok = 0 < n <= NIC_BUF_SIZE
        if ok and to_addr:
            ok = self.dma_to(addr, self.buffer.read(0, n))
        elif ok:
            got = self.dma_from(addr, n)
            ok = got is not None
            if got is not None:
                self.buffer.write(0, got)
        regs["cmd"] = 0
        regs["status"] = NIC_STATUS_DONE | (0 if ok else NIC_STATUS_ERROR)
