"""Shared set-up for the secure-world firmware tests (hw/secure/): a machine's physical memory,
a device function with one TEE BAR (its TDISP responder and an MMIO handler), and a normal
IOMMU domain for host DMA."""

from __future__ import annotations

from passthru.hw import Machine, Owner, PhysMem
from passthru.hw import tdisp as t
from passthru.hw.iommu import IOMMU_READ, IOMMU_WRITE, Iommu
from passthru.hw.pci import Bar
from passthru.hw.tdi import Tdi, ranges_from_bars
from passthru.sim import Scheduler

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096
BDF = "0000:01:00.0"
BAR0 = 0xE000_0000  # a 1 MiB TEE BAR in the default machine's PCI window
BAR_SIZE = 1 * MiB


class BarRegs:
    """A device BAR as an MMIO handler: plain registers, and who touched them."""

    def __init__(self) -> None:
        self.regs: dict[int, int] = {}
        self.seen: list[tuple[str, str, int]] = []

    def read(self, addr: int, n: int, who: str) -> bytes:
        self.seen.append(("r", who, addr))
        return bytes(self.regs.get(addr + i, 0) for i in range(n))

    def write(self, addr: int, data: bytes, who: str) -> None:
        self.seen.append(("w", who, addr))
        for i, b in enumerate(data):
            self.regs[addr + i] = b


class World:
    """Physical memory of the default machine's layout, a TDISP function at BAR0, and an IOMMU
    unit with a paging domain the device is attached to."""

    def __init__(self, sched: Scheduler | None = None) -> None:
        self.sched = sched or Scheduler()
        self.phys = PhysMem(self.sched, Machine())
        self.bar = BarRegs()
        self.phys.register_mmio(BAR0, BAR0 + BAR_SIZE, self.bar)
        self.tdi = Tdi(self.sched, "gpu0", t.function_id_of(BDF),
                       ranges_from_bars({0: Bar(BAR0, BAR_SIZE)}))
        self.iommu = Iommu(self.sched, self.phys, "dmar0")
        self.dom = self.iommu.domain("paging")
        self.iommu.attach(BDF, self.dom)

    def ram(self, size: int, owner: str = "gmem:vm1") -> tuple[int, int]:
        (got,) = self.phys.alloc(size, Owner(owner))
        return got

    def host_dma(self, iova: int, pa: int, size: int, n: int = 8, write: bool = True) -> None:
        """The device's DMA through the normal (host) IOMMU domain."""
        self.dom.map_pages(iova, pa, size, IOMMU_READ | IOMMU_WRITE)
        self.iommu.dma(BDF, iova, n, write, b"\x5a" * n if write else None)

    def violations(self) -> list[str]:
        return [f"{v.kind}: {v.message}" for v in self.sched.violations]

    def clear(self) -> None:
        self.sched.violations.clear()
