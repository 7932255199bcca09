"""Proposed, unmerged uAPIs that passthru models, each naming the RFC it follows.

None of these names is in the Linux 7.3 uAPI headers. tests/uapi checks them against golden
numbers and checks that the real headers still do not define them (if one gets merged,
the test says so, and the definition should move to the header's own module).

iommufd: IOMMU_VDEVICE_TSM_OP (include/uapi/linux/iommufd.h, proposed)
    Follows Aneesh Kumar K.V.'s iommufd vDEVICE TSM bind series (v5, 2026), as KERNEL.md §3
    summarises it: ``struct iommu_vdevice_tsm_op {u32 size; u32 type; u32 flags;
    u32 vdevice_id}``, type BIND 1 / UNBIND 2, flags 0; BIND calls
    tsm_bind(dev, kvm, virt_id) with the KVM given at vIOMMU allocation (none: ENODEV);
    destroying the vDEVICE unbinds. The layout is taken from KERNEL.md, not re-read from
    the patches. How the vIOMMU is given the kvm fd is not part of this file yet.

    Command number: **0x96**, not the series' 0x95. In the 7.3 headers 0x95 is
    IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA, and iommufd requests are ``_IO(';', nr)`` with no
    size encoded, so at 0x95 the two requests would be the same number (15253) and the
    model's dispatcher could not tell them apart. iommufd's ioctl table is indexed by
    ``nr - IOMMUFD_CMD_BASE``, so a rebase onto 7.3 takes the next free slot, 0x96
    (IOMMU_VDEVICE_TSM_OP = 15254). Code that talks to a kernel built from the series as
    posted must use 0x95 (IOMMUFD_CMD_VDEVICE_TSM_OP_AS_POSTED).

KVM: KVM_MEM_VFIO_DMABUF (include/uapi/linux/kvm.h, proposed)
    Follows Xu Yilun's RFC for dma-buf backed MMIO memslots (2025; the series "Private MMIO
    support for private assigned dev", patch "KVM: Support vfio_dmabuf backed MMIO region";
    title recalled, as KERNEL.md §5 summarises it): memslot flag bit 3, the dma-buf fd
    passed in kvm_userspace_memory_region2.guest_memfd, guest_memfd_offset 0 and
    memory_size equal to the buffer's size (else EINVAL); not combinable with
    KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES or KVM_MEM_READONLY. Bit 3 is the next
    free memslot flag in 7.3 (bits 0-2 are LOG_DIRTY_PAGES, READONLY, GUEST_MEMFD).
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, Struct
from .iommufd import IOMMUFD_TYPE

_u32 = ctypes.c_uint32

# --- iommufd vDEVICE TSM operations ---

IOMMUFD_CMD_VDEVICE_TSM_OP = 0x96
IOMMUFD_CMD_VDEVICE_TSM_OP_AS_POSTED = 0x95  # collides with IOMMU_IOAS_NOIOMMU_GET_PA


class iommu_vdevice_tsm_op(Struct):
    _fields_ = [
        ("size", _u32),
        ("type", _u32),
        ("flags", _u32),
        ("vdevice_id", _u32),
    ]


IOMMU_VDEVICE_TSM_BIND = 1
IOMMU_VDEVICE_TSM_UNBIND = 2

IOMMU_VDEVICE_TSM_OP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_TSM_OP)

# --- KVM dma-buf backed MMIO memslots ---

KVM_MEM_VFIO_DMABUF = 1 << 3
