"""Definitions every mm user shares (include/linux/mm.h): the VMA flags and page rounding.

A module of its own so that the address space (vma.py) and the files it maps (memfd.py's
shmem, and the drivers' mmap handlers) can both depend on them without depending on each
other. vma.py re-exports them for its importers.

Units: bytes (``PAGE`` is 4 KiB; x86-64 values of the flags). Constants only: no state, no
locks.
"""

from __future__ import annotations

from ...uapi import linux as L

PAGE = L.PAGE_SIZE
VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_MAYREAD = 0x10
VM_MAYWRITE = 0x20
VM_MAYEXEC = 0x40
VM_MAYSHARE = 0x80
VM_PFNMAP = 0x400
VM_IO = 0x4000
VM_DONTEXPAND = 0x40000
VM_DONTDUMP = 0x4000000


def page_down(x: int) -> int:
    """``x`` rounded down to a page boundary (PAGE_ALIGN_DOWN)."""
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    """``x`` rounded up to a page boundary (PAGE_ALIGN)."""
    return (x + PAGE - 1) & ~(PAGE - 1)
