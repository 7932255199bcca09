"""The TDISP responder of one function (hw/tdi.py): every transition of the TDI state
machine and every error it answers, the START_INTERFACE nonce, ERROR on each security event
while CONFIG_LOCKED or RUN (and not otherwise), only STOP leaving ERROR, the device refusing
host access to its private MMIO, the interface report, determinism, and what the checker
sees. Model-only: the TDI speaks bytes (hw/tdisp.py's codec) as a DOE mailbox would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passthru.hw import tdisp as t
from passthru.hw.pci import Bar
from passthru.hw.tdi import Tdi, TdiMmio, ranges_from_bars
from passthru.hw.tdisp import ErrorCode, TdiState
from passthru.sim import Scheduler, track

UNLOCKED, LOCKED, RUN, ERROR = (TdiState.CONFIG_UNLOCKED, TdiState.CONFIG_LOCKED,
                                TdiState.RUN, TdiState.ERROR)
FID = t.function_id_of("0000:01:00.0")
BAR0 = Bar(0xE000_0000, 1 << 20)  # TEE registers
BAR2 = Bar(0xE010_0000, 0x4000)  # MSI-X table at 0, PBA at 0x2000
BAR4 = Bar(0xE020_0000, 0x1000)  # a non-TEE (shared) BAR
OFFSET = 1 << 40  # MMIO_REPORTING_OFFSET


def make(sched: Scheduler | None = None, name: str = "gpu0", **kw) -> Tdi:
    ranges = ranges_from_bars({0: BAR0, 2: BAR2, 4: BAR4}, non_tee=[4],
                              msix_table=(2, 0, 0x1000), msix_pba=(2, 0x2000, 0x1000))
    return Tdi(sched or Scheduler(), name, FID, ranges, config_exempt=[(0x100, 0x118)], **kw)


def ask(tdi: Tdi, msg: t.Message) -> t.Message:
    return t.decode(tdi.handle(t.encode(msg)))


def err(tdi: Tdi, msg: t.Message) -> ErrorCode | None:
    """The error code TDI answers ``msg`` with, None when it succeeds."""
    rsp = ask(tdi, msg)
    if isinstance(rsp, t.ErrorResponse):
        assert rsp.function_id == msg.function_id  # the request's INTERFACE_ID is echoed
        return ErrorCode(rsp.error_code)
    assert rsp.CODE == t.response_code(msg.CODE) and rsp.function_id == msg.function_id
    return None


def lock(tdi: Tdi, flags: int = t.LOCK_MSIX, offset: int = OFFSET) -> bytes:
    rsp = ask(tdi, t.LockInterface(FID, flags=flags, mmio_reporting_offset=offset))
    assert isinstance(rsp, t.LockInterfaceResponse), rsp
    return rsp.nonce


def state(tdi: Tdi) -> TdiState:
    rsp = ask(tdi, t.GetDeviceInterfaceState(FID))
    assert isinstance(rsp, t.DeviceInterfaceState)
    return rsp.tdi_state


def into(tdi: Tdi, st_: TdiState) -> bytes | None:
    """Drive a fresh TDI into ``st_`` (ERROR through an FLR while locked); the nonce."""
    nonce = None
    if st_ != UNLOCKED:
        nonce = lock(tdi)
    if st_ == RUN:
        assert nonce is not None and err(tdi, t.StartInterface(FID, nonce)) is None
    if st_ == ERROR:
        tdi.on_flr()
    assert state(tdi) == st_
    return nonce


def transitions(tdi: Tdi) -> list[tuple[str, str, str]]:
    return [(a["old"], a["new"], a["why"]) for a in
            (dict(e.args) for e in tdi.sched.log.events if e.subsystem == "tdisp"
             and e.event == "state")]


# ----- transitions ---------------------------------------------------------------------------


def test_lock_start_stop_walk_the_states_one_event_each():
    scrubbed: list[int] = []
    tdi = make(scrub=lambda: scrubbed.append(1))
    assert state(tdi) == UNLOCKED and tdi.tdi_state == UNLOCKED
    nonce = lock(tdi)
    assert state(tdi) == LOCKED and tdi.nonce == nonce and len(nonce) == 32
    assert err(tdi, t.StartInterface(FID, nonce)) is None
    assert state(tdi) == RUN and tdi.nonce is None  # used up
    assert err(tdi, t.StopInterface(FID)) is None
    assert state(tdi) == UNLOCKED and scrubbed == [1]
    assert (tdi.nonce, tdi.lock_params, tdi.report, tdi.private) == (None, None, b"", ())
    assert transitions(tdi) == [
        ("CONFIG_UNLOCKED", "CONFIG_LOCKED", "LOCK_INTERFACE"),
        ("CONFIG_LOCKED", "RUN", "START_INTERFACE"),
        ("RUN", "CONFIG_UNLOCKED", "STOP_INTERFACE")]


@pytest.mark.parametrize("start", [UNLOCKED, LOCKED, RUN, ERROR])
def test_stop_from_any_state_unlocks_and_scrubs_unless_already_unlocked(start):
    scrubbed: list[int] = []
    tdi = make(scrub=lambda: scrubbed.append(1))
    into(tdi, start)
    before = len(transitions(tdi))
    assert err(tdi, t.StopInterface(FID)) is None
    assert state(tdi) == UNLOCKED
    new = transitions(tdi)[before:]
    if start == UNLOCKED:
        assert new == [] and scrubbed == []  # nothing to scrub, no transition
    else:
        assert new == [(start.name, "CONFIG_UNLOCKED", "STOP_INTERFACE")] and scrubbed == [1]
    nonce = lock(tdi)  # locks again from scratch
    assert err(tdi, t.StartInterface(FID, nonce)) is None


# Expected answer (None = success) of each request in each state; the state never changes
# on an error. LOCK and START that succeed change it: checked above.
OK = None
IIS = ErrorCode.INVALID_INTERFACE_STATE
MATRIX: dict[str, tuple[Callable[[bytes | None], t.Message], dict[TdiState, ErrorCode | None]]] = {
    "GET_VERSION": (lambda n: t.GetVersion(FID), dict.fromkeys(TdiState, OK)),
    "GET_CAPABILITIES": (lambda n: t.GetCapabilities(FID), dict.fromkeys(TdiState, OK)),
    "GET_STATE": (lambda n: t.GetDeviceInterfaceState(FID), dict.fromkeys(TdiState, OK)),
    "GET_REPORT": (lambda n: t.GetDeviceInterfaceReport(FID, 0, 0x40),
                   {UNLOCKED: IIS, LOCKED: OK, RUN: OK, ERROR: IIS}),
    "LOCK": (lambda n: t.LockInterface(FID), {UNLOCKED: OK, LOCKED: IIS, RUN: IIS, ERROR: IIS}),
    "START": (lambda n: t.StartInterface(FID, n or bytes(32)),
              {UNLOCKED: IIS, LOCKED: OK, RUN: IIS, ERROR: IIS}),
}


@pytest.mark.parametrize("st_", list(TdiState), ids=lambda s: s.name)
@pytest.mark.parametrize("req", list(MATRIX))
def test_each_request_in_each_state(req, st_):
    tdi = make()
    nonce = into(tdi, st_)
    build, expect = MATRIX[req]
    assert err(tdi, build(nonce)) == expect[st_]
    if expect[st_] is not None or req.startswith("GET"):
        assert state(tdi) == st_  # an error (or a query) changes nothing


def test_errors_are_logged_with_the_request_and_state():
    tdi = make()
    err(tdi, t.StartInterface(FID))
    (e,) = [dict(e.args) for e in tdi.sched.log.events if e.event == "error"]
    assert e == {"dev": "gpu0", "req": "START_INTERFACE", "code": "INVALID_INTERFACE_STATE",
                 "state": "CONFIG_UNLOCKED"}


def test_version_and_capabilities_answers():
    tdi = make()
    assert ask(tdi, t.GetVersion(FID)) == t.Version(FID, (0x10,))
    caps = ask(tdi, t.GetCapabilities(FID, tsm_caps=0))
    assert isinstance(caps, t.Capabilities)
    assert caps.req_msgs_supported == b"\x7f" + bytes(15)  # 0x81..0x87, as spdm-emu
    assert caps.lock_interface_flags_supported == (t.LOCK_NO_FW_UPDATE | t.LOCK_MSIX
                                                   | t.LOCK_SYSTEM_CACHE_LINE_SIZE)
    assert caps.dev_addr_width >= 52 and caps.num_req_this > 0 and caps.num_req_all > 0


# ----- the nonce -------------------------------------------------------------------------------


def test_start_with_a_wrong_nonce_is_invalid_nonce_and_stays_locked():
    tdi = make()
    nonce = lock(tdi)
    wrong = bytes(b ^ 0xFF for b in nonce)
    assert err(tdi, t.StartInterface(FID, wrong)) == ErrorCode.INVALID_NONCE
    assert state(tdi) == LOCKED and tdi.nonce == nonce
    assert err(tdi, t.StartInterface(FID, nonce)) is None and state(tdi) == RUN


def test_each_lock_draws_a_fresh_nonce_and_an_old_one_is_refused():
    tdi = make()
    first = lock(tdi)
    err(tdi, t.StopInterface(FID))
    second = lock(tdi)
    assert first != second
    assert err(tdi, t.StartInterface(FID, first)) == ErrorCode.INVALID_NONCE
    assert err(tdi, t.StartInterface(FID, second)) is None


def test_no_entropy_is_insufficient_entropy_and_stays_unlocked():
    tdi = make(Scheduler(fail_nth={1}))
    assert err(tdi, t.LockInterface(FID)) == ErrorCode.INSUFFICIENT_ENTROPY
    assert state(tdi) == UNLOCKED and tdi.nonces_made == 0
    assert tdi.sched.faults_failed == [(1, "tdisp-nonce")]
    lock(tdi)


# ----- LOCK_INTERFACE's checks -----------------------------------------------------------------


def test_lock_refuses_unsupported_flags_and_a_bad_reporting_offset():
    tdi = make()
    assert err(tdi, t.LockInterface(FID, flags=t.LOCK_BIND_P2P)) == ErrorCode.INVALID_REQUEST
    assert err(tdi, t.LockInterface(FID, flags=1 << 9)) == ErrorCode.INVALID_REQUEST
    assert err(tdi, t.LockInterface(FID, mmio_reporting_offset=0x800)) == \
        ErrorCode.INVALID_REQUEST
    assert err(tdi, t.LockInterface(FID, mmio_reporting_offset=(1 << 64) - (1 << 28))) == \
        ErrorCode.INVALID_REQUEST  # the reported ranges would not fit 64 bits
    assert state(tdi) == UNLOCKED and transitions(tdi) == []


def test_lock_refuses_a_device_configuration_the_device_rejects():
    why: list[str | None] = ["BAR overlaps the expansion ROM"]
    tdi = make(config_check=lambda: why[0])
    assert err(tdi, t.LockInterface(FID)) == ErrorCode.INVALID_DEVICE_CONFIGURATION
    why[0] = None
    lock(tdi)


def test_another_interface_id_is_invalid_interface():
    tdi = make()
    for msg in (t.GetVersion(FID + 1), t.LockInterface(FID + 1), t.StopInterface(0)):
        assert err(tdi, msg) == ErrorCode.INVALID_INTERFACE
    assert state(tdi) == UNLOCKED


@pytest.mark.parametrize("msg", [t.BindP2pStream(FID, 1), t.UnbindP2pStream(FID, 1),
                                 t.SetMmioAttribute(FID, t.MmioRange(1, 1)), t.Vdm(FID, 0),
                                 t.Version(FID), t.StopInterfaceResponse(FID)])
def test_optional_requests_and_responses_are_unsupported_request(msg):
    tdi = make()
    into(tdi, RUN)
    rsp = ask(tdi, msg)
    assert rsp == t.ErrorResponse(FID, ErrorCode.UNSUPPORTED_REQUEST, msg.CODE)
    assert state(tdi) == RUN


def test_malformed_requests_get_the_codecs_error_code():
    tdi = make()
    into(tdi, LOCKED)
    good = t.encode(t.StopInterface(FID))
    cases = {b"\x10\x87": ErrorCode.INVALID_REQUEST,
             b"\x11" + good[1:]: ErrorCode.VERSION_MISMATCH,
             good[:1] + b"\x8c" + good[2:]: ErrorCode.UNSUPPORTED_REQUEST,
             good + b"\0": ErrorCode.INVALID_REQUEST}
    for wire, code in cases.items():
        rsp = t.decode(tdi.handle(wire))
        assert isinstance(rsp, t.ErrorResponse) and rsp.error_code == code
        assert rsp.function_id == FID  # echoed, or the TDI's own for a short request
    assert state(tdi) == LOCKED


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_get_a_well_formed_answer(data: bytes) -> None:
    t.decode(make().handle(data))


# ----- the interface report ------------------------------------------------------------------


def fetch_report(tdi: Tdi, length: int = 0x400) -> bytes:
    out, off = b"", 0
    while True:
        rsp = ask(tdi, t.GetDeviceInterfaceReport(FID, off, length))
        assert isinstance(rsp, t.DeviceInterfaceReport)
        assert 0 < len(rsp.portion) <= min(length, 0x40)  # spdm-emu's portion size
        out, off = out + rsp.portion, off + len(rsp.portion)
        if rsp.remainder_length == 0:
            return out
        assert off + rsp.remainder_length == len(tdi.report)


def test_the_report_names_every_range_with_the_offset_added():
    tdi = make(msix_message_control=0x8003)
    lock(tdi)
    rep = t.InterfaceReport.unpack(fetch_report(tdi))
    assert rep == tdi.interface_report()
    assert rep.interface_info == t.INFO_NO_UPDATE_AFTER_LOCK | t.INFO_DMA_WITHOUT_PASID
    assert rep.msi_x_message_control == 0x8003 and rep.device_specific_info == b"passthru-tdi"
    assert [(r.first_page, r.number_of_pages, r.range_attributes, r.range_id)
            for r in rep.mmio_ranges] == [
        ((BAR0.base + OFFSET) >> 12, 256, 0, 0),
        ((BAR2.base + OFFSET) >> 12, 1, t.MMIO_MSIX_TABLE, 2),
        ((BAR2.base + 0x1000 + OFFSET) >> 12, 1, 0, 2),
        ((BAR2.base + 0x2000 + OFFSET) >> 12, 1, t.MMIO_MSIX_PBA, 2),
        ((BAR2.base + 0x3000 + OFFSET) >> 12, 1, 0, 2),
        ((BAR4.base + OFFSET) >> 12, 1, t.MMIO_IS_NON_TEE_MEM, 4)]
    assert fetch_report(tdi, 7) == tdi.report  # small portions reassemble the same


def test_msix_not_locked_is_reported_non_tee_and_stays_host_accessible():
    tdi = make(msix_message_control=0x8003)
    lock(tdi, flags=0)
    rep = tdi.interface_report()
    assert rep is not None and rep.msi_x_message_control == 0
    attrs = [r.range_attributes for r in rep.mmio_ranges]
    assert attrs == [0, t.MMIO_IS_NON_TEE_MEM, 0, t.MMIO_IS_NON_TEE_MEM, 0,
                     t.MMIO_IS_NON_TEE_MEM]
    assert tdi.host_may_access_private_mmio(BAR2.base, 0x1000)  # the MSI-X table
    assert not tdi.host_may_access_private_mmio(BAR2.base + 0x1000)


def test_report_length_zero_or_offset_past_the_end_is_invalid_request():
    tdi = make()
    lock(tdi)
    assert err(tdi, t.GetDeviceInterfaceReport(FID, 0, 0)) == ErrorCode.INVALID_REQUEST
    assert err(tdi, t.GetDeviceInterfaceReport(FID, 0xFFFF, 1)) == ErrorCode.INVALID_REQUEST
    assert err(tdi, t.GetDeviceInterfaceReport(FID, len(tdi.report), 1)) == \
        ErrorCode.INVALID_REQUEST
    assert state(tdi) == LOCKED


# ----- security events -------------------------------------------------------------------------

EVENTS: dict[str, tuple[Callable[[Tdi], None], str]] = {
    "flr": (lambda d: d.on_flr(), "flr"),
    "mse-clear": (lambda d: d.on_command_write(0x6, 0x4), "mse-clear"),
    "bme-clear": (lambda d: d.on_command_write(0x6, 0x2), "bme-clear"),
    "both-clear": (lambda d: d.on_command_write(0x406, 0x400), "mse-clear,bme-clear"),
    "bar-write": (lambda d: d.on_bar_write(2), "bar2-write"),
    "config-write": (lambda d: d.on_config_write(0x3C, 1), "config-write@0x3c"),
    "config-write-straddling": (lambda d: d.on_config_write(0x116, 4), "config-write@0x116"),
    "ide-change": (lambda d: d.on_ide_change(), "ide-change"),
}


@pytest.mark.parametrize("st_", list(TdiState), ids=lambda s: s.name)
@pytest.mark.parametrize("event", list(EVENTS))
def test_security_events_send_a_locked_or_running_tdi_to_error(event, st_):
    tdi = make()
    into(tdi, st_)
    before = len(transitions(tdi))
    fire, why = EVENTS[event]
    fire(tdi)
    if st_ in (LOCKED, RUN):
        assert state(tdi) == ERROR
        assert transitions(tdi)[before:] == [(st_.name, "ERROR", why)]
    else:
        assert state(tdi) == st_ and transitions(tdi)[before:] == []


@pytest.mark.parametrize("harmless", [
    lambda d: d.on_command_write(0x2, 0x6),  # setting BME
    lambda d: d.on_command_write(0x6, 0x406),  # INTx disable
    lambda d: d.on_command_write(0x6, 0x6),
    lambda d: d.on_config_write(0x04, 2),  # COMMAND: on_command_write judges it
    lambda d: d.on_config_write(0x06, 2),  # STATUS (RW1C)
    lambda d: d.on_config_write(0x104, 4),  # inside the device's exempt range (DOE)
])
def test_writes_that_do_not_touch_security_leave_a_running_tdi_running(harmless):
    tdi = make()
    into(tdi, RUN)
    harmless(tdi)
    assert state(tdi) == RUN


def test_only_stop_leaves_error():
    tdi = make()
    nonce = into(tdi, LOCKED)
    assert nonce is not None
    tdi.on_ide_change()
    for msg in (t.LockInterface(FID), t.StartInterface(FID, nonce),
                t.GetDeviceInterfaceReport(FID, 0, 0x40)):
        assert err(tdi, msg) == IIS
    for fire, _ in EVENTS.values():
        fire(tdi)
    assert state(tdi) == ERROR and not tdi.host_may_access_private_mmio(BAR0.base)
    assert err(tdi, t.StopInterface(FID)) is None and state(tdi) == UNLOCKED


# ----- private MMIO ------------------------------------------------------------------------------


@pytest.mark.parametrize("st_", list(TdiState), ids=lambda s: s.name)
def test_host_access_to_private_mmio_is_refused_while_locked(st_):
    tdi = make()
    into(tdi, st_)
    refused = st_ != UNLOCKED
    for addr, n in ((BAR0.base, 4), (BAR0.end - 4, 4), (BAR2.base + 0x1000, 8),
                    (BAR0.base - 4, 8)):  # the last straddles into BAR0
        assert tdi.host_may_access_private_mmio(addr, n) is not refused
    for addr in (BAR4.base, BAR0.base - 0x1000, BAR4.end, BAR2.base):  # shared or outside
        if addr == BAR2.base and st_ != UNLOCKED:
            continue  # MSI-X table: TEE memory with LOCK_MSIX (lock() sets it)
        assert tdi.host_may_access_private_mmio(addr)
    assert tdi.tee_may_access(BAR0.base, 4) is (st_ == RUN)
    assert not tdi.tee_may_access(BAR4.base) and not tdi.tee_may_access(BAR0.end - 2, 4)
    assert tdi.private_ranges() == (() if st_ == UNLOCKED else tuple(
        (r.base, r.end) for r in tdi.ranges if not r.attributes & t.MMIO_IS_NON_TEE_MEM))


def test_ranges_must_be_pages_and_disjoint():
    for bad in ([TdiMmio(0, 0x1000, 0x800)], [TdiMmio(0, 0x1800, 0x1000)],
                [TdiMmio(0, 0x1000, 0x2000), TdiMmio(1, 0x2000, 0x1000)],
                [TdiMmio(6, 0x1000, 0x1000)], [TdiMmio(0, 0x1000, 0x1000, 0x10)],
                [TdiMmio(0, 0x1000, 0x1000, t.MMIO_MSIX_TABLE | t.MMIO_MSIX_PBA)]):
        with pytest.raises(ValueError):
            Tdi(Scheduler(), "x", FID, bad)
    with pytest.raises(ValueError):
        ranges_from_bars({0: BAR2}, msix_table=(0, 0x800, 0x1000))
    with pytest.raises(ValueError):
        ranges_from_bars({0: BAR2}, msix_table=(0, 0x1000, 0x1000), msix_pba=(0, 0x1000,
                                                                            0x1000))


# ----- determinism and what the checker sees --------------------------------------------------


def run_sequence(name: str = "gpu0") -> tuple[list[bytes], str]:
    tdi = make(Scheduler(), name)
    nonces = [lock(tdi)]
    err(tdi, t.StartInterface(FID, bytes(32)))
    err(tdi, t.StartInterface(FID, nonces[0]))
    tdi.on_command_write(0x6, 0x4)
    err(tdi, t.StopInterface(FID))
    nonces.append(lock(tdi))
    return nonces, tdi.sched.log.text()


def test_the_same_sequence_gives_the_same_nonces_and_log():
    a, b = run_sequence(), run_sequence()
    assert a == b and a[0][0] != a[0][1]
    assert run_sequence("gpu1")[0][0] != a[0][0]  # another TDI, other nonces


def test_lock_and_a_host_access_conflict_in_footprints_without_a_race():
    s = Scheduler(track=True)
    assert s.tracker is not None
    s.tracker.activate()
    try:
        tdi = make(s)
        seen: list[bool] = []
        s.spawn("tsm", lambda: lock(tdi))
        s.spawn("cpu", lambda: seen.append(tdi.host_may_access_private_mmio(BAR0.base)))
        s.run()
    finally:
        s.tracker.deactivate()
    uid = tdi._uid
    assert uid is not None
    tsm, cpu = ({uid: fp[uid]} for fp in s.step_fps if uid in fp)
    assert track.conflict(tsm, cpu)
    assert seen == [False] and s.violations == []
