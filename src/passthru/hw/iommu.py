"""The IOMMU as hardware: IO page tables, domains, the IOTLB, PASID tables and nesting.

Models what an IOMMU unit (an Intel VT-d DMAR unit, an Arm SMMUv3, AMD-Vi) does with a
device's DMA, as the kernel's drivers/iommu/ programs it through struct iommu_domain
(include/linux/iommu.h): a device (requester ID) and optionally a PASID select a domain
through the context/PASID tables; a *paging* domain's IO page table translates IOVA to a
physical address with permissions; a *nested* domain's stage-1 table translates IOVA to an
IPA (guest physical) that its parent's stage-2 table (a ``nest_parent`` paging domain)
translates to a physical address; the *blocking* domain translates nothing; the *identity*
domain passes IOVA through. Translations are cached in an IOTLB that the kernel must
invalidate (:meth:`IommuDomain.iotlb_sync`) after unmapping: the hardware serves a stale
entry, and the model records that as a ``stale-iotlb`` violation. Every successful access
ends in :meth:`PhysMem.read`/:meth:`PhysMem.write` as ``dma:<dev>`` (docs/design.md contract
5), so physical truth judges it; MMIO mappings (``IOMMU_MMIO``) reach a BAR the same way
(PhysMem's ``mmio`` regions accept any accessor).

Invariants: a page table's and an IOTLB's extents do not overlap (RangeMap) and each maps a
range to ``(delta, prot)`` with ``paddr = iova + delta`` — a flat value, so neighbours that
continue each other with the same permissions merge, and 1 GiB mapped at once is one extent;
a mapping is aligned to the domain's smallest page size in IOVA, physical address and size;
``nested`` domains have a ``paging`` parent with ``nest_parent``; nothing is per page.
Leaf PTEs: the table also keeps the range of each map call (``IoPageTable.calls``, one extent
per call, or per run of ``step``-sized calls), from which :meth:`IoPageTable.leaf` derives the
PTE holding an IOVA the way a page-table walker splits a map call (drivers/iommu/generic_pt:
the largest supported page size aligned in IOVA and physical address that stays inside the
call); only the test mock's dirty bits use it (a DMA write marks the bytes it wrote).

Units: IOVAs, IPAs, physical addresses and sizes in bytes; ``aperture`` and ``reserved`` are
inclusive ``(start, last)`` like the kernel's geometry and iommu_resv_region; every other
range is half-open ``[start, end)`` (extents.py).

Locking and tracking (sim/track.py), one line per field:
- ``IoPageTable.ptes``: PTEs are updated with atomic stores by the io-pgtable code and walked
  by hardware — ``atomic``; hardware walks are footprint-only (:func:`track.observe`).
- ``IommuDomain.iotlb``: hardware state, filled by walks and emptied by invalidation
  commands (queued invalidation is serialised by the unit's lock) — ``atomic``.
- ``IommuDomain.dirty``: the PTEs' dirty bits, set by hardware, read-and-cleared by the
  driver — ``atomic``; ``_tracking`` (dirty tracking enabled): a ``Cell``, ``atomic``.
- ``IommuDomain.s1``: the guest's stage-1 table, written by the guest (the VMM in tests),
  walked by hardware — ``atomic``; ``children``: nested domains over a parent — ``atomic``.
- ``Iommu.context``, ``Iommu.pasid_table``: the context entries and every device's PASID
  table (one dict keyed ``(dev, pasid)``); written under group->mutex by the iommu core,
  read by hardware — ``atomic``; ``_ids`` (domain ids, an IDA) — ``atomic``.
- ``kind``, ``pgsize_bitmap``, ``aperture``, ``reserved``, ``nest_parent``, ``parent``,
  ``name``, ``sched``, ``phys``: set at allocation, never changed.

Events (``iommu`` subsystem): ``attach`` and ``detach`` (dev, pasid, domain), ``fault``
(dev, iova, pasid, at, reason), ``msi`` (a write to the MSI window) and one compact ``dma``
event per access (dev, iova, n, write) when the log is on.

Leaves out: ATS/PRI and page requests (a miss is a fault, never a recoverable request),
interrupt remapping (a write to an ``msi`` window is logged, not delivered), real page-table
formats and levels, large-page splitting rules (unmapping part of a mapping always splits),
stage-1 permissions (a nested stage-1 grants what its stage-2 grants), the IOTLB's capacity
(it never evicts), domain ids per unit (a domain's IOTLB stands for its entries on every unit
it is attached to), the ordering of an IOTLB flush against in-flight DMA, dirty bits cached
in the IOTLB (a write always marks its range), and partial transfers (a DMA that faults
anywhere transfers nothing).
"""

from __future__ import annotations

import errno
from typing import Any

from ..errors import kerr
from ..extents import RangeMap
from ..sim import kinds, track
from ..sim.scheduler import Scheduler
from ..sim.track import Cell, TrackedDict, TrackedList
from .physmem import PhysMem

# include/linux/iommu.h
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2
IOMMU_NOEXEC = 1 << 3
IOMMU_MMIO = 1 << 4
IOMMU_PRIV = 1 << 5

# A device's DMA the scenario says must succeed faulted in the IOMMU.
IOMMU_FAULT = kinds.register("iommu-fault", "hw")
# DMA served from an IOTLB entry whose PTE was unmapped or changed and never invalidated.
STALE_IOTLB = kinds.register("stale-iotlb", "hw")
# A DMA translated through a domain (or a stage of it) that was freed: the IOMMU walks page
# tables that are no longer its own (the kernel freed a domain a context or PASID entry still
# points at).
DOMAIN_UAF = kinds.register("iommu-domain-uaf", "hw")

MSI_WINDOW = (0xFEE0_0000, 0xFEEF_FFFF, "msi")  # x86's interrupt address range
DEFAULT_APERTURE = (0, (1 << 48) - 1)  # a 4-level table's input range

KINDS = ("paging", "blocked", "identity", "nested")
HwAccesses = list[tuple[Any, int, int, bool]]  # a DMA's hardware accesses, observed after
Walk = tuple[int, int, int]  # (iova end of the piece, delta, prot)


class IoPageTable:
    """The IO page table of one paging domain, as extents ``iova -> (delta, prot)``."""

    def __init__(self, pgsize: int, label: str = "") -> None:
        self.pgsize = pgsize
        self.ptes: RangeMap[tuple[int, int]] = RangeMap(label=label, atomic=True)
        # The map calls: ``(first iova, end, step)`` of the call (or run of ``step``-sized
        # calls) that mapped each range; the first two keep neighbouring calls apart.
        self.calls: RangeMap[tuple[int, int, int]] = RangeMap(label=f"{label}.calls",
                                                              atomic=True)

    def _aligned(self, *xs: int) -> bool:
        return all(x % self.pgsize == 0 for x in xs)

    def map(self, iova: int, paddr: int, size: int, prot: int, step: int = 0) -> None:
        """Map ``[iova, iova + size)`` to ``paddr`` in one call, or (``step``) in calls of
        ``step`` bytes each (the PTEs then never span a ``step`` boundary)."""
        if size <= 0 or not self._aligned(iova, paddr, size):
            raise ValueError(f"{self.ptes.label}: map iova {iova:#x} pa {paddr:#x} size "
                             f"{size:#x} not aligned to {self.pgsize:#x}")
        if self.ptes.any_in(iova, iova + size):
            raise ValueError(f"{self.ptes.label}: [{iova:#x}, {iova + size:#x}) is already "
                             "partly mapped")
        self.ptes.set(iova, iova + size, (paddr - iova, prot))
        self.calls.set(iova, iova + size, (iova, iova + size, step))

    def unmap(self, iova: int, size: int) -> int:
        """Remove the PTEs of ``[iova, iova + size)``; the bytes that were mapped."""
        if size <= 0 or not self._aligned(iova, size):
            raise ValueError(f"{self.ptes.label}: unmap iova {iova:#x} size {size:#x} not "
                             f"aligned to {self.pgsize:#x}")
        self.calls.remove(iova, iova + size)
        return sum(e - s for s, e, _ in self.ptes.remove(iova, iova + size))

    def leaf(self, iova: int, sizes: int) -> tuple[int, int] | None:
        """``[start, end)`` of the leaf PTE holding ``iova`` (None: not mapped): the largest
        page size of ``sizes`` (a pgsize bitmap) whose aligned block around ``iova`` is
        aligned in physical address too and lies inside the map call — what a page-table
        walker builds when it splits a call into the largest pages that fit."""
        pte = self.ptes.get(iova)
        call = self.calls.get(iova)
        if pte is None or call is None:
            return None
        delta = pte.value[0]
        lo, hi = max(pte.start, call.start), min(pte.end, call.end)
        step = call.value[2]
        limit = delta & -delta if delta else 1 << 63  # the physical address's alignment
        if step:
            limit = min(limit, step)
        for bit in range(min(limit, sizes).bit_length() - 1, -1, -1):
            size = 1 << bit
            if not sizes & size or size > limit:
                continue
            start = iova & ~(size - 1)
            if lo <= start and start + size <= hi:
                return start, start + size
        start = iova & ~(self.pgsize - 1)
        return start, start + self.pgsize

    def get(self, iova: int) -> tuple[int, int, int] | None:
        """The walk: ``(end, delta, prot)`` of the extent holding ``iova``."""
        hit = self.ptes.get(iova)
        return None if hit is None else (hit[1], hit[2][0], hit[2][1])

    def lookup(self, iova: int) -> tuple[int, int] | None:
        v = self.ptes.lookup(iova)
        return None if v is None else (iova + v[0], v[1])

    def iova_to_phys(self, iova: int) -> int | None:
        hit = self.lookup(iova)
        return None if hit is None else hit[0]

    def mapped(self, start: int, end: int) -> list[tuple[int, int, int, int]]:
        """``(iova_start, iova_end, paddr, prot)`` of the extents in ``[start, end)``, clipped."""
        return [(s, e, s + d, p) for s, e, (d, p) in self.ptes.overlapping(start, end)]

    def __len__(self) -> int:
        return len(self.ptes)


class IommuDomain:
    """struct iommu_domain: what a device's DMA is translated through."""

    def __init__(self, iommu: Iommu, kind: str = "paging", *, pgsize: int = 4096,
                 pgsize_bitmap: int | None = None,
                 aperture: tuple[int, int] = DEFAULT_APERTURE,
                 reserved: list[tuple[int, int, str]] | None = None,
                 nest_parent: bool = False, parent: IommuDomain | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown iommu domain kind {kind!r}")
        if kind == "nested" and (parent is None or parent.kind != "paging"
                                 or not parent.nest_parent):
            raise kerr(errno.EINVAL, "nested domain: the parent must be a nest-parent "
                       "paging domain")
        if kind != "nested" and parent is not None:
            raise ValueError(f"a {kind} domain has no parent")
        self.iommu = iommu
        self.kind: str = kind
        self.pgsize_bitmap: int = pgsize_bitmap or (parent.pgsize_bitmap if parent else pgsize)
        self.pgsize = self.pgsize_bitmap & -self.pgsize_bitmap  # the lowest bit
        # The page sizes its table's leaf PTEs come in (see :meth:`leaf`); a driver whose
        # table has more than it advertises (the iommufd test mock) widens it.
        self.leaf_sizes: int = self.pgsize_bitmap
        self.aperture = aperture
        self.reserved = list(iommu.reserved if reserved is None else reserved)
        self.nest_parent: bool = nest_parent
        self.parent = parent
        self.name = f"{iommu.name}.dom{iommu.next_id()}"
        self.table = IoPageTable(self.pgsize, f"{self.name}.ptes") if kind == "paging" else None
        self.s1: RangeMap[int] = RangeMap(linear=True, label=f"{self.name}.s1", atomic=True)
        self.iotlb: RangeMap[tuple[int, int]] = RangeMap(label=f"{self.name}.iotlb",
                                                          atomic=True)
        self.dirty: RangeMap[bool] = RangeMap(label=f"{self.name}.dirty", atomic=True)
        self._tracking = Cell(False, label=f"{self.name}.dirty_tracking", atomic=True)
        self.children: list[IommuDomain] = TrackedList(label=f"{self.name}.children",
                                                       atomic=True)
        self.freed = False  # the model's KASAN for page-table pages, not hardware state
        if parent is not None:
            parent.children.append(self)

    def free(self) -> None:
        """iommu_domain_free: the tables go back to the allocator. A DMA that still reaches
        this domain (an entry not cleared first) is an ``iommu-domain-uaf`` violation."""
        track.observe(self._tracking, track.LO, track.HI, True)
        self.freed = True
        if self.parent is not None and self in self.parent.children:
            self.parent.children.remove(self)

    def __repr__(self) -> str:
        return f"<IommuDomain {self.name} {self.kind}>"

    def _paging(self, op: str) -> IoPageTable:
        if self.table is None:
            raise kerr(errno.EINVAL, f"{op}: {self.name} is a {self.kind} domain, not paging")
        return self.table

    # ----- what the driver does: iommu_map/iommu_unmap_fast/iotlb_sync -------------------
    def map_pages(self, iova: int, paddr: int, size: int, prot: int, step: int = 0) -> None:
        """iommu_map without its sync: EINVAL when unaligned or outside the aperture,
        EEXIST when part of the range is mapped already. ``step``: the range stands for
        consecutive iommu_map calls of ``step`` bytes each (iommufd's batch_iommu_map_small)."""
        table = self._paging("iommu_map")
        lo, last = self.aperture
        if size <= 0 or (iova | paddr | size) & (self.pgsize - 1):
            raise kerr(errno.EINVAL, f"iommu_map: unaligned: iova {iova:#x} pa {paddr:#x} "
                       f"size {size:#x} min_pagesz {self.pgsize:#x}")
        if iova < lo or iova + size - 1 > last:
            raise kerr(errno.EINVAL, f"iommu_map: [{iova:#x}, {iova + size:#x}) outside the "
                       f"aperture [{lo:#x}, {last:#x}] of {self.name}")
        try:
            table.map(iova, paddr, size, prot, step)
        except ValueError as e:
            raise kerr(errno.EEXIST, f"iommu_map: {e}") from None

    def unmap_pages(self, iova: int, size: int) -> int:
        """Remove the PTEs (and their dirty bits) of ``[iova, iova + size)``; the bytes that
        were mapped. The IOTLB keeps its entries until :meth:`iotlb_sync`."""
        table = self._paging("iommu_unmap")
        if size <= 0 or (iova | size) & (self.pgsize - 1):
            raise kerr(errno.EINVAL, f"iommu_unmap: unaligned: iova {iova:#x} size "
                       f"{size:#x} min_pagesz {self.pgsize:#x}")
        self.dirty.remove(iova, iova + size)
        return table.unmap(iova, size)

    def iotlb_sync(self, iova: int | None = None, size: int | None = None) -> None:
        """Invalidate the IOTLB over ``[iova, iova + size)``, or all of it. A stage-2 flush
        also drops its nested domains' combined entries (all of them: they are tagged by
        IOVA, not IPA)."""
        if iova is None or size is None:
            self.iotlb.clear()
        else:
            self.iotlb.remove(iova, iova + size)
        for child in self.children:
            child.iotlb.clear()

    def iova_to_phys(self, iova: int) -> int | None:
        """iommu_iova_to_phys: a software walk (paging domains only)."""
        return self._paging("iommu_iova_to_phys").iova_to_phys(iova)

    def leaf(self, iova: int) -> tuple[int, int] | None:
        """``[start, end)`` of the leaf PTE that maps ``iova`` (None: not mapped)."""
        return self._paging("leaf").leaf(iova, self.leaf_sizes)

    # ----- dirty tracking (iommu_dirty_ops) -----------------------------------------------
    @property
    def dirty_tracking(self) -> bool:
        return self._tracking.get()

    def set_dirty_tracking(self, on: bool) -> None:
        self._paging("set_dirty_tracking")
        self._tracking.set(on)

    def read_and_clear_dirty(self, iova: int, size: int) -> list[tuple[int, int]]:
        """The dirty ``[start, end)`` extents of ``[iova, iova + size)``, cleared."""
        self._paging("read_and_clear_dirty")
        return [(s, e) for s, e, _ in self.dirty.remove(iova, iova + size)]

    # ----- the hardware walk ------------------------------------------------------------
    def walk(self, iova: int, fp: HwAccesses | None) -> Walk | str:
        """Translate ``iova`` through the tables: ``(end, delta, prot)`` of the largest piece
        translated alike, or the fault's reason. Hardware: the caller is untracked and
        records ``fp``."""
        if self.kind == "identity":
            return (1 << 64, 0, IOMMU_READ | IOMMU_WRITE | IOMMU_MMIO)
        if self.kind == "blocked":
            return "blocked"
        if self.kind == "paging":
            assert self.table is not None
            if fp is not None:
                fp.append((self.table.ptes, iova, iova + 1, False))
            return self.table.get(iova) or "not present"
        assert self.parent is not None and self.parent.table is not None
        if fp is not None:
            fp.append((self.s1, iova, iova + 1, False))
        s1 = self.s1.get(iova)
        if s1 is None:
            return "stage-1: not present"
        ipa = s1[2] + (iova - s1[0])
        if fp is not None:
            fp.append((self.parent.table.ptes, ipa, ipa + 1, False))
        s2 = self.parent.table.get(ipa)
        if s2 is None:
            return f"stage-2: IPA {ipa:#x} not present"
        end2, delta2, prot = s2
        return (min(s1[1], iova + (end2 - ipa)), ipa + delta2 - iova, prot)


class Iommu:
    """One IOMMU unit of a machine: its context and PASID tables and its domains."""

    def __init__(self, sched: Scheduler, phys: PhysMem, name: str = "iommu0", *,
                 reserved: tuple[tuple[int, int, str], ...] = (MSI_WINDOW,)) -> None:
        self.sched = sched
        self.phys = phys
        self.name = name
        self.reserved = reserved
        self._ids = Cell(0, label=f"{name}.domain_ids", atomic=True)
        self.context: dict[str, IommuDomain] = TrackedDict(label=f"{name}.context",
                                                           atomic=True)
        self.pasid_table: dict[tuple[str, int], IommuDomain] = TrackedDict(
            label=f"{name}.pasid_table", atomic=True)
        self.blocked = IommuDomain(self, "blocked")
        self.identity = IommuDomain(self, "identity")

    def __repr__(self) -> str:
        return f"<Iommu {self.name}>"

    def next_id(self) -> int:
        n = self._ids.get() + 1
        self._ids.set(n)
        return n

    def domain(self, kind: str = "paging", **kw: Any) -> IommuDomain:
        """domain_alloc_paging/_nested: a new domain of this unit."""
        return IommuDomain(self, kind, **kw)

    # ----- the iommu core's side: context and PASID entries -----------------------------
    def attach(self, dev: str, domain: IommuDomain | None, pasid: int | None = None) -> None:
        """Point ``dev``'s context entry (or its ``pasid`` entry) at ``domain``; None
        detaches: the RID gets the blocking domain, a PASID entry is cleared."""
        if pasid is None:
            self.context[dev] = domain or self.blocked
        elif domain is None:
            self.pasid_table.pop((dev, pasid), None)
        else:
            self.pasid_table[(dev, pasid)] = domain
        self.sched.emit("iommu", "detach" if domain is None else "attach", dev=dev,
                        pasid=pasid, domain=domain.name if domain else "-")

    def domain_of(self, dev: str, pasid: int | None = None) -> IommuDomain | None:
        if pasid is None:
            return self.context.get(dev)
        return self.pasid_table.get((dev, pasid))

    # ----- the device's side: DMA -------------------------------------------------------
    def dma(self, dev: str, iova: int, n: int, write: bool, data: bytes | None = None,
            pasid: int | None = None, *, expect_ok: bool = False) -> bytes | None:
        """``dev`` reads ``n`` bytes at ``iova`` (the bytes) or writes ``data`` there (b"").
        A fault is logged and returns None (a write is dropped); with ``expect_ok`` it is
        also an ``iommu-fault`` violation."""
        if write and (data is None or len(data) != n):
            raise ValueError(f"dma:{dev}: a write of {n} bytes needs {n} bytes of data")
        sched = self.sched
        # Each DMA is a device's own event: a point where the checker may switch tasks.
        sched.point(f"dma:{dev}", "w" if write else "r")
        if sched.log.enabled:
            sched.emit("iommu", "dma", dev=dev, iova=iova, n=n, write=write)
        tr = track.active()
        fp: HwAccesses | None = [] if tr is not None else None
        with track.untracked():
            out = self._translate(dev, iova, n, write, pasid, fp)
        if fp:
            for obj, lo, hi, w in fp:
                track.observe(obj, lo, hi, w)
        if isinstance(out, str):
            at, _, reason = out.partition(" ")
            sched.emit("iommu", "fault", dev=dev, iova=iova, pasid=pasid, at=at, reason=reason)
            if expect_ok:
                sched.violation(IOMMU_FAULT, f"dma:{dev} {'write' if write else 'read'} at "
                                f"iova {iova:#x} (pasid {pasid}) faulted at {at}: {reason}")
            return None
        who = f"dma:{dev}"
        if write:
            assert data is not None
            for pos, pa, ln in out:
                self.phys.write(pa, data[pos - iova:pos - iova + ln], who)
            return b""
        return b"".join(self.phys.read(pa, ln, who) for _, pa, ln in out)

    def _msi(self, dom: IommuDomain, iova: int, n: int) -> bool:
        return any(k == "msi" and s <= iova and iova + n - 1 <= last
                   for s, last, k in dom.reserved)

    def _translate(self, dev: str, iova: int, n: int, write: bool, pasid: int | None,
                   fp: HwAccesses | None) -> list[tuple[int, int, int]] | str:
        """The pieces ``(iova, paddr, length)`` of an access, or ``"<at> <reason>"``."""
        if fp is not None:
            table = self.context if pasid is None else self.pasid_table
            key = dev if pasid is None else (dev, pasid)
            fp.append((table, *track.key_range(key), False))
        dom = self.domain_of(dev, pasid)
        if dom is None:
            return f"{iova:#x} {'no context entry' if pasid is None else 'no PASID entry'}"
        if fp is not None:
            fp.append((dom._tracking, track.LO, track.HI, False))
        gone = dom if dom.freed else dom.parent if dom.parent is not None and dom.parent.freed \
            else None
        if gone is not None:
            self.sched.violation(DOMAIN_UAF, f"dma:{dev} (pasid {pasid}) walks {gone.name}, "
                                 "freed while an entry still pointed at it")
            return f"{iova:#x} freed domain"
        if self._msi(dom, iova, n):
            if write:  # an interrupt request, not memory: not modelled beyond the log
                self.sched.emit("iommu", "msi", dev=dev, addr=iova)
                return []
            return f"{iova:#x} read of the MSI window"
        need = IOMMU_WRITE if write else IOMMU_READ
        pieces: list[tuple[int, int, int]] = []
        fresh: list[tuple[int, int]] = []  # pieces the tables still map as cached
        stale: list[tuple[int, int, int, Walk | str]] = []  # reported if the DMA happens
        pos, end = iova, iova + n
        while pos < end:
            if fp is not None:
                fp.append((dom.iotlb, pos, pos + 1, False))
            hit = dom.iotlb.get(pos)
            # On a hit the walk is the oracle's look at the tables, not the hardware's.
            walked = dom.walk(pos, fp)
            if hit is not None:
                top, (delta, prot) = hit[1], hit[2]
                if isinstance(walked, str) or walked[1:] != (delta, prot):
                    stale.append((pos, min(top, end), delta, walked))
                else:
                    top = min(top, walked[0])
                    fresh.append((pos, min(top, end)))
            elif isinstance(walked, str):
                return f"{pos:#x} {walked}"
            else:
                top, delta, prot = walked
                fresh.append((pos, min(top, end)))
            if not prot & need:
                stage = "stage-2: " if dom.kind == "nested" else ""
                return f"{pos:#x} {stage}permission ({'write' if write else 'read'})"
            nxt = min(top, end)
            if hit is None and dom.kind != "identity":
                if fp is not None:
                    fp.append((dom.iotlb, pos, nxt, True))
                dom.iotlb.set(pos, nxt, (delta, prot))
            pieces.append((pos, pos + delta, nxt - pos))
            pos = nxt
        for s, e, delta, now in stale:
            self._stale(dev, dom, s, e, delta, now)
        if write:
            self._mark_dirty(dom, fresh, fp)
        return pieces

    def _stale(self, dev: str, dom: IommuDomain, s: int, e: int, delta: int,
               now: Walk | str) -> None:
        what = now if isinstance(now, str) else f"now maps to {s + now[1]:#x}"
        self.sched.violation(STALE_IOTLB, f"dma:{dev} through {dom.name}: IOTLB entry "
                             f"[{s:#x}, {e:#x}) -> {s + delta:#x} used after its PTE changed "
                             f"({what}) without an IOTLB invalidation")

    def _mark_dirty(self, dom: IommuDomain, fresh: list[tuple[int, int]],
                    fp: HwAccesses | None) -> None:
        """Set the dirty bits of the stage that tracks them (a nested domain's parent, in
        IPA) over what was written through PTEs that still exist."""
        target = dom.parent if dom.parent is not None else dom
        if target.kind != "paging":
            return
        if fp is not None:
            fp.append((target._tracking, track.LO, track.HI, False))
        if not target._tracking.get():
            return
        for s, e in fresh:
            if dom.parent is not None:
                ipa = dom.s1.lookup(s)
                assert ipa is not None  # fresh: stage 1 maps it
                s, e = ipa, ipa + (e - s)
            if fp is not None:
                fp.append((target.dirty, s, e, True))
            target.dirty.set(s, e, True)
