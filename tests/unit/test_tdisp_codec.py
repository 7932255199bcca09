"""The TDISP wire format (hw/tdisp.py, PCIe 6.x §11; layouts of DMTF libspdm's
pci_tdisp.h): every message round-trips, the header is laid out as the spec says, a
malformed message raises the error code a responder answers with, and a few messages match
golden bytes written out by hand from the structures. Model-only."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passthru.hw import tdisp as t
from passthru.hw.tdisp import Code, ErrorCode, TdispDecodeError, TdiState

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)
mmio_ranges = st.builds(t.MmioRange, u64, u32, u16, u16)

# one strategy per payload field name (the codec's dataclasses share names with the spec's)
FIELDS: dict[str, st.SearchStrategy] = {
    "function_id": u32, "tsm_caps": u32, "dsm_caps": u32, "error_data": u32,
    "req_msgs_supported": st.binary(min_size=16, max_size=16),
    "lock_interface_flags_supported": u16, "dev_addr_width": u8, "num_req_this": u8,
    "num_req_all": u8, "flags": u16, "default_stream_id": u8, "mmio_reporting_offset": u64,
    "bind_p2p_address_mask": u64, "nonce": st.binary(min_size=32, max_size=32),
    "offset": u16, "length": u16, "portion": st.binary(max_size=80), "remainder_length": u16,
    "tdi_state": st.sampled_from(TdiState), "versions": st.lists(u8, max_size=8).map(tuple),
    "p2p_stream_id": u8, "mmio_range": mmio_ranges, "registry_id": u8,
    "vendor_id": st.binary(max_size=12), "data": st.binary(max_size=40),
    "error_code": st.one_of(st.sampled_from(ErrorCode), u32), "extended": st.binary(max_size=24),
}


def strategy(cls: type[t.Message]) -> st.SearchStrategy:
    return st.builds(cls, **{f.name: FIELDS[f.name] for f in dataclasses.fields(cls)})


messages = st.one_of([strategy(c) for c in t.MESSAGES.values()])
VARIABLE = (t.Version, t.DeviceInterfaceReport, t.Vdm, t.VdmResponse, t.ErrorResponse)
FIXED = [c for c in t.MESSAGES.values() if c not in VARIABLE]


def code_of(data: bytes) -> ErrorCode:
    with pytest.raises(TdispDecodeError) as e:
        t.decode(data)
    return e.value.code


# ----- round trips ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(messages)
def test_every_message_round_trips(msg: t.Message) -> None:
    wire = t.encode(msg)
    back = t.decode(wire)
    assert back == msg and type(back) is type(msg)
    assert t.encode(back) == wire


@settings(max_examples=200, deadline=None)
@given(messages)
def test_the_header_is_version_type_reserved_and_the_interface_id(msg: t.Message) -> None:
    wire = t.encode(msg)
    assert len(wire) >= t.HEADER_SIZE == 16
    assert wire[0] == t.TDISP_VERSION_10 and wire[1] == msg.CODE
    assert wire[2:4] == bytes(2)  # reserved
    assert wire[4:8] == msg.function_id.to_bytes(4, "little")
    assert wire[8:16] == bytes(8)  # INTERFACE_ID reserved
    assert t.peek_header(wire) == (0x10, msg.CODE, msg.function_id)


def test_every_code_has_a_message_and_responses_are_requests_and_0x7f():
    requests = [c for c in Code if c & 0x80]
    assert [int(c) for c in requests] == list(range(0x81, 0x8C))
    for c in requests:
        assert Code(t.response_code(c)).name  # a known response
        assert t.MESSAGES[t.response_code(c)].CODE == c & 0x7F
    assert t.response_code(Code.LOCK_INTERFACE) == Code.LOCK_INTERFACE_RESPONSE == 0x03
    assert Code.TDISP_ERROR == 0x7F and set(t.MESSAGES) == {int(c) for c in Code}
    assert [int(e) for e in ErrorCode] == [0x1, 0x3, 0x4, 0x5, 0x7, 0x41, 0xFF, 0x101, 0x102,
                                           0x103, 0x104]


@settings(max_examples=200, deadline=None)
@given(st.builds(t.InterfaceReport, u16, u16, u16, u32, st.lists(mmio_ranges, max_size=6)
                 .map(tuple), st.binary(max_size=40)))
def test_the_interface_report_round_trips(rep: t.InterfaceReport) -> None:
    raw = rep.pack()
    assert len(raw) == 16 + 16 * len(rep.mmio_ranges) + 4 + len(rep.device_specific_info)
    assert t.InterfaceReport.unpack(raw) == rep


# ----- golden bytes, by hand from the structures ----------------------------------------------


def hx(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


HDR = "00 00" + "00 01 00 00" + "00" * 8  # reserved, FUNCTION_ID 0x100 (01:00.0), reserved


def test_golden_get_version_and_version():
    assert t.encode(t.GetVersion(0x100)) == hx("10 81" + HDR)
    assert t.decode(hx("10 01" + HDR + "01 10")) == t.Version(0x100, (0x10,))


def test_golden_lock_interface_request_and_response():
    # FLAGS u16 = NO_FW_UPDATE|LOCK_MSIX, STREAM_ID 1, reserved, MMIO_REPORTING_OFFSET u64
    # = 1 TiB, BIND_P2P_ADDRESS_MASK u64 = 0
    wire = hx("10 83" + HDR + "05 00 01 00" + "00 00 00 00 00 01 00 00" + "00" * 8)
    msg = t.LockInterface(0x100, flags=t.LOCK_NO_FW_UPDATE | t.LOCK_MSIX, default_stream_id=1,
                          mmio_reporting_offset=1 << 40)
    assert t.encode(msg) == wire and t.decode(wire) == msg and len(wire) == 36
    nonce = bytes(range(32))
    assert t.encode(t.LockInterfaceResponse(0x100, nonce)) == hx("10 03" + HDR) + nonce


def test_golden_start_report_state_and_error():
    nonce = bytes(range(0x20, 0x40))
    assert t.encode(t.StartInterface(0x100, nonce)) == hx("10 86" + HDR) + nonce
    assert t.encode(t.GetDeviceInterfaceReport(0x100, 0x40, 0x400)) == \
        hx("10 84" + HDR + "40 00 00 04")
    assert t.decode(hx("10 04" + HDR + "03 00 10 00 aa bb cc")) == \
        t.DeviceInterfaceReport(0x100, b"\xaa\xbb\xcc", 0x10)
    assert t.encode(t.DeviceInterfaceState(0x100, TdiState.RUN)) == hx("10 05" + HDR + "02")
    assert t.encode(t.ErrorResponse(0x100, ErrorCode.INVALID_NONCE, 0)) == \
        hx("10 7f" + HDR + "02 01 00 00 00 00 00 00")
    assert t.encode(t.StopInterface(0x100)) == hx("10 87" + HDR)


def test_golden_interface_report_structure():
    rep = t.InterfaceReport(t.INFO_NO_UPDATE_AFTER_LOCK | t.INFO_DMA_WITHOUT_PASID, 0, 0, 0,
                            (t.MmioRange(0x1000E0000, 0x100, t.MMIO_MSIX_TABLE, 2),), b"ab")
    assert rep.pack() == hx(
        "03 00 00 00 00 00 00 00" "00 00 00 00 01 00 00 00"  # INFO, rsvd, MSI-X, LNR, TPH, count
        "00 00 0e 00 01 00 00 00" "00 01 00 00 01 00 02 00"  # FIRST_PAGE, pages, attrs, id
        "02 00 00 00 61 62")  # DEVICE_SPECIFIC_INFO_LEN, info


def test_function_id_of_a_bdf():
    assert t.function_id_of("0000:01:00.0") == 0x0100
    assert t.function_id_of("0000:00:03.7") == 0x001F
    assert t.function_id_of("0001:02:03.4") == t.FUNCTION_ID_SEGMENT_VALID | 0x1 << 16 | 0x21C
    for bad in ("01:00.0", "0000:01:20.0", "0100:00:00.0", "0000:00:00.8"):
        with pytest.raises(ValueError):
            t.function_id_of(bad)


# ----- malformed messages: the error code a responder answers ---------------------------------


@given(st.binary(max_size=15))
def test_shorter_than_a_header_is_invalid_request(data: bytes) -> None:
    with pytest.raises(TdispDecodeError) as e:
        t.decode(data)
    assert e.value.code == ErrorCode.INVALID_REQUEST and e.value.function_id is None


@given(messages, u8.filter(lambda v: v != 0x10))
def test_a_wrong_version_is_version_mismatch(msg: t.Message, version: int) -> None:
    wire = bytearray(t.encode(msg))
    wire[0] = version
    with pytest.raises(TdispDecodeError) as e:
        t.decode(bytes(wire))
    assert e.value.code == ErrorCode.VERSION_MISMATCH
    assert e.value.function_id == msg.function_id


@given(u8.filter(lambda v: v not in Code._value2member_map_), st.binary(max_size=40))
def test_an_unknown_type_is_unsupported_request_with_the_type(mtype: int, tail: bytes) -> None:
    with pytest.raises(TdispDecodeError) as e:
        t.decode(hx("10") + bytes([mtype]) + hx(HDR) + tail)
    assert (e.value.code, e.value.data, e.value.function_id) == \
        (ErrorCode.UNSUPPORTED_REQUEST, mtype, 0x100)


def test_the_checks_go_short_version_type_length():
    assert code_of(hx("20 ff 00")) == ErrorCode.INVALID_REQUEST  # short beats all
    assert code_of(hx("20 ff" + HDR)) == ErrorCode.VERSION_MISMATCH  # version beats type
    assert code_of(hx("10 8c" + HDR + "00")) == ErrorCode.UNSUPPORTED_REQUEST  # TDISP 1.1
    assert code_of(hx("10 81" + HDR + "00")) == ErrorCode.INVALID_REQUEST  # then length


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIXED), st.data())
def test_a_fixed_size_payload_of_another_length_is_invalid_request(cls, data) -> None:
    wire = t.encode(data.draw(strategy(cls)))
    n = len(wire) - t.HEADER_SIZE
    if n and data.draw(st.booleans()):
        bad = wire[:-data.draw(st.integers(1, n))]
    else:
        bad = wire + data.draw(st.binary(min_size=1, max_size=8))
    assert code_of(bad) == ErrorCode.INVALID_REQUEST


def test_variable_payloads_that_contradict_their_counts_are_invalid_request():
    for tail in ("", "02 10", "01 10 11", "00 10"):  # VERSION_NUM_COUNT vs entries
        assert code_of(hx("10 01" + HDR + tail)) == ErrorCode.INVALID_REQUEST
    for tail in ("", "01 00", "02 00 00 00 aa", "00 00 00 00 aa"):  # PORTION_LENGTH vs bytes
        assert code_of(hx("10 04" + HDR + tail)) == ErrorCode.INVALID_REQUEST
    assert code_of(hx("10 05" + HDR + "04")) == ErrorCode.INVALID_REQUEST  # TDI_STATE 4
    assert code_of(hx("10 05" + HDR)) == ErrorCode.INVALID_REQUEST
    for tail in ("", "00", "00 03 aa bb"):  # VENDOR_ID_LEN past the end
        assert code_of(hx("10 8b" + HDR + tail)) == ErrorCode.INVALID_REQUEST
    assert code_of(hx("10 7f" + HDR + "01 00 00 00")) == ErrorCode.INVALID_REQUEST
    assert code_of(hx("10 8a" + HDR + "00" * 15)) == ErrorCode.INVALID_REQUEST


def test_a_vdm_splits_vendor_id_and_data_and_error_keeps_unknown_codes():
    assert t.decode(hx("10 8b" + HDR + "01 02 aa bb cc")) == \
        t.Vdm(0x100, 1, b"\xaa\xbb", b"\xcc")
    err = t.decode(hx("10 7f" + HDR + "99 00 00 00 07 00 00 00 ee"))
    assert err == t.ErrorResponse(0x100, 0x99, 7, b"\xee")


def test_reserved_bytes_are_ignored_when_decoding():
    wire = bytearray(t.encode(t.LockInterface(0x100, flags=1)))
    wire[2:4] = b"\xff\xff"
    wire[8:16] = b"\xff" * 8
    wire[16 + 3] = 0xFF  # LOCK_INTERFACE's reserved byte
    assert t.decode(bytes(wire)) == t.LockInterface(0x100, flags=1)


def test_malformed_interface_reports_are_invalid_request():
    good = t.InterfaceReport(0, 0, 0, 0, (t.MmioRange(1, 1),), b"xy").pack()
    for bad in (good[:15], good[:-1], good + b"\0", good[:16 + 16 + 3]):
        with pytest.raises(TdispDecodeError) as e:
            t.InterfaceReport.unpack(bad)
        assert e.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("msg", [
    t.GetVersion(1 << 32), t.GetVersion(-1), t.StartInterface(0, bytes(31)),
    t.LockInterface(0, flags=1 << 16), t.Version(0, (256,)), t.Version(0, tuple(range(256))),
    t.Vdm(0, vendor_id=bytes(256)), t.DeviceInterfaceReport(0, bytes(1 << 16)),
    t.DeviceInterfaceState(0, 7),  # type: ignore[arg-type]
    t.ErrorResponse(0, 1 << 32), t.GetCapabilities(0, True),
])
def test_encoding_a_field_that_does_not_fit_is_a_value_error(msg: t.Message) -> None:
    with pytest.raises(ValueError):
        t.encode(msg)
