"""The Intel TDX module with TDX Connect, as physical truth: who owns private memory, each
TD's Secure EPT, the trusted device context table and the TDIs (TDX "device interfaces").

Models the SEAMCALLs a host's KVM and TSM driver issue, following Xu Yilun's TDX Connect RFC
(2025, as shared/spec/KERNEL.md §6 summarises it) and, where it is precise, the TDX module's
own TDX-IO handlers (intel/tdx-module, src/vmm_dispatcher/api_calls/tdxio/: tdh_mmio_map.c,
tdh_mmio_unmap.c, tdh_dmar_block.c, tdh_dmar_remove.c, tdh_devif_remove.c), whose status
names and codes (include/auto_gen_2_0/tdx_error_codes_defs.h) the errors carry:

- PAMT (:attr:`TdxModule.pamt`): physical range → page type and owner, as extents —
  ``PT_REG`` pages of a TD (TDH.MEM.PAGE.AUG/ADD), ``PT_DEVIF`` metadata pages of a TDI
  (TDH.DEVIF.CREATE); a range in no extent is ``PT_NDA`` (the host's). A page the module
  already owns: TDX_PAGE_METADATA_INCORRECT.
- Secure EPT per TD (:attr:`TdxModule.sept`): GPA → (PA delta, kind ``mem``/``mmio``, state
  ``pending``/``mapped``, the TD epoch it was blocked in or -1). AUG and MMIO.MAP leave an
  entry ``pending`` until the TD accepts it (TDG.MEM.PAGE.ACCEPT, TDG.MMIO.ACCEPT); removal
  is BLOCK, TRACK (the TD's epoch moves on), then REMOVE/UNMAP — TDX_GPA_RANGE_NOT_BLOCKED,
  TDX_TLB_TRACKING_NOT_DONE otherwise.
- The trusted device context table (:attr:`TdxModule.dmar`, the module's DMAR tables): BDF →
  the TD its trusted DMA reaches (TDH.DMAR.ADD, only while the TDI is CONFIG_LOCKED;
  TDH.DMAR.BLOCK then TDH.DMAR.REMOVE). :meth:`TdxModule.dma` is a TDI's trusted DMA: through
  that entry and the TD's S-EPT (memory entries, accepted, not blocked) to physical truth.
- TDIs (:attr:`TdxModule.devifs`): TDH.DEVIF.CREATE binds a function to a TD with metadata
  pages; TDH.DEVIF.REQUEST/RESPONSE relay TDISP messages to the device's responder (hw/tdi.py)
  and the module keeps the TDISP state those responses report (``tdisp_sts``: the module does
  not see an FLR; it learns of ERROR by asking). TDH.DEVIF.REMOVE reclaims the TDI.
- Private MMIO (:attr:`TdxModule.mmiomt`, the MMIO metadata): TDH.MMIO.MAP maps a locked
  TDI's TEE MMIO into the S-EPT (the range must be what hw/tdi.py's
  ``host_may_access_private_mmio`` refuses to the host, else
  TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE) and the module holds it until TDH.DEVIF.REMOVE.

The unbind order (KERNEL.md §6): 1. STOP the TDI (:meth:`TdxModule.tdi_stop`); 2. unmap its
private MMIO from the S-EPT (TDH.MMIO.BLOCK, TDH.MEM.TRACK, TDH.MMIO.UNMAP: the TDISP state
must be CONFIG_UNLOCKED, TDX_DEVIF_TDISP_INVALID_STATE); 3. clear its trusted device context
entry (TDH.DMAR.BLOCK, TDH.DMAR.REMOVE); 4. reclaim it (TDH.DEVIF.REMOVE: TDX_DEVIF_INVALID_STATE
unless unlocked, TDX_DEVIF_HAS_MAPPED_DMA, TDX_DEVIF_HAS_MAPPED_MMIO) — only then is the MMIO
the host's again. The module source lets steps 2 and 3 commute; with ``rfc_order=True`` (the
default) TDH.DMAR.BLOCK also refuses while the TDI is not CONFIG_UNLOCKED or still has mapped
MMIO (TDX_DEVIF_TDISP_INVALID_STATE, TDX_DEVIF_HAS_MAPPED_MMIO: those checks are invented
here, the statuses are the module's). A refused call changes nothing.

Physical truth (hw/secure/__init__.py): a TD's pages are ``tdx:private:<td>`` allowing only
the TD's vCPUs and trusted DMA; metadata pages ``tdx:metadata`` allow no one; mapped private
MMIO is claimed ``tdx:mmio:<td>`` (the TD's accessors), ``tdx:mmio-held:<td>`` (no one) once
unmapped and until reclaim. A host CPU or normal-domain DMA access to any of them is a
``physical`` violation.

Units: physical addresses, GPAs and sizes in bytes, 4 KiB aligned; a range stands for the
per-page SEAMCALLs the kernel issues over it. Locking and tracking: the module serialises its
SEAMCALLs (its own locks; TDX_OPERAND_BUSY stands for losing to another one, a fault point
``tdx-busy`` in every SEAMCALL); each call is one step after ``sched.point("tdx:<leaf>")``;
``pamt``, ``sept`` tables, ``mmiomt`` are ``atomic`` RangeMaps, ``tds``, ``sept``,
``devifs``, ``dmar`` ``atomic`` TrackedDicts of immutable records.

Events (``tdx``): one per call, named after the leaf (``mem.page.aug``, ``mmio.unmap``,
``devif.remove``...), with what it acted on and the state ``before`` and ``after``; ``error``
(call, status) for a refused call; ``dma`` and ``dma-fault`` for trusted DMA.

Leaves out: TD control structures (TDR, TDCS, TDVPR pages) and vCPUs, HKIDs beyond a number,
page sizes and levels, PENDING_BLOCKED and the other S-EPT states, SEPT pages, the IOMMU's
registers, IDE streams and SPDM sessions (TDH.IDE.*, TDH.SPDM.*: a stream is never blocked),
MMIOMT pages (TDH.MMIOMT.ADD/SET: MMIO.MAP names the TDI itself), DMAR invalidation queues
(a block is an invalidation done), PASIDs, migration, and TDX_INTERRUPTED_RESUMABLE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from ...extents import RangeMap
from ...sim import track
from ...sim.scheduler import Scheduler
from ...sim.track import TrackedDict
from .. import tdisp
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

# include/auto_gen_2_0/tdx_error_codes_defs.h (the ones this model returns).
STATUS = {
    "TDX_SUCCESS": 0x0000000000000000,
    "TDX_OPERAND_INVALID": 0xC000010000000000,
    "TDX_OPERAND_BUSY": 0x8000020000000000,
    "TDX_PAGE_METADATA_INCORRECT": 0xC000030000000000,
    "TDX_TD_ASSOCIATED_PAGES_EXIST": 0xC000040000000000,
    "TDX_HKID_NOT_FREE": 0xC000082000000000,
    "TDX_EPT_WALK_FAILED": 0xC0000B0000000000,
    "TDX_EPT_ENTRY_NOT_FREE": 0xC0000B0200000000,
    "TDX_GPA_RANGE_NOT_BLOCKED": 0xC0000B0600000000,
    "TDX_GPA_RANGE_ALREADY_BLOCKED": 0x00000B0700000000,
    "TDX_TLB_TRACKING_NOT_DONE": 0xC0000B0800000000,
    "TDX_PAGE_ALREADY_ACCEPTED": 0x00000B0A00000000,
    "TDX_GPA_RANGE_BLOCKED": 0xC0000B0C00000000,
    "TDX_EPT_ENTRY_STATE_INCORRECT": 0xC0000B0D00000000,
    "TDX_DMAR_INVALID_MAPPING_STATE": 0xC0000F0700000000,
    "TDX_DEVIF_TDISP_INVALID_MESSAGE": 0xC0000F0F00000000,
    "TDX_DEVIF_TDISP_INVALID_STATE": 0xC0000F1000000000,
    "TDX_DEVIF_INVALID_STATE": 0xC0000F1100000000,
    "TDX_DEVIF_HAS_MAPPED_MMIO": 0xC0000F1300000000,
    "TDX_MMIO_INVALID_PAGE_METADATA": 0xC0000F2500000000,
    "TDX_MMIO_DEVIF_OWNER_MISMATCH": 0xC0000F2700000000,
    "TDX_TD_HAS_ATTACHED_DEVICES": 0xC0000F3A00000000,
    "TDX_DEVIF_HAS_MAPPED_DMA": 0xC0000F3F00000000,
    "TDX_DEVIFMT_NOT_PRESENT": 0xC0000F4000000000,
    "TDX_DEVIFMT_ALREADY_PRESENT": 0xC0000F4200000000,
    "TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE": 0xC0000F4C00000000,
}
SUCCESS = "TDX_SUCCESS"


class TdxError(FirmwareError):
    """A SEAMCALL (or TDCALL) that returned an error status (bit 63 set)."""

    firmware = "tdx"


class Pamt(NamedTuple):
    """A PAMT extent: page type and owner (a TD's name, or a TDI's BDF)."""

    pt: str
    owner: str


class Septe(NamedTuple):
    """An S-EPT extent: ``pa = gpa + delta``; ``bepoch`` is the epoch of its BLOCK or -1."""

    delta: int
    kind: str  # "mem" | "mmio"
    state: str  # "pending" | "mapped"
    bepoch: int = -1
    devif: str = ""  # the TDI (BDF) whose MMIO this is


class MmioMt(NamedTuple):
    """Private MMIO the module holds: the TDI, its TD, mapped into the S-EPT now or not."""

    devif: str
    td: str
    mapped: bool


@dataclass(frozen=True)
class Td:
    name: str
    hkid: int
    accessors: tuple[str, ...]
    epoch: int = 0  # TDH.MEM.TRACK's counter


@dataclass(frozen=True)
class Devif:
    """A TDI object (DEVIFCS): its TD, the device's responder, metadata pages, the TDISP
    state the module last saw, the nonce LOCK returned, and how many MMIO bytes are mapped."""

    bdf: str
    td: str
    tdi: Tdi
    metadata: tuple[tuple[int, int], ...]
    tdisp_sts: TdiState = TdiState.CONFIG_UNLOCKED
    nonce: bytes = b""
    mmio_mapped: int = 0


class TdxModule(Firmware):
    """The TDX module of one platform (see the module docstring)."""

    name = "tdx"
    STATUS = STATUS
    BUSY = "TDX_OPERAND_BUSY"
    Error = TdxError

    def __init__(self, sched: Scheduler, phys: PhysMem, *, rfc_order: bool = True) -> None:
        super().__init__(sched, phys)
        self.rfc_order = rfc_order
        self.pamt: RangeMap[Pamt] = RangeMap(label="tdx.pamt", atomic=True)
        self.mmiomt: RangeMap[MmioMt] = RangeMap(label="tdx.mmiomt", atomic=True)
        self.tds: TrackedDict[str, Td] = TrackedDict(label="tdx.tds", atomic=True)
        self.sept: TrackedDict[str, RangeMap[Septe]] = TrackedDict(label="tdx.sept",
                                                                     atomic=True)
        self.devifs: TrackedDict[str, Devif] = TrackedDict(label="tdx.devifs", atomic=True)
        self.dmar: TrackedDict[str, tuple[str, str]] = TrackedDict(label="tdx.dmar",
                                                                    atomic=True)

    # ----- plumbing ------------------------------------------------------------------------
    def _td(self, leaf: str, td: str) -> Td:
        t = self.tds.get(td)
        if t is None:
            self._fail(leaf, "TDX_OPERAND_INVALID", f"no TD {td!r}")
        return t

    def _devif(self, leaf: str, bdf: str) -> Devif:
        d = self.devifs.get(bdf)
        if d is None:
            self._fail(leaf, "TDX_DEVIFMT_NOT_PRESENT", f"no TDI for {bdf}")
        return d

    def _range(self, leaf: str, *xs: int) -> None:
        if not aligned(*xs) or xs[-1] <= 0:
            self._fail(leaf, "TDX_OPERAND_INVALID", "addresses and size must be 4 KiB aligned")

    def _entries(self, leaf: str, td: str, gpa: int, size: int) -> list[tuple[int, int, Septe]]:
        """The S-EPT extents covering ``[gpa, gpa + size)`` (TDX_EPT_WALK_FAILED where a part
        is not mapped)."""
        table = self.sept[td]
        if table.gaps(gpa, gpa + size):
            self._fail(leaf, "TDX_EPT_WALK_FAILED", f"[{gpa:#x}, {gpa + size:#x}) is not "
                       f"(entirely) mapped in {td}'s S-EPT")
        return [(s, e, v) for s, e, v in table.overlapping(gpa, gpa + size)]

    # ----- TDs -----------------------------------------------------------------------------
    def td_create(self, name: str, hkid: int, accessors: Sequence[str] | None = None) -> str:
        """TDH.MNG.CREATE (+ KEY.CONFIG, INIT): a TD named after its VM, with an HKID.
        ``accessors``: who may touch its private memory (default :func:`cvm_accessors`)."""
        leaf = "mng.create"
        self._enter(leaf)
        if name in self.tds:
            self._fail(leaf, "TDX_OPERAND_INVALID", f"TD {name!r} exists")
        if any(t.hkid == hkid for t in self.tds.values()):
            self._fail(leaf, "TDX_HKID_NOT_FREE", f"HKID {hkid} is in use")
        acc = tuple(accessors) if accessors is not None else cvm_accessors(name)
        self.tds[name] = Td(name, hkid, acc)
        self.sept[name] = RangeMap(label=f"tdx.sept.{name}", atomic=True)
        self._emit(leaf, "none", "created", td=name, hkid=hkid)
        return SUCCESS

    def td_destroy(self, name: str) -> str:
        """Tear the TD down and reclaim it: refused while it owns pages
        (TDX_TD_ASSOCIATED_PAGES_EXIST) or TDIs (TDX_TD_HAS_ATTACHED_DEVICES)."""
        leaf = "mng.destroy"
        self._enter(leaf)
        self._td(leaf, name)
        if any(d.td == name for d in self.devifs.values()):
            self._fail(leaf, "TDX_TD_HAS_ATTACHED_DEVICES", f"{name} still has TDIs")
        if len(self.sept[name]) or any(o.owner == name for _, _, o in self.pamt):
            self._fail(leaf, "TDX_TD_ASSOCIATED_PAGES_EXIST", f"{name} still owns pages")
        del self.tds[name]
        del self.sept[name]
        self._emit(leaf, "created", "none", td=name)
        return SUCCESS

    # ----- private memory -------------------------------------------------------------------
    def mem_page_aug(self, td: str, gpa: int, pa: int, size: int) -> str:
        """TDH.MEM.PAGE.AUG: give host pages ``[pa, pa + size)`` to ``td`` at ``gpa``,
        pending the TD's accept."""
        return self._add(td, gpa, pa, size, "mem.page.aug", "pending")

    def mem_page_add(self, td: str, gpa: int, pa: int, size: int) -> str:
        """TDH.MEM.PAGE.ADD: the same before the TD runs (measured, no accept needed)."""
        return self._add(td, gpa, pa, size, "mem.page.add", "mapped")

    def _add(self, td: str, gpa: int, pa: int, size: int, leaf: str, state: str) -> str:
        self._enter(leaf)
        t = self._td(leaf, td)
        self._range(leaf, gpa, pa, size)
        if self.pamt.any_in(pa, pa + size):
            self._fail(leaf, "TDX_PAGE_METADATA_INCORRECT", f"[{pa:#x}, {pa + size:#x}) is "
                       "not PT_NDA (the module owns it already)")
        why = host_range_problem(self.phys, pa, pa + size)
        if why is not None:
            self._fail(leaf, "TDX_OPERAND_INVALID", why)
        if self.sept[td].any_in(gpa, gpa + size):
            self._fail(leaf, "TDX_EPT_ENTRY_NOT_FREE", f"GPA [{gpa:#x}, {gpa + size:#x}) "
                       f"is mapped in {td}'s S-EPT")
        self.pamt.set(pa, pa + size, Pamt("PT_REG", td))
        self.sept[td].set(gpa, gpa + size, Septe(pa - gpa, "mem", state))
        seize(self.phys, pa, pa + size, f"tdx:private:{td}", t.accessors)
        self._emit(leaf, "free", state, td=td, gpa=gpa, pa=pa, size=size)
        return SUCCESS

    def mem_page_accept(self, td: str, gpa: int, size: int) -> str:
        """TDG.MEM.PAGE.ACCEPT (the TD itself): pending → mapped; TDX_PAGE_ALREADY_ACCEPTED
        (a success status) when nothing was pending."""
        return self._accept(td, gpa, size, "mem", "mem.page.accept", "TDX_PAGE_ALREADY_ACCEPTED")

    def _accept(self, td: str, gpa: int, size: int, kind: str, leaf: str, already: str) -> str:
        self._enter(leaf, busy=False)
        self._td(leaf, td)
        self._range(leaf, gpa, size)
        ents = self._entries(leaf, td, gpa, size)
        if any(v.kind != kind for _, _, v in ents):
            self._fail(leaf, "TDX_EPT_ENTRY_STATE_INCORRECT", f"[{gpa:#x}, +{size:#x}) is "
                       f"not {kind}")
        if any(v.bepoch >= 0 for _, _, v in ents):
            self._fail(leaf, "TDX_GPA_RANGE_BLOCKED", f"[{gpa:#x}, +{size:#x}) is blocked")
        if kind == "mmio":
            for dev in dict.fromkeys(v.devif for _, _, v in ents):
                if self.devifs[dev].tdisp_sts not in (TdiState.CONFIG_LOCKED, TdiState.RUN):
                    self._fail(leaf, "TDX_DEVIF_TDISP_INVALID_STATE", f"TDI {dev} is "
                               f"{self.devifs[dev].tdisp_sts.name}")
        pending = [(s, e, v) for s, e, v in ents if v.state == "pending"]
        for s, e, v in pending:
            self.sept[td].set(s, e, v._replace(state="mapped"))
        status = SUCCESS if pending else already
        self._emit(leaf, "pending" if pending else "mapped", "mapped", td=td, gpa=gpa,
                   size=size, status=status)
        return status

    def mem_range_block(self, td: str, gpa: int, size: int) -> str:
        """TDH.MEM.RANGE.BLOCK: the TD can no longer reach ``[gpa, gpa + size)``."""
        return self._block(td, gpa, size, "mem", "mem.range.block")

    def _block(self, td: str, gpa: int, size: int, kind: str, leaf: str) -> str:
        self._enter(leaf)
        t = self._td(leaf, td)
        self._range(leaf, gpa, size)
        ents = self._entries(leaf, td, gpa, size)
        if any(v.kind != kind for _, _, v in ents):
            self._fail(leaf, "TDX_EPT_ENTRY_STATE_INCORRECT", f"[{gpa:#x}, +{size:#x}) is "
                       f"not {kind}")
        fresh = [(s, e, v) for s, e, v in ents if v.bepoch < 0]
        for s, e, v in fresh:
            self.sept[td].set(s, e, v._replace(bepoch=t.epoch))
        status = SUCCESS if fresh else "TDX_GPA_RANGE_ALREADY_BLOCKED"
        self._emit(leaf, "present", "blocked", td=td, gpa=gpa, size=size, status=status)
        return status

    def mem_track(self, td: str) -> str:
        """TDH.MEM.TRACK: a new TLB epoch; what was blocked before it may now be removed."""
        leaf = "mem.track"
        self._enter(leaf)
        t = self._td(leaf, td)
        self.tds[td] = replace(t, epoch=t.epoch + 1)
        self._emit(leaf, f"epoch={t.epoch}", f"epoch={t.epoch + 1}", td=td)
        return SUCCESS

    def _removable(self, leaf: str, td: str, gpa: int, size: int,
                   kind: str) -> list[tuple[int, int, Septe]]:
        t = self._td(leaf, td)
        self._range(leaf, gpa, size)
        ents = self._entries(leaf, td, gpa, size)
        if any(v.kind != kind for _, _, v in ents):
            self._fail(leaf, "TDX_EPT_ENTRY_STATE_INCORRECT", f"[{gpa:#x}, +{size:#x}) is "
                       f"not {kind}")
        if any(v.bepoch < 0 for _, _, v in ents):
            self._fail(leaf, "TDX_GPA_RANGE_NOT_BLOCKED", f"[{gpa:#x}, +{size:#x}) of {td} "
                       "is not blocked")
        if any(v.bepoch >= t.epoch for _, _, v in ents):
            self._fail(leaf, "TDX_TLB_TRACKING_NOT_DONE", f"no TDH.MEM.TRACK on {td} since "
                       "the block")
        return ents

    def mem_page_remove(self, td: str, gpa: int, size: int) -> str:
        """TDH.MEM.PAGE.REMOVE: blocked and tracked pages leave the TD and go back to the
        host (PT_NDA)."""
        leaf = "mem.page.remove"
        self._enter(leaf)
        ents = self._removable(leaf, td, gpa, size, "mem")
        self.sept[td].remove(gpa, gpa + size)
        for s, e, v in ents:
            self.pamt.remove(s + v.delta, e + v.delta)
            give_back(self.phys, s + v.delta, e + v.delta)
        self._emit(leaf, "blocked", "free", td=td, gpa=gpa, size=size)
        return SUCCESS

    # ----- TDIs ---------------------------------------------------------------------------
    def devif_create(self, bdf: str, td: str, tdi: Tdi,
                     metadata: Sequence[tuple[int, int]]) -> str:
        """TDH.DEVIF.CREATE: bind function ``bdf`` (its TDISP responder ``tdi``, which must
        be CONFIG_UNLOCKED) to ``td``; the module takes the host pages ``metadata`` (DEVIFCS
        and the TDISP message buffers) as ``PT_DEVIF``."""
        leaf = "devif.create"
        self._enter(leaf)
        state = self._ask_state(tdi)  # the device first: its mailbox is a scheduling point
        self._td(leaf, td)
        if bdf in self.devifs:
            self._fail(leaf, "TDX_DEVIFMT_ALREADY_PRESENT", f"{bdf} already has a TDI")
        if not metadata:
            self._fail(leaf, "TDX_OPERAND_INVALID", "no metadata pages")
        for s, e in metadata:
            if self.pamt.any_in(s, e):
                self._fail(leaf, "TDX_PAGE_METADATA_INCORRECT", f"metadata [{s:#x}, {e:#x}) "
                           "is not PT_NDA")
            why = host_range_problem(self.phys, s, e)
            if why is not None:
                self._fail(leaf, "TDX_OPERAND_INVALID", why)
        if state != TdiState.CONFIG_UNLOCKED:
            self._fail(leaf, "TDX_DEVIF_TDISP_INVALID_STATE", f"{bdf} is {state.name}")
        for s, e in metadata:
            self.pamt.set(s, e, Pamt("PT_DEVIF", bdf))
            seize(self.phys, s, e, "tdx:metadata")
        self.devifs[bdf] = Devif(bdf, td, tdi, tuple(metadata))
        self._emit(leaf, "none", "CONFIG_UNLOCKED", bdf=bdf, td=td)
        return SUCCESS

    @staticmethod
    def _ask_state(tdi: Tdi) -> TdiState:
        rsp = tdisp.decode(tdi.handle(tdisp.encode(
            tdisp.GetDeviceInterfaceState(tdi.function_id))))
        assert isinstance(rsp, tdisp.DeviceInterfaceState)
        return TdiState(rsp.tdi_state)

    def devif_request(self, bdf: str, msg: tdisp.Message) -> tdisp.Message:
        """TDH.DEVIF.REQUEST + TDH.DEVIF.RESPONSE: relay one TDISP request to the device and
        return its response, keeping the TDISP state it reports (LOCK → CONFIG_LOCKED,
        START → RUN, STOP → CONFIG_UNLOCKED, GET_STATE → what the device says)."""
        leaf = "devif.request"
        self._enter(leaf)
        tdi = self._devif(leaf, bdf).tdi
        rsp = tdisp.decode(tdi.handle(tdisp.encode(msg)))
        d = self._devif(leaf, bdf)  # again: the mailbox round trip was a scheduling point
        new, nonce = d.tdisp_sts, d.nonce
        if isinstance(rsp, tdisp.LockInterfaceResponse):
            new, nonce = TdiState.CONFIG_LOCKED, rsp.nonce
        elif isinstance(rsp, tdisp.StartInterfaceResponse):
            new, nonce = TdiState.RUN, b""
        elif isinstance(rsp, tdisp.StopInterfaceResponse):
            new, nonce = TdiState.CONFIG_UNLOCKED, b""
        elif isinstance(rsp, tdisp.DeviceInterfaceState):
            new = TdiState(rsp.tdi_state)
        self.devifs[bdf] = replace(d, tdisp_sts=new, nonce=nonce)
        self._emit(leaf, d.tdisp_sts.name, new.name, bdf=bdf, req=type(msg).__name__,
                   rsp=type(rsp).__name__)
        return rsp

    def _tdisp_ok(self, bdf: str, make: Callable[..., tdisp.Message],
                  *args: object) -> tdisp.Message:
        """Relay ``make(function_id, *args)``; a TDISP_ERROR answer is
        TDX_DEVIF_TDISP_INVALID_MESSAGE (chosen)."""
        msg = make(self._devif("devif.request", bdf).tdi.function_id, *args)
        rsp = self.devif_request(bdf, msg)
        if isinstance(rsp, tdisp.ErrorResponse):
            code = tdisp.ErrorCode(rsp.error_code).name
            self._fail("devif.response", "TDX_DEVIF_TDISP_INVALID_MESSAGE",
                       f"{type(msg).__name__} of {bdf}: TDISP_ERROR {code}")
        return rsp

    def tdi_lock(self, bdf: str, flags: int = tdisp.LOCK_MSIX, offset: int = 0) -> bytes:
        """LOCK_INTERFACE through the module: the TDI is CONFIG_LOCKED; the nonce (kept)."""
        rsp = self._tdisp_ok(bdf, tdisp.LockInterface, flags, 0, offset)
        assert isinstance(rsp, tdisp.LockInterfaceResponse)
        return rsp.nonce

    def tdi_start(self, bdf: str) -> None:
        """START_INTERFACE with the nonce LOCK returned: RUN (the TD asked for it). Without a
        nonce (START again, or LOCK's nonce gone with an FLR and a STOP) the module has
        nothing to send: TDX_DEVIF_INVALID_STATE (chosen), nothing reaches the device."""
        d = self._devif("devif.request", bdf)
        if not d.nonce:
            self._fail("devif.request", "TDX_DEVIF_INVALID_STATE",
                       f"START of {bdf}: no LOCK_INTERFACE nonce held ({d.tdisp_sts.name})")
        self._tdisp_ok(bdf, tdisp.StartInterface, d.nonce)

    def tdi_stop(self, bdf: str) -> None:
        """Step 1 of unbind: STOP_INTERFACE (from any state, ERROR included)."""
        self._tdisp_ok(bdf, tdisp.StopInterface)

    def tdi_state(self, bdf: str) -> TdiState:
        """GET_DEVICE_INTERFACE_STATE: the device's state, which the module now knows."""
        rsp = self._tdisp_ok(bdf, tdisp.GetDeviceInterfaceState)
        assert isinstance(rsp, tdisp.DeviceInterfaceState)
        return TdiState(rsp.tdi_state)

    def devif_remove(self, bdf: str) -> list[tuple[int, int]]:
        """Step 4 of unbind, TDH.DEVIF.REMOVE: reclaim the TDI; its metadata pages go back to
        the host (returned) and so does the private MMIO the module held."""
        leaf = "devif.remove"
        self._enter(leaf)
        d = self._devif(leaf, bdf)
        if d.tdisp_sts != TdiState.CONFIG_UNLOCKED:
            self._fail(leaf, "TDX_DEVIF_INVALID_STATE", f"{bdf} is {d.tdisp_sts.name}, not "
                       "CONFIG_UNLOCKED (STOP it first)")
        if bdf in self.dmar:
            self._fail(leaf, "TDX_DEVIF_HAS_MAPPED_DMA", f"{bdf} still has a trusted device "
                       "context entry")
        if d.mmio_mapped:
            self._fail(leaf, "TDX_DEVIF_HAS_MAPPED_MMIO", f"{bdf} still has {d.mmio_mapped:#x} "
                       "bytes of MMIO in the S-EPT")
        for s, e in d.metadata:
            self.pamt.remove(s, e)
            give_back(self.phys, s, e)
        held = [(s, e) for s, e, m in self.mmiomt if m.devif == bdf]
        for s, e in held:
            self.mmiomt.remove(s, e)
            self.phys.release_mmio(s, e)
        del self.devifs[bdf]
        self._emit(leaf, "CONFIG_UNLOCKED", "none", bdf=bdf, mmio=len(held))
        return list(d.metadata)

    # ----- private MMIO -----------------------------------------------------------------------
    def mmio_map(self, td: str, gpa: int, pa: int, size: int, bdf: str) -> str:
        """TDH.MMIO.MAP: map TEE MMIO ``[pa, pa + size)`` of TDI ``bdf`` (locked: its device
        refuses the host) into ``td``'s S-EPT at ``gpa``, pending the TD's accept."""
        leaf = "mmio.map"
        self._enter(leaf)
        t = self._td(leaf, td)
        self._range(leaf, gpa, pa, size)
        d = self._devif(leaf, bdf)
        if d.td != td:
            self._fail(leaf, "TDX_MMIO_DEVIF_OWNER_MISMATCH", f"{bdf} is bound to {d.td}")
        end = pa + size
        inside = any(lo <= pa and end <= hi for lo, hi in d.tdi.private_ranges())
        if not inside or d.tdi.host_may_access_private_mmio(pa, size):
            self._fail(leaf, "TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE", f"[{pa:#x}, {end:#x}) is not "
                       f"locked TEE MMIO of {bdf}")
        held = self.mmiomt.overlapping(pa, end)
        if any(m.mapped or m.devif != bdf for _, _, m in held):
            self._fail(leaf, "TDX_MMIO_INVALID_PAGE_METADATA", f"[{pa:#x}, {end:#x}) is mapped "
                       "already")
        for gs, ge in self.mmiomt.gaps(pa, end):
            why = mmio_range_problem(self.phys, gs, ge)
            if why is not None:
                self._fail(leaf, "TDX_OPERAND_INVALID", why)
        if self.sept[td].any_in(gpa, gpa + size):
            self._fail(leaf, "TDX_EPT_ENTRY_STATE_INCORRECT", f"GPA [{gpa:#x}, "
                       f"{gpa + size:#x}) is not free in {td}'s S-EPT")
        self.sept[td].set(gpa, gpa + size, Septe(pa - gpa, "mmio", "pending", devif=bdf))
        self.mmiomt.set(pa, end, MmioMt(bdf, td, True))
        self.devifs[bdf] = replace(d, mmio_mapped=d.mmio_mapped + size)
        self.phys.claim_mmio(pa, end, Owner(f"tdi:{bdf}", f"tdx:mmio:{td}", t.accessors))
        self._emit(leaf, "free", "pending", td=td, gpa=gpa, pa=pa, size=size, bdf=bdf)
        return SUCCESS

    def mmio_accept(self, td: str, gpa: int, size: int) -> str:
        """TDG.MMIO.ACCEPT (the TD): pending → mapped, only while the TDI is locked or
        running (TDX_DEVIF_TDISP_INVALID_STATE)."""
        return self._accept(td, gpa, size, "mmio", "mmio.accept", "TDX_PAGE_ALREADY_ACCEPTED")

    def mmio_block(self, td: str, gpa: int, size: int) -> str:
        """TDH.MMIO.BLOCK: the TD can no longer reach the MMIO at ``gpa``."""
        return self._block(td, gpa, size, "mmio", "mmio.block")

    def mmio_unmap(self, td: str, gpa: int, size: int) -> str:
        """Step 2 of unbind, TDH.MMIO.UNMAP: blocked, tracked MMIO of a CONFIG_UNLOCKED TDI
        leaves the S-EPT; the module keeps holding it until TDH.DEVIF.REMOVE."""
        leaf = "mmio.unmap"
        self._enter(leaf)
        ents = self._removable(leaf, td, gpa, size, "mmio")
        devs = dict.fromkeys(v.devif for _, _, v in ents)
        for dev in devs:
            sts = self.devifs[dev].tdisp_sts
            if sts != TdiState.CONFIG_UNLOCKED:
                self._fail(leaf, "TDX_DEVIF_TDISP_INVALID_STATE", f"TDI {dev} is {sts.name}, "
                           "not CONFIG_UNLOCKED (STOP it first)")
        self.sept[td].remove(gpa, gpa + size)
        for s, e, v in ents:
            ps, pe = s + v.delta, e + v.delta
            self.mmiomt.set(ps, pe, MmioMt(v.devif, td, False))
            self.phys.claim_mmio(ps, pe, Owner(f"tdi:{v.devif}", f"tdx:mmio-held:{td}"))
            d = self.devifs[v.devif]
            self.devifs[v.devif] = replace(d, mmio_mapped=d.mmio_mapped - (e - s))
        self._emit(leaf, "blocked", "held", td=td, gpa=gpa, size=size)
        return SUCCESS

    # ----- the trusted device context table (DMAR) -------------------------------------------
    def dmar_add(self, bdf: str, td: str) -> str:
        """TDH.DMAR.ADD: ``bdf``'s trusted DMA now reaches ``td`` (its TDI must be
        CONFIG_LOCKED and bound to ``td``)."""
        leaf = "dmar.add"
        self._enter(leaf)
        self._td(leaf, td)
        d = self._devif(leaf, bdf)
        if d.td != td:
            self._fail(leaf, "TDX_OPERAND_INVALID", f"{bdf} is bound to {d.td}")
        if d.tdisp_sts != TdiState.CONFIG_LOCKED:
            self._fail(leaf, "TDX_DEVIF_TDISP_INVALID_STATE", f"{bdf} is {d.tdisp_sts.name}")
        if bdf in self.dmar:
            self._fail(leaf, "TDX_DMAR_INVALID_MAPPING_STATE", f"{bdf}'s entry is "
                       f"{self.dmar[bdf][1]}")
        self.dmar[bdf] = (td, "present")
        self._emit(leaf, "free", "present", bdf=bdf, td=td)
        return SUCCESS

    def dmar_block(self, bdf: str) -> str:
        """TDH.DMAR.BLOCK, the first half of step 3: trusted DMA of ``bdf`` stops."""
        leaf = "dmar.block"
        self._enter(leaf)
        entry = self.dmar.get(bdf)
        if entry is None or entry[1] != "present":
            self._fail(leaf, "TDX_DMAR_INVALID_MAPPING_STATE", f"{bdf}'s entry is "
                       f"{entry[1] if entry else 'free'}, not present")
        d = self.devifs.get(bdf)
        if self.rfc_order and d is not None:
            if d.tdisp_sts != TdiState.CONFIG_UNLOCKED:
                self._fail(leaf, "TDX_DEVIF_TDISP_INVALID_STATE", f"{bdf} is "
                           f"{d.tdisp_sts.name} (unbind order: STOP first)")
            if d.mmio_mapped:
                self._fail(leaf, "TDX_DEVIF_HAS_MAPPED_MMIO", f"{bdf} still has MMIO in the "
                           "S-EPT (unbind order: unmap it first)")
        self.dmar[bdf] = (entry[0], "blocked")
        self._emit(leaf, "present", "blocked", bdf=bdf)
        return SUCCESS

    def dmar_remove(self, bdf: str) -> str:
        """TDH.DMAR.REMOVE, the second half of step 3: the entry is cleared."""
        leaf = "dmar.remove"
        self._enter(leaf)
        entry = self.dmar.get(bdf)
        if entry is None or entry[1] != "blocked":
            self._fail(leaf, "TDX_DMAR_INVALID_MAPPING_STATE", f"{bdf}'s entry is "
                       f"{entry[1] if entry else 'free'}, not blocked")
        del self.dmar[bdf]
        self._emit(leaf, "blocked", "free", bdf=bdf)
        return SUCCESS

    # ----- the device side: trusted DMA -------------------------------------------------------
    def dma(self, bdf: str, gpa: int, n: int, write: bool,
            data: bytes | None = None) -> bytes | None:
        """A TDI's trusted (T=1) DMA of ``n`` bytes at ``gpa``: through its trusted device
        context entry and its TD's S-EPT (accepted memory, not blocked) to physical truth as
        ``tee-dma:<td>/<bdf>``. A fault (no entry, a TDI not in RUN, an unmapped GPA) is
        logged and returns None."""
        self.sched.point(f"dma-t:{bdf}", "w" if write else "r")
        seen: list[object] = []
        with track.untracked():
            out = self._translate(bdf, gpa, n, seen)
        track.observe(self.dmar, *track.key_range(bdf))
        for obj in seen:  # the hardware's walk: footprint only
            track.observe(obj)
        if isinstance(out, str):
            self.sched.emit("tdx", "dma-fault", bdf=bdf, gpa=gpa, reason=out)
            return None
        td, pieces = out
        self.sched.emit("tdx", "dma", bdf=bdf, gpa=gpa, n=n, write=write)
        assert not write or (data is not None and len(data) == n)
        return self._tee_move(td, bdf, gpa, pieces, write, data)

    def _translate(self, bdf: str, gpa: int, n: int, seen: list[object]
                   ) -> tuple[str, list[tuple[int, int, int]]] | str:
        entry = self.dmar.get(bdf)
        if entry is None or entry[1] != "present":
            return "no present trusted device context entry"
        td = entry[0]
        d = self.devifs.get(bdf)
        if d is not None:
            seen.append(d.tdi)
        if d is None or d.tdi.tdi_state != TdiState.RUN:
            return "the TDI is not in RUN (no T=1 DMA)"
        seen.append(self.sept[td])
        pieces = []
        pos = gpa
        for s, e, v in self.sept[td].overlapping(gpa, gpa + n):
            if s != pos or v.kind != "mem" or v.state != "mapped" or v.bepoch >= 0:
                return f"GPA {pos:#x} is not accepted, unblocked private memory of {td}"
            pieces.append((s, s + v.delta, e - s))
            pos = e
        if pos != gpa + n:
            return f"GPA {pos:#x} is not mapped in {td}'s S-EPT"
        return td, pieces

    # ----- queries (for the kernel's drivers and invariants; nothing recorded) ----------------
    def translate(self, td: str, gpa: int) -> tuple[int, Septe] | None:
        """The S-EPT entry of ``gpa``: ``(pa, entry)``, or None."""
        with track.untracked():
            hit = self.sept[td].get(gpa) if td in self.sept else None
        return None if hit is None else (gpa + hit.value.delta, hit.value)

    def owner(self, pa: int) -> Pamt | None:
        """The PAMT entry of ``pa`` (None: PT_NDA, the host's)."""
        with track.untracked():
            return self.pamt.lookup(pa)

    def devif(self, bdf: str) -> Devif | None:
        with track.untracked():
            return self.devifs.get(bdf)

    def dmar_entry(self, bdf: str) -> tuple[str, str] | None:
        """``(td, "present" | "blocked")`` or None (free)."""
        with track.untracked():
            return self.dmar.get(bdf)

    def invariant(self) -> str | None:
        """The module's tables agree with physical truth: every PAMT extent is held in
        physmem, every S-EPT memory entry maps pages the PAMT gives its TD, every held MMIO
        range is claimed. The first disagreement, or None."""
        with track.untracked():
            for s, e, p in self.pamt:
                for os_, oe, o in self.phys.owners.overlapping(s, e):
                    if not o.state.startswith("tdx:"):
                        return f"PAMT {p.pt} [{os_:#x}, {oe:#x}) of {p.owner} is {o.state}"
            for td, table in self.sept.items():
                for s, e, v in table:
                    if v.kind != "mem":
                        continue
                    for ps, pe, p in self.pamt.overlapping(s + v.delta, e + v.delta):
                        if p != Pamt("PT_REG", td):
                            return f"{td} GPA {s:#x} maps [{ps:#x}, {pe:#x}) of {p.owner}"
                    if self.pamt.gaps(s + v.delta, e + v.delta):
                        return f"{td} GPA {s:#x} maps PT_NDA memory"
            for s, e, _ in self.mmiomt:
                if self.phys.mmio_claims.gaps(s, e):
                    return f"held MMIO [{s:#x}, {e:#x}) is not claimed"
        return None
