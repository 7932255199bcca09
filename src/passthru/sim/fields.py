"""Tracked fields: descriptors that make every read and write of an object's field an access
the checker sees (sim/track.py), for model objects whose fields tasks share.

- :class:`Plain` — a field its lock protects: plain accesses (race-checked) over a slice of
  the object's location;
- :class:`InCell` — a field that is its own tracked :class:`~passthru.sim.track.Cell`.

Leaves out: marked field accesses (code that reads a field with READ_ONCE reads ``_<name>``
directly and records ``track.read_once`` itself).
"""

from __future__ import annotations

from typing import Generic, TypeVar, overload

from . import track
from .track import Cell

T = TypeVar("T")


class Field(Generic[T]):
    """A field every access of which the checker sees (sim/track.py): a descriptor whose
    value lives in the object's ``_<name>``; subclasses say how it is read and written."""

    def __init__(self) -> None:
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> Field[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object, owner: type) -> Field[T] | T:
        return self if obj is None else self.load(obj)

    def __set__(self, obj: object, value: T) -> None:
        self.store(obj, value)

    def load(self, obj: object) -> T:
        raise NotImplementedError

    def store(self, obj: object, value: T) -> None:
        raise NotImplementedError


class Plain(Field[T]):
    """A field of a tracked object (sim/track.py ``Tracked``) that its lock protects: every
    read and write is a plain access in the footprint, over ``part`` — a ``(lo, hi)`` slice of
    the object's location; all of it when None — so the race detector judges it. The object's
    marked accesses (``read_once``) read ``_<name>`` directly."""

    def __init__(self, part: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.lo, self.hi = part if part is not None else (track.LO, track.HI)

    def load(self, obj: object) -> T:
        track.read(obj, self.lo, self.hi)
        value: T = getattr(obj, self.attr)
        return value

    def store(self, obj: object, value: T) -> None:
        track.write(obj, self.lo, self.hi)
        setattr(obj, self.attr, value)


class InCell(Field[T]):
    """A field whose value is its own tracked :class:`~passthru.sim.track.Cell`, ``_<name>``
    (its own location): reading and writing the field are the cell's ``get`` and ``set``."""

    def load(self, obj: object) -> T:
        cell: Cell[T] = getattr(obj, self.attr)
        return cell.get()

    def store(self, obj: object, value: T) -> None:
        getattr(obj, self.attr).set(value)
