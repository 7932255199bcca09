"""The ioctl request encoding of include/uapi/asm-generic/ioctl.h.

A request packs direction (2 bits), size (14 bits), type (8 bits) and number (8 bits):
``dir << 30 | size << 16 | type << 8 | nr``. x86-64 uses the generic layout.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _type_nr(t: int | str) -> int:
    return ord(t) if isinstance(t, str) else t


def _size(size: Any) -> int:
    if isinstance(size, int):
        return size
    return ctypes.sizeof(size)


def _IOC(direction: int, typ: int | str, nr: int, size: int) -> int:
    assert 0 <= size < (1 << _IOC_SIZEBITS), "ioctl argument too large for the size field"
    return (
        (direction << _IOC_DIRSHIFT)
        | (_type_nr(typ) << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(typ: int | str, nr: int) -> int:
    return _IOC(_IOC_NONE, typ, nr, 0)


def _IOR(typ: int | str, nr: int, size: Any) -> int:
    return _IOC(_IOC_READ, typ, nr, _size(size))


def _IOW(typ: int | str, nr: int, size: Any) -> int:
    return _IOC(_IOC_WRITE, typ, nr, _size(size))


def _IOWR(typ: int | str, nr: int, size: Any) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, typ, nr, _size(size))


def _IOC_DIR(request: int) -> int:
    return (request >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def _IOC_TYPE(request: int) -> int:
    return (request >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def _IOC_NR(request: int) -> int:
    return (request >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def _IOC_SIZE(request: int) -> int:
    return (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


def with_entries(struct: type[ctypes.Structure], n: int) -> type[ctypes.Structure]:
    """``struct`` with its trailing flexible array (a zero-length last field) sized for ``n``
    entries: a new ctypes type (cached per struct and n) whose sizeof is a valid argsz."""
    return _with_entries(struct, n)


@functools.cache
def _with_entries(struct: type[ctypes.Structure], n: int) -> type[ctypes.Structure]:
    fields: list[Any] = list(struct._fields_)
    name, array = fields[-1][0], fields[-1][1]
    if not (isinstance(array, type) and issubclass(array, ctypes.Array) and array._length_ == 0):
        raise TypeError(f"struct {struct.__name__} has no trailing flexible array")
    if n < 0:
        raise ValueError(f"negative entry count {n}")
    elem: Any = array._type_
    fields[-1] = (name, elem * n)
    attrs: dict[str, Any] = {"_fields_": fields}
    if hasattr(struct, "_anonymous_"):
        attrs["_anonymous_"] = struct._anonymous_
    return type(f"{struct.__name__}[{n}]", (ctypes.Structure,), attrs)
