"""ctypes mirror of include/uapi/linux/dma-heap.h (/dev/dma_heap/<name>), as of Linux 7.3.

DMA_HEAP_IOCTL_ALLOC allocates ``len`` bytes (rounded up to pages) and returns a dma-buf fd
in ``fd``, opened with ``fd_flags`` (O_CLOEXEC and an access mode only); ``heap_flags``
must be 0 (no heap defines any). The header's DMA_HEAP_VALID_FD_FLAGS is written with the
libc's O_CLOEXEC and O_ACCMODE; here they come from passthru.uapi.linux (x86-64 values).
"""

from __future__ import annotations

import ctypes

from . import linux
from .ioctl import _IOWR, Struct

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64

DMA_HEAP_VALID_FD_FLAGS = linux.O_CLOEXEC | linux.O_ACCMODE
DMA_HEAP_VALID_HEAP_FLAGS = 0


class dma_heap_allocation_data(Struct):
    _fields_ = [
        ("len", _u64),
        ("fd", _u32),
        ("fd_flags", _u32),
        ("heap_flags", _u64),
    ]


DMA_HEAP_IOC_MAGIC = ord("H")
DMA_HEAP_IOCTL_ALLOC = _IOWR(DMA_HEAP_IOC_MAGIC, 0x0, dma_heap_allocation_data)
