"""DMA-BUF heaps (drivers/dma-buf/heaps/): the two every distribution kernel has — the system
heap (system_heap.py) and the CMA heap of the default CMA area (cma_heap.py) — on the heap
framework (../dma_heap.py). What their buffers share is heap_buffer.py.

:func:`heaps_init` registers them at boot, in the kernel's order: the system heap, then the
CMA heap (whose area must be reserved before anything is allocated).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...init import initcall
from .cma_heap import add_default_cma_heap
from .system_heap import system_heap_create

if TYPE_CHECKING:
    from ...core import Kernel


@initcall("device")  # module_init(system_heap_create), module_init(add_default_cma_heap)
def heaps_init(kernel: Kernel) -> None:
    """system_heap_create and add_default_cma_heap: /dev/dma_heap/system always, and
    /dev/dma_heap/reserved when the default CMA area could be reserved."""
    system_heap_create(kernel)
    add_default_cma_heap(kernel)


__all__ = ["heaps_init"]
