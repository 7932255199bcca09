"""The proposed dma-buf backed MMIO memslot (KVM_MEM_VFIO_DMABUF, KERNEL.md §5): the checks in
order, KVM as a dynamic importer whose invalidate zaps the slot, EFAULT while revoked, maps
again after un-revoke, and nothing left after the slot or the VM goes."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.kapi import dmabuf_fd, revocable_dmabuf, revoke_buffer, unrevoke_buffer
from passthru.uapi import kvm as K
from passthru.uapi import linux as L
from passthru.uapi import proposed as P

PAGE = 4096
GPA = 0x100000


def _vm(h: SimHost) -> tuple[int, int]:
    kfd = h.open("/dev/kvm", L.O_RDWR)
    vm = h.ioctl(kfd, K.KVM_CREATE_VM, 0)
    h.close(kfd)
    return vm, h.ioctl(vm, K.KVM_CREATE_VCPU, 0)


def _slot(h: SimHost, vm: int, fd: int, size: int = 2 * PAGE, flags: int = 0,
          offset: int = 0) -> int:
    return h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
        slot=1, flags=P.KVM_MEM_VFIO_DMABUF | flags, guest_phys_addr=GPA, memory_size=size,
        guest_memfd=fd, guest_memfd_offset=offset))


def _err(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    return e.value.errno


def test_the_flag_needs_the_proposal() -> None:
    h = SimHost("linux-7.1")
    vm, _ = _vm(h)
    buf = revocable_dmabuf(h, 2 * PAGE)
    assert _err(_slot, h, vm, dmabuf_fd(h, buf)) == errno.EINVAL


def test_checks_in_order() -> None:
    h = SimHost("rfc-tdx-connect")
    vm, _ = _vm(h)
    fd = dmabuf_fd(h, revocable_dmabuf(h, 2 * PAGE))
    assert _err(_slot, h, vm, fd, flags=K.KVM_MEM_READONLY) == errno.EINVAL
    assert _err(_slot, h, vm, fd, flags=K.KVM_MEM_GUEST_MEMFD) == errno.EINVAL
    assert _err(_slot, h, vm, fd, offset=PAGE) == errno.EINVAL
    assert _err(_slot, h, vm, fd, size=PAGE) == errno.EINVAL  # not the buffer's size
    assert _err(_slot, h, vm, 999) == errno.EBADF
    mfd = h.memfd_create("not-a-dmabuf", 0)
    assert _err(_slot, h, vm, mfd) == errno.EINVAL
    assert _slot(h, vm, fd) == 0
    assert _err(_slot, h, vm, fd) == errno.EINVAL  # a dma-buf slot is immutable


def test_guest_reaches_the_buffer_until_revoked_and_again_after() -> None:
    h = SimHost("rfc-tdx-connect")
    vm, vcpu_fd = _vm(h)
    buf = revocable_dmabuf(h, 2 * PAGE)
    _slot(h, vm, dmabuf_fd(h, buf))
    cpu = h.vcpu(vcpu_fd)
    cpu.access(GPA + PAGE, data=b"\x42" * 8)
    got, ex = cpu.access(GPA + PAGE, 8)
    assert ex is None and got == b"\x42" * 8
    revoke_buffer(buf)
    with pytest.raises(OSError) as e:  # the SPTE is gone and the exporter gives no pfn
        cpu.access(GPA + PAGE, 8)
    assert e.value.errno == errno.EFAULT
    unrevoke_buffer(buf)
    got, ex = cpu.access(GPA + PAGE, 8)  # maps again on demand
    assert ex is None and got == b"\x42" * 8


def test_revoke_zaps_the_slot_sptes() -> None:
    h = SimHost("rfc-tdx-connect")
    vm, vcpu_fd = _vm(h)
    buf = revocable_dmabuf(h, 2 * PAGE)
    _slot(h, vm, dmabuf_fd(h, buf))
    cpu = h.vcpu(vcpu_fd)
    cpu.access(GPA, 8)
    kvm = cpu.kvm
    assert kvm.mmu.spte.any_in(GPA, GPA + 2 * PAGE)
    seq = kvm.mmu.invalidate_seq
    revoke_buffer(buf)
    assert not kvm.mmu.spte.any_in(GPA, GPA + 2 * PAGE)
    assert kvm.mmu.invalidate_seq == seq + 1  # a fault in flight would retry


def test_delete_and_destroy_leave_nothing() -> None:
    h = SimHost("rfc-tdx-connect")
    vm, _ = _vm(h)
    buf = revocable_dmabuf(h, 2 * PAGE)
    fd = dmabuf_fd(h, buf)
    _slot(h, vm, fd)
    assert len(buf.attachments) == 1
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
        slot=1, flags=P.KVM_MEM_VFIO_DMABUF, guest_phys_addr=GPA, memory_size=0,
        guest_memfd=fd))
    assert len(buf.attachments) == 0
    _slot(h, vm, fd)
    h.exit()
    assert h.leaks() == []
