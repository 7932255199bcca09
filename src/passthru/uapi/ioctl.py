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


_UNSIGNED = {ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_ubyte,
             ctypes.c_ushort, ctypes.c_uint, ctypes.c_ulong, ctypes.c_ulonglong, ctypes.c_size_t}
_SIGNED = {ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64, ctypes.c_byte,
           ctypes.c_short, ctypes.c_int, ctypes.c_long, ctypes.c_longlong, ctypes.c_ssize_t}


@functools.cache
def _field_ranges(cls: type) -> tuple[tuple[str, ...], dict[str, tuple[int, int]]]:
    """The names ``cls``'s constructor accepts (its fields, base classes' first, and those of
    its anonymous members) and the value range of each integer field."""
    names: list[str] = []
    ranges: dict[str, tuple[int, int]] = {}

    def add(c: type) -> None:
        for base in reversed(c.__mro__[1:]):
            for f in base.__dict__.get("_fields_", ()):
                _add_field(base, f)
        for f in c.__dict__.get("_fields_", ()):
            _add_field(c, f)

    def _add_field(c: type, f: tuple[Any, ...]) -> None:
        name, typ = f[0], f[1]
        if name in c.__dict__.get("_anonymous_", ()):
            add(typ)
            return
        if name not in names:
            names.append(name)
        bits = f[2] if len(f) > 2 else 8 * ctypes.sizeof(typ)
        if typ in _UNSIGNED:
            ranges[name] = (0, (1 << bits) - 1)
        elif typ in _SIGNED:
            ranges[name] = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)

    add(cls)
    return tuple(names), ranges


@functools.cache
def _positional(cls: type) -> tuple[str, ...]:
    """The fields ctypes fills from positional arguments: base classes' first, as declared."""
    return tuple(f[0] for c in reversed(cls.__mro__) for f in c.__dict__.get("_fields_", ()))


def _check_init(obj: ctypes.Structure | ctypes.Union, args: tuple[Any, ...],
                kw: dict[str, Any]) -> None:
    cls = type(obj)
    names, ranges = _field_ranges(cls)
    for k in kw:
        if k not in names:
            raise TypeError(f"struct {cls.__name__} has no field {k!r}; its fields: "
                            f"{', '.join(names)}")
    for name, value in [*zip(_positional(cls), args, strict=False), *kw.items()]:
        lim = ranges.get(name)
        if lim is not None and isinstance(value, int) and not lim[0] <= value <= lim[1]:
            raise ValueError(f"struct {cls.__name__}: {value} does not fit field {name!r} "
                             f"(range {lim[0]}..{lim[1]:#x})")


class Struct(ctypes.Structure):
    """The base of every uAPI struct: its constructor refuses a keyword that names no field
    (TypeError, naming the fields) and an integer that does not fit its field (ValueError,
    naming the field) instead of ignoring or wrapping it as plain ctypes does."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        _check_init(self, args, kw)
        super().__init__(*args, **kw)


class Union(ctypes.Union):
    """The base of every uAPI union, with :class:`Struct`'s checks."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        _check_init(self, args, kw)
        super().__init__(*args, **kw)


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
    return type(f"{struct.__name__}[{n}]", (Struct,), attrs)
