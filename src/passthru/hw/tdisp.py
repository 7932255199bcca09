"""The TDISP wire format (PCIe 6.x §11, TEE Device Interface Security Protocol) as a codec.

Models the messages a TSM and a device's TDISP responder exchange, carried in SPDM
vendor-defined messages over DOE: every message is a 16-byte header — TDISPVersion (0x10),
message type, two reserved bytes, and the 12-byte INTERFACE_ID (FUNCTION_ID u32: requester
ID 15:0, requester segment 23:16, segment valid bit 24; then 8 reserved bytes) — and a
payload, all little endian. Layouts follow DMTF libspdm's include/industry_standard/
pci_tdisp.h (the TDISP 1.0 revision of the header, as spdm-emu speaks it); the structures
below keep its names (``pci_tdisp_header`` for ``pci_tdisp_header_t``...).

====== =========================== ====== =========================== ======================
req    name                        rsp    name                        payload (after header)
====== =========================== ====== =========================== ======================
0x81   GET_VERSION                 0x01   VERSION                     - / count u8, u8[count]
0x82   GET_CAPABILITIES            0x02   CAPABILITIES                tsm_caps u32 / 28 bytes
0x83   LOCK_INTERFACE              0x03   LOCK_INTERFACE_RESPONSE     20 bytes / nonce[32]
0x84   GET_DEVICE_INTERFACE_REPORT 0x04   DEVICE_INTERFACE_REPORT     offset, length u16 /
                                                                      portion, remainder u16,
                                                                      u8[portion]
0x85   GET_DEVICE_INTERFACE_STATE  0x05   DEVICE_INTERFACE_STATE      - / tdi_state u8
0x86   START_INTERFACE             0x06   START_INTERFACE_RESPONSE    nonce[32] / -
0x87   STOP_INTERFACE              0x07   STOP_INTERFACE_RESPONSE     - / -
0x88   BIND_P2P_STREAM             0x08   BIND_P2P_STREAM_RESPONSE    stream id u8 / -
0x89   UNBIND_P2P_STREAM           0x09   UNBIND_P2P_STREAM_RESPONSE  stream id u8 / -
0x8A   SET_MMIO_ATTRIBUTE          0x0A   SET_MMIO_ATTRIBUTE_RESPONSE MMIO_RANGE (16) / -
0x8B   VDM                         0x0B   VDM_RESPONSE                registry u8, len u8,
                                                                      vendor id, data
none   none                        0x7F   TDISP_ERROR                 code u32, data u32, ext
====== =========================== ====== =========================== ======================

(The spec's names are GET_TDISP_VERSION, LOCK_INTERFACE_REQUEST, ...; the model uses the
shorter names of shared/spec/KERNEL.md §6. A response code is its request's ``& 0x7F``.)

The DEVICE_INTERFACE_REPORT a TDI returns in portions is itself a structure
(:class:`InterfaceReport`): INTERFACE_INFO u16, reserved u16, MSI_X_MESSAGE_CONTROL u16,
LNR_CONTROL u16, TPH_CONTROL u32, MMIO_RANGE_COUNT u32, then MMIO_RANGE_COUNT MMIO_RANGEs
(FIRST_PAGE u64 — a 4 KiB page number with the LOCK_INTERFACE MMIO_REPORTING_OFFSET added,
NUMBER_OF_PAGES u32, RANGE_ATTRIBUTES u16 — MSI-X table 0x1, MSI-X PBA 0x2, IS_NON_TEE_MEM
0x4, IS_MEM_ATTR_UPDATABLE 0x8 — and RANGE_ID u16), then DEVICE_SPECIFIC_INFO_LEN u32 and
that many bytes.

``encode(msg)`` and ``decode(data)`` round-trip every message: ``decode(encode(m)) == m``.
Decoding checks, in this order, and raises :class:`TdispDecodeError` carrying the error code
a responder answers with: shorter than the header (INVALID_REQUEST), TDISPVersion not 0x10
(VERSION_MISMATCH), an unknown message type (UNSUPPORTED_REQUEST, error data = the type),
a payload of the wrong length or a field that contradicts it — a count, a length, a TDI
state out of range (INVALID_REQUEST).

Leaves out: TDISP 1.1/XT additions (SET_TDISP_CONFIG 0x8C, BIND_P2P_STREAM's
stream_config byte, the XT bits — 0x8C decodes as UNSUPPORTED_REQUEST), the SPDM/DOE framing
around a message, and the meaning of reserved fields: they encode as zero and decoding
ignores them (PCIe: receivers ignore reserved bits), so ``encode(decode(b)) == b`` holds only
when ``b``'s reserved bytes are zero. The extended error data of TDISP_ERROR is kept as
opaque bytes.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

TDISP_VERSION_10 = 0x10
NONCE_SIZE = 32  # START_INTERFACE_NONCE
PAGE_SHIFT = 12  # MMIO ranges are in 4 KiB pages

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class Code(IntEnum):
    """TDISP message types (requests 0x81.., responses = request & 0x7F)."""

    GET_VERSION = 0x81
    GET_CAPABILITIES = 0x82
    LOCK_INTERFACE = 0x83
    GET_DEVICE_INTERFACE_REPORT = 0x84
    GET_DEVICE_INTERFACE_STATE = 0x85
    START_INTERFACE = 0x86
    STOP_INTERFACE = 0x87
    BIND_P2P_STREAM = 0x88
    UNBIND_P2P_STREAM = 0x89
    SET_MMIO_ATTRIBUTE = 0x8A
    VDM = 0x8B
    VERSION = 0x01
    CAPABILITIES = 0x02
    LOCK_INTERFACE_RESPONSE = 0x03
    DEVICE_INTERFACE_REPORT = 0x04
    DEVICE_INTERFACE_STATE = 0x05
    START_INTERFACE_RESPONSE = 0x06
    STOP_INTERFACE_RESPONSE = 0x07
    BIND_P2P_STREAM_RESPONSE = 0x08
    UNBIND_P2P_STREAM_RESPONSE = 0x09
    SET_MMIO_ATTRIBUTE_RESPONSE = 0x0A
    VDM_RESPONSE = 0x0B
    TDISP_ERROR = 0x7F


class ErrorCode(IntEnum):
    """TDISP_ERROR ERROR_CODE values."""

    INVALID_REQUEST = 0x0001
    BUSY = 0x0003
    INVALID_INTERFACE_STATE = 0x0004
    UNSPECIFIED = 0x0005
    UNSUPPORTED_REQUEST = 0x0007
    VERSION_MISMATCH = 0x0041
    VENDOR_SPECIFIC = 0x00FF
    INVALID_INTERFACE = 0x0101
    INVALID_NONCE = 0x0102
    INSUFFICIENT_ENTROPY = 0x0103
    INVALID_DEVICE_CONFIGURATION = 0x0104


class TdiState(IntEnum):
    """TDI_STATE of DEVICE_INTERFACE_STATE."""

    CONFIG_UNLOCKED = 0
    CONFIG_LOCKED = 1
    RUN = 2
    ERROR = 3


# LOCK_INTERFACE FLAGS
LOCK_NO_FW_UPDATE = 0x01
LOCK_SYSTEM_CACHE_LINE_SIZE = 0x02
LOCK_MSIX = 0x04
LOCK_BIND_P2P = 0x08
LOCK_ALL_REQUEST_REDIRECT = 0x10
# MMIO_RANGE RANGE_ATTRIBUTES
MMIO_MSIX_TABLE = 0x1
MMIO_MSIX_PBA = 0x2
MMIO_IS_NON_TEE_MEM = 0x4
MMIO_IS_MEM_ATTR_UPDATABLE = 0x8
# DEVICE_INTERFACE_REPORT INTERFACE_INFO
INFO_NO_UPDATE_AFTER_LOCK = 0x01
INFO_DMA_WITHOUT_PASID = 0x02
INFO_DMA_WITH_PASID = 0x04
INFO_ATS_SUPPORTED = 0x08
INFO_PRS_SUPPORTED = 0x10
# FUNCTION_ID
FUNCTION_ID_SEGMENT_VALID = 1 << 24


def response_code(request: int) -> int:
    """The response message type answering ``request``."""
    return request & 0x7F


def function_id_of(bdf: str) -> int:
    """The FUNCTION_ID of a function named ``"DDDD:BB:DD.F"``: requester ID bus << 8 |
    device << 3 | function; a nonzero PCI domain goes in the segment field, marked valid."""
    try:
        dom, bus, rest = bdf.split(":")
        dev, fn = rest.split(".")
        seg, b, d, f = int(dom, 16), int(bus, 16), int(dev, 16), int(fn, 8)
    except ValueError:
        raise ValueError(f"function_id_of: {bdf!r} is not DDDD:BB:DD.F") from None
    if not (0 <= seg <= 0xFF and 0 <= b <= 0xFF and 0 <= d <= 0x1F and 0 <= f <= 7):
        raise ValueError(f"function_id_of: {bdf!r} out of range (segment must fit 8 bits)")
    rid = b << 8 | d << 3 | f
    return rid | (seg << 16 | FUNCTION_ID_SEGMENT_VALID if seg else 0)


# ----- wire structures (libspdm pci_tdisp.h, #pragma pack(1), little endian) -------------


class _Le(ctypes.LittleEndianStructure):
    _pack_ = 1


class pci_tdisp_interface_id(_Le):
    _fields_ = [("function_id", _u32), ("reserved", _u64)]


class pci_tdisp_header(_Le):
    _fields_ = [("version", _u8), ("message_type", _u8), ("reserved", _u8 * 2),
                ("interface_id", pci_tdisp_interface_id)]


class pci_tdisp_requester_capabilities(_Le):
    _fields_ = [("tsm_caps", _u32)]


class pci_tdisp_responder_capabilities(_Le):
    _fields_ = [("dsm_caps", _u32), ("req_msgs_supported", _u8 * 16),
                ("lock_interface_flags_supported", _u16), ("reserved", _u8 * 3),
                ("dev_addr_width", _u8), ("num_req_this", _u8), ("num_req_all", _u8)]


class pci_tdisp_lock_interface_param(_Le):
    _fields_ = [("flags", _u16), ("default_stream_id", _u8), ("reserved", _u8),
                ("mmio_reporting_offset", _u64), ("bind_p2p_address_mask", _u64)]


class pci_tdisp_nonce(_Le):
    _fields_ = [("nonce", _u8 * NONCE_SIZE)]


class pci_tdisp_get_device_interface_report(_Le):
    _fields_ = [("offset", _u16), ("length", _u16)]


class pci_tdisp_device_interface_report_response(_Le):
    _fields_ = [("portion_length", _u16), ("remainder_length", _u16)]


class pci_tdisp_mmio_range(_Le):
    _fields_ = [("first_page", _u64), ("number_of_pages", _u32), ("range_attributes", _u16),
                ("range_id", _u16)]


class pci_tdisp_device_interface_report_struct(_Le):
    _fields_ = [("interface_info", _u16), ("reserved", _u16), ("msi_x_message_control", _u16),
                ("lnr_control", _u16), ("tph_control", _u32), ("mmio_range_count", _u32)]


class pci_tdisp_device_interface_state(_Le):
    _fields_ = [("tdi_state", _u8)]


class pci_tdisp_p2p_stream(_Le):
    _fields_ = [("p2p_stream_id", _u8)]


class pci_tdisp_vdm(_Le):
    _fields_ = [("registry_id", _u8), ("vendor_id_len", _u8)]


class pci_tdisp_error(_Le):
    _fields_ = [("error_code", _u32), ("error_data", _u32)]


HEADER_SIZE = ctypes.sizeof(pci_tdisp_header)
assert HEADER_SIZE == 16 and ctypes.sizeof(pci_tdisp_responder_capabilities) == 28
assert ctypes.sizeof(pci_tdisp_lock_interface_param) == 20
assert ctypes.sizeof(pci_tdisp_mmio_range) == 16


class TdispDecodeError(ValueError):
    """A malformed TDISP message: ``code`` is the ErrorCode a responder answers with,
    ``data`` its ERROR_DATA, ``function_id`` the header's (None when too short to have one)."""

    def __init__(self, code: ErrorCode, message: str, data: int = 0,
                 function_id: int | None = None) -> None:
        super().__init__(f"{message} [{code.name}]")
        self.code = code
        self.data = data
        self.function_id = function_id


def _fields(cls: type[_Le]) -> list[tuple[str, Any]]:
    return [(f[0], f[1]) for f in cls._fields_]


def _build(cls: type[_Le], values: dict[str, Any]) -> bytes:
    """The bytes of ``cls`` with ``values`` (ints and byte strings for arrays): ValueError
    naming the field for a value that does not fit (ctypes would truncate it)."""
    s = cls()
    for name, typ in _fields(cls):
        if name == "reserved" or name not in values:
            continue
        v = values[name]
        if issubclass(typ, ctypes.Array):
            if not isinstance(v, (bytes, bytearray)) or len(v) != typ._length_:
                raise ValueError(f"{cls.__name__}.{name}: {typ._length_} bytes, not {v!r}")
            setattr(s, name, typ(*v))
            continue
        bits = 8 * ctypes.sizeof(typ)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << bits:
            raise ValueError(f"{cls.__name__}.{name}: {v!r} is not a u{bits}")
        setattr(s, name, v)
    return bytes(s)


def _parse(cls: type[_Le], data: bytes) -> dict[str, Any]:
    s = cls.from_buffer_copy(data)
    out: dict[str, Any] = {}
    for name, typ in _fields(cls):
        if name != "reserved":
            v = getattr(s, name)
            out[name] = bytes(v) if issubclass(typ, ctypes.Array) else int(v)
    return out


def _bad(msg: str, fid: int | None, code: ErrorCode = ErrorCode.INVALID_REQUEST,
         data: int = 0) -> TdispDecodeError:
    return TdispDecodeError(code, msg, data, fid)


# ----- messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A TDISP message: its header's FUNCTION_ID and the payload's fields (subclasses). A
    subclass with ``STRUCT`` has exactly that struct as payload, its fields named alike."""

    function_id: int
    CODE: ClassVar[Code]
    STRUCT: ClassVar[type[_Le] | None] = None

    def payload(self) -> bytes:
        if self.STRUCT is None:
            return b""
        return _build(self.STRUCT, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        size = 0 if cls.STRUCT is None else ctypes.sizeof(cls.STRUCT)
        if len(payload) != size:
            raise _bad(f"{cls.CODE.name}: payload of {len(payload)} bytes, expected {size}",
                       fid)
        if cls.STRUCT is None:
            return cls(fid)
        return cls(fid, **_parse(cls.STRUCT, payload))


@dataclass(frozen=True)
class GetVersion(Message):
    CODE = Code.GET_VERSION


@dataclass(frozen=True)
class Version(Message):
    versions: tuple[int, ...] = (TDISP_VERSION_10,)
    CODE = Code.VERSION

    def payload(self) -> bytes:
        if len(self.versions) > 0xFF or not all(0 <= v <= 0xFF for v in self.versions):
            raise ValueError(f"VERSION: {self.versions!r} is not at most 255 u8 entries")
        return bytes([len(self.versions), *self.versions])

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        if not payload or len(payload) != 1 + payload[0]:
            raise _bad(f"VERSION: VERSION_NUM_COUNT {payload[:1].hex() or 'missing'} does "
                       f"not match a payload of {len(payload)} bytes", fid)
        return cls(fid, tuple(payload[1:]))


@dataclass(frozen=True)
class GetCapabilities(Message):
    tsm_caps: int = 0
    CODE = Code.GET_CAPABILITIES
    STRUCT = pci_tdisp_requester_capabilities


@dataclass(frozen=True)
class Capabilities(Message):
    dsm_caps: int = 0
    req_msgs_supported: bytes = bytes(16)  # bit i: request 0x81 + i
    lock_interface_flags_supported: int = 0
    dev_addr_width: int = 52
    num_req_this: int = 1
    num_req_all: int = 1
    CODE = Code.CAPABILITIES
    STRUCT = pci_tdisp_responder_capabilities


@dataclass(frozen=True)
class LockInterface(Message):
    flags: int = 0
    default_stream_id: int = 0
    mmio_reporting_offset: int = 0
    bind_p2p_address_mask: int = 0
    CODE = Code.LOCK_INTERFACE
    STRUCT = pci_tdisp_lock_interface_param


@dataclass(frozen=True)
class LockInterfaceResponse(Message):
    nonce: bytes = bytes(NONCE_SIZE)
    CODE = Code.LOCK_INTERFACE_RESPONSE
    STRUCT = pci_tdisp_nonce


@dataclass(frozen=True)
class GetDeviceInterfaceReport(Message):
    offset: int = 0
    length: int = 0xFFFF
    CODE = Code.GET_DEVICE_INTERFACE_REPORT
    STRUCT = pci_tdisp_get_device_interface_report


@dataclass(frozen=True)
class DeviceInterfaceReport(Message):
    """One portion of the report; ``remainder_length`` bytes follow it."""

    portion: bytes = b""
    remainder_length: int = 0
    CODE = Code.DEVICE_INTERFACE_REPORT

    def payload(self) -> bytes:
        return _build(pci_tdisp_device_interface_report_response,
                      {"portion_length": len(self.portion),
                       "remainder_length": self.remainder_length}) + bytes(self.portion)

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        hdr = ctypes.sizeof(pci_tdisp_device_interface_report_response)
        if len(payload) < hdr:
            raise _bad(f"DEVICE_INTERFACE_REPORT: payload of {len(payload)} bytes, expected "
                       f"at least {hdr}", fid)
        f = _parse(pci_tdisp_device_interface_report_response, payload[:hdr])
        if len(payload) - hdr != f["portion_length"]:
            raise _bad(f"DEVICE_INTERFACE_REPORT: PORTION_LENGTH {f['portion_length']} but "
                       f"{len(payload) - hdr} bytes follow", fid)
        return cls(fid, bytes(payload[hdr:]), f["remainder_length"])


@dataclass(frozen=True)
class GetDeviceInterfaceState(Message):
    CODE = Code.GET_DEVICE_INTERFACE_STATE


@dataclass(frozen=True)
class DeviceInterfaceState(Message):
    tdi_state: TdiState = TdiState.CONFIG_UNLOCKED
    CODE = Code.DEVICE_INTERFACE_STATE

    def payload(self) -> bytes:
        return bytes([TdiState(self.tdi_state)])

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        if len(payload) != 1:
            raise _bad(f"DEVICE_INTERFACE_STATE: payload of {len(payload)} bytes, expected 1",
                       fid)
        if payload[0] not in TdiState._value2member_map_:
            raise _bad(f"DEVICE_INTERFACE_STATE: TDI_STATE {payload[0]} is not 0..3", fid)
        return cls(fid, TdiState(payload[0]))


@dataclass(frozen=True)
class StartInterface(Message):
    nonce: bytes = bytes(NONCE_SIZE)
    CODE = Code.START_INTERFACE
    STRUCT = pci_tdisp_nonce


@dataclass(frozen=True)
class StartInterfaceResponse(Message):
    CODE = Code.START_INTERFACE_RESPONSE


@dataclass(frozen=True)
class StopInterface(Message):
    CODE = Code.STOP_INTERFACE


@dataclass(frozen=True)
class StopInterfaceResponse(Message):
    CODE = Code.STOP_INTERFACE_RESPONSE


@dataclass(frozen=True)
class BindP2pStream(Message):
    p2p_stream_id: int = 0
    CODE = Code.BIND_P2P_STREAM
    STRUCT = pci_tdisp_p2p_stream


@dataclass(frozen=True)
class BindP2pStreamResponse(Message):
    CODE = Code.BIND_P2P_STREAM_RESPONSE


@dataclass(frozen=True)
class UnbindP2pStream(Message):
    p2p_stream_id: int = 0
    CODE = Code.UNBIND_P2P_STREAM
    STRUCT = pci_tdisp_p2p_stream


@dataclass(frozen=True)
class UnbindP2pStreamResponse(Message):
    CODE = Code.UNBIND_P2P_STREAM_RESPONSE


@dataclass(frozen=True)
class MmioRange:
    """An MMIO_RANGE: ``first_page`` is a 4 KiB page number (MMIO_REPORTING_OFFSET added)."""

    first_page: int
    number_of_pages: int
    range_attributes: int = 0
    range_id: int = 0

    def pack(self) -> bytes:
        return _build(pci_tdisp_mmio_range, self.__dict__)

    @classmethod
    def unpack(cls, data: bytes) -> MmioRange:
        return cls(**_parse(pci_tdisp_mmio_range, data))


@dataclass(frozen=True)
class SetMmioAttribute(Message):
    mmio_range: MmioRange = MmioRange(0, 0)
    CODE = Code.SET_MMIO_ATTRIBUTE

    def payload(self) -> bytes:
        return self.mmio_range.pack()

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        if len(payload) != ctypes.sizeof(pci_tdisp_mmio_range):
            raise _bad(f"SET_MMIO_ATTRIBUTE: payload of {len(payload)} bytes, expected 16",
                       fid)
        return cls(fid, MmioRange.unpack(payload))


@dataclass(frozen=True)
class SetMmioAttributeResponse(Message):
    CODE = Code.SET_MMIO_ATTRIBUTE_RESPONSE


@dataclass(frozen=True)
class Vdm(Message):
    """VDM (request): REGISTRY_ID, VENDOR_ID_LEN, VENDOR_ID, then vendor data."""

    registry_id: int = 0
    vendor_id: bytes = b""
    data: bytes = b""
    CODE = Code.VDM

    def payload(self) -> bytes:
        return _build(pci_tdisp_vdm, {"registry_id": self.registry_id,
                                      "vendor_id_len": len(self.vendor_id)}) \
            + bytes(self.vendor_id) + bytes(self.data)

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        if len(payload) < 2 or len(payload) < 2 + payload[1]:
            raise _bad(f"{cls.CODE.name}: payload of {len(payload)} bytes is shorter than its "
                       "REGISTRY_ID, VENDOR_ID_LEN and VENDOR_ID", fid)
        n = payload[1]
        return cls(fid, payload[0], bytes(payload[2:2 + n]), bytes(payload[2 + n:]))


@dataclass(frozen=True)
class VdmResponse(Vdm):
    CODE = Code.VDM_RESPONSE


@dataclass(frozen=True)
class ErrorResponse(Message):
    """TDISP_ERROR: ERROR_CODE, ERROR_DATA and the extended error data (opaque bytes)."""

    error_code: int = ErrorCode.UNSPECIFIED
    error_data: int = 0
    extended: bytes = b""
    CODE = Code.TDISP_ERROR

    def payload(self) -> bytes:
        return _build(pci_tdisp_error, {"error_code": int(self.error_code),
                                        "error_data": self.error_data}) + bytes(self.extended)

    @classmethod
    def parse(cls, fid: int, payload: bytes) -> Message:
        if len(payload) < 8:
            raise _bad(f"TDISP_ERROR: payload of {len(payload)} bytes, expected at least 8",
                       fid)
        f = _parse(pci_tdisp_error, payload[:8])
        code = f["error_code"]
        return cls(fid, ErrorCode(code) if code in ErrorCode._value2member_map_ else code,
                   f["error_data"], bytes(payload[8:]))


MESSAGES: dict[int, type[Message]] = {c.CODE: c for c in (
    GetVersion, Version, GetCapabilities, Capabilities, LockInterface, LockInterfaceResponse,
    GetDeviceInterfaceReport, DeviceInterfaceReport, GetDeviceInterfaceState,
    DeviceInterfaceState, StartInterface, StartInterfaceResponse, StopInterface,
    StopInterfaceResponse, BindP2pStream, BindP2pStreamResponse, UnbindP2pStream,
    UnbindP2pStreamResponse, SetMmioAttribute, SetMmioAttributeResponse, Vdm, VdmResponse,
    ErrorResponse)}
assert set(MESSAGES) == {int(c) for c in Code}


def encode(msg: Message) -> bytes:
    """The message on the wire: header (TDISPVersion 0x10) and payload. ValueError for a
    field that does not fit its wire width."""
    hdr = _build(pci_tdisp_header, {"version": TDISP_VERSION_10, "message_type": msg.CODE})
    iid = _build(pci_tdisp_interface_id, {"function_id": msg.function_id})
    return hdr[:4] + iid + msg.payload()


def peek_header(data: bytes) -> tuple[int, int, int]:
    """``(version, message_type, function_id)`` of a message at least a header long."""
    if len(data) < HEADER_SIZE:
        raise _bad(f"TDISP message of {len(data)} bytes is shorter than the "
                   f"{HEADER_SIZE}-byte header", None)
    h = pci_tdisp_header.from_buffer_copy(data[:HEADER_SIZE])
    return h.version, h.message_type, h.interface_id.function_id


def decode(data: bytes) -> Message:
    """The message ``data`` holds; TdispDecodeError (with the responder's error code) when
    it is malformed — see the module docstring for the order of the checks."""
    data = bytes(data)
    version, mtype, fid = peek_header(data)
    if version != TDISP_VERSION_10:
        raise _bad(f"TDISPVersion {version:#x}, this responder speaks 0x10", fid,
                   ErrorCode.VERSION_MISMATCH)
    cls = MESSAGES.get(mtype)
    if cls is None:
        raise _bad(f"unknown TDISP message type {mtype:#04x}", fid,
                   ErrorCode.UNSUPPORTED_REQUEST, mtype)
    return cls.parse(fid, data[HEADER_SIZE:])


# ----- the device interface report ----------------------------------------------------------


@dataclass(frozen=True)
class InterfaceReport:
    """The DEVICE_INTERFACE_REPORT structure (fetched in portions, then reassembled)."""

    interface_info: int = 0
    msi_x_message_control: int = 0
    lnr_control: int = 0
    tph_control: int = 0
    mmio_ranges: tuple[MmioRange, ...] = ()
    device_specific_info: bytes = b""

    def pack(self) -> bytes:
        head = _build(pci_tdisp_device_interface_report_struct, {
            "interface_info": self.interface_info,
            "msi_x_message_control": self.msi_x_message_control,
            "lnr_control": self.lnr_control, "tph_control": self.tph_control,
            "mmio_range_count": len(self.mmio_ranges)})
        info = bytes(self.device_specific_info)
        return head + b"".join(r.pack() for r in self.mmio_ranges) \
            + len(info).to_bytes(4, "little") + info

    @classmethod
    def unpack(cls, data: bytes) -> InterfaceReport:
        """TdispDecodeError(INVALID_REQUEST) when the counts and lengths disagree with the
        bytes."""
        data = bytes(data)
        hs = ctypes.sizeof(pci_tdisp_device_interface_report_struct)
        if len(data) < hs:
            raise _bad(f"interface report of {len(data)} bytes is shorter than {hs}", None)
        f = _parse(pci_tdisp_device_interface_report_struct, data[:hs])
        n = f.pop("mmio_range_count")
        end = hs + 16 * n
        if len(data) < end + 4:
            raise _bad(f"interface report: {n} MMIO ranges and DEVICE_SPECIFIC_INFO_LEN need "
                       f"{end + 4} bytes, have {len(data)}", None)
        ilen = int.from_bytes(data[end:end + 4], "little")
        if len(data) != end + 4 + ilen:
            raise _bad(f"interface report: DEVICE_SPECIFIC_INFO_LEN {ilen} but "
                       f"{len(data) - end - 4} bytes follow", None)
        ranges = tuple(MmioRange.unpack(data[hs + 16 * i:hs + 16 * i + 16]) for i in range(n))
        return cls(mmio_ranges=ranges, device_specific_info=data[end + 4:], **f)
