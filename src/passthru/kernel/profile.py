"""Kernel profiles: behaviour that differs across kernel versions and proposals, as data.

A subsystem never asks "is this 7.1?"; it reads a field of the profile (docs/design.md contract 3).
``bugs`` names deliberately seeded defects (for teaching and for the checker's own tests: a
buggy variant of a scenario must be found); real profiles have none.

Seeded bugs are registered constants (:data:`SEEDED_BUGS`, :func:`seeded_bug`): a profile
given an unknown bug name refuses it (ValueError naming the known ones), and so does
:meth:`Profile.has_bug`, so a misspelt name fails instead of silently seeding nothing.

Invariants: a Profile is immutable (``with_bugs``/``with_design`` return new ones); ``bugs``
only holds registered names. Units: ``kvm_max_gpa_bits`` in bits, the rest are counts or flags.
Locking: none (immutable data, built at import).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..uapi import kvm as K

# name -> what the seeded defect does. Every bug name a profile or a check site uses is here.
SEEDED_BUGS: dict[str, str] = {}


def seeded_bug(name: str, what: str) -> str:
    """Register seeded bug ``name`` (what it breaks, for the error message) and return it,
    for a module-level constant the check site and the buggy scenario both name."""
    if SEEDED_BUGS.get(name, what) != what:
        raise ValueError(f"seeded bug {name!r} registered twice with different meanings")
    SEEDED_BUGS[name] = what
    return name


def _require_bugs(names: frozenset[str] | tuple[str, ...]) -> None:
    unknown = sorted(set(names) - SEEDED_BUGS.keys())
    if unknown:
        known = ", ".join(sorted(SEEDED_BUGS))
        raise ValueError(f"unknown seeded bug(s) {', '.join(map(repr, unknown))} "
                         f"(known: {known})")


# kernel/kvm/mmu.py: the fault path installs its SPTE without mmu_invalidate_retry_gfn.
KVM_NO_MMU_INVALIDATE_RETRY = seeded_bug(
    "kvm.no_mmu_invalidate_retry",
    "the vCPU fault path skips the mmu_invalidate retry check (stale SPTE after punch-hole)")
# kernel/kvm/memslots.py: a deleted (or moved, re-flagged) slot is freed without waiting for
# SRCU readers.
KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC = seeded_bug(
    "kvm.memslot_delete_skips_srcu_sync",
    "memslot delete frees the old slot without synchronize_srcu (a vCPU reads a freed slot)")
# kernel/dma_buf/movable.py: the movable exporter's migrate.
DMA_BUF_MOVE_PINNED = seeded_bug(
    "dma_buf.move_pinned", "the movable exporter migrates a pinned buffer instead of EBUSY")
DMA_BUF_MOVE_SKIPS_FENCE_WAIT = seeded_bug(
    "dma_buf.move_skips_fence_wait",
    "the movable exporter copies without waiting for the importers' published fences")
# kernel/iommu/iommufd/dmabuf.py: the importer side of iommufd's dma-buf mapping.
IOMMUFD_REVOKE_SKIPS_UNMAP = seeded_bug(
    "iommufd.revoke_skips_unmap",
    "iommufd's dma-buf revoke callback marks the pages revoked but leaves them mapped in the "
    "IOMMU domains (a device keeps reaching the exporter's memory)")
IOMMUFD_DMABUF_MAP_LOCK_INVERSION = seeded_bug(
    "iommufd.dmabuf_map_lock_inversion",
    "IOAS_MAP_FILE of a dma-buf takes the pages mutex before the buffer's resv lock, against "
    "revoke's resv -> pages mutex (ABBA)")
# kernel/iommu/iommufd/main.py: closing the iommufd.
IOMMUFD_RELEASE_IGNORES_USERS = seeded_bug(
    "iommufd.release_ignores_users",
    "closing the iommufd frees nested HWPTs first, ignoring their users: a device PASID "
    "points at freed tables until the device is detached")
# kernel/iommu/iommufd/device.py: detaching a device.
IOMMUFD_DETACH_AFTER_FREE = seeded_bug(
    "iommufd.detach_after_free",
    "device detach puts the HWPT (freeing an automatic domain) before it points the device's "
    "context entry away from it")


@dataclass(frozen=True)
class Profile:
    name: str
    # KVM (virt/kvm/kvm_main.c, arch/x86/kvm/x86.c)
    kvm_vm_types: int = 1 << K.KVM_X86_DEFAULT_VM | 1 << K.KVM_X86_SW_PROTECTED_VM
    kvm_nr_memslots: int = 32764  # KVM_MEM_SLOTS_NUM = SHRT_MAX - KVM_PRIVATE_MEM_SLOTS
    kvm_nr_vcpus: int = 16
    kvm_max_vcpus: int = 1024  # observed on 6.18 (KVM_MAX_VCPUS)
    kvm_max_gpa_bits: int = 52  # kvm_mmu_max_gfn(): MAXPHYADDR of the host
    kvm_gmem_mmap: bool = True  # GUEST_MEMFD_FLAG_MMAP (6.18)
    kvm_pre_fault_memory: bool = True
    kvm_memory_attributes: bool = True  # answered per VM type, see KvmVm.check_extension
    kvm_dmabuf_memslot: bool = False  # proposed KVM_MEM_VFIO_DMABUF slots (RFC, 2025)
    # dma-buf (drivers/dma-buf/dma-buf.c; vfio_pci_dmabuf.c for the revocable exporter)
    revoke_waits_for_unmap: bool = True  # 7.1: fences, then up to 1 s for every unmap
    move_notify_mandatory: bool = False  # < 7.1: dynamic importers must have move_notify
    dma_buf_attach_revocable: bool = True  # 7.1: revocable exporters refuse non-revocable
    revocable_pin_refused: bool = False  # 6.19: the revocable exporter's pin is EOPNOTSUPP
    dma_buf_mapping_types: bool = False  # 2026 proposal: SGT / PAL negotiation
    vfio_pci_dma_buf: bool = True  # 6.19: VFIO_DEVICE_FEATURE_DMA_BUF (else ENOTTY)
    # 7.1 (702809dabdec "vfio/pci: Check BAR resources before exporting a DMABUF", also in
    # 7.0.y): a BAR vfio holds no iomap of (an unimplemented one among them) is ENODEV right
    # after the region index check, before the ranges; 6.19: EINVAL later (no p2pdma provider)
    vfio_pci_dma_buf_barmap_check: bool = True
    # before 7.3 ("vfio/pci: Remove the pcie check for VFIO_PCI_ERR_IRQ_INDEX"): the ERR IRQ
    # index exists only on PCIe devices (GET_IRQ_INFO EINVAL, count 0 otherwise)
    vfio_pci_err_irq_pcie_only: bool = True
    vfio_type1_overflow_checks: bool = True  # 6.19: type1 MAP_DMA wrap is EOVERFLOW, first
    udmabuf_size_limit_mb: int = 0x7FFFFFFF  # udmabuf's size_limit_mb default (7.3: INT_MAX)
    # iommufd (drivers/iommu/iommufd/)
    iommufd_test: bool = True  # CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD and the mock (selftest.c)
    iommufd_map_dmabuf: bool = True  # 6.19: IOAS_MAP_FILE also takes a dma-buf fd
    # before 7.3 (dba4254e216d "iommufd/selftest: Fix dmabuf leak in
    # iommufd_test_dmabuf_get()"): IOMMU_TEST_OP_DMABUF_GET returns the new fd; 7.3 installs
    # the fd but the ioctl returns 0 (the caller finds it as the lowest free fd)
    iommufd_test_dmabuf_get_returns_fd: bool = True
    thp: bool = True  # CONFIG_TRANSPARENT_HUGEPAGE: automatic IOVAs aligned up to 2 MiB
    # Confidential computing platform (kernel/pci/tsm/platform.py PLATFORMS): which secure
    # firmware the machine has (hw/secure/) and which platform TSM driver registers with the
    # PCI TSM core: "tdx" (TDX module, TDX Connect), "sev" (PSP, SEV-TIO), "cca" (RMM).
    coco_platform: str | None = None
    design: str = "vfio"  # DEFAULT_DESIGN; a row of kernel/pci/tsm/designs.py COORDINATION
    bugs: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        _require_bugs(self.bugs)

    def with_bugs(self, *bugs: str) -> Profile:
        """This profile with seeded ``bugs`` added (ValueError for an unregistered name)."""
        _require_bugs(bugs)
        return replace(self, bugs=self.bugs | frozenset(bugs))

    def has_bug(self, name: str) -> bool:
        """Is seeded bug ``name`` (a registered name: ValueError otherwise) in this profile?"""
        if name not in SEEDED_BUGS:
            _require_bugs((name,))
        return name in self.bugs

    def with_design(self, design: str) -> Profile:
        return replace(self, design=design)


# The kernel this project's machines run (6.18 under kvm_pvm): what conformance compares with.
LINUX_6_18 = Profile(
    name="linux-6.18",
    kvm_vm_types=1 << K.KVM_X86_DEFAULT_VM,
    kvm_pre_fault_memory=False,
    kvm_memory_attributes=False,
    revoke_waits_for_unmap=False,
    move_notify_mandatory=True,
    dma_buf_attach_revocable=False,
    revocable_pin_refused=True,
    iommufd_map_dmabuf=False,
    vfio_pci_dma_buf=False,
    vfio_pci_dma_buf_barmap_check=False,
    vfio_type1_overflow_checks=False,
    udmabuf_size_limit_mb=64,
)
LINUX_6_19 = replace(LINUX_6_18, name="linux-6.19", iommufd_map_dmabuf=True,
                     vfio_pci_dma_buf=True, vfio_type1_overflow_checks=True)
LINUX_7_1 = Profile(name="linux-7.1")
# 7.3, the kernel of the real-kernel lanes (tools/realkernel/): what changed since 7.1 that
# the lanes' conformance tests see.
LINUX_7_3 = replace(LINUX_7_1, name="linux-7.3", iommufd_test_dmabuf_get_returns_fd=False,
                    vfio_pci_err_irq_pcie_only=False)
RFC_TDX_CONNECT = replace(
    LINUX_7_1,
    name="rfc-tdx-connect",
    kvm_vm_types=LINUX_7_1.kvm_vm_types | 1 << K.KVM_X86_TDX_VM,
    kvm_dmabuf_memslot=True,
    coco_platform="tdx",
)
RFC_SEV_TIO = replace(
    LINUX_7_1,
    name="rfc-sev-tio",
    kvm_vm_types=LINUX_7_1.kvm_vm_types | 1 << K.KVM_X86_SNP_VM,
    kvm_dmabuf_memslot=True,
    coco_platform="sev",
)
RFC_CCA = replace(LINUX_7_1, name="rfc-cca", kvm_dmabuf_memslot=True, coco_platform="cca")
RFC_DMABUF_MAPPING_TYPES = replace(LINUX_7_1, name="rfc-dmabuf-mapping-types",
                                   dma_buf_mapping_types=True)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (LINUX_6_18, LINUX_6_19, LINUX_7_1, LINUX_7_3, RFC_TDX_CONNECT, RFC_SEV_TIO,
              RFC_CCA, RFC_DMABUF_MAPPING_TYPES)
}
DEFAULT_PROFILE = "linux-7.1"
DESIGNS = ("vfio", "iommufd", "vmm")
DEFAULT_DESIGN = Profile.design  # what a run with no design names (the dataclass default)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r} (known: {known})") from None
