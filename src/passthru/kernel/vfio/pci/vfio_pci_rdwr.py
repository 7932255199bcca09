"""vfio-pci region read/write through the device fd (drivers/vfio/pci/vfio_pci_rdwr.c and
vfio_pci_core.c's vfio_pci_rw).

:func:`vfio_pci_rw`: the region index is the file offset's bits 40 and up (VFIO_PCI_OFFSET_
TO_INDEX); an index past the regions EINVAL; config (7) through the virtual config space
(pci/vfio_pci_config.py); ROM (6) read-only (a write EINVAL) and, with no ROM, EINVAL; BARs
(0-5) through :func:`vfio_pci_bar_rw`; VGA (8) EINVAL (no VGA device).

:func:`vfio_pci_bar_rw`: an unimplemented BAR EINVAL; a start at or past the BAR's end
EINVAL; the count is clipped to the BAR; the access is split as vfio_pci_core_do_io_rw
splits it (8, 4, 2 or 1 bytes, naturally aligned); each piece takes ``memory_lock`` for
read and checks that memory is enabled (else EIO: the bytes done so far are lost, the call
fails), then reaches the device's ``mmio_read``/``mmio_write`` — what ioread/iowrite on the
kernel's barmap does.

Invariants: a BAR access never reaches the device while vfio thinks memory is disabled.
Units: bytes; file offsets carry the region index in bits 40-63.
Locking: ``memory_lock`` (read) around each device access, as vfio_pci_core_ioread/iowrite.
Leaves out: the MSI-X table hole (the model's devices have no MSI-X), I/O-port BARs, the
ioeventfd fast path, VGA.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ....uapi import vfio as V

if TYPE_CHECKING:
    from .vfio_pci_core import VfioPciCoreDevice

OFFSET_MASK = (1 << V.VFIO_PCI_OFFSET_SHIFT) - 1


def offset_to_index(pos: int) -> int:
    return pos >> V.VFIO_PCI_OFFSET_SHIFT


def _io_size(off: int, left: int) -> int:
    for n in (8, 4, 2):
        if left >= n and not off % n:
            return n
    return 1


def vfio_pci_bar_rw(vdev: VfioPciCoreDevice, pos: int, count: int,
                    data: bytes | None) -> bytes | int:
    bar = offset_to_index(pos)
    off = pos & OFFSET_MASK
    b = vdev.pdev.func.bars.get(bar)
    if b is None:
        raise kerr(errno.EINVAL, f"{vdev.name}: BAR{bar} is not implemented")
    if off >= b.size:
        raise kerr(errno.EINVAL, f"{vdev.name}: offset {off:#x} past BAR{bar} "
                   f"({b.size:#x} bytes)")
    count = min(count, b.size - off)
    out = bytearray()
    done = 0
    while done < count:
        n = _io_size(off + done, count - done)
        with vdev.memory_lock.read():
            if not vdev.memory_enabled():
                raise kerr(errno.EIO, f"{vdev.name}: BAR{bar} access at {off + done:#x} "
                           "with memory disabled (MSE clear or D3hot)")
            if data is None:
                val = vdev.pdev.mmio_read(bar, off + done, n, who=f"vfio:{vdev.name}")
                out += val.to_bytes(n, "little")
            else:
                val = int.from_bytes(data[done:done + n], "little")
                vdev.pdev.mmio_write(bar, off + done, n, val, who=f"vfio:{vdev.name}")
        done += n
    return bytes(out) if data is None else done


def vfio_pci_rw(vdev: VfioPciCoreDevice, pos: int, count: int,
                data: bytes | None) -> bytes | int:
    """vfio_pci_rw: read ``count`` bytes at file offset ``pos`` (the bytes) or write
    ``data`` (the count written)."""
    index = offset_to_index(pos)
    if index >= V.VFIO_PCI_NUM_REGIONS:
        raise kerr(errno.EINVAL, f"{vdev.name}: region {index} does not exist")
    if index == V.VFIO_PCI_CONFIG_REGION_INDEX:
        assert vdev.config is not None
        return vdev.config.rw(pos & OFFSET_MASK, count, data)
    if index == V.VFIO_PCI_ROM_REGION_INDEX:
        if data is not None:
            raise kerr(errno.EINVAL, f"{vdev.name}: the ROM region is read-only")
        raise kerr(errno.EINVAL, f"{vdev.name}: no expansion ROM")
    if index == V.VFIO_PCI_VGA_REGION_INDEX:
        raise kerr(errno.EINVAL, f"{vdev.name}: not a VGA device")
    return vfio_pci_bar_rw(vdev, pos, count, data)
