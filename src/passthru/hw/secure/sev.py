"""AMD SEV-SNP with SEV-TIO, as physical truth: the RMP, the PSP's TIO commands, the IOMMU's
secure device table, and the invariant of the ``rfc-sev-tio`` design (the host's mirror of the
RMP in a normal IOMMU table).

Models, following the SNP ABI and the SEV-TIO RFCs (Alexey Kardashevskiy, 2024-2025: the KVM
side's ``rmp_make_private_mmio`` and TIO guest requests, the guest's sev-guest TIO driver with
its TIO_MSG_MMIO_VALIDATE_REQ / TIO_MSG_SDTE_WRITE_REQ statuses; ``sev_ret_code`` as merged in
6.19's include/uapi/linux/psp-sev.h):

- The RMP (:attr:`SevFirmware.rmp`): physical range → (owner ASID, ``gpa - pa``, validated,
  immutable, MMIO), as extents; a range in no extent is hypervisor-owned. RMPUPDATE
  (:meth:`~SevFirmware.rmp_make_private`, :meth:`~SevFirmware.rmp_make_shared`,
  :meth:`~SevFirmware.rmp_make_private_mmio`) assigns or returns pages and always clears
  Validated (a page the hypervisor re-assigns must be validated again: the SNP defence against
  remapping); an immutable entry refuses (RMPUPDATE_FAIL_PERMISSION). PVALIDATE
  (:meth:`~SevFirmware.pvalidate`, the guest) sets or clears Validated where the entry is the
  guest's at the GPA it names; elsewhere the hardware raises #NPF (``NPF_RMP``).
- TIO (:attr:`SevFirmware.tdis`): SEV_CMD_TIO_TDI_BIND binds a function to a guest under the
  guest device id the guest will name it by (the PSP sends LOCK_INTERFACE to the device's
  responder, hw/tdi.py), the guest's TIO ops RUN (START) and STOP, and the host's
  SEV_CMD_TIO_TDI_UNBIND (the PSP stops the TDI, invalidates its SDTE and the Validated bits
  of its MMIO itself — chosen: the RFC leaves a host unbind of a running TDI unsaid).
- Guest requests: SDTE_WRITE (:meth:`~SevFirmware.tio_sdte_write`: the secure device table
  entry — ASID, guest device id, vTOM — of the IOMMU, :attr:`SevFirmware.sdt`) and
  MMIO_VALIDATE (:meth:`~SevFirmware.tio_mmio_validate`: Validated on a TDI's private MMIO
  that RMPUPDATE assigned to the guest; the range must be TEE MMIO the locked TDI refuses to
  the host, hw/tdi.py's ``host_may_access_private_mmio``).
- Trusted DMA (:meth:`~SevFirmware.tio_dma`): a TDI in RUN with a valid SDTE, below vTOM,
  translated through the host-built IOMMU table and then checked against the RMP the way the
  IOMMU's RMP check does (owner ASID = the SDTE's, GPA = the IOVA).
- The mirror (:meth:`~SevFirmware.mirror_problems`, :meth:`~SevFirmware.mirror_matches`): under
  the ``rfc-sev-tio`` design the host keeps a normal IOMMU table for the guest's private
  memory that must mirror the RMP exactly — every mirrored extent is the guest's in the RMP at
  the same guest address, and every private (non-MMIO) RMP extent of the guest is mirrored —
  also across conversions. A mismatch is an ``rmp-mirror`` violation (also when trusted DMA
  meets one). [KERNEL.md: the exact SEV-TIO table mechanism is unconfirmed; this is the
  seed's reading.]

Physical truth (hw/secure/__init__.py): an assigned page is ``snp:<guest>`` (validated:
the guest's accessors) or ``snp:<guest>:unvalidated`` (no one); assigned MMIO is claimed the
same way. A hypervisor read of an assigned page returns ciphertext on real hardware rather
than faulting; the model refuses and records it like a write (a host bug either way).

Status names: ``SEV_RET_*`` (PSP commands), ``RMPUPDATE_FAIL_*`` and ``PVALIDATE_FAIL_*``
(the instructions' return codes, AMD APM vol. 3), ``MMIO_VALIDATE_*`` and ``SDTE_WRITE_*``
(the guest messages' statuses), ``NPF_RMP`` (invented name for the #NPF with the RMP bit; its
code is SVM_EXIT_NPF). Which status answers which refusal is the model's choice where the
RFCs are silent (marked "chosen").

Units: bytes, 4 KiB aligned; a range stands for the per-page instructions and commands.
Locking and tracking: PSP commands run one at a time (:attr:`SevFirmware.psp`, the firmware's
own serialisation; each TDISP exchange inside one is a device access); RMPUPDATE and PVALIDATE
are instructions, atomic per call; the tables are ``atomic`` tracked structures.

Events (``sev``): one per call (``rmpupdate``, ``pvalidate``, ``launch-start``,
``decommission``, ``tio-bind``, ``tio-run``, ``tio-stop``, ``tio-unbind``, ``sdte-write``,
``mmio-validate``) with ``before`` and ``after``; ``error`` (call, status); ``dma`` and
``dma-fault``.

Leaves out: page sizes (2 MiB entries, PSMASH, RMPUPDATE_FAIL_OVERLAP), VMPLs and RMPADJUST,
the VMSA, launch measurement, SEV-TIO's SPDM/IDE connect (6.19's sev-dev-tio.c), TDI reports
and attestation blobs, ATS, DMA above vTOM (shared: the normal IOMMU path), and the guest's
pages' contents changing key on conversion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ...extents import RangeMap
from ...sim import kinds, track
from ...sim.locks import Mutex
from ...sim.scheduler import Scheduler
from ...sim.track import TrackedDict
from .. import tdisp
from ..iommu import IoPageTable
from ..physmem import Owner, PhysMem
from ..tdi import Tdi
from ..tdisp import TdiState
from . import (
    Firmware,
    FirmwareError,
    aligned,
    cvm_accessors,
    give_back,
    host_range_problem,
    mmio_range_problem,
    seize,
)

# The host's IOMMU table for a guest's private memory disagrees with the RMP.
RMP_MIRROR = kinds.register("rmp-mirror", "hw.secure.sev")

STATUS = {
    "SEV_RET_SUCCESS": 0x00,
    "SEV_RET_INVALID_GUEST": 0x10,
    "SEV_RET_ASID_OWNED": 0x0C,
    "SEV_RET_INVALID_PARAM": 0x16,
    "SEV_RET_SPDM_ERROR": 0x33,
    "SEV_RET_SEV_STATUS_INVALID_TDI": 0x38,
    "SEV_RET_IN_USE": 0x3A,
    "SEV_RET_SEV_STATUS_INVALID_TDI_STATE": 0x3C,
    "RMPUPDATE_FAIL_INPUT": 1,
    "RMPUPDATE_FAIL_PERMISSION": 2,
    "PVALIDATE_FAIL_INPUT": 1,
    "NPF_RMP": 0x400,
    "MMIO_VALIDATE_INVALID_TDI": 1,
    "MMIO_VALIDATE_TDI_UNBOUND": 2,
    "MMIO_VALIDATE_NOT_ASSIGNED": 3,
    "MMIO_VALIDATE_NOT_IO": 4,
    "MMIO_VALIDATE_NOT_UNIFORM": 5,
    "MMIO_VALIDATE_NOT_MAPPED": 7,
    "MMIO_VALIDATE_NOT_REPORTED": 8,
    "MMIO_VALIDATE_OUT_OF_RANGE": 9,
    "SDTE_WRITE_INVALID_TDI": 1,
    "SDTE_WRITE_TDI_NOT_BOUND": 2,
}
LOCKED = (TdiState.CONFIG_LOCKED, TdiState.RUN)


class SevError(FirmwareError):
    firmware = "sev"


class RmpEntry(NamedTuple):
    """An assigned RMP extent: ``gpa = pa + delta``."""

    asid: int
    delta: int
    validated: bool = False
    immutable: bool = False
    mmio: bool = False


class Sdte(NamedTuple):
    """A secure device table entry (what SDTE_WRITE sets)."""

    asid: int
    guest_device_id: int
    vtom: int


@dataclass(frozen=True)
class SnpGuest:
    name: str
    asid: int
    accessors: tuple[str, ...]


@dataclass(frozen=True)
class TioTdi:
    """A bound TDI: the device's responder, its guest, the id the guest names it by, the
    nonce LOCK_INTERFACE returned."""

    bdf: str
    tdi: Tdi
    asid: int
    guest_device_id: int
    nonce: bytes = b""


class SevFirmware(Firmware):
    """The PSP, the RMP and the IOMMU's secure device table of one platform."""

    name = "sev"
    STATUS = STATUS
    Error = SevError

    def __init__(self, sched: Scheduler, phys: PhysMem) -> None:
        super().__init__(sched, phys)
        self.rmp: RangeMap[RmpEntry] = RangeMap(label="sev.rmp", atomic=True)
        self.guests: TrackedDict[int, SnpGuest] = TrackedDict(label="sev.guests", atomic=True)
        self.tdis: TrackedDict[str, TioTdi] = TrackedDict(label="sev.tdis", atomic=True)
        self.sdt: TrackedDict[str, Sdte] = TrackedDict(label="sev.sdt", atomic=True)
        self.psp = Mutex(sched, "sev.psp", "psp_cmd_queue")

    # ----- guests ---------------------------------------------------------------------------
    def _guest(self, call: str, asid: int, status: str = "SEV_RET_INVALID_GUEST") -> SnpGuest:
        g = self.guests.get(asid)
        if g is None:
            self._fail(call, status, f"no SNP guest with ASID {asid}")
        return g

    def snp_launch_start(self, name: str, asid: int,
                         accessors: Sequence[str] | None = None) -> None:
        """SNP_LAUNCH_START + ACTIVATE: guest ``name`` (its VM's name) runs with ``asid``."""
        with self.psp:
            self._enter("launch-start")
            if asid in self.guests:
                self._fail("launch-start", "SEV_RET_ASID_OWNED", f"ASID {asid} is in use")
            if asid <= 0 or any(g.name == name for g in self.guests.values()):
                self._fail("launch-start", "SEV_RET_INVALID_PARAM", f"{name}/{asid}")
            acc = tuple(accessors) if accessors is not None else cvm_accessors(name)
            self.guests[asid] = SnpGuest(name, asid, acc)
            self._emit("launch-start", "none", "running", guest=name, asid=asid)

    def snp_decommission(self, asid: int) -> None:
        """SNP_DECOMMISSION: the guest is gone (its pages stay assigned until the host
        reclaims them with RMPUPDATE); refused while TDIs are bound (chosen: SEV_RET_IN_USE)."""
        with self.psp:
            self._enter("decommission")
            g = self._guest("decommission", asid)
            if any(t.asid == asid for t in self.tdis.values()):
                self._fail("decommission", "SEV_RET_IN_USE", f"{g.name} has bound TDIs")
            del self.guests[asid]
            self._emit("decommission", "running", "none", guest=g.name, asid=asid)

    # ----- the RMP: RMPUPDATE and PVALIDATE -------------------------------------------------
    def _state(self, g: SnpGuest, validated: bool) -> tuple[str, tuple[str, ...]]:
        if validated:
            return f"snp:{g.name}", g.accessors
        return f"snp:{g.name}:unvalidated", ()

    def _mark(self, s: int, e: int, ent: RmpEntry | None) -> None:
        """Physical truth for ``[s, e)`` after its RMP entry became ``ent`` (None: shared)."""
        mmio = self.phys.regions.lookup(s) == "mmio"
        if ent is None:
            if mmio:
                self.phys.release_mmio(s, e)
            else:
                give_back(self.phys, s, e)
            return
        state, allow = self._state(self.guests[ent.asid], ent.validated)
        if mmio:
            self.phys.claim_mmio(s, e, Owner(self._mmio_owner(s), state, allow))
        else:
            seize(self.phys, s, e, state, allow)

    def _mmio_owner(self, pa: int) -> str:
        for t in self.tdis.values():
            if any(r.base <= pa < r.end for r in t.tdi.ranges):
                return f"tdi:{t.bdf}"
        return "mmio"

    def _rmpupdate_checks(self, call: str, pa: int, size: int, mmio: bool) -> None:
        if size <= 0 or not aligned(pa, size):
            self._fail(call, "RMPUPDATE_FAIL_INPUT", "not 4 KiB aligned")
        if any(v.immutable for _, _, v in self.rmp.overlapping(pa, pa + size)):
            self._fail(call, "RMPUPDATE_FAIL_PERMISSION", f"[{pa:#x}, +{size:#x}) holds an "
                       "immutable entry")
        if any(v.mmio != mmio for _, _, v in self.rmp.overlapping(pa, pa + size)):
            self._fail(call, "RMPUPDATE_FAIL_INPUT", "RAM and MMIO entries mixed")
        check = mmio_range_problem if mmio else host_range_problem
        for gs, ge in self.rmp.gaps(pa, pa + size):
            why = check(self.phys, gs, ge)
            if why is not None:
                self._fail(call, "RMPUPDATE_FAIL_INPUT", why)

    def rmp_make_private(self, pa: int, size: int, asid: int, gpa: int,
                         immutable: bool = False) -> None:
        """RMPUPDATE: assign host RAM ``[pa, pa + size)`` to guest ``asid`` at ``gpa``,
        unvalidated (whatever it was before)."""
        self._assign("rmpupdate", pa, size, asid, gpa, immutable, mmio=False)

    def rmp_make_private_mmio(self, pa: int, size: int, asid: int, gpa: int) -> None:
        """RMPUPDATE of MMIO (the RFC's rmp_make_private_mmio): assign a TDI's MMIO to
        guest ``asid`` at ``gpa``, unvalidated until MMIO_VALIDATE."""
        self._assign("rmpupdate-mmio", pa, size, asid, gpa, False, mmio=True)

    def _assign(self, call: str, pa: int, size: int, asid: int, gpa: int, immutable: bool,
                mmio: bool) -> None:
        self._enter(call)
        if asid not in self.guests or not aligned(gpa):
            self._fail(call, "RMPUPDATE_FAIL_INPUT", f"ASID {asid} / GPA {gpa:#x}")
        self._rmpupdate_checks(call, pa, size, mmio)
        before = self._text(pa, pa + size)
        ent = RmpEntry(asid, gpa - pa, False, immutable, mmio)
        self.rmp.set(pa, pa + size, ent)
        self._mark(pa, pa + size, ent)
        self._emit(call, before, self._text(pa, pa + size), pa=pa, size=size, gpa=gpa)

    def rmp_make_shared(self, pa: int, size: int) -> None:
        """RMPUPDATE: ``[pa, pa + size)`` (RAM or MMIO) is the hypervisor's again."""
        call = "rmpupdate-shared"
        self._enter(call)
        if size <= 0 or not aligned(pa, size):
            self._fail(call, "RMPUPDATE_FAIL_INPUT", "not 4 KiB aligned")
        if any(v.immutable for _, _, v in self.rmp.overlapping(pa, pa + size)):
            self._fail(call, "RMPUPDATE_FAIL_PERMISSION", "immutable entry")
        before = self._text(pa, pa + size)
        for s, e, _ in self.rmp.remove(pa, pa + size):
            self._mark(s, e, None)
        self._emit(call, before, "shared", pa=pa, size=size)

    def pvalidate(self, asid: int, gpa: int, pa: int, size: int, validate: bool = True) -> bool:
        """PVALIDATE by guest ``asid`` of ``[gpa, gpa + size)`` backed by ``pa`` (what its
        nested page table maps): sets or clears Validated; whether anything changed (False:
        the instruction's CF=1, PVALIDATE_FAIL_NOUPDATE)."""
        call = "pvalidate"
        self._enter(call, busy=False)
        self._guest(call, asid, "PVALIDATE_FAIL_INPUT")
        if size <= 0 or not aligned(gpa, pa, size):
            self._fail(call, "PVALIDATE_FAIL_INPUT", "not 4 KiB aligned")
        ents = self.rmp.overlapping(pa, pa + size)
        if self.rmp.gaps(pa, pa + size) or any(
                v.asid != asid or v.delta != gpa - pa or v.mmio for _, _, v in ents):
            self._fail(call, "NPF_RMP", f"[{pa:#x}, +{size:#x}) is not guest {asid}'s "
                       f"private memory at GPA {gpa:#x}")
        before = self._text(pa, pa + size)
        changed = [(s, e, v) for s, e, v in ents if v.validated != validate]
        for s, e, v in changed:
            self.rmp.set(s, e, v._replace(validated=validate))
            self._mark(s, e, v._replace(validated=validate))
        self._emit(call, before, self._text(pa, pa + size), gpa=gpa, pa=pa, size=size)
        return bool(changed)

    def _text(self, s: int, e: int) -> str:
        """The RMP over ``[s, e)`` for the event log (nothing recorded)."""
        if not self.sched.log.enabled:
            return ""
        with track.untracked():
            parts = ["shared"] if self.rmp.gaps(s, e) else []
            parts += [f"asid{v.asid}{'+v' if v.validated else ''}"
                      for _, _, v in self.rmp.overlapping(s, e)]
        return ",".join(dict.fromkeys(parts))

    # ----- TIO: the host's PSP commands and the guest's ops ----------------------------------
    def _tdi(self, call: str, bdf: str) -> TioTdi:
        t = self.tdis.get(bdf)
        if t is None:
            self._fail(call, "SEV_RET_SEV_STATUS_INVALID_TDI", f"no TDI bound for {bdf}")
        return t

    def _exchange(self, call: str, tdi: Tdi, msg: tdisp.Message) -> tdisp.Message:
        rsp = tdisp.decode(tdi.handle(tdisp.encode(msg)))
        if isinstance(rsp, tdisp.ErrorResponse):
            self._fail(call, "SEV_RET_SPDM_ERROR", f"{type(msg).__name__} answered "
                       f"{tdisp.ErrorCode(rsp.error_code).name}")
        return rsp

    def tio_tdi_bind(self, bdf: str, tdi: Tdi, asid: int, guest_device_id: int) -> None:
        """SEV_CMD_TIO_TDI_BIND: bind ``bdf`` to guest ``asid`` as ``guest_device_id``; the
        PSP locks the TDI (CONFIG_LOCKED)."""
        call = "tio-bind"
        with self.psp:
            self._enter(call)
            self._guest(call, asid)
            if bdf in self.tdis:
                self._fail(call, "SEV_RET_IN_USE", f"{bdf} is bound")
            if any(t.asid == asid and t.guest_device_id == guest_device_id
                   for t in self.tdis.values()):
                self._fail(call, "SEV_RET_INVALID_PARAM", f"guest device id "
                           f"{guest_device_id:#x} is taken")
            if tdi.tdi_state != TdiState.CONFIG_UNLOCKED:
                self._fail(call, "SEV_RET_SEV_STATUS_INVALID_TDI_STATE",
                           f"{bdf} is {tdi.tdi_state.name}")
            rsp = self._exchange(call, tdi, tdisp.LockInterface(tdi.function_id,
                                                                 flags=tdisp.LOCK_MSIX))
            assert isinstance(rsp, tdisp.LockInterfaceResponse)
            self.tdis[bdf] = TioTdi(bdf, tdi, asid, guest_device_id, rsp.nonce)
            self._emit(call, "unbound", "CONFIG_LOCKED", bdf=bdf, asid=asid,
                       guest_device_id=guest_device_id)

    def tio_tdi_run(self, bdf: str) -> None:
        """The guest's TIO op RUN: the PSP sends START_INTERFACE with LOCK's nonce (RUN)."""
        call = "tio-run"
        with self.psp:
            self._enter(call)
            t = self._tdi(call, bdf)
            self._exchange(call, t.tdi, tdisp.StartInterface(t.tdi.function_id, t.nonce))
            self._emit(call, "CONFIG_LOCKED", "RUN", bdf=bdf)

    def tio_tdi_stop(self, bdf: str) -> None:
        """The guest's TIO op STOP: STOP_INTERFACE (the TDI stays bound, unlocked)."""
        call = "tio-stop"
        with self.psp:
            self._enter(call)
            t = self._tdi(call, bdf)
            before = t.tdi.tdi_state.name
            self._exchange(call, t.tdi, tdisp.StopInterface(t.tdi.function_id))
            self._emit(call, before, "CONFIG_UNLOCKED", bdf=bdf)

    def tio_tdi_unbind(self, bdf: str) -> None:
        """SEV_CMD_TIO_TDI_UNBIND: the PSP stops the TDI, invalidates its SDTE and clears
        Validated on its MMIO (which stays assigned until the host's RMPUPDATE)."""
        call = "tio-unbind"
        with self.psp:
            self._enter(call)
            t = self._tdi(call, bdf)
            before = t.tdi.tdi_state.name
            self._exchange(call, t.tdi, tdisp.StopInterface(t.tdi.function_id))
            self.sdt.pop(bdf, None)
            for r in t.tdi.ranges:
                for s, e, v in self.rmp.overlapping(r.base, r.end):
                    if v.mmio and v.validated:
                        self.rmp.set(s, e, v._replace(validated=False))
                        self._mark(s, e, v._replace(validated=False))
            del self.tdis[bdf]
            self._emit(call, before, "unbound", bdf=bdf)

    # ----- TIO guest requests: SDTE_WRITE, MMIO_VALIDATE -------------------------------------
    def _by_guest_id(self, call: str, asid: int, gdid: int, invalid: str) -> TioTdi:
        for t in self.tdis.values():
            if t.asid == asid and t.guest_device_id == gdid:
                return t
        self._fail(call, invalid, f"guest {asid} has no TDI {gdid:#x}")

    def tio_sdte_write(self, asid: int, guest_device_id: int, vtom: int,
                       valid: bool = True) -> None:
        """TIO_MSG_SDTE_WRITE_REQ from guest ``asid``: set (or, ``valid=False``, invalidate)
        the secure device table entry of its TDI ``guest_device_id``."""
        call = "sdte-write"
        with self.psp:
            self._enter(call, busy=False)
            t = self._by_guest_id(call, asid, guest_device_id, "SDTE_WRITE_INVALID_TDI")
            if valid and t.tdi.tdi_state not in LOCKED:
                self._fail(call, "SDTE_WRITE_TDI_NOT_BOUND", f"{t.bdf} is "
                           f"{t.tdi.tdi_state.name}")
            before = "valid" if t.bdf in self.sdt else "invalid"
            if valid:
                self.sdt[t.bdf] = Sdte(asid, guest_device_id, vtom)
            else:
                self.sdt.pop(t.bdf, None)
            self._emit(call, before, "valid" if valid else "invalid", bdf=t.bdf, vtom=vtom)

    def tio_mmio_validate(self, asid: int, guest_device_id: int, gpa: int, size: int,
                          range_id: int, range_offset: int = 0, validated: bool = True,
                          force: bool = False) -> bool:
        """TIO_MSG_MMIO_VALIDATE_REQ from guest ``asid``: set Validated on the subrange
        ``[range_offset, + size)`` of its TDI's MMIO range ``range_id`` (a BAR), which the
        guest maps at ``gpa``; whether anything changed."""
        call = "mmio-validate"
        with self.psp:
            self._enter(call, busy=False)
            t = self._by_guest_id(call, asid, guest_device_id, "MMIO_VALIDATE_INVALID_TDI")
            if t.tdi.tdi_state not in LOCKED:
                self._fail(call, "MMIO_VALIDATE_TDI_UNBOUND", f"{t.bdf} is not locked")
            ranges = [r for r in t.tdi.ranges if r.bar == range_id]
            if not ranges:
                self._fail(call, "MMIO_VALIDATE_NOT_REPORTED", f"no range {range_id}")
            base = ranges[0].base
            pa, end = base + range_offset, base + range_offset + size
            if size <= 0 or not aligned(pa, size, gpa) or not any(
                    r.base <= pa and end <= r.end for r in ranges):
                self._fail(call, "MMIO_VALIDATE_OUT_OF_RANGE", f"[{pa:#x}, {end:#x})")
            if t.tdi.host_may_access_private_mmio(pa, size):
                self._fail(call, "MMIO_VALIDATE_NOT_REPORTED", "not TEE MMIO of the TDI")
            ents = self.rmp.overlapping(pa, end)
            if self.rmp.gaps(pa, end) or any(v.asid != asid for _, _, v in ents):
                self._fail(call, "MMIO_VALIDATE_NOT_ASSIGNED", f"[{pa:#x}, {end:#x})")
            if any(not v.mmio for _, _, v in ents):
                self._fail(call, "MMIO_VALIDATE_NOT_IO", f"[{pa:#x}, {end:#x})")
            if any(v.delta != gpa - pa for _, _, v in ents):
                self._fail(call, "MMIO_VALIDATE_NOT_MAPPED", f"not at GPA {gpa:#x}")
            if not force and len({v.validated for _, _, v in ents}) > 1:
                self._fail(call, "MMIO_VALIDATE_NOT_UNIFORM", f"[{pa:#x}, {end:#x})")
            before = self._text(pa, end)
            changed = [(s, e, v) for s, e, v in ents if v.validated != validated]
            for s, e, v in changed:
                self.rmp.set(s, e, v._replace(validated=validated))
                self._mark(s, e, v._replace(validated=validated))
            self._emit(call, before, self._text(pa, end), bdf=t.bdf, gpa=gpa, size=size)
            return bool(changed)

    # ----- trusted DMA and the mirror ----------------------------------------------------------
    def tio_dma(self, bdf: str, table: IoPageTable, iova: int, n: int, write: bool,
                data: bytes | None = None) -> bytes | None:
        """``bdf``'s trusted (T=1) DMA at guest address ``iova`` (below vTOM), translated by
        the host-built IOMMU ``table`` and then RMP-checked against its SDTE's ASID and GPA.
        A fault returns None; an RMP mismatch is also an ``rmp-mirror`` violation."""
        self.sched.point(f"dma-t:{bdf}", "w" if write else "r")
        with track.untracked():
            out = self._tio_translate(bdf, table, iova, n)
        track.observe(self.sdt, *track.key_range(bdf))
        track.observe(table.ptes, iova, iova + n)
        track.observe(self.rmp)
        if isinstance(out, str):
            self.sched.emit("sev", "dma-fault", bdf=bdf, iova=iova, reason=out)
            return None
        guest, pieces = out
        self.sched.emit("sev", "dma", bdf=bdf, iova=iova, n=n, write=write)
        assert not write or (data is not None and len(data) == n)
        return self._tee_move(guest, bdf, iova, pieces, write, data)

    def _tio_translate(self, bdf: str, table: IoPageTable, iova: int, n: int
                       ) -> tuple[str, list[tuple[int, int, int]]] | str:
        sdte = self.sdt.get(bdf)
        t = self.tdis.get(bdf)
        if sdte is None or t is None:
            return "no valid secure device table entry"
        if t.tdi.tdi_state != TdiState.RUN:
            return "the TDI is not in RUN (no T=1 DMA)"
        if iova + n > sdte.vtom:
            return "above vTOM: shared memory goes through the normal domain"
        pieces: list[tuple[int, int, int]] = []
        pos = iova
        while pos < iova + n:
            hit = table.get(pos)
            if hit is None:
                return f"IOVA {pos:#x} is not mapped"
            end = min(hit[0], iova + n)
            pa = pos + hit[1]
            problem = self._rmp_problem(sdte.asid, pos, pa, end - pos)
            if problem is not None:
                self.sched.violation(RMP_MIRROR, f"trusted DMA of {bdf}: {problem}")
                return f"RMP check failed at IOVA {pos:#x}"
            pieces.append((pos, pa, end - pos))
            pos = end
        return self.guests[sdte.asid].name, pieces

    def _rmp_problem(self, asid: int, gpa: int, pa: int, size: int) -> str | None:
        """Why the mirrored ``gpa -> pa`` piece disagrees with the RMP (None: it agrees)."""
        end = pa + size
        for gs, ge in self.rmp.gaps(pa, end):
            return (f"GPA {gpa + gs - pa:#x} -> [{gs:#x}, {ge:#x}) is not assigned in the RMP "
                    f"(the hypervisor's)")
        for s, e, v in self.rmp.overlapping(pa, end):
            if v.asid != asid or v.mmio:
                return (f"GPA {gpa + s - pa:#x} -> [{s:#x}, {e:#x}) is "
                        f"{'MMIO of ' if v.mmio else ''}ASID {v.asid}'s, not {asid}'s")
            if v.delta != gpa - pa:
                return (f"GPA {gpa + s - pa:#x} -> [{s:#x}, {e:#x}) is guest address "
                        f"{s + v.delta:#x} in the RMP")
        return None

    def mirror_problems(self, asid: int,
                        extents: Iterable[Sequence[int]]) -> list[str]:
        """How the host's IOMMU table for guest ``asid`` (``extents``: ``(iova, iova_end, pa,
        ...)`` as IoPageTable.mapped gives them; IOVA = GPA) fails to mirror the RMP: mirrored
        pieces the RMP does not give the guest at that address, and private RMP extents of
        the guest the table does not map there. Empty when it mirrors exactly."""
        out: list[str] = []
        with track.untracked():
            mirror: RangeMap[int] = RangeMap(linear=True)
            for ext in extents:
                s, e, pa = ext[0], ext[1], ext[2]
                mirror.set(s, e, pa)
                problem = self._rmp_problem(asid, s, pa, e - s)
                if problem is not None:
                    out.append(f"mirrored {problem}")
            for s, e, v in self.rmp:
                if v.asid != asid or v.mmio:
                    continue
                gs, ge = s + v.delta, e + v.delta
                holes = mirror.gaps(gs, ge)
                wrong = [m for m in mirror.overlapping(gs, ge) if m.value != m.start - v.delta]
                if holes or wrong:
                    out.append(f"private [{s:#x}, {e:#x}) at GPA {gs:#x} is not mirrored "
                               "there")
        return out

    def mirror_matches(self, asid: int, extents: Iterable[Sequence[int]]) -> bool:
        """:meth:`mirror_problems`, each recorded as an ``rmp-mirror`` violation."""
        problems = self.mirror_problems(asid, extents)
        for p in problems:
            self.sched.violation(RMP_MIRROR, f"ASID {asid}: {p}")
        return not problems

    # ----- queries -----------------------------------------------------------------------------
    def rmp_lookup(self, pa: int) -> RmpEntry | None:
        """RMPREAD: the entry of ``pa`` (None: the hypervisor's)."""
        with track.untracked():
            return self.rmp.lookup(pa)

    def sdte(self, bdf: str) -> Sdte | None:
        with track.untracked():
            return self.sdt.get(bdf)
