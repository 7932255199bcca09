"""ctypes mirror of include/uapi/linux/dma-buf.h (ioctls on a dma-buf fd), as of Linux 7.3.

DMA_BUF_IOCTL_SYNC brackets CPU access through an mmap of the buffer (begin/end_cpu_access);
DMA_BUF_SET_NAME names the buffer for debugfs/fdinfo (at most DMA_BUF_NAME_LEN bytes with the
NUL); EXPORT/IMPORT_SYNC_FILE turn the buffer's implicit fences into a sync_file and back.

DMA_BUF_SET_NAME is declared with ``const char *`` as its size type, which Android botched
into two variants: _A (a u32 size) and _B (a u64 size). The kernel accepts all three; on
x86-64 DMA_BUF_SET_NAME and DMA_BUF_SET_NAME_B are the same number.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IOW, _IOWR, Struct

_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64


class dma_buf_sync(Struct):
    _fields_ = [("flags", _u64)]


DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2
DMA_BUF_SYNC_VALID_FLAGS_MASK = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END

DMA_BUF_NAME_LEN = 32


class dma_buf_export_sync_file(Struct):
    _fields_ = [("flags", _u32), ("fd", _s32)]


class dma_buf_import_sync_file(Struct):
    _fields_ = [("flags", _u32), ("fd", _s32)]


DMA_BUF_BASE = ord("b")
DMA_BUF_IOCTL_SYNC = _IOW(DMA_BUF_BASE, 0, dma_buf_sync)
DMA_BUF_SET_NAME = _IOW(DMA_BUF_BASE, 1, ctypes.c_char_p)
DMA_BUF_SET_NAME_A = _IOW(DMA_BUF_BASE, 1, _u32)
DMA_BUF_SET_NAME_B = _IOW(DMA_BUF_BASE, 1, _u64)
DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _IOWR(DMA_BUF_BASE, 2, dma_buf_export_sync_file)
DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _IOW(DMA_BUF_BASE, 3, dma_buf_import_sync_file)
