"""KVM behaviour the real kernel here cannot show (SimHost only): private-memory VM types,
memory attributes, KVM_EXIT_MEMORY_FAULT, the mmu_notifier, scale. Conformance with the real
kernel lives in tests/conformance."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.hw import Machine
from passthru.kernel.kvm.kvm_main import KvmVmFile
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = 4096
RW = L.PROT_READ | L.PROT_WRITE


def vm(host: SimHost, vm_type: int = 0) -> int:
    kfd = host.open("/dev/kvm", L.O_RDWR)
    v = host.ioctl(kfd, K.KVM_CREATE_VM, vm_type)
    host.close(kfd)
    return v


def gmem(host: SimHost, v: int, size: int, flags: int = 0) -> int:
    return host.ioctl(v, K.KVM_CREATE_GUEST_MEMFD, K.kvm_create_guest_memfd(size=size, flags=flags))


def slot(host, v, n, gpa, size, *, g=None, off=0, uaddr=0, flags=None):
    fl = (K.KVM_MEM_GUEST_MEMFD if g is not None else 0) if flags is None else flags
    r = K.kvm_userspace_memory_region2(slot=n, flags=fl, guest_phys_addr=gpa, memory_size=size,
                                       userspace_addr=uaddr, guest_memfd=g or 0,
                                       guest_memfd_offset=off)
    return host.ioctl(v, K.KVM_SET_USER_MEMORY_REGION2, r)


def kvm_of(host: SimHost, v: int):
    f = host.proc.fds[v]
    assert isinstance(f, KvmVmFile)
    return f.kvm


def test_profiles_answer_vm_types_and_attributes():
    h71, h618 = SimHost(), SimHost(profile="linux-6.18")
    for h, types, attrs in ((h71, 0b11, K.KVM_MEMORY_ATTRIBUTE_PRIVATE), (h618, 0b1, 0)):
        kfd = h.open("/dev/kvm", L.O_RDWR)
        assert h.ioctl(kfd, K.KVM_CHECK_EXTENSION, K.KVM_CAP_VM_TYPES) == types
        assert h.ioctl(kfd, K.KVM_CHECK_EXTENSION, K.KVM_CAP_MEMORY_ATTRIBUTES) == attrs


def test_sw_protected_vm_gmem_flags_exclude_init_shared():
    h = SimHost()
    v = vm(h, K.KVM_X86_SW_PROTECTED_VM)
    assert h.ioctl(v, K.KVM_CHECK_EXTENSION, K.KVM_CAP_GUEST_MEMFD_FLAGS) == K.GUEST_MEMFD_FLAG_MMAP
    assert h.ioctl(v, K.KVM_CHECK_EXTENSION, K.KVM_CAP_MEMORY_ATTRIBUTES) == 8
    with pytest.raises(OSError) as e:
        gmem(h, v, PAGE, K.GUEST_MEMFD_FLAG_INIT_SHARED | K.GUEST_MEMFD_FLAG_MMAP)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("attrs,err", [
    (dict(address=0, size=PAGE, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE, flags=1), errno.EINVAL),
    (dict(address=0, size=PAGE, attributes=1 << 2), errno.EINVAL),
    (dict(address=0, size=0, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE), errno.EINVAL),
    (dict(address=0x800, size=PAGE, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE), errno.EINVAL),
    (dict(address=(1 << 64) - PAGE, size=2 * PAGE, attributes=0), errno.EINVAL),
])
def test_set_memory_attributes_validation(attrs, err):
    h = SimHost()
    v = vm(h, K.KVM_X86_SW_PROTECTED_VM)
    with pytest.raises(OSError) as e:
        h.ioctl(v, K.KVM_SET_MEMORY_ATTRIBUTES, K.kvm_memory_attributes(**attrs))
    assert e.value.errno == err
    assert not kvm_of(h, v).attributes  # nothing changed


def test_default_vm_rejects_private_attribute_but_has_the_ioctl():
    h = SimHost()
    v = vm(h)
    with pytest.raises(OSError) as e:
        h.ioctl(v, K.KVM_SET_MEMORY_ATTRIBUTES, K.kvm_memory_attributes(
            address=0, size=PAGE, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE))
    assert e.value.errno == errno.EINVAL


def test_private_shared_conversion_and_memory_fault_exits():
    h = SimHost()
    v = vm(h, K.KVM_X86_SW_PROTECTED_VM)
    g = gmem(h, v, 4 * PAGE, K.GUEST_MEMFD_FLAG_MMAP)
    memfd = h.memfd_create("shared", 0)
    h.ftruncate(memfd, 4 * PAGE)
    hva = h.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, memfd, 0)
    slot(h, v, 0, 0, 4 * PAGE, g=g, uaddr=hva)
    cpu = h.vcpu(h.ioctl(v, K.KVM_CREATE_VCPU, 0))
    # Shared by default: the guest's write lands in the VMM's memfd.
    assert cpu.access(0x10, data=b"shared")[1] is None
    assert h.peek(hva + 0x10, 6) == b"shared"
    # Convert page 0 to private: the SPTE is zapped, the next access maps gmem instead.
    h.ioctl(v, K.KVM_SET_MEMORY_ATTRIBUTES, K.kvm_memory_attributes(
        address=0, size=PAGE, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE))
    assert cpu.access(0x10, 6) == (bytes(6), None)  # fresh private page
    cpu.access(0x10, data=b"privat")
    assert h.peek(hva + 0x10, 6) == b"shared"  # the host's copy is untouched
    # A confidential guest asking for the shared view of a private page exits to the VMM.
    data, ex = cpu.access(0x10, 4, private=False)
    assert ex is not None and ex.name == "MEMORY_FAULT" and ex.gpa == 0 and ex.size == PAGE
    assert ex.flags == 0
    _, ex = cpu.access(PAGE, 4, private=True)
    assert ex is not None and ex.flags == K.KVM_MEMORY_EXIT_FLAG_PRIVATE
    # The private page is private: the host cannot fault it through a gmem mapping.
    assert h.sched.violations == []


def test_private_access_to_slot_without_gmem_is_memory_fault():
    h = SimHost()
    v = vm(h, K.KVM_X86_SW_PROTECTED_VM)
    memfd = h.memfd_create("ram", 0)
    h.ftruncate(memfd, PAGE)
    hva = h.mmap(0, PAGE, RW, L.MAP_SHARED, memfd, 0)
    slot(h, v, 0, 0, PAGE, uaddr=hva, flags=0)
    h.ioctl(v, K.KVM_SET_MEMORY_ATTRIBUTES, K.kvm_memory_attributes(
        address=0, size=PAGE, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE))
    cpu = h.vcpu(h.ioctl(v, K.KVM_CREATE_VCPU, 0))
    _, ex = cpu.access(0, 4)
    assert ex is not None and ex.name == "MEMORY_FAULT"


def test_munmap_of_slot_memory_zaps_sptes_through_the_mmu_notifier():
    h = SimHost()
    v = vm(h)
    memfd = h.memfd_create("ram", 0)
    h.ftruncate(memfd, 2 * PAGE)
    hva = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, memfd, 0)
    slot(h, v, 0, 0, 2 * PAGE, uaddr=hva, flags=0)
    cpu = h.vcpu(h.ioctl(v, K.KVM_CREATE_VCPU, 0))
    cpu.access(0, data=b"A")
    kvm = kvm_of(h, v)
    assert kvm.mmu.spte.lookup(0) is not None
    seq = kvm.mmu.invalidate_seq
    h.munmap(hva, 2 * PAGE)
    assert kvm.mmu.spte.lookup(0) is None and kvm.mmu.invalidate_seq == seq + 1
    h.close(memfd)
    # The slot now points at nothing: KVM_RUN fails with EFAULT, memory stays unharmed.
    with pytest.raises(OSError) as e:
        cpu.access(0, data=b"B")
    assert e.value.errno == errno.EFAULT
    assert h.sched.violations == []


def test_punch_hole_zaps_and_guest_sees_a_fresh_page():
    h = SimHost()
    v = vm(h)
    g = gmem(h, v, 4 * PAGE, K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED)
    slot(h, v, 0, 0, 4 * PAGE, g=g)
    cpu = h.vcpu(h.ioctl(v, K.KVM_CREATE_VCPU, 0))
    cpu.access(PAGE, data=b"old")
    h.fallocate(g, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, PAGE, PAGE)
    assert cpu.access(PAGE, 3) == (bytes(3), None)
    assert h.sched.violations == []


def test_closing_gmem_unbinds_its_slot_and_guest_access_fails():
    h = SimHost()
    v = vm(h)
    g = gmem(h, v, PAGE, K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED)
    slot(h, v, 0, 0, PAGE, g=g)
    cpu = h.vcpu(h.ioctl(v, K.KVM_CREATE_VCPU, 0))
    cpu.access(0, data=b"x")
    h.close(g)
    assert h.kernel.phys.allocated_bytes() == 3 * PAGE  # only the vCPU's kvm_run remains
    with pytest.raises(OSError) as e:
        cpu.access(0, data=b"y")
    assert e.value.errno == errno.EFAULT


def test_no_slot_is_an_mmio_exit_reported_in_kvm_run():
    h = SimHost()
    v = vm(h)
    vfd = h.ioctl(v, K.KVM_CREATE_VCPU, 0)
    _, ex = h.vcpu(vfd).access(0xFEE00000, data=b"\x01\x02")
    assert ex is not None and ex.name == "MMIO" and ex.is_write and ex.size == 2
    run = h.mmap(0, 3 * PAGE, RW, L.MAP_SHARED, vfd, 0)
    run_struct = K.kvm_run.from_buffer_copy(h.peek(run, K.ctypes.sizeof(K.kvm_run)))
    assert run_struct.exit_reason == K.KVM_EXIT_MMIO
    assert run_struct.mmio.phys_addr == 0xFEE00000 and run_struct.mmio.len == 2


def test_one_tib_guest_costs_what_one_mib_does():
    """Sizes are free: the model's state is a handful of extents whatever the size."""
    sizes = {}
    for size in (1 << 20, 1 << 40):
        h = SimHost(machine=Machine(name="2t", ram=((0, 2 << 40),), mmio=()))
        v = vm(h)
        g = gmem(h, v, size, K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED)
        slot(h, v, 0, 1 << 32, size, g=g)
        h.fallocate(g, L.FALLOC_FL_KEEP_SIZE, 0, size)  # allocate all of it
        cpu = h.vcpu(h.ioctl(v, K.KVM_CREATE_VCPU, 0))
        cpu.access((1 << 32) + size - 8, data=b"lastword")
        h.fallocate(g, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 0, size)
        gm = h.proc.fds[g]
        kvm = kvm_of(h, v)
        sizes[size] = (len(gm.cache.pages), len(gm.bindings), len(kvm.mmu.spte),
                       len(h.kernel.phys.owners))
        h.exit()
        assert h.leaks() == []
    assert sizes[1 << 20] == sizes[1 << 40]


def test_vm_ioctl_from_another_process_is_eio():
    h = SimHost()
    v = vm(h)
    other = h.process("intruder")
    other.proc.fds[3] = h.proc.fds[v].get()  # as if passed over a unix socket
    with pytest.raises(OSError) as e:
        other.ioctl(3, K.KVM_CHECK_EXTENSION, K.KVM_CAP_USER_MEMORY2)
    assert e.value.errno == errno.EIO


# ----- ioctl tables and the memslot update paths (issue 8, §3) -----------------------------


def test_every_kvm_file_dispatches_through_its_table():
    from passthru.kernel.kvm import guest_memfd, kvm_main

    assert all(c in kvm_main.KVM_DEV_IOCTLS for c in (
        K.KVM_GET_API_VERSION, K.KVM_CREATE_VM, K.KVM_CHECK_EXTENSION,
        K.KVM_GET_VCPU_MMAP_SIZE))
    assert all(c in kvm_main.KVM_VM_IOCTLS for c in (
        K.KVM_CHECK_EXTENSION, K.KVM_SET_USER_MEMORY_REGION, K.KVM_SET_USER_MEMORY_REGION2,
        K.KVM_CREATE_GUEST_MEMFD, K.KVM_SET_MEMORY_ATTRIBUTES, K.KVM_CREATE_VCPU))
    assert all(c in kvm_main.KVM_VCPU_IOCTLS for c in (K.KVM_RUN, K.KVM_GET_REGS,
                                                      K.KVM_SET_REGS))
    h = SimHost()
    kfd = h.open("/dev/kvm", L.O_RDWR)
    v = vm(h)
    g = gmem(h, v, PAGE)
    vcpu = h.ioctl(v, K.KVM_CREATE_VCPU, 0)
    assert h.proc.fds[g].ioctl_table is guest_memfd.KVM_GMEM_IOCTLS
    for fd, err in ((kfd, errno.EINVAL), (v, errno.ENOTTY), (vcpu, errno.ENOTTY),
                    (g, errno.ENOTTY)):
        with pytest.raises(OSError) as e:
            h.ioctl(fd, K.KVM_RUN if fd != vcpu else K.KVM_CREATE_VM, 0)
        assert e.value.errno == err


def test_memory_attributes_ioctl_exists_only_where_the_profile_has_it():
    h = SimHost(profile="linux-6.18")
    v = vm(h)
    with pytest.raises(OSError) as e:
        h.ioctl(v, K.KVM_SET_MEMORY_ATTRIBUTES, K.kvm_memory_attributes(address=0, size=PAGE))
    assert e.value.errno == errno.ENOTTY


def _hva_slot(h: SimHost, v: int, gpa: int = 0, flags: int = 0) -> int:
    memfd = h.memfd_create("ram", 0)
    h.ftruncate(memfd, PAGE)
    hva = h.mmap(0, PAGE, RW, L.MAP_SHARED, memfd, 0)
    slot(h, v, 0, gpa, PAGE, uaddr=hva, flags=flags)
    return hva


def test_memslot_change_kinds_and_what_they_free():
    from passthru.kernel.kvm import memslots as M

    h = SimHost()
    v = vm(h)
    kvm = kvm_of(h, v)
    hva = _hva_slot(h, v)
    req = K.kvm_userspace_memory_region2(slot=0, guest_phys_addr=0, memory_size=PAGE,
                                         userspace_addr=hva)
    assert kvm.memslots.classify(req, "test") is None  # nothing to change
    for gpa, flags, kind in ((0x100000, 0, M.KVM_MR_MOVE),
                             (0x100000, K.KVM_MEM_LOG_DIRTY_PAGES, M.KVM_MR_FLAGS_ONLY),
                             (0, 0, M.KVM_MR_DELETE)):
        req.guest_phys_addr, req.flags = gpa, flags
        req.memory_size = PAGE if kind != M.KVM_MR_DELETE else 0
        ch = kvm.memslots.classify(req, "test")
        assert ch is not None and ch.kind == kind
        old = kvm.memslots.by_id[0]
        h.ioctl(v, K.KVM_SET_USER_MEMORY_REGION2, req)
        assert old.freed and old.invalid == (kind != M.KVM_MR_FLAGS_ONLY)
    assert len(kvm.memslots) == 0
    _hva_slot(h, v)
    last = kvm.memslots.by_id[0]
    h.exit()  # the VM's last user frees its slots through the same free path
    assert last.freed and h.leaks() == []


@pytest.mark.parametrize("bug", [False, True])
def test_memslot_move_waits_for_srcu_readers(bug):
    """KVM_MR_MOVE invalidates the old slot and frees it only after synchronize_srcu, as
    DELETE does (kvm_invalidate_memslot): a vCPU inside its SRCU section keeps it alive."""
    from passthru.kernel.profile import KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC, get_profile
    from passthru.sim.locks import Completion
    from passthru.sim.scheduler import Scheduler

    class VmmFirst:  # run the VMM whenever it can run
        def choose(self, sched, enabled, current):
            return next((t for t in enabled if t.name == "vmm"), enabled[0])

    prof = get_profile("linux-7.1")
    if bug:
        prof = prof.with_bugs(KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC)
    sched = Scheduler(chooser=VmmFirst())
    h = SimHost(profile=prof, sched=sched)
    v = vm(h)
    kvm = kvm_of(h, v)
    hva = _hva_slot(h, v)
    old = kvm.memslots.by_id[0]
    inside = Completion(sched, "reader inside")
    seen = []

    def reader():
        idx = kvm.srcu.read_lock()
        inside.complete()
        sched.point("reader")  # the VMM moves the slot meanwhile
        seen.append((old.invalid, old.freed))
        kvm.srcu.read_unlock(idx)

    def mover():
        inside.wait()
        slot(h, v, 0, 0x100000, PAGE, uaddr=hva, flags=0)

    sched.spawn("reader", reader)
    sched.spawn("vmm", mover)
    sched.run()
    assert seen == [(True, bug)] and old.freed and sched.violations == []
    assert kvm.memslots.lookup(0, 0x100000) is not None and kvm.memslots.lookup(0, 0) is None


def test_operand_size_prefix_moves_four_bytes_and_refuses_the_rest() -> None:
    """0x66 A1/A3 (mov eax, moffs16 / mov moffs16, eax) move 4 bytes; 0x66 before anything
    else (also a prefix at the segment's last byte, whose next byte wraps to IP 0) is an
    emulation failure (INTERNAL_ERROR), never an exception out of KVM_RUN."""
    from passthru.vmm import Kvm

    h = SimHost()
    with Kvm(h) as kvm:
        vm = kvm.create_vm()
        mem = vm.guest_memory([(0, 0x10000), (0xFFFF0000, 0x10000)])
        mem.write(0x100, (0x11223344).to_bytes(4, "little"))
        # mov eax, [0x100]; mov [0x200], eax; hlt
        mem.write(0xFFFFFFF0, bytes.fromhex("66 A1 00 01 66 A3 00 02 F4"))
        cpu = vm.create_vcpu(0)
        assert cpu.run().reason == "HLT"
        assert cpu.get_regs().rax & 0xFFFFFFFF == 0x11223344
        assert mem.read(0x200, 4) == (0x11223344).to_bytes(4, "little")
    with Kvm(h) as kvm:
        vm = kvm.create_vm()
        mem = vm.guest_memory([(0xFFFF0000, 0x10000)])
        mem.write(0xFFFFFFF0, bytes.fromhex("66 90 F4"))  # 0x66 nop: not modelled
        assert vm.create_vcpu(0).run().reason == "INTERNAL_ERROR"
        mem.write(0xFFFFFFFF, b"\x66")  # the prefix is the segment's last byte
        cpu2 = vm.create_vcpu(1)
        regs = cpu2.get_regs()
        cpu2.set_regs(regs, rip=0xFFFF)
        assert cpu2.run().reason == "INTERNAL_ERROR"
