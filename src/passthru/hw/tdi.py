"""A TDISP responder for one device function: the TDI state machine (PCIe 6.x §11, TDISP).

Models the device side of TDISP for one TEE Device Interface: it answers TDISP requests
(hw/tdisp.py's wire format) the way DMTF spdm-emu's responder (library/
pci_tdisp_responder_lib, pci_tdisp_device_lib_sample) does, and moves the TDI through

    CONFIG_UNLOCKED --LOCK_INTERFACE--> CONFIG_LOCKED --START_INTERFACE--> RUN
          ^                                   |                             |
          +---------- STOP_INTERFACE (any state; scrubs) <-- ERROR <--------+
                                         security event while LOCKED or RUN

- LOCK_INTERFACE (only in CONFIG_UNLOCKED): checks the flags against what the TDI supports,
  that MMIO_REPORTING_OFFSET is page aligned and the reported ranges fit 64 bits
  (INVALID_REQUEST), the device's configuration (``config_check``:
  INVALID_DEVICE_CONFIGURATION), draws a START_INTERFACE_NONCE (a fault point
  ``tdisp-nonce``: INSUFFICIENT_ENTROPY), freezes the interface report and answers the nonce.
  Nonces are deterministic: SHA-256 over the TDI's name, FUNCTION_ID and a per-TDI counter —
  never os.urandom (DESIGN.md contract 4).
- START_INTERFACE (only in CONFIG_LOCKED) must echo the nonce: a mismatch answers
  INVALID_NONCE and the TDI stays CONFIG_LOCKED (as intel/tee-io-validator case 6.2
  expects); the nonce is used up by a successful START.
- STOP_INTERFACE succeeds in every state (tee-io-validator case 7.3: also in
  CONFIG_UNLOCKED, where nothing happens); from any other state it scrubs (the ``scrub``
  hook, then nonce, lock parameters and report are dropped) and enters CONFIG_UNLOCKED.
- GET_DEVICE_INTERFACE_REPORT only in CONFIG_LOCKED or RUN, in portions of at most
  ``report_portion`` bytes (spdm-emu: 0x40); LENGTH 0 or OFFSET past the end:
  INVALID_REQUEST. GET_VERSION, GET_CAPABILITIES, GET_DEVICE_INTERFACE_STATE: any state.
- BIND_P2P_STREAM, UNBIND_P2P_STREAM, SET_MMIO_ATTRIBUTE and VDM are well-formed but not
  supported (UNSUPPORTED_REQUEST, error data = the type; REQ_MSGS_SUPPORTED says 0x81-0x87),
  and so is a response sent as a request. A request naming another FUNCTION_ID:
  INVALID_INTERFACE. A request in the wrong state: INVALID_INTERFACE_STATE. A malformed one:
  the codec's error code. Every error answer echoes the request's FUNCTION_ID (the TDI's
  own when the request is shorter than a header).
- Security events (the device model calls them): :meth:`Tdi.on_flr`,
  :meth:`Tdi.on_command_write` clearing MSE or BME, :meth:`Tdi.on_bar_write`,
  :meth:`Tdi.on_config_write` (any config write except COMMAND — judged by
  on_command_write —, STATUS and the ranges the device declares ``config_exempt``, e.g. its
  DOE mailbox), :meth:`Tdi.on_ide_change`: while CONFIG_LOCKED or RUN the TDI enters ERROR;
  in CONFIG_UNLOCKED or ERROR nothing happens. From ERROR only STOP_INTERFACE leaves.
- Private MMIO: the TDI's ranges (:class:`TdiMmio`, usually its BARs) are TEE memory unless
  marked IS_NON_TEE_MEM; an MSI-X table or PBA range is TEE memory only when LOCK_INTERFACE
  set LOCK_MSIX (otherwise it is reported IS_NON_TEE_MEM without the MSI-X bit).
  :meth:`Tdi.host_may_access_private_mmio` refuses host access to TEE memory in
  CONFIG_LOCKED, RUN *and ERROR* (chosen: the secrets are not scrubbed until STOP);
  :meth:`Tdi.tee_may_access` allows TEE (T=1) access only in RUN.

Invariants: ``nonce`` is set exactly in CONFIG_LOCKED (and kept, unused, in an ERROR reached
from CONFIG_LOCKED); ``lock_params``, ``report`` and ``private`` are set exactly while not
CONFIG_UNLOCKED; ``private`` lies inside the configured ranges. Units: addresses and sizes
in bytes, MMIO ranges 4 KiB aligned; report FIRST_PAGE in 4 KiB pages.

Locking and tracking (sim/track.py): the TDI is device hardware: a request, an event or a
query is one transaction, atomic in the device (like hw/pcidev.py's config space), so the
object is ``atomic`` and its mutable fields are :class:`~passthru.sim.fields.Plain` parts:
``state`` (0), ``nonce`` (1), ``nonces_made`` (2), ``lock_params`` (3), ``report`` (4),
``private`` (5). ``name``, ``function_id``, ``ranges``, ``sched`` and the constructor's
options are set at construction. :meth:`Tdi.handle` is a scheduling point (``tdisp:<name>``,
a DOE mailbox access); events and queries are not (they run inside the device model's own
transaction).

Events (``tdisp``): ``state`` (dev, old, new, why) — exactly one per transition —, and
``error`` (dev, req, code, state) for each TDISP_ERROR answered.

Leaves out: the SPDM session and DOE transport (requests arrive as bytes), IDE and IDE_KM
(keys are assumed programmed for any DEFAULT_STREAM_ID; a change is reported through
:meth:`Tdi.on_ide_change`), BUSY (a request is handled atomically), P2P streams, updatable
MMIO attributes and VDMs, ATS/PRS, the TDI's DMA (T-bit) side, several TDIs per function,
and what exactly the device clears when it scrubs (the ``scrub`` hook's business).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..sim import track
from ..sim.fields import Plain
from ..sim.scheduler import Scheduler
from . import tdisp
from .pci import Bar
from .tdisp import (
    MMIO_IS_NON_TEE_MEM,
    MMIO_MSIX_PBA,
    MMIO_MSIX_TABLE,
    PAGE_SHIFT,
    Code,
    ErrorCode,
    InterfaceReport,
    Message,
    MmioRange,
    TdispDecodeError,
    TdiState,
)

PAGE = 1 << PAGE_SHIFT
MSIX = MMIO_MSIX_TABLE | MMIO_MSIX_PBA
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_COMMAND_MEMORY = 0x2  # MSE
PCI_COMMAND_MASTER = 0x4  # BME
LOCKED_STATES = (TdiState.CONFIG_LOCKED, TdiState.RUN)
DEFAULT_LOCK_FLAGS = tdisp.LOCK_NO_FW_UPDATE | tdisp.LOCK_SYSTEM_CACHE_LINE_SIZE | tdisp.LOCK_MSIX
SUPPORTED = (Code.GET_VERSION, Code.GET_CAPABILITIES, Code.LOCK_INTERFACE,
             Code.GET_DEVICE_INTERFACE_REPORT, Code.GET_DEVICE_INTERFACE_STATE,
             Code.START_INTERFACE, Code.STOP_INTERFACE)


@dataclass(frozen=True)
class TdiMmio:
    """One MMIO range of the TDI: ``[base, base + size)`` in BAR ``bar`` (physical = bus
    address), reported with RANGE_ID ``bar`` and the MMIO_RANGE ``attributes`` bits."""

    bar: int
    base: int
    size: int
    attributes: int = 0

    @property
    def end(self) -> int:
        return self.base + self.size


def ranges_from_bars(bars: Mapping[int, Bar], *, non_tee: Iterable[int] = (),
                     msix_table: tuple[int, int, int] | None = None,
                     msix_pba: tuple[int, int, int] | None = None) -> list[TdiMmio]:
    """The TDI's MMIO ranges for a function's BARs: one range per BAR (IS_NON_TEE_MEM for
    the BARs in ``non_tee``), split around the MSI-X table and PBA, each given as ``(bar,
    offset, size)`` in pages. ValueError for a window outside its BAR or not page aligned."""
    special = {MMIO_MSIX_TABLE: msix_table, MMIO_MSIX_PBA: msix_pba}
    nt = set(non_tee)
    out: list[TdiMmio] = []
    for i in sorted(bars):
        b = bars[i]
        base_attr = MMIO_IS_NON_TEE_MEM if i in nt else 0
        cuts = sorted((off, size, attr) for attr, w in special.items() if w is not None
                      for bar, off, size in [w] if bar == i)
        pos = 0
        for off, size, attr in cuts:
            if off % PAGE or size % PAGE or size <= 0 or off < pos or off + size > b.size:
                raise ValueError(f"ranges_from_bars: MSI-X window [{off:#x}, +{size:#x}) of "
                                 f"BAR{i} is not page aligned inside the BAR and disjoint")
            if off > pos:
                out.append(TdiMmio(i, b.base + pos, off - pos, base_attr))
            out.append(TdiMmio(i, b.base + off, size, base_attr | attr))
            pos = off + size
        if pos < b.size:
            out.append(TdiMmio(i, b.base + pos, b.size - pos, base_attr))
    return out


def _check_ranges(ranges: Sequence[TdiMmio]) -> None:
    prev: TdiMmio | None = None
    for r in sorted(ranges, key=lambda r: r.base):
        if r.base % PAGE or r.size % PAGE or r.size <= 0:
            raise ValueError(f"Tdi: MMIO range [{r.base:#x}, +{r.size:#x}) of BAR{r.bar} is "
                             "not 4 KiB aligned and sized")
        if not 0 <= r.bar <= 5 or r.attributes & ~0xF or r.attributes & MSIX == MSIX:
            raise ValueError(f"Tdi: MMIO range {r}: BAR 0..5, attributes within 0xF, not "
                             "both MSI-X table and PBA")
        if prev is not None and r.base < prev.end:
            raise ValueError(f"Tdi: MMIO ranges {prev} and {r} overlap")
        prev = r


class Tdi(track.Tracked):
    """The TDISP responder of one function (see the module docstring). ``ranges``: its MMIO
    ranges (:func:`ranges_from_bars`); ``scrub`` is called when STOP_INTERFACE leaves a
    locked, running or failed TDI; ``config_check`` returns why the device's configuration
    cannot be locked (None when it can)."""

    state = Plain[TdiState]((0, 1))
    nonce = Plain["bytes | None"]((1, 2))
    nonces_made = Plain[int]((2, 3))
    lock_params = Plain["tdisp.LockInterface | None"]((3, 4))
    report = Plain[bytes]((4, 5))
    private = Plain["tuple[tuple[int, int], ...]"]((5, 6))

    def __init__(self, sched: Scheduler, name: str, function_id: int,
                 ranges: Sequence[TdiMmio], *,
                 interface_info: int = tdisp.INFO_NO_UPDATE_AFTER_LOCK
                 | tdisp.INFO_DMA_WITHOUT_PASID,
                 msix_message_control: int = 0, device_info: bytes = b"passthru-tdi",
                 lock_flags_supported: int = DEFAULT_LOCK_FLAGS, report_portion: int = 0x40,
                 config_exempt: Iterable[tuple[int, int]] = (),
                 scrub: Callable[[], None] | None = None,
                 config_check: Callable[[], str | None] | None = None) -> None:
        if not 0 <= function_id < 1 << 32:
            raise ValueError(f"Tdi {name}: FUNCTION_ID {function_id:#x} is not a u32")
        if not 0 < report_portion <= 0xFFFF:
            raise ValueError(f"Tdi {name}: report portion {report_portion} not in 1..0xffff")
        _check_ranges(ranges)
        self.track_init(f"tdi.{name}", atomic=True)
        self.sched = sched
        self.name = name
        self.function_id = function_id
        self.ranges = tuple(sorted(ranges, key=lambda r: r.base))
        self.interface_info = interface_info
        self.msix_message_control = msix_message_control
        self.device_info = bytes(device_info)
        self.lock_flags_supported = lock_flags_supported
        self.report_portion = report_portion
        self.config_exempt = ((PCI_COMMAND, PCI_COMMAND + 2), (PCI_STATUS, PCI_STATUS + 2),
                              *config_exempt)
        self.scrub = scrub
        self.config_check = config_check
        self.state = TdiState.CONFIG_UNLOCKED
        self.nonce = None
        self.nonces_made = 0
        self.lock_params = None
        self.report = b""
        self.private = ()

    def __repr__(self) -> str:
        return f"<Tdi {self.name} fid={self.function_id:#x}>"

    # ----- the responder ---------------------------------------------------------------------
    def handle(self, request: bytes) -> bytes:
        """One TDISP request in, its response out (both on the wire): the DOE mailbox's
        round trip. Never raises for a bad request: that is a TDISP_ERROR answer."""
        self.sched.point(f"tdisp:{self.name}", "w")
        try:
            msg = tdisp.decode(request)
        except TdispDecodeError as e:
            fid = self.function_id if e.function_id is None else e.function_id
            req = request[1] if len(request) > 1 else None
            return self._error(fid, _req_name(req), e.code, e.data)
        name = _req_name(msg.CODE)
        if msg.CODE not in SUPPORTED:
            return self._error(msg.function_id, name, ErrorCode.UNSUPPORTED_REQUEST, msg.CODE)
        if msg.function_id != self.function_id:
            return self._error(msg.function_id, name, ErrorCode.INVALID_INTERFACE)
        try:
            return tdisp.encode(self._dispatch(msg))
        except _Refuse as r:
            return self._error(msg.function_id, name, r.code)

    def _dispatch(self, msg: Message) -> Message:
        fid = msg.function_id
        if isinstance(msg, tdisp.GetVersion):
            return tdisp.Version(fid, (tdisp.TDISP_VERSION_10,))
        if isinstance(msg, tdisp.GetCapabilities):
            bits = sum(1 << (c - Code.GET_VERSION) for c in SUPPORTED)
            return tdisp.Capabilities(fid, 0, bits.to_bytes(16, "little"),
                                      self.lock_flags_supported, 52, 1, 1)
        if isinstance(msg, tdisp.GetDeviceInterfaceState):
            return tdisp.DeviceInterfaceState(fid, self.state)
        if isinstance(msg, tdisp.LockInterface):
            return tdisp.LockInterfaceResponse(fid, self._lock(msg))
        if isinstance(msg, tdisp.GetDeviceInterfaceReport):
            return self._report_portion(msg)
        if isinstance(msg, tdisp.StartInterface):
            self._start(msg.nonce)
            return tdisp.StartInterfaceResponse(fid)
        assert isinstance(msg, tdisp.StopInterface)
        self._stop()
        return tdisp.StopInterfaceResponse(fid)

    def _error(self, fid: int, req: str, code: ErrorCode, data: int = 0) -> bytes:
        self.sched.emit("tdisp", "error", dev=self.name, req=req, code=code.name,
                        state=self.state.name)
        return tdisp.encode(tdisp.ErrorResponse(fid, code, data))

    def _transition(self, new: TdiState, why: str) -> None:
        old = self.state
        self.state = new
        self.sched.emit("tdisp", "state", dev=self.name, old=old.name, new=new.name, why=why)

    def _lock(self, req: tdisp.LockInterface) -> bytes:
        if self.state != TdiState.CONFIG_UNLOCKED:
            raise _Refuse(ErrorCode.INVALID_INTERFACE_STATE)
        off = req.mmio_reporting_offset
        if req.flags & ~self.lock_flags_supported or off % PAGE or (
                self.ranges and self.ranges[-1].end + off > 1 << 64):
            raise _Refuse(ErrorCode.INVALID_REQUEST)
        if self.config_check is not None and self.config_check() is not None:
            raise _Refuse(ErrorCode.INVALID_DEVICE_CONFIGURATION)
        if self.sched.fault("tdisp-nonce"):
            raise _Refuse(ErrorCode.INSUFFICIENT_ENTROPY)
        n = self.nonces_made
        self.nonces_made = n + 1
        nonce = hashlib.sha256(b"passthru/tdisp/start-nonce\0" + self.name.encode() + b"\0"
                               + self.function_id.to_bytes(4, "little")
                               + n.to_bytes(8, "little")).digest()
        report, private = self._make_report(req)
        self.nonce = nonce
        self.lock_params = req
        self.report = report.pack()
        self.private = private
        self._transition(TdiState.CONFIG_LOCKED, "LOCK_INTERFACE")
        return nonce

    def _make_report(self, req: tdisp.LockInterface
                     ) -> tuple[InterfaceReport, tuple[tuple[int, int], ...]]:
        out, private = [], []
        for r in self.ranges:
            attr = r.attributes
            if attr & MSIX and not req.flags & tdisp.LOCK_MSIX:
                attr = (attr & ~MSIX) | MMIO_IS_NON_TEE_MEM  # the host emulates MSI-X
            if not attr & MMIO_IS_NON_TEE_MEM:
                private.append((r.base, r.end))
            out.append(MmioRange((r.base + req.mmio_reporting_offset) >> PAGE_SHIFT,
                                 r.size >> PAGE_SHIFT, attr, r.bar))
        msixc = self.msix_message_control if req.flags & tdisp.LOCK_MSIX else 0
        return InterfaceReport(self.interface_info, msixc, 0, 0, tuple(out),
                               self.device_info), tuple(private)

    def _report_portion(self, req: tdisp.GetDeviceInterfaceReport) -> Message:
        if self.state not in LOCKED_STATES:
            raise _Refuse(ErrorCode.INVALID_INTERFACE_STATE)
        report = self.report
        if req.length == 0 or req.offset >= len(report):
            raise _Refuse(ErrorCode.INVALID_REQUEST)
        n = min(req.length, self.report_portion, len(report) - req.offset)
        return tdisp.DeviceInterfaceReport(req.function_id,
                                           report[req.offset:req.offset + n],
                                           len(report) - req.offset - n)

    def _start(self, nonce: bytes) -> None:
        if self.state != TdiState.CONFIG_LOCKED:
            raise _Refuse(ErrorCode.INVALID_INTERFACE_STATE)
        mine = self.nonce
        if mine is None or not hmac.compare_digest(nonce, mine):
            raise _Refuse(ErrorCode.INVALID_NONCE)
        self.nonce = None
        self._transition(TdiState.RUN, "START_INTERFACE")

    def _stop(self) -> None:
        if self.state == TdiState.CONFIG_UNLOCKED:
            return
        if self.scrub is not None:
            self.scrub()
        self.nonce = None
        self.lock_params = None
        self.report = b""
        self.private = ()
        self._transition(TdiState.CONFIG_UNLOCKED, "STOP_INTERFACE")

    # ----- security events (called by the device model) --------------------------------------
    def _security_event(self, why: str) -> None:
        if self.state in LOCKED_STATES:
            self._transition(TdiState.ERROR, why)

    def on_flr(self) -> None:
        """A function-level reset (or any reset of the function) started."""
        self._security_event("flr")

    def on_command_write(self, old: int, new: int) -> None:
        """COMMAND changed from ``old`` to ``new``: clearing MSE or BME is a security event;
        other bits are not (chosen)."""
        cleared = old & ~new & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        if cleared:
            why = [w for bit, w in ((PCI_COMMAND_MEMORY, "mse-clear"),
                                    (PCI_COMMAND_MASTER, "bme-clear")) if cleared & bit]
            self._security_event(",".join(why))

    def on_bar_write(self, bar: int) -> None:
        """A write to BAR ``bar``'s register, whatever its value."""
        self._security_event(f"bar{bar}-write")

    def on_config_write(self, offset: int, size: int) -> None:
        """A config write of ``size`` bytes at ``offset``: a security event unless it lies
        inside COMMAND, STATUS or a ``config_exempt`` range."""
        if not any(lo <= offset and offset + size <= hi for lo, hi in self.config_exempt):
            self._security_event(f"config-write@{offset:#x}")

    def on_ide_change(self) -> None:
        """An IDE stream of the TDI was reconfigured or its keys changed."""
        self._security_event("ide-change")

    # ----- queries -----------------------------------------------------------------------------
    @property
    def tdi_state(self) -> TdiState:
        return self.state

    def _may_be_private(self, addr: int, n: int) -> bool:
        return any(r.base < addr + n and addr < r.end
                   and not r.attributes & MMIO_IS_NON_TEE_MEM for r in self.ranges)

    def host_may_access_private_mmio(self, addr: int, n: int = 1) -> bool:
        """May the host CPU access ``[addr, addr + n)``? No when it touches TEE memory of
        the TDI while CONFIG_LOCKED, RUN or ERROR; yes otherwise."""
        if not self._may_be_private(addr, n):
            return True  # never TEE memory: no need to look at the state
        if self.state == TdiState.CONFIG_UNLOCKED:
            return True
        return not any(lo < addr + n and addr < hi for lo, hi in self.private)

    def tee_may_access(self, addr: int, n: int = 1) -> bool:
        """May the TEE (the cVM, T=1) access ``[addr, addr + n)``: inside TEE memory of a
        TDI in RUN."""
        if not self._may_be_private(addr, n) or self.state != TdiState.RUN:
            return False
        return any(lo <= addr and addr + n <= hi for lo, hi in self.private)

    def private_ranges(self) -> tuple[tuple[int, int], ...]:
        """The physical ``[lo, hi)`` ranges of TEE memory locked now (none when unlocked)."""
        return self.private

    def interface_report(self) -> InterfaceReport | None:
        """The interface report LOCK_INTERFACE froze (None in CONFIG_UNLOCKED)."""
        report = self.report
        return InterfaceReport.unpack(report) if report else None


class _Refuse(Exception):
    """A request the TDI answers with TDISP_ERROR ``code``."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


def _req_name(code: int | None) -> str:
    if code is None:
        return "none"
    return Code(code).name if code in Code._value2member_map_ else f"{code:#04x}"
