"""The secure world as physical truth: firmware models of the TDX module (tdx.py), the AMD
PSP with its RMP (sev.py) and the Arm CCA Realm Management Monitor (cca.py).

Each model is standalone firmware: the kernel's TSM drivers call it the way they would issue a
SEAMCALL, a PSP command or an RMI SMC, and it keeps its own tables — ownership of physical
memory, the cVM's secure stage-2, device contexts — as extents (extents.py): a 1 GiB private
range is one extent in every table, never 262,144 pages.

What the three share lives here:

- :class:`FirmwareError`, raised for a call the firmware refuses, with the status *name* the
  specification uses (``TDX_OPERAND_BUSY``, ``SEV_RET_INVALID_GUEST``, ``RMI_ERROR_INPUT``)
  and its code. A refused call changes nothing: every model checks everything first and then
  writes. :class:`Firmware` is the models' base: the scheduling point (and fault point) that
  opens a call, the refusal, and the one event per call (``before`` and ``after``).
- Physical truth: a firmware that takes over a host range marks it in hw/physmem.py with a
  restrictive state and an ``allow`` set holding only the cVM's accessors
  (:func:`cvm_accessors`: its vCPUs, ``vcpu:<vm>.<n>`` as kernel/kvm names them, and trusted
  DMA of devices bound to it, ``tee-dma:<vm>/<dev>``), so that a host CPU or a DMA through a
  normal IOMMU domain (``cpu:...``, ``dma:<dev>``, ``kernel``) is refused and recorded as a
  ``physical`` violation; giving the range back restores the host's ``allocated`` state.
  Private MMIO is *claimed* the same way (PhysMem.claim_mmio). :func:`seize`,
  :func:`give_back` and :func:`host_range_problem` do it, one physmem call per owner extent.

Locking and tracking: firmware serialises its own calls (the TDX module's locks, the PSP's
command queue, the RMM's granule locks), so each call is one transaction after its scheduling
point (``sched.point("<fw>:<call>")``) and every table is an ``atomic`` tracked structure.

Leaves out: what the three have in common that none of the kernel's drivers sees — memory
encryption keys, cache flushes on conversion, attestation.
"""

from __future__ import annotations

from typing import NoReturn

from ...sim.scheduler import Scheduler
from ..physmem import OPEN_STATES, Owner, PhysMem

PAGE = 4096


class FirmwareError(Exception):
    """A firmware call refused with ``status`` (its specification's name) and ``code``."""

    firmware = "firmware"

    def __init__(self, call: str, status: str, code: int, why: str = "") -> None:
        super().__init__(f"{call}: {status} ({code:#x})" + (f": {why}" if why else ""))
        self.call = call
        self.status = status
        self.code = code
        self.why = why


class Firmware:
    """What every firmware model does around a call: a scheduling point (and, where the
    firmware can report contention, a fault point ``<name>-busy`` answered with ``BUSY``), the
    refusal (an ``error`` event, then :attr:`Error`), and one event per call."""

    name = "firmware"
    STATUS: dict[str, int] = {}
    BUSY: str | None = None
    Error: type[FirmwareError] = FirmwareError

    def __init__(self, sched: Scheduler, phys: PhysMem) -> None:
        self.sched = sched
        self.phys = phys

    def _enter(self, call: str, busy: bool = True) -> None:
        self.sched.point(f"{self.name}:{call}", "w")
        if busy and self.BUSY is not None and self.sched.fault(f"{self.name}-busy"):
            self._fail(call, self.BUSY, "injected contention")

    def _fail(self, call: str, status: str, why: str) -> NoReturn:
        self.sched.emit(self.name, "error", call=call, status=status)
        raise self.Error(call, status, self.STATUS[status], why)

    def _emit(self, call: str, before: str, after: str, **kw: object) -> None:
        self.sched.emit(self.name, call, **kw, before=before, after=after)

    def _tee_move(self, vm: str, dev: str, base: int, pieces: list[tuple[int, int, int]],
                  write: bool, data: bytes | None) -> bytes:
        """A trusted DMA's data, once translated: ``pieces`` are ``(device address, physical
        address, length)`` runs from ``base``, accessed as ``tee-dma:<vm>/<dev>`` (so physical
        truth judges each). A write returns b"", a read the bytes."""
        who = tee_dma(vm, dev)
        if write:
            assert data is not None
            for pos, pa, ln in pieces:
                self.phys.write(pa, data[pos - base:pos - base + ln], who)
            return b""
        return b"".join(self.phys.read(pa, ln, who) for _, pa, ln in pieces)


def cvm_accessors(vm: str) -> tuple[str, ...]:
    """Who may touch cVM ``vm``'s private memory and MMIO: its vCPUs and trusted DMA of the
    devices bound to it (hw/physmem.py's ``allow`` globs)."""
    return (f"vcpu:{vm}.*", f"tee-dma:{vm}/*")


def tee_dma(vm: str, dev: str) -> str:
    """The accessor name of ``dev``'s trusted (T=1) DMA into cVM ``vm``."""
    return f"tee-dma:{vm}/{dev}"


def aligned(*xs: int) -> bool:
    return all(x % PAGE == 0 for x in xs)


def host_range_problem(phys: PhysMem, start: int, end: int) -> str | None:
    """Why ``[start, end)`` is not host RAM the firmware may take (None: it is): every byte
    must be allocated to some owner in an open state."""
    if start >= end or not aligned(start, end):
        return f"[{start:#x}, {end:#x}) is empty or not page aligned"
    gaps = phys.owners.gaps(start, end)
    if gaps:
        return f"[{gaps[0].start:#x}, {gaps[0].end:#x}) is not allocated host memory"
    for s, e, o in phys.owners.overlapping(start, end):
        if o.state not in OPEN_STATES:
            return f"[{s:#x}, {e:#x}) of {o.owner} is already {o.state}"
    return None


def mmio_range_problem(phys: PhysMem, start: int, end: int) -> str | None:
    """Why ``[start, end)`` is not unclaimed MMIO (None: it is)."""
    if start >= end or not aligned(start, end):
        return f"[{start:#x}, {end:#x}) is empty or not page aligned"
    kinds = phys.regions.overlapping(start, end)
    if phys.regions.gaps(start, end) or any(k != "mmio" for _, _, k in kinds):
        return f"[{start:#x}, {end:#x}) is not inside the machine's MMIO windows"
    if phys.mmio_claims.any_in(start, end):
        return f"[{start:#x}, {end:#x}) is already held by the secure firmware"
    return None


def seize(phys: PhysMem, start: int, end: int, state: str,
          allow: tuple[str, ...] = ()) -> None:
    """Mark host RAM ``[start, end)`` as held by the firmware in ``state`` (each owner keeps
    its name; the firmware knows whose memory it took)."""
    for s, e, o in phys.owners.overlapping(start, end):
        phys.set_owner(s, e, Owner(o.owner, state, allow))


def give_back(phys: PhysMem, start: int, end: int) -> None:
    """Return ``[start, end)`` to its host owners (state ``allocated``)."""
    for s, e, o in phys.owners.overlapping(start, end):
        phys.set_owner(s, e, Owner(o.owner))


__all__ = ["PAGE", "Firmware", "FirmwareError", "aligned", "cvm_accessors", "give_back",
           "host_range_problem", "mmio_range_problem", "seize", "tee_dma"]
