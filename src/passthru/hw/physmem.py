"""Physical truth: the host's physical address space, an owner and a state for every range.

Models what KASAN, the IOMMU and the memory controller know between them (mm/page_alloc.c's
free lists and the folios' owners and refcounts, as extents): which physical range is free,
who owns the rest and in which state, which ranges are pinned, and what they contain.

Every access to memory contents — host CPU through a VMA, a vCPU through (S-)EPT, a device
through its DMA mapping, and the kernel's own clear_page/copy — goes through one of
:meth:`PhysMem.read`, :meth:`PhysMem.write`, :meth:`PhysMem.zero` and :meth:`PhysMem.copy`,
and each of them asks :meth:`PhysMem.check` first. An access to a range that is free
(use-after-free), private to another party, or not RAM/MMIO at all is recorded as a
``physical`` violation on the scheduler, like a KASAN report or an IOMMU fault, and is not
silently served: a read returns zeros, a write is dropped. The allocator's own zeroing of a
range it is handing out (:meth:`PhysMem.alloc`) is the one access that needs no check.
``data`` is this module's: code elsewhere must not read or write it directly.

MMIO routing: a device's BAR is not memory. A device model registers each BAR's range with
:meth:`PhysMem.register_mmio` (hw/pcidev.py does it for every BAR); a read, write, zero or
copy that touches a registered range sends that part to the handler (the device's
mmio_read/mmio_write, where master abort is decided) and the rest down the usual path.
A registered range lies inside an ``mmio`` region, which physical truth accepts from any
accessor — unless the secure firmware claimed it (below).

Secure firmware (hw/secure/: the TDX module, the PSP's RMP, the CCA RMM) is physical truth
too, through the same owners: it marks the host's range it takes over with a restrictive
state (anything but ``allocated``/``orphan``, e.g. ``tdx:private:td1``) whose ``allow`` holds
only the cVM's accessors, and puts the host's ``allocated`` state back when it gives the range
back. An ``allow`` entry ending in ``*`` matches every accessor with that prefix
(``vcpu:td1.*``: every vCPU of td1). MMIO has no owners (a BAR is not allocated), so the
firmware *claims* the private MMIO it maps (:meth:`claim_mmio`, :meth:`release_mmio`: the
``mmio_claims`` map, same :class:`Owner` values): an access to a claimed MMIO range that its
claim does not allow is a ``physical`` violation and does not reach the device (a read returns
all ones, as an unsupported request does). The host freeing (:meth:`release`) a RAM range in
a restrictive state — memory the firmware still holds — is a ``physical`` violation too; that
part is not freed (kept, as the kernel's snp_leak_pages does on purpose).

Invariants: ``owners`` and ``free`` are disjoint, inside RAM, and together cover it except
ranges taken out of the pool for a carve-out (:meth:`reserve`: CMA, firmware), which are in
neither while the carve-out has not handed them out (:meth:`set_owner`, :meth:`disown`); a
pinned range whose owner frees it stays in ``owners`` as an *orphan* until its last unpin;
``data`` reads as zero where nothing was written since the range was allocated. Nothing is
per page.

Events (the ``phys`` subsystem of the log, docs/design.md contract 4): every change of a range's
owner or state — ``alloc``, ``release``, ``free-orphan`` (the last unpin of an orphan),
``reserve``, ``disown``, ``set-owner``, ``claim-mmio``, ``release-mmio`` — is one event per
call or extent, never per page, with ``start``, ``end`` and the range's state ``before`` and
``after`` (:meth:`state_text`, :meth:`mmio_text`, looked up only when the log is on).

Units: physical addresses and sizes in bytes; allocation in page multiples (the callers
round); ``pins`` counts references per byte range.

Locking and tracking (sim/track.py), one line per field:
- ``owners``: zone->lock and the folios' refcounts, implicit in the model — ``atomic``.
- ``free``: zone->lock — ``atomic``; kept coalesced.
- ``pins``: page reference counts (atomic_t) — ``atomic``.
- ``mmio_claims``: written by the secure firmware (its own serialisation) — ``atomic``;
  ``_claims`` counts its extents (a fast path for MMIO accesses, kept with it).
- ``regions``: written at boot (the machine's RAM and MMIO windows), read-only after.
- ``data``: memory contents are not kernel state: a vCPU, a device or a user CPU writes them
  through its own page tables, and the kernel's clear_page/copy touch pages nobody else may
  yet see; every access to them is *marked* (footprint, never a data race) — ownership is
  what physical truth judges.
- ``sched``, ``machine``: set at boot.
- ``_mmio`` (the MMIO handler registry, sorted ``(start, end, handler)``): written while the
  machine's devices are built (boot), read-only afterwards — like ``regions``, untracked.
The check (:meth:`check`) is the oracle, not kernel code: it records the owner (and MMIO
claim) ranges it looks at (so the explorer orders an access against the free of its memory)
with no happens-before and no race check.

Leaves out: NUMA, zones, caches, ECC, memory encryption keys; a zero of a registered MMIO
range is a write of zero bytes (materialised: meant for register BARs and small ranges).
"""

from __future__ import annotations

import errno
from bisect import bisect_right, insort
from dataclasses import dataclass
from typing import Protocol

from ..errors import kerr
from ..extents import ByteStore, RangeCounter, RangeMap
from ..sim import kinds, track
from ..sim.scheduler import Scheduler
from .machine import Machine

# The violation every failed check reports (sim/kinds.py).
PHYSICAL = kinds.register("physical", "hw")

_marked = track.marked  # memory contents: footprint only, never a data race
_observe = track.observe  # the oracle's look at ownership: footprint only, no happens-before


class Contents(ByteStore):
    """Physical memory contents: every access marked (see the module docstring)."""

    __slots__ = ()

    def read(self, start: int, n: int) -> bytes:
        with _marked():
            return super().read(start, n)

    def write(self, start: int, data: bytes) -> None:
        with _marked():
            super().write(start, data)

    def zero(self, start: int, end: int) -> None:
        with _marked():
            super().zero(start, end)

    def copy(self, src: int, dst: int, n: int) -> None:
        with _marked():
            if track.active() is not None:
                track.read(self, src, src + n)  # ByteStore.copy reads its runs untracked
            super().copy(src, dst, n)


@dataclass(frozen=True)
class Owner:
    """Who holds a physical range and in which state."""

    owner: str  # e.g. "memfd:vm-ram", "gmem:3", "anon:qemu"
    state: str = "allocated"  # allocated | private:<vm> | mmio-locked ...
    allow: tuple[str, ...] = ()  # accessors allowed when the state is restrictive


class MmioHandler(Protocol):
    """What decodes a registered MMIO range (hw/pcidev.py's BarWindow): absolute physical
    addresses, ``who`` as in :meth:`PhysMem.read`."""

    def read(self, addr: int, n: int, who: str) -> bytes: ...

    def write(self, addr: int, data: bytes, who: str) -> None: ...


MmioPiece = tuple[int, int, "MmioHandler | None"]


OPEN_STATES = ("allocated", "orphan")  # states any accessor may touch
ALL_ONES = 0xFF  # what a refused MMIO read returns (an unsupported request)


def allows(allow: tuple[str, ...], who: str) -> bool:
    """Does ``allow`` admit accessor ``who``? An entry ending in ``*`` is a prefix."""
    return who in allow or any(a[-1:] == "*" and who.startswith(a[:-1]) for a in allow)


def _label(o: Owner) -> str:
    """An owner and its state for the event log: ``gmem1@vm1/allocated``."""
    return f"{o.owner}/{o.state}"


class PhysMem:
    def __init__(self, sched: Scheduler, machine: Machine) -> None:
        self.sched = sched
        self.machine = machine
        self.regions: RangeMap[str] = RangeMap(label="physmem.regions")
        for s, e in machine.ram:
            self.regions.set(s, e, "ram")
        for s, e in machine.mmio:
            self.regions.set(s, e, "mmio")
        self.owners: RangeMap[Owner] = RangeMap(label="physmem.owners", atomic=True)
        self.free: RangeMap[bool] = RangeMap(label="physmem.free", atomic=True)  # coalesced
        for s, e in machine.ram:
            self._insert_free(s, e)
        self.data: ByteStore = Contents(label="physmem.data")
        # Pins hold physical ranges alive: a pinned range that its owner frees becomes an
        # orphan (the folio's last reference is the pin) and is freed on the last unpin.
        self.pins = RangeCounter(label="physmem.pins", atomic=True)
        self._mmio: list[tuple[int, int, MmioHandler]] = []  # sorted by start, disjoint
        # MMIO the secure firmware holds (private MMIO of a TDI mapped into a cVM).
        self.mmio_claims: RangeMap[Owner] = RangeMap(label="physmem.mmio_claims", atomic=True)
        self._claims = 0

    # ----- MMIO handlers (device BARs) ---------------------------------------------------
    def register_mmio(self, start: int, end: int, handler: MmioHandler) -> None:
        """Route accesses to ``[start, end)`` to ``handler``. ValueError unless the range is
        inside the machine's MMIO windows and overlaps no registered range."""
        if start >= end:
            raise ValueError(f"register_mmio: empty range [{start:#x}, {end:#x})")
        with track.untracked():
            kinds_in = [k for _, _, k in self.regions.overlapping(start, end)]
            gaps = list(self.regions.gaps(start, end))
        if gaps or any(k != "mmio" for k in kinds_in):
            raise ValueError(f"register_mmio: [{start:#x}, {end:#x}) is not inside the "
                             "machine's MMIO windows")
        if any(s < end and start < e for s, e, _ in self._mmio):
            raise ValueError(f"register_mmio: [{start:#x}, {end:#x}) overlaps a registered "
                             "MMIO range")
        insort(self._mmio, (start, end, handler), key=lambda t: t[0])

    def unregister_mmio(self, start: int, end: int) -> None:
        """Forget the handler registered for exactly ``[start, end)`` (hot-unplug)."""
        self._mmio = [t for t in self._mmio if (t[0], t[1]) != (start, end)]

    def claim_mmio(self, start: int, end: int, owner: Owner) -> None:
        """The secure firmware takes ``[start, end)`` (inside the MMIO windows): accesses
        its ``owner.allow`` does not admit are refused (see the module docstring)."""
        before = self.mmio_text(start, end) if self.sched.log.enabled else ""
        self.mmio_claims.set(start, end, owner)
        self._claims = len(self.mmio_claims)
        self.sched.emit("phys", "claim-mmio", start=start, end=end, before=before,
                        after=_label(owner))

    def release_mmio(self, start: int, end: int) -> None:
        """The secure firmware gives ``[start, end)`` back to the host."""
        before = self.mmio_text(start, end) if self.sched.log.enabled else ""
        self.mmio_claims.remove(start, end)
        self._claims = len(self.mmio_claims)
        self.sched.emit("phys", "release-mmio", start=start, end=end, before=before,
                        after="host")

    def mmio_text(self, start: int, end: int) -> str:
        """Who holds the MMIO of ``[start, end)``, for the event log (nothing recorded)."""
        with track.untracked():
            parts = [_label(o) for _, _, o in self.mmio_claims.overlapping(start, end)]
            if self.mmio_claims.gaps(start, end):
                parts.append("host")
        return ",".join(dict.fromkeys(parts))

    def mmio_lookup(self, addr: int) -> tuple[int, int, MmioHandler] | None:
        """The registered ``(start, end, handler)`` holding ``addr``, if any."""
        i = bisect_right(self._mmio, addr, key=lambda t: t[0]) - 1
        if i >= 0 and addr < self._mmio[i][1]:
            return self._mmio[i]
        return None

    def _mmio_pieces(self, start: int, n: int) -> list[MmioPiece] | None:
        """``[start, start + n)`` cut at registered ranges, each piece with its handler
        (None: not MMIO-routed); None when no registered range is touched."""
        end = start + n
        i = max(bisect_right(self._mmio, start, key=lambda t: t[0]) - 1, 0)
        pieces: list[MmioPiece] = []
        pos = start
        for s, e, h in self._mmio[i:]:
            if s >= end:
                break
            if e <= pos:
                continue
            if s > pos:
                pieces.append((pos, s, None))
            pieces.append((max(s, pos), min(e, end), h))
            pos = min(e, end)
        if not pieces:
            return None
        if pos < end:
            pieces.append((pos, end, None))
        return pieces

    # ----- allocation ------------------------------------------------------------------
    def _insert_free(self, s: int, e: int) -> None:
        self.free.set(s, e, True)

    def alloc(self, size: int, owner: Owner) -> list[tuple[int, int]]:
        """Allocate ``size`` bytes (page multiple), first fit, possibly in several extents."""
        if self.sched.fault("alloc_pages"):
            raise kerr(errno.ENOMEM, "alloc_pages: injected failure")
        got: list[tuple[int, int]] = []
        need = size
        for s, e, _ in self.free:
            take = min(need, e - s)
            got.append((s, s + take))
            need -= take
            if not need:
                break
        if need:
            raise kerr(errno.ENOMEM, f"alloc_pages: {size:#x} bytes, out of physical memory")
        for s, e in got:
            self.free.remove(s, e)
        for s, e in got:
            self.owners.set(s, e, owner)
            self.data.zero(s, e)  # the allocator clears what it hands out: no check needed
        for s, e in got:
            self.sched.emit("phys", "alloc", start=s, end=e, before="free", after=_label(owner))
        return got

    def release(self, start: int, end: int) -> None:
        """The owner gives ``[start, end)`` back; pinned parts linger as orphans, parts the
        secure firmware holds are a violation and stay (see the module docstring)."""
        logged = self.sched.log.enabled
        before = self.state_text(start, end) if logged else ""
        held = [(s, e, h) for s, e, h in self.owners.overlapping(start, end)
                if h.state not in OPEN_STATES]
        for s, e, h in held:
            self.sched.violation(PHYSICAL, f"the host frees [{s:#x}, {e:#x}) of {h.owner} "
                                 f"while the secure firmware holds it ({h.state}): leaked")
        if held:  # the held parts stay owned; free the rest piece by piece
            pos = start
            for s, e, _ in held:
                if pos < s:
                    self.release(pos, s)
                pos = e
            if pos < end:
                self.release(pos, end)
            return
        pinned = [(s, e) for s, e, _ in self.pins.overlapping(start, end)]
        for s, e in pinned:
            o = self.owners.lookup(s)
            self.owners.set(s, e, Owner(o.owner if o else "?", "orphan"))
        for s, e in self.pins.gaps(start, end):
            self.owners.remove(s, e)
            self._insert_free(s, e)
        self.sched.emit("phys", "release", start=start, end=end, before=before,
                        after=self.state_text(start, end) if logged else "")

    def pin(self, start: int, end: int) -> None:
        self.pins.add(start, end, 1)

    def unpin(self, start: int, end: int) -> None:
        self.pins.add(start, end, -1)
        for s, e, o in list(self.owners.overlapping(start, end)):
            if o.state == "orphan":
                for gs, ge in self.pins.gaps(s, e):
                    self.owners.remove(gs, ge)
                    self._insert_free(gs, ge)
                    self.sched.emit("phys", "free-orphan", start=gs, end=ge, before=_label(o),
                                    after="free")

    def reserve(self, start: int, end: int) -> bool:
        """Take ``[start, end)`` out of the free pool for a carve-out (CMA, firmware) that
        hands it out itself; False if part of it is not free."""
        if not self.free.covered(start, end):
            return False
        self.free.remove(start, end)
        self.sched.emit("phys", "reserve", start=start, end=end, before="free",
                        after="reserved")
        return True

    def disown(self, start: int, end: int) -> None:
        """A carve-out's user gives its range back to the carve-out (not to the pool)."""
        before = self.state_text(start, end) if self.sched.log.enabled else ""
        self.owners.remove(start, end)
        self.sched.emit("phys", "disown", start=start, end=end, before=before,
                        after="reserved")

    def set_owner(self, start: int, end: int, owner: Owner) -> None:
        before = self.state_text(start, end) if self.sched.log.enabled else ""
        self.owners.set(start, end, owner)
        self.sched.emit("phys", "set-owner", start=start, end=end, before=before,
                        after=_label(owner))

    def state_text(self, start: int, end: int) -> str:
        """What ``[start, end)`` is, for the event log (not kernel code: nothing recorded):
        its owners as ``owner/state``, ``free``, ``reserved`` (RAM in neither: a carve-out's)
        or ``unbacked``, in address order, each once, joined by commas. One look per extent,
        never per page."""
        with track.untracked():
            parts = [(s, _label(o)) for s, _, o in self.owners.overlapping(start, end)]
            parts += [(s, "free") for s, _, _ in self.free.overlapping(start, end)]
            for gs, ge in self.owners.gaps(start, end):
                for fs, fe in self.free.gaps(gs, ge):
                    ram = self.regions.overlapping(fs, fe)
                    parts += [(max(fs, rs), "reserved" if k == "ram" else k)
                              for rs, _, k in ram]
                    parts += [(us, "unbacked") for us, _ in self.regions.gaps(fs, fe)]
        return ",".join(dict.fromkeys(label for _, label in sorted(parts))) or "-"

    def owner_of(self, addr: int) -> Owner | None:
        return self.owners.lookup(addr)

    def allocated_bytes(self) -> int:
        return self.owners.total()

    # ----- access: where physical truth is checked ---------------------------------------
    def check(self, start: int, n: int, who: str, write: bool) -> bool:
        end = start + n
        tr = track.active()
        if tr is None:
            return self._check(start, n, who, write)
        _observe(self.owners, start, end)  # regions: written at boot only, never conflicts
        _observe(self.mmio_claims, start, end)
        tr.deactivate()
        try:
            return self._check(start, n, who, write)
        finally:
            tr.activate()

    def _check(self, start: int, n: int, who: str, write: bool) -> bool:
        end = start + n
        # Fast path: one RAM region and one allocated owner extent cover the whole access.
        hit = self.owners.get(start)
        if hit is not None and hit[1] >= end and hit[2].state in OPEN_STATES:
            reg = self.regions.get(start)
            if reg is not None and reg[1] >= end and reg[2] == "ram":
                return True
        ok = True
        verb = "write" if write else "read"
        end = start + n
        for s, e, kind in self.regions.overlapping(start, end):
            if kind != "ram":
                if self._claims:
                    ok = self._refuse(self.mmio_claims, s, e, who, verb, "MMIO") and ok
                continue
            for gs, ge in self.owners.gaps(s, e):
                self.sched.violation(PHYSICAL, f"{who} {verb}s freed memory [{gs:#x}, {ge:#x})")
                ok = False
            ok = self._refuse(self.owners, s, e, who, verb, "") and ok
        for gs, ge in self.regions.gaps(start, end):
            self.sched.violation(PHYSICAL, f"{who} {verb}s unbacked [{gs:#x}, {ge:#x})")
            ok = False
        return ok

    def _refuse(self, m: RangeMap[Owner], s: int, e: int, who: str, verb: str,
                what: str) -> bool:
        """Report every piece of ``[s, e)`` in ``m`` whose owner does not allow ``who``."""
        ok = True
        for os_, oe, o in m.overlapping(s, e):
            if o.state not in OPEN_STATES and not allows(o.allow, who):
                self.sched.violation(
                    PHYSICAL,
                    f"{who} {verb}s {what}{' ' if what else ''}[{os_:#x}, {oe:#x}) owned by "
                    f"{o.owner} ({o.state})")
                ok = False
        return ok

    def _mmio_ok(self, start: int, n: int, who: str, write: bool) -> bool:
        """May ``who`` reach the device behind ``[start, start + n)`` (a registered MMIO
        range)? Only a firmware claim can refuse it."""
        if not self._claims and track.active() is None:
            return True
        return self.check(start, n, who, write)

    def read(self, start: int, n: int, who: str) -> bytes:
        """``who`` loads ``n`` bytes at ``start`` (zeros where the check fails; a registered
        MMIO range answers for itself)."""
        if self._mmio:
            pieces = self._mmio_pieces(start, n)
            if pieces is not None:
                return b"".join(
                    (h.read(s, e - s, who) if self._mmio_ok(s, e - s, who, False)
                     else bytes([ALL_ONES]) * (e - s)) if h is not None
                    else self._read(s, e - s, who) for s, e, h in pieces)
        return self._read(start, n, who)

    def _read(self, start: int, n: int, who: str) -> bytes:
        if not self.check(start, n, who, write=False):
            return bytes(n)
        return self.data.read(start, n)

    def write(self, start: int, data: bytes, who: str) -> None:
        """``who`` stores ``data`` at ``start`` (dropped where the check fails; a registered
        MMIO range takes its part)."""
        if self._mmio:
            pieces = self._mmio_pieces(start, len(data))
            if pieces is not None:
                for s, e, h in pieces:
                    part = data[s - start:e - start]
                    if h is not None:
                        if self._mmio_ok(s, e - s, who, True):
                            h.write(s, part, who)
                    else:
                        self._write(s, part, who)
                return
        self._write(start, data, who)

    def _write(self, start: int, data: bytes, who: str) -> None:
        if self.check(start, len(data), who, write=True):
            self.data.write(start, data)

    def zero(self, start: int, end: int, who: str) -> None:
        """``who`` clears ``[start, end)`` (clear_page, a partial-page truncation)."""
        if self._mmio:
            pieces = self._mmio_pieces(start, end - start)
            if pieces is not None:
                for s, e, h in pieces:
                    if h is not None:
                        if self._mmio_ok(s, e - s, who, True):
                            h.write(s, bytes(e - s), who)
                    elif self.check(s, e - s, who, write=True):
                        self.data.zero(s, e)
                return
        if self.check(start, end - start, who, write=True):
            self.data.zero(start, end)

    def copy(self, src: int, dst: int, n: int, who: str) -> None:
        """``who`` copies ``n`` bytes from ``src`` to ``dst`` (copy-on-write, migration): a
        checked read and a checked write, without materialising the bytes (unless either
        side is a registered MMIO range: then a read and a write)."""
        if self._mmio and (self._mmio_pieces(src, n) is not None
                           or self._mmio_pieces(dst, n) is not None):
            self.write(dst, self.read(src, n, who), who)
            return
        readable = self.check(src, n, who, write=False)
        if not self.check(dst, n, who, write=True):
            return
        if readable:
            self.data.copy(src, dst, n)
        else:
            self.data.zero(dst, dst + n)
