"""mm: GUP/pin_user_pages, special PTEs, copy-on-write, pins and seals (SimHost only: the
pieces a VMM cannot call directly — conformance covers the syscalls)."""

from __future__ import annotations

import errno

import pytest

from passthru import Fault, SimHost
from passthru.hw.physmem import Owner
from passthru.kernel.fs.file import File
from passthru.kernel.mm.gup import pin_user_pages
from passthru.uapi import linux as L

PAGE = 4096
RW = L.PROT_READ | L.PROT_WRITE


class PfnmapFile(File):
    """A driver whose mmap installs special PTEs over device memory (like a BAR or a heap)."""

    kind = "test-pfnmap"

    def __init__(self, host: SimHost) -> None:
        super().__init__(host.kernel, L.O_RDWR, "pfnmap")
        ((self.base, self.end),) = host.kernel.phys.alloc(4 * PAGE, Owner("device"))
        self.i_mmap_writable = 0

    def mmap(self, proc, vma):
        vma.remap_pfn_range(vma.start, self.base, vma.end - vma.start)

    def release(self):
        self.kernel.phys.release(self.base, self.end)


def test_gup_refuses_special_ptes_with_efault():
    h = SimHost()
    fd = h.proc.fd_install(PfnmapFile(h))
    addr = h.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    h.poke(addr, b"mmio")  # the CPU can use the mapping...
    assert h.peek(addr, 4) == b"mmio"
    with pytest.raises(OSError) as e:  # ...but nobody can pin it
        pin_user_pages(h.proc.mm, addr, PAGE, write=True)
    assert e.value.errno == errno.EFAULT
    assert "VM_IO|VM_PFNMAP" in str(e.value)
    assert h.kernel.phys.pins.any_in(0, 1 << 40) is False


def test_gup_on_memfd_pins_and_blocks_seal_write_until_unpinned():
    h = SimHost()
    m = h.memfd_create("buf", L.MFD_ALLOW_SEALING)
    h.ftruncate(m, 2 * PAGE)
    addr = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, m, 0)
    pin = pin_user_pages(h.proc.mm, addr, 2 * PAGE, write=True)
    h.munmap(addr, 2 * PAGE)  # the mapping goes, the pin stays
    with pytest.raises(OSError) as e:
        h.fcntl(m, L.F_ADD_SEALS, L.F_SEAL_WRITE)
    assert e.value.errno == errno.EBUSY and "pinned" in str(e.value)
    pin.unpin()
    h.fcntl(m, L.F_ADD_SEALS, L.F_SEAL_WRITE)
    assert h.fcntl(m, L.F_GET_SEALS) == L.F_SEAL_WRITE


def test_pinned_pages_outlive_truncation_then_are_freed():
    h = SimHost()
    m = h.memfd_create("buf", 0)
    h.ftruncate(m, PAGE)
    h.pwrite(m, b"data", 0)
    addr = h.mmap(0, PAGE, RW, L.MAP_SHARED, m, 0)
    pin = pin_user_pages(h.proc.mm, addr, PAGE, write=False)
    h.munmap(addr, PAGE)
    h.ftruncate(m, 0)
    assert h.kernel.phys.allocated_bytes() == PAGE  # held by the pin only
    (ps, pe), = pin.extents
    assert h.kernel.phys.read(ps, 4, "dma:test") == b"data"
    pin.unpin()
    h.close(m)
    assert h.leaks() == []


def test_gup_unmapped_or_readonly_is_efault():
    h = SimHost()
    with pytest.raises(OSError) as e:
        pin_user_pages(h.proc.mm, 0x10000, PAGE, write=False)
    assert e.value.errno == errno.EFAULT
    addr = h.mmap(0, PAGE, L.PROT_READ, L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
    with pytest.raises(OSError) as e:
        pin_user_pages(h.proc.mm, addr, PAGE, write=True)
    assert e.value.errno == errno.EFAULT


def test_private_file_mapping_copies_on_write():
    h = SimHost()
    m = h.memfd_create("f", 0)
    h.pwrite(m, b"original", 0)
    priv = h.mmap(0, PAGE, RW, L.MAP_PRIVATE, m, 0)
    shared = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, m, 0)
    assert h.peek(priv, 8) == b"original"
    h.poke(priv, b"modified")
    assert h.peek(priv, 8) == b"modified"
    assert h.peek(shared, 8) == b"original" and h.pread(m, 8, 0) == b"original"


def test_anonymous_memory_and_partial_munmap_split():
    h = SimHost()
    a = h.mmap(0, 4 * PAGE, RW, L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
    h.poke(a + PAGE, b"x" * PAGE * 2)
    h.munmap(a + PAGE, PAGE)
    with pytest.raises(Fault) as f:
        h.peek(a + PAGE, 1)
    assert f.value.kind == "SIGSEGV" and f.value.address == a + PAGE
    assert h.peek(a + 2 * PAGE, 1) == b"x"
    assert len(h.proc.mm.vmas) == 2
    h.exit()
    assert h.leaks() == []


def test_shared_anonymous_memory_is_shmem_backed():
    h = SimHost()
    a = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
    h.poke(a, b"hello")
    assert h.peek(a, 5) == b"hello"
    h.munmap(a, 2 * PAGE)
    assert h.leaks() == []


def test_close_keeps_file_alive_while_mapped():
    h = SimHost()
    m = h.memfd_create("f", 0)
    h.ftruncate(m, PAGE)
    a = h.mmap(0, PAGE, RW, L.MAP_SHARED, m, 0)
    h.close(m)
    h.poke(a, b"still here")  # the VMA holds a reference to the file
    assert h.peek(a, 10) == b"still here"
    assert h.kernel.live.get("memfd") == 1
    h.munmap(a, PAGE)
    assert h.leaks() == []
