"""dma-buf backed MMIO memslots (proposed: Xu Yilun's RFC "KVM: Support vfio_dmabuf backed MMIO
region", 2025; KERNEL.md §5), behind the profile field ``kvm_dmabuf_memslot``.

A memslot with KVM_MEM_VFIO_DMABUF (1 << 3) names a dma-buf fd in its ``guest_memfd`` field.
KVM_SET_USER_MEMORY_REGION2 checks, after the general ones: the flag only with the profile
(else check_memory_region_flags' EINVAL); not with GUEST_MEMFD, LOG_DIRTY_PAGES or READONLY
(EINVAL); ``guest_memfd_offset`` 0 (EINVAL); the fd a dma-buf (EINVAL; not open: EBADF); the
slot's size equal to the buffer's (EINVAL). KVM then attaches dynamically as an importer
(allow_peer2peer, revocable) — the exporter's refusals come back as they are (EOPNOTSUPP,
ENODEV). A guest fault in the slot asks the exporter for the physical range under the
buffer's resv lock (the private link vfio-pci gives iommufd, kernel/iommu/iommufd/dmabuf.py):
a revoked buffer makes KVM_RUN fail with EFAULT, as a vanished pfn does; after un-revoke the
next fault maps again (KVM maps lazily, there is nothing to restore). The importer's
invalidate (move_notify) zaps the slot's GFN range, private and shared, under mmu_lock and
bumps the invalidate sequence so a fault in flight retries. Deleting the slot or destroying
the VM detaches and drops the file reference.

The legacy route this replaces needs nothing here: the VMM mmaps the BAR, registers the hva as
a normal slot, and KVM follows the VM_PFNMAP PTE (mmu.py's _faultin_pfn through Mm.resolve,
the model's hva_to_pfn_remapped); vfio's zap reaches KVM through the mmu_notifier.

Invariants: a bound slot holds one attachment and one file reference until it is freed; no
SPTE of the slot survives a revoke. Units: bytes. Locking: ``attach`` and ``file`` are set
before the slot is published and cleared after it is unpublished (slots_lock); the physical
range is read under the buffer's resv lock; zaps under mmu_lock (mmu.py asserts it). Lock
order: resv → mmu_lock (the invalidate) and resv → mmu_lock (the fault), never the reverse.
Leaves out: TDX's private (S-EPT) mapping of the range (issue 13), huge SPTEs.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ..dma_buf import core as dmabuf_core
from ..dma_buf.core import DmaBuf, DmaBufAttachment, DmaBufAttachOps
from ..fs.file import File
from ..iommu.iommufd.dmabuf import sym_vfio_pci_dma_buf_iommufd_map

if TYPE_CHECKING:
    from .memslots import Memslot

PAGE = 4096


class KvmDmabufBinding:
    """A memslot's importer side: the attachment and the file reference it holds."""

    def __init__(self, slot: Memslot, buf: DmaBuf) -> None:
        self.slot = slot
        self.buf = buf
        self.attach: DmaBufAttachment | None = None

    def pfn(self, offset: int) -> int:
        """kvm_vfio_dmabuf_get_pfn: the physical address of ``offset`` into the buffer
        (resv held around the exporter's answer); EFAULT when the buffer is revoked."""
        assert self.attach is not None
        buf = self.buf
        buf.resv.lock_ctx()
        try:
            try:
                vec = sym_vfio_pci_dma_buf_iommufd_map(self.attach)
            except OSError as err:
                raise kerr(errno.EFAULT, f"KVM_RUN: slot {self.slot.id:#x}: the dma-buf "
                           f"{buf.name} gives no pfn ({err.strerror})") from None
        finally:
            buf.resv.unlock()
        return int(vec.paddr) + offset

    def detach(self) -> None:
        """Slot freed: detach, drop the file reference."""
        if self.attach is not None:
            dmabuf_core.dma_buf_detach(self.buf, self.attach)
            self.attach = None
        self.buf.put()


def kvm_dmabuf_invalidate(attach: DmaBufAttachment) -> None:
    """The importer's move_notify (resv held): zap the slot's GFN range and bump the
    invalidate sequence so a fault that fetched a pfn before it retries."""
    binding: KvmDmabufBinding = attach.importer_priv
    slot = binding.slot
    mmu = slot.kvm.mmu
    mmu.invalidate_begin(slot.base_gpa, slot.end_gpa)
    mmu.invalidate_end()
    slot.kvm.sched.emit("kvm", "dmabuf-invalidate", slot=slot.id, buf=binding.buf.name)


KVM_DMABUF_OPS = DmaBufAttachOps(invalidate=kvm_dmabuf_invalidate, allow_peer2peer=True,
                                 name="kvm")


def kvm_dmabuf_bind(slot: Memslot, file: File | None, fd: int, what: str) -> KvmDmabufBinding:
    """Check the dma-buf of a new KVM_MEM_VFIO_DMABUF slot and attach to it (the caller
    holds ``file`` for the call); the binding takes its own file reference."""
    if file is None:
        raise kerr(errno.EBADF, f"{what}: dma-buf fd {fd} is not an open fd")
    if not isinstance(file, DmaBuf):
        raise kerr(errno.EINVAL, f"{what}: fd {fd} is a {file.kind}, not a dma-buf")
    size = slot.npages * PAGE
    if file.size() != size:
        raise kerr(errno.EINVAL, f"{what}: slot size {size:#x} is not the dma-buf's "
                   f"{file.size():#x}")
    binding = KvmDmabufBinding(slot, file)
    binding.attach = dmabuf_core.dma_buf_dynamic_attach(file, f"kvm-vm{slot.kvm.vm_id}",
                                                        KVM_DMABUF_OPS, binding)
    file.get()
    return binding
