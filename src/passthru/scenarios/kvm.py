"""KVM races the foundation models: guest_memfd punch-hole and memslot deletion against a
vCPU's fault path.

- A vCPU faulting a guest_memfd page while the VMM punches a hole over it: KVM's
  mmu_invalidate protocol (invalidate_begin/end bump a sequence the fault rechecks under
  mmu_lock) makes the fault retry instead of mapping the page being freed. The buggy variant
  seeds ``kvm.no_mmu_invalidate_retry``: the stale page gets mapped and the guest then writes
  freed memory.
- A vCPU faulting through a memslot while the VMM deletes it: the delete waits for SRCU readers
  (synchronize_srcu) before freeing the slot. The buggy variant seeds
  ``kvm.memslot_delete_skips_srcu_sync``: the vCPU dereferences a freed kvm_memory_slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..host.sim import SimHost
from ..kapi import (
    KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC,
    KVM_NO_MMU_INVALIDATE_RETRY,
    Sandbox,
    scenario,
    sptes_backed,
)
from ..uapi import kvm as K
from ..uapi import linux as L

PROFILES = ("linux-6.19", "linux-7.1")
PAGE = L.PAGE_SIZE
SIZE = 16 * PAGE


def _vm_with_gmem(host: SimHost) -> tuple[int, int, int]:
    kvm = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
    vm = host.ioctl(kvm, K.KVM_CREATE_VM, K.KVM_X86_DEFAULT_VM)
    host.close(kvm)
    args = K.kvm_create_guest_memfd(size=SIZE, flags=K.GUEST_MEMFD_FLAG_MMAP
                                    | K.GUEST_MEMFD_FLAG_INIT_SHARED)
    gmem = host.ioctl(vm, K.KVM_CREATE_GUEST_MEMFD, args)
    region = K.kvm_userspace_memory_region2(
        slot=0, flags=K.KVM_MEM_GUEST_MEMFD, guest_phys_addr=0, memory_size=SIZE,
        guest_memfd=gmem, guest_memfd_offset=0)
    host.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, region)
    return vm, gmem, host.ioctl(vm, K.KVM_CREATE_VCPU, 0)


def _vcpu_vs_vmm(s: Sandbox, guest: Callable[[Any], None], vmm_task: str,
                 vmm: Callable[[SimHost, int, int], None]) -> None:
    """Task ``vcpu0`` runs ``guest(vcpu)`` on a VM whose slot 0 is a guest_memfd while task
    ``vmm_task`` runs ``vmm(host, vm, gmem)``; no SPTE may outlive the memory it maps."""
    host = s.host
    vm, gmem, vcpu_fd = _vm_with_gmem(host)
    s.spawn("vcpu0", guest, host.vcpu(vcpu_fd))
    s.spawn(vmm_task, vmm, host, vm, gmem)
    s.invariant("stale-spte", sptes_backed(host, vm))


def _punch_hole(host: SimHost, vm: int, gmem: int) -> None:
    """The VMM punches a hole over the first four pages of the guest_memfd."""
    host.fallocate(gmem, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 0, 4 * PAGE)


def _punch_vs_vcpu(s: Sandbox) -> None:
    def guest(vcpu: Any) -> None:
        vcpu.access(0x1000, data=b"\xaa" * 8)
        vcpu.access(0x1000, data=b"\xbb" * 8)  # through the SPTE the first access installed

    _vcpu_vs_vmm(s, guest, "punch", _punch_hole)


@scenario(profiles=PROFILES, expect="safe")
def gmem_punch_hole_vs_vcpu(s: Sandbox) -> None:
    """A vCPU faults a guest_memfd page while the VMM punches a hole over it."""
    _punch_vs_vcpu(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(KVM_NO_MMU_INVALIDATE_RETRY,))
def gmem_punch_hole_vs_vcpu_buggy(s: Sandbox) -> None:
    """The same race with the fault's mmu_invalidate retry check removed: stale SPTE."""
    _punch_vs_vcpu(s)


def _delete_vs_vcpu(s: Sandbox) -> None:
    def guest(vcpu: Any) -> None:
        vcpu.access(0x2000, data=b"\x11" * 4)

    def delete(host: SimHost, vm: int, gmem: int) -> None:
        host.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2,
                   K.kvm_userspace_memory_region2(slot=0, flags=K.KVM_MEM_GUEST_MEMFD,
                                                  guest_phys_addr=0, memory_size=0,
                                                  guest_memfd=gmem))

    _vcpu_vs_vmm(s, guest, "vmm", delete)


@scenario(profiles=PROFILES, expect="safe")
def memslot_delete_vs_vcpu(s: Sandbox) -> None:
    """A vCPU faults through a memslot while the VMM deletes the slot."""
    _delete_vs_vcpu(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC,))
def memslot_delete_vs_vcpu_buggy(s: Sandbox) -> None:
    """The same race with synchronize_srcu removed from the delete: use-after-free."""
    _delete_vs_vcpu(s)


@scenario(profiles=("linux-7.1",), expect="safe")
def gmem_punch_hole_vs_two_vcpus(s: Sandbox) -> None:
    """Two vCPUs fault different pages of one guest_memfd while the VMM punches a hole over
    both: a larger space, where partial-order reduction pays."""
    host = s.host
    vm, gmem, vcpu_fd = _vm_with_gmem(host)
    cpus = [host.vcpu(vcpu_fd), host.vcpu(host.ioctl(vm, K.KVM_CREATE_VCPU, 1))]

    def guest(cpu: object, gpa: int) -> None:
        cpu.access(gpa, data=b"\x5a" * 8)  # type: ignore[attr-defined]

    s.spawn("vcpu0", guest, cpus[0], 0x1000)
    s.spawn("vcpu1", guest, cpus[1], 0x3000)
    s.spawn("punch", _punch_hole, host, vm, gmem)
    s.invariant("stale-spte", sptes_backed(host, vm))
