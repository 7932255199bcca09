"""The Arm CCA Realm Management Monitor with device assignment (RMM 1.1/2.0 DA), as physical
truth: granule states, each realm's stage-2 (its RTTs), and the secure SMMU's stream table —
all the RMM's, none of it visible to the host.

Models the RMI commands a host's KVM and TSM driver issue, following the RMM specification as
TF-RMM implements it (TF-RMM/tf-rmm: lib/granule/include/granule_types.h for the states,
lib/smc/include/smc-rmi.h for the commands and RMI_ERROR_* codes, runtime/rmi/vdev.c and
rtt_map.c for the device checks):

- Granules (:attr:`Rmm.granules`): physical RAM → state and owner realm, as extents; a range in
  no extent is ``UNDELEGATED`` (NS, the host's). RMI_GRANULE_DELEGATE/UNDELEGATE move host RAM
  to ``DELEGATED`` and back; from there a granule becomes ``RD`` (RMI_REALM_CREATE), ``REC``,
  ``RTT``, ``DATA`` (RMI_DATA_CREATE: mapped into the realm's RTT at an IPA), ``PDEV`` or
  ``VDEV``, and goes back to ``DELEGATED`` when destroyed. A command on a granule in the wrong
  state: RMI_ERROR_INPUT.
- Device granules (:attr:`Rmm.dev_granules`): MMIO → ``DEV_DELEGATED`` (RMI_GRANULE_DEV_DELEGATE)
  → ``DEV_MAPPED`` (RMI_RTT_DEV_MAP into the realm's RTT) and back.
- Realms (:attr:`Rmm.realms`) and their stage-2 (:attr:`Rmm.rtt`: IPA → PA extents, DATA or
  device memory). The host never sees a realm's protected mappings:
  :meth:`Rmm.rtt_read_entry` answers an entry's state, never its output address (chosen).
- Device assignment: a PDEV per physical function (RMI_PDEV_CREATE; its SPDM session and IDE
  stream are taken as ready), a VDEV per TDI bound to a realm (RMI_VDEV_CREATE → UNLOCKED;
  RMI_VDEV_LOCK/START/UNLOCK speak TDISP to the device's responder, hw/tdi.py — a TDISP_ERROR
  answer leaves the VDEV in ERROR, as TF-RMM's VDEV communication does; RMI_VDEV_DESTROY only
  from NEW or UNLOCKED, RMI_ERROR_DEVICE otherwise). A VDEV's stream table entry
  (:attr:`Rmm.ste`) is the RMM's: it points the device's DMA at the realm's RTT with the SMMU
  VMID of the realm (:meth:`Rmm.smmu_vmid`). RMI_RTT_DEV_MAP needs a LOCKED or STARTED VDEV
  and MMIO its TDI holds locked (the device refuses it to the host: hw/tdi.py's
  ``host_may_access_private_mmio``).
- VMIDs: TF-RMM allocates a realm's VMID itself at RMI_REALM_CREATE and programs the SMMU's
  STE with it, so the SMMU VMID is unrelated to the VMID KVM keeps for the VM (``vmid``, still
  checked unique as RMM 1.0's RmiRealmParams.vmid was). With ``shared_vmid=True`` (broadcast
  TLB maintenance: CPU and SMMU must agree) the RMM uses the host's VMID for both.
- Trusted DMA (:meth:`Rmm.smmu_dma`): through the STE and the realm's RTT (DATA only), only
  while the VDEV is STARTED and the device in RUN.

Physical truth (hw/secure/__init__.py): every delegated granule is ``rmm:<state>`` allowing
no one, except DATA (``rmm:data:<realm>``: the realm's accessors); delegated device memory is
claimed ``rmm:dev-delegated`` (no one), mapped device memory ``rmm:dev:<realm>``.

Units: bytes, 4 KiB granules; a range stands for the per-granule commands. Locking and
tracking: the RMM's granule locks serialise commands on a granule and a command is one step
after ``sched.point("rmm:<cmd>")``; tables are ``atomic`` tracked structures.

Events (``rmm``): one per command with ``before`` and ``after``; ``error`` (call, status);
``dma`` and ``dma-fault``.

Leaves out: RTT levels and folding, RIPAS, unprotected (shared) mappings, RECs' contents and
entry, auxiliary granules (REC_AUX, PDEV_AUX, VDEV_AUX), planes, the PDEV's SPDM/IDE state
machine and VDEV communication (RMI_*_COMMUNICATE: each TDISP exchange completes at once),
the vSMMU and physical SMMU commands, MECs, the GPT, and RMI_ERROR_RTT's level.
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

# lib/smc/include/smc-rmi.h
STATUS = {
    "RMI_SUCCESS": 0,
    "RMI_ERROR_INPUT": 1,
    "RMI_ERROR_REALM": 2,
    "RMI_ERROR_REC": 3,
    "RMI_ERROR_RTT": 4,
    "RMI_ERROR_DEVICE": 6,
}


class RmiError(FirmwareError):
    firmware = "rmm"


class Granule(NamedTuple):
    state: str  # DELEGATED | RD | REC | RTT | DATA | PDEV | VDEV | DEV_DELEGATED | DEV_MAPPED
    realm: str = ""


class Rtte(NamedTuple):
    """A realm stage-2 extent: ``pa = ipa + delta``; ``dev`` is the VDEV (BDF) for device
    memory, "" for DATA."""

    delta: int
    dev: str = ""


@dataclass(frozen=True)
class Realm:
    name: str
    rd: int
    vmid: int  # KVM's
    rmm_vmid: int  # the RMM's: the realm's stage-2 on the CPU and the SMMU
    accessors: tuple[str, ...]


@dataclass(frozen=True)
class Vdev:
    bdf: str
    realm: str
    pa: int
    tdi: Tdi
    state: str = "UNLOCKED"  # NEW | UNLOCKED | LOCKED | STARTED | ERROR
    nonce: bytes = b""


class Rmm(Firmware):
    """The RMM of one platform (see the module docstring)."""

    name = "rmm"
    STATUS = STATUS
    Error = RmiError

    def __init__(self, sched: Scheduler, phys: PhysMem, *, shared_vmid: bool = False) -> None:
        super().__init__(sched, phys)
        self.shared_vmid = shared_vmid
        self.granules: RangeMap[Granule] = RangeMap(label="rmm.granules", atomic=True)
        self.dev_granules: RangeMap[Granule] = RangeMap(label="rmm.dev_granules", atomic=True)
        self.realms: TrackedDict[str, Realm] = TrackedDict(label="rmm.realms", atomic=True)
        self.rtt: TrackedDict[str, RangeMap[Rtte]] = TrackedDict(label="rmm.rtt", atomic=True)
        self.pdevs: TrackedDict[str, int] = TrackedDict(label="rmm.pdevs", atomic=True)
        self.vdevs: TrackedDict[str, Vdev] = TrackedDict(label="rmm.vdevs", atomic=True)
        self.ste: TrackedDict[str, tuple[str, int]] = TrackedDict(label="rmm.ste", atomic=True)
        self._vmids: TrackedDict[int, str] = TrackedDict(label="rmm.vmids", atomic=True)

    # ----- plumbing ---------------------------------------------------------------------------
    def _in(self, call: str, m: RangeMap[Granule], pa: int, size: int, state: str,
            realm: str | None = None) -> None:
        """Every granule of ``[pa, pa + size)`` is in ``state`` (of ``realm``), else
        RMI_ERROR_INPUT."""
        if size <= 0 or not aligned(pa, size):
            self._fail(call, "RMI_ERROR_INPUT", "not granule aligned")
        ents = m.overlapping(pa, pa + size)
        bad: list[tuple[int, int]]
        if state == "UNDELEGATED":
            bad = [(s, e) for s, e, _ in ents]
        else:
            bad = [(s, e) for s, e in m.gaps(pa, pa + size)]
            bad += [(s, e) for s, e, g in ents
                    if g.state != state or (realm is not None and g.realm != realm)]
        if bad:
            self._fail(call, "RMI_ERROR_INPUT", f"[{bad[0][0]:#x}, {bad[0][1]:#x}) is not "
                       f"{state}")

    def _set(self, pa: int, size: int, g: Granule, phys_state: str,
             allow: tuple[str, ...] = ()) -> None:
        self.granules.set(pa, pa + size, g)
        seize(self.phys, pa, pa + size, phys_state, allow)

    def _to_delegated(self, pa: int, size: int) -> None:
        self._set(pa, size, Granule("DELEGATED"), "rmm:delegated")

    def _realm(self, call: str, name: str) -> Realm:
        r = self.realms.get(name)
        if r is None:
            self._fail(call, "RMI_ERROR_INPUT", f"no realm {name!r}")
        return r

    def _vdev(self, call: str, bdf: str) -> Vdev:
        v = self.vdevs.get(bdf)
        if v is None:
            self._fail(call, "RMI_ERROR_INPUT", f"no VDEV for {bdf}")
        return v

    # ----- granules ---------------------------------------------------------------------------
    def granule_delegate(self, pa: int, size: int) -> None:
        """RMI_GRANULE_DELEGATE: host RAM ``[pa, pa + size)`` becomes the realm world's."""
        call = "granule.delegate"
        self._enter(call)
        self._in(call, self.granules, pa, size, "UNDELEGATED")
        why = host_range_problem(self.phys, pa, pa + size)
        if why is not None:
            self._fail(call, "RMI_ERROR_INPUT", why)
        self._to_delegated(pa, size)
        self._emit(call, "UNDELEGATED", "DELEGATED", pa=pa, size=size)

    def granule_undelegate(self, pa: int, size: int) -> None:
        """RMI_GRANULE_UNDELEGATE: DELEGATED granules go back to the host (scrubbed)."""
        call = "granule.undelegate"
        self._enter(call)
        self._in(call, self.granules, pa, size, "DELEGATED")
        self.granules.remove(pa, pa + size)
        give_back(self.phys, pa, pa + size)
        self.phys.zero(pa, pa + size, "rmm")  # the scrub: nothing of the realm leaks out
        self._emit(call, "DELEGATED", "UNDELEGATED", pa=pa, size=size)

    # ----- realms -----------------------------------------------------------------------------
    def realm_create(self, name: str, rd: int, vmid: int,
                     accessors: Sequence[str] | None = None) -> None:
        """RMI_REALM_CREATE with its RD granule; ``vmid`` is the VMID KVM keeps for the VM
        (unique, RMI_ERROR_INPUT); the RMM allocates the realm's own stage-2 VMID."""
        call = "realm.create"
        self._enter(call)
        self._in(call, self.granules, rd, 4096, "DELEGATED")
        if name in self.realms or any(r.vmid == vmid for r in self.realms.values()):
            self._fail(call, "RMI_ERROR_INPUT", f"realm {name!r} or VMID {vmid} exists")
        own = vmid if self.shared_vmid else next(i for i in range(1, 1 << 16)
                                                 if i not in self._vmids)
        if own in self._vmids:
            self._fail(call, "RMI_ERROR_INPUT", f"VMID {own} is in use")
        acc = tuple(accessors) if accessors is not None else cvm_accessors(name)
        self._set(rd, 4096, Granule("RD", name), "rmm:rd")
        self._vmids[own] = name
        self.realms[name] = Realm(name, rd, vmid, own, acc)
        self.rtt[name] = RangeMap(label=f"rmm.rtt.{name}", atomic=True)
        self._emit(call, "DELEGATED", "RD", realm=name, vmid=vmid, rmm_vmid=own)

    def realm_destroy(self, name: str) -> None:
        """RMI_REALM_DESTROY: only once nothing of it is left (RMI_ERROR_REALM)."""
        call = "realm.destroy"
        self._enter(call)
        r = self._realm(call, name)
        if len(self.rtt[name]) or any(v.realm == name for v in self.vdevs.values()) or any(
                g.realm == name and g.state != "RD" for _, _, g in self.granules):
            self._fail(call, "RMI_ERROR_REALM", f"{name} still has RECs, RTTs, data or VDEVs")
        self._to_delegated(r.rd, 4096)
        del self._vmids[r.rmm_vmid]
        del self.realms[name]
        del self.rtt[name]
        self._emit(call, "RD", "DELEGATED", realm=name)

    def _child(self, call: str, name: str, pa: int, state: str, create: bool) -> None:
        """RMI_REC_CREATE/DESTROY, RMI_RTT_CREATE/DESTROY: a granule of ``name`` in
        ``state`` (RECs and RTT tables are the RMM's; the host sees neither)."""
        self._enter(call)
        self._realm(call, name)
        if create:
            self._in(call, self.granules, pa, 4096, "DELEGATED")
            self._set(pa, 4096, Granule(state, name), f"rmm:{state.lower()}")
        else:
            self._in(call, self.granules, pa, 4096, state, name)
            if state == "RTT" and len(self.rtt[name]) and sum(
                    1 for _, _, g in self.granules if g == Granule("RTT", name)) <= 1:
                self._fail(call, "RMI_ERROR_RTT", "the realm's last RTT still maps memory")
            self._to_delegated(pa, 4096)
        before, after = ("DELEGATED", state) if create else (state, "DELEGATED")
        self._emit(call, before, after, realm=name, pa=pa)

    def rec_create(self, name: str, pa: int) -> None:
        self._child("rec.create", name, pa, "REC", True)

    def rec_destroy(self, name: str, pa: int) -> None:
        self._child("rec.destroy", name, pa, "REC", False)

    def rtt_create(self, name: str, pa: int) -> None:
        self._child("rtt.create", name, pa, "RTT", True)

    def rtt_destroy(self, name: str, pa: int) -> None:
        self._child("rtt.destroy", name, pa, "RTT", False)

    def _ipa_free(self, call: str, name: str, ipa: int, size: int) -> None:
        if not any(g == Granule("RTT", name) for _, _, g in self.granules):
            self._fail(call, "RMI_ERROR_RTT", f"{name} has no RTT")
        if not aligned(ipa) or self.rtt[name].any_in(ipa, ipa + size):
            self._fail(call, "RMI_ERROR_RTT", f"IPA [{ipa:#x}, +{size:#x}) is not unassigned")

    def data_create(self, name: str, pa: int, ipa: int, size: int) -> None:
        """RMI_DATA_CREATE_UNKNOWN (RMI_RTT_DATA_MAP): DELEGATED granules become the realm's
        DATA at ``ipa``."""
        call = "data.create"
        self._enter(call)
        r = self._realm(call, name)
        self._in(call, self.granules, pa, size, "DELEGATED")
        self._ipa_free(call, name, ipa, size)
        self._set(pa, size, Granule("DATA", name), f"rmm:data:{name}", r.accessors)
        self.rtt[name].set(ipa, ipa + size, Rtte(pa - ipa))
        self._emit(call, "DELEGATED", "DATA", realm=name, ipa=ipa, pa=pa, size=size)

    def data_destroy(self, name: str, ipa: int, size: int) -> None:
        """RMI_DATA_DESTROY: the realm's DATA at ``ipa`` is unmapped, back to DELEGATED."""
        call = "data.destroy"
        self._enter(call)
        self._realm(call, name)
        ents = self._mapped(call, name, ipa, size, dev=False)
        self.rtt[name].remove(ipa, ipa + size)
        for s, e, v in ents:
            self._to_delegated(s + v.delta, e - s)
        self._emit(call, "DATA", "DELEGATED", realm=name, ipa=ipa, size=size)

    def _mapped(self, call: str, name: str, ipa: int, size: int,
                dev: bool) -> list[tuple[int, int, Rtte]]:
        table = self.rtt[name]
        ents = table.overlapping(ipa, ipa + size)
        if table.gaps(ipa, ipa + size) or any(bool(v.dev) != dev for _, _, v in ents):
            what = "device memory" if dev else "DATA"
            self._fail(call, "RMI_ERROR_RTT", f"IPA [{ipa:#x}, +{size:#x}) is not {what}")
        return [(s, e, v) for s, e, v in ents]

    # ----- devices ----------------------------------------------------------------------------
    def pdev_create(self, bdf: str, pa: int) -> None:
        """RMI_PDEV_CREATE (taken to READY: its SPDM session and IDE stream are up)."""
        call = "pdev.create"
        self._enter(call)
        self._in(call, self.granules, pa, 4096, "DELEGATED")
        if bdf in self.pdevs:
            self._fail(call, "RMI_ERROR_INPUT", f"{bdf} has a PDEV")
        self._set(pa, 4096, Granule("PDEV"), "rmm:pdev")
        self.pdevs[bdf] = pa
        self._emit(call, "DELEGATED", "READY", bdf=bdf)

    def pdev_destroy(self, bdf: str) -> None:
        call = "pdev.destroy"
        self._enter(call)
        pa = self.pdevs.get(bdf)
        if pa is None:
            self._fail(call, "RMI_ERROR_INPUT", f"no PDEV for {bdf}")
        if bdf in self.vdevs:
            self._fail(call, "RMI_ERROR_DEVICE", f"{bdf} has a VDEV")
        self._to_delegated(pa, 4096)
        del self.pdevs[bdf]
        self._emit(call, "READY", "DELEGATED", bdf=bdf)

    def vdev_create(self, name: str, bdf: str, pa: int, tdi: Tdi) -> None:
        """RMI_VDEV_CREATE: TDI ``tdi`` of PDEV ``bdf`` is bound to realm ``name``; the RMM
        programs the device's secure stream table entry with the realm's SMMU VMID."""
        call = "vdev.create"
        self._enter(call)
        r = self._realm(call, name)
        if bdf not in self.pdevs:
            self._fail(call, "RMI_ERROR_INPUT", f"no PDEV for {bdf}")
        if bdf in self.vdevs:
            self._fail(call, "RMI_ERROR_DEVICE", f"{bdf} has a VDEV")
        self._in(call, self.granules, pa, 4096, "DELEGATED")
        if tdi.tdi_state != TdiState.CONFIG_UNLOCKED:
            self._fail(call, "RMI_ERROR_DEVICE", f"{bdf} is {tdi.tdi_state.name}")
        self._set(pa, 4096, Granule("VDEV", name), "rmm:vdev")
        self.vdevs[bdf] = Vdev(bdf, name, pa, tdi)
        self.ste[bdf] = (name, r.rmm_vmid)
        self._emit(call, "DELEGATED", "UNLOCKED", realm=name, bdf=bdf, smmu_vmid=r.rmm_vmid)

    def _tdisp(self, call: str, bdf: str, want: tuple[str, ...],
               make: Callable[[Vdev], tdisp.Message], new: str) -> None:
        self._enter(call)
        v = self._vdev(call, bdf)
        if v.state not in want:
            self._fail(call, "RMI_ERROR_DEVICE", f"VDEV {bdf} is {v.state}")
        msg = make(v)
        rsp = tdisp.decode(v.tdi.handle(tdisp.encode(msg)))
        v = self._vdev(call, bdf)  # again, after the device's mailbox
        if isinstance(rsp, tdisp.ErrorResponse):
            self.vdevs[bdf] = replace(v, state="ERROR")
            self._fail(call, "RMI_ERROR_DEVICE", f"{type(msg).__name__} answered "
                       f"{tdisp.ErrorCode(rsp.error_code).name}")
        nonce = rsp.nonce if isinstance(rsp, tdisp.LockInterfaceResponse) else b""
        self.vdevs[bdf] = replace(v, state=new, nonce=nonce)
        self._emit(call, v.state, new, bdf=bdf)

    def vdev_lock(self, bdf: str) -> None:
        """RMI_VDEV_LOCK: LOCK_INTERFACE (UNLOCKED → LOCKED)."""
        self._tdisp("vdev.lock", bdf, ("UNLOCKED",), lambda v: tdisp.LockInterface(
            v.tdi.function_id, flags=tdisp.LOCK_MSIX), "LOCKED")

    def vdev_start(self, bdf: str) -> None:
        """RMI_VDEV_START: START_INTERFACE (LOCKED → STARTED), when the realm accepted it."""
        self._tdisp("vdev.start", bdf, ("LOCKED",),
                    lambda v: tdisp.StartInterface(v.tdi.function_id, v.nonce), "STARTED")

    def vdev_unlock(self, bdf: str) -> None:
        """RMI_VDEV_UNLOCK: STOP_INTERFACE (LOCKED, STARTED or ERROR → UNLOCKED)."""
        self._tdisp("vdev.unlock", bdf, ("LOCKED", "STARTED", "ERROR"),
                    lambda v: tdisp.StopInterface(v.tdi.function_id), "UNLOCKED")

    def vdev_destroy(self, bdf: str) -> None:
        """RMI_VDEV_DESTROY: only NEW or UNLOCKED (RMI_ERROR_DEVICE); releases the STE."""
        call = "vdev.destroy"
        self._enter(call)
        v = self._vdev(call, bdf)
        if v.state not in ("NEW", "UNLOCKED"):
            self._fail(call, "RMI_ERROR_DEVICE", f"VDEV {bdf} is {v.state}")
        self._to_delegated(v.pa, 4096)
        del self.ste[bdf]
        del self.vdevs[bdf]
        self._emit(call, v.state, "none", bdf=bdf)

    # ----- device memory ----------------------------------------------------------------------
    def dev_granule_delegate(self, pa: int, size: int) -> None:
        """RMI_GRANULE_DEV_DELEGATE: MMIO ``[pa, pa + size)`` becomes the realm world's."""
        call = "dev-granule.delegate"
        self._enter(call)
        self._in(call, self.dev_granules, pa, size, "UNDELEGATED")
        why = mmio_range_problem(self.phys, pa, pa + size)
        if why is not None:
            self._fail(call, "RMI_ERROR_INPUT", why)
        self.dev_granules.set(pa, pa + size, Granule("DEV_DELEGATED"))
        self.phys.claim_mmio(pa, pa + size, Owner("rmm", "rmm:dev-delegated"))
        self._emit(call, "UNDELEGATED", "DEV_DELEGATED", pa=pa, size=size)

    def dev_granule_undelegate(self, pa: int, size: int) -> None:
        """RMI_GRANULE_DEV_UNDELEGATE: DEV_DELEGATED MMIO goes back to the host."""
        call = "dev-granule.undelegate"
        self._enter(call)
        self._in(call, self.dev_granules, pa, size, "DEV_DELEGATED")
        self.dev_granules.remove(pa, pa + size)
        self.phys.release_mmio(pa, pa + size)
        self._emit(call, "DEV_DELEGATED", "UNDELEGATED", pa=pa, size=size)

    def rtt_dev_map(self, name: str, bdf: str, ipa: int, pa: int, size: int) -> None:
        """RMI_RTT_DEV_MAP: map the VDEV's locked TEE MMIO ``[pa, pa + size)`` at ``ipa`` in
        the realm's stage-2."""
        call = "rtt.dev-map"
        self._enter(call)
        r = self._realm(call, name)
        v = self._vdev(call, bdf)
        if v.realm != name or v.state not in ("LOCKED", "STARTED"):
            self._fail(call, "RMI_ERROR_DEVICE", f"VDEV {bdf} is {v.state} in {v.realm}")
        inside = any(lo <= pa and pa + size <= hi for lo, hi in v.tdi.private_ranges())
        if not inside or v.tdi.host_may_access_private_mmio(pa, size):
            self._fail(call, "RMI_ERROR_INPUT", f"[{pa:#x}, +{size:#x}) is not locked TEE "
                       f"MMIO of {bdf}")
        self._in(call, self.dev_granules, pa, size, "DEV_DELEGATED")
        self._ipa_free(call, name, ipa, size)
        self.dev_granules.set(pa, pa + size, Granule("DEV_MAPPED", name))
        self.rtt[name].set(ipa, ipa + size, Rtte(pa - ipa, bdf))
        self.phys.claim_mmio(pa, pa + size, Owner(f"tdi:{bdf}", f"rmm:dev:{name}", r.accessors))
        self._emit(call, "DEV_DELEGATED", "DEV_MAPPED", realm=name, bdf=bdf, ipa=ipa, pa=pa,
                   size=size)

    def rtt_dev_unmap(self, name: str, ipa: int, size: int) -> None:
        """RMI_RTT_DEV_UNMAP: the realm's device memory at ``ipa`` goes back to
        DEV_DELEGATED (still not the host's)."""
        call = "rtt.dev-unmap"
        self._enter(call)
        self._realm(call, name)
        ents = self._mapped(call, name, ipa, size, dev=True)
        self.rtt[name].remove(ipa, ipa + size)
        for s, e, v in ents:
            ps, pe = s + v.delta, e + v.delta
            self.dev_granules.set(ps, pe, Granule("DEV_DELEGATED"))
            self.phys.claim_mmio(ps, pe, Owner("rmm", "rmm:dev-delegated"))
        self._emit(call, "DEV_MAPPED", "DEV_DELEGATED", realm=name, ipa=ipa, size=size)

    # ----- the device side: DMA through the RMM's SMMU stream table ---------------------------
    def smmu_dma(self, bdf: str, ipa: int, n: int, write: bool,
                 data: bytes | None = None) -> bytes | None:
        """``bdf``'s DMA through its secure STE into its realm's DATA at ``ipa`` (as
        ``tee-dma:<realm>/<bdf>``); a fault is logged and returns None."""
        self.sched.point(f"dma-t:{bdf}", "w" if write else "r")
        with track.untracked():
            out = self._smmu_translate(bdf, ipa, n)
        track.observe(self.ste, *track.key_range(bdf))
        if isinstance(out, str):
            self.sched.emit("rmm", "dma-fault", bdf=bdf, ipa=ipa, reason=out)
            return None
        realm, table, pieces = out
        track.observe(table, ipa, ipa + n)
        self.sched.emit("rmm", "dma", bdf=bdf, ipa=ipa, n=n, write=write)
        assert not write or (data is not None and len(data) == n)
        return self._tee_move(realm, bdf, ipa, pieces, write, data)

    def _smmu_translate(self, bdf: str, ipa: int, n: int
                        ) -> tuple[str, RangeMap[Rtte], list[tuple[int, int, int]]] | str:
        ste = self.ste.get(bdf)
        v = self.vdevs.get(bdf)
        if ste is None or v is None:
            return "no secure stream table entry"
        if v.state != "STARTED" or v.tdi.tdi_state != TdiState.RUN:
            return f"VDEV {v.state}, TDI {v.tdi.tdi_state.name}: no T=1 DMA"
        table = self.rtt[ste[0]]
        pieces, pos = [], ipa
        for s, e, t in table.overlapping(ipa, ipa + n):
            if s != pos or t.dev:
                return f"IPA {pos:#x} is not DATA of {ste[0]}"
            pieces.append((s, s + t.delta, e - s))
            pos = e
        if pos != ipa + n:
            return f"IPA {pos:#x} is unassigned in {ste[0]}"
        return ste[0], table, pieces

    # ----- what the host may ask ---------------------------------------------------------------
    def rtt_read_entry(self, name: str, ipa: int) -> str:
        """RMI_RTT_READ_ENTRY as the model answers it: the state of the realm's entry at
        ``ipa`` (``ASSIGNED``, ``ASSIGNED_DEV`` or ``UNASSIGNED``), never its output address."""
        call = "rtt.read-entry"
        self._enter(call, busy=False)
        self._realm(call, name)
        hit = self.rtt[name].lookup(ipa)
        return "UNASSIGNED" if hit is None else "ASSIGNED_DEV" if hit.dev else "ASSIGNED"

    def smmu_vmid(self, name: str) -> int | None:
        """The VMID the SMMU uses for realm ``name``'s device stage-2 (None: no realm)."""
        with track.untracked():
            r = self.realms.get(name)
        return None if r is None else r.rmm_vmid

    def granule(self, pa: int) -> str:
        """The state of the granule at ``pa`` (RAM or MMIO)."""
        with track.untracked():
            g = self.granules.lookup(pa) or self.dev_granules.lookup(pa)
        return "UNDELEGATED" if g is None else g.state
