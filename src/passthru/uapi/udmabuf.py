"""ctypes mirror of include/uapi/linux/udmabuf.h (/dev/udmabuf), as of Linux 7.3.

UDMABUF_CREATE turns a page-aligned range of a sealed memfd (F_SEAL_SHRINK set,
F_SEAL_WRITE clear) into a dma-buf fd; UDMABUF_CREATE_LIST concatenates ``count`` such
ranges (``list[]`` is a flexible array; ``create_list()`` builds the argument).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterable

from .ioctl import _IOW, Struct, with_entries

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64

UDMABUF_FLAGS_CLOEXEC = 0x01


class udmabuf_create(Struct):
    _fields_ = [
        ("memfd", _u32),
        ("flags", _u32),
        ("offset", _u64),
        ("size", _u64),
    ]


class udmabuf_create_item(Struct):
    _fields_ = [
        ("memfd", _u32),
        ("__pad", _u32),
        ("offset", _u64),
        ("size", _u64),
    ]


class udmabuf_create_list(Struct):
    _fields_ = [
        ("flags", _u32),
        ("count", _u32),
        ("list", udmabuf_create_item * 0),
    ]


UDMABUF_CREATE = _IOW("u", 0x42, udmabuf_create)
UDMABUF_CREATE_LIST = _IOW("u", 0x43, udmabuf_create_list)


@functools.cache
def udmabuf_create_list_n(n: int) -> type[ctypes.Structure]:
    """struct udmabuf_create_list with room for ``n`` items in ``list``."""
    return with_entries(udmabuf_create_list, n)


def create_list(items: Iterable[tuple[int, int, int]], flags: int = 0) -> bytearray:
    """The UDMABUF_CREATE_LIST argument for (memfd, offset, size) items, as a bytearray."""
    its = list(items)
    arg = udmabuf_create_list_n(len(its))()
    arg.flags = flags
    arg.count = len(its)
    for i, (memfd, offset, size) in enumerate(its):
        arg.list[i].memfd = memfd
        arg.list[i].offset = offset
        arg.list[i].size = size
    return bytearray(bytes(arg))
