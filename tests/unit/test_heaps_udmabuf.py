"""Model-only facts about the dma-buf heaps (kernel/dma_buf/dma_heap.py, heaps/, cma.py) and
udmabuf (kernel/dma_buf/udmabuf.py): what GUP makes of their mappings, pins and seals, the CMA area,
physical truth of the exported mappings, release and leaks, failure injection."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.errors import Fault
from passthru.hw.machine import Machine
from passthru.hw.physmem import Owner
from passthru.kernel.dma_buf import core
from passthru.kernel.dma_buf import udmabuf as udmabuf_mod
from passthru.kernel.dma_buf.cma import CMA_DEFAULT_SIZE
from passthru.kernel.dma_buf.dma_heap import DmaHeapFile, page_align
from passthru.kernel.dma_buf.heaps.cma_heap import CmaHeapBuffer, get_order
from passthru.kernel.dma_buf.heaps.system_heap import SystemHeapBuffer
from passthru.kernel.dma_buf.importers import DeviceImporter, kvm_legacy_map
from passthru.kernel.dma_buf.udmabuf import Udmabuf
from passthru.kernel.mm.gup import pin_user_pages
from passthru.sim.scheduler import Scheduler
from passthru.uapi import dma_heap as H
from passthru.uapi import linux as L
from passthru.uapi import udmabuf as U
from passthru.uapi.ioctl import _IOWR

PAGE = L.PAGE_SIZE
RW = L.PROT_READ | L.PROT_WRITE
MiB = 1 << 20


def heap_alloc(h: SimHost, node: str, length: int, fd_flags: int = L.O_RDWR) -> int:
    heap = h.open(node, L.O_RDWR)
    data = H.dma_heap_allocation_data(len=length, fd_flags=fd_flags)
    h.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, data)
    h.close(heap)
    return int(data.fd)


def sealed_memfd(h: SimHost, pages: int) -> int:
    fd = h.memfd_create("guest-ram", L.MFD_ALLOW_SEALING)
    h.ftruncate(fd, pages * PAGE)
    h.fcntl(fd, L.F_ADD_SEALS, L.F_SEAL_SHRINK)
    return fd


def udmabuf(h: SimHost, memfd: int, offset: int, size: int) -> int:
    dev = h.open("/dev/udmabuf", L.O_RDWR)
    try:
        return h.ioctl(dev, U.UDMABUF_CREATE,
                       U.udmabuf_create(memfd=memfd, flags=0, offset=offset, size=size))
    finally:
        h.close(dev)


def dmabuf(h: SimHost, fd: int) -> core.DmaBuf:
    f = h.proc.lookup_fd(fd)
    assert isinstance(f, core.DmaBuf)
    return f


# -- nodes ----------------------------------------------------------------------------------------


def test_default_host_has_the_nodes():
    h = SimHost()
    for node in ("/dev/dma_heap/system", "/dev/dma_heap/reserved", "/dev/udmabuf"):
        assert node in h.kernel.devices
    assert h.leaks() == []  # the CMA reservation is not an allocation


def test_small_machine_has_no_cma_heap():
    h = SimHost(machine=Machine(name="small", ram=((0, 512 * MiB),), mmio=()))
    assert "/dev/dma_heap/reserved" not in h.kernel.devices
    assert "/dev/dma_heap/system" in h.kernel.devices


def test_page_align_and_get_order():
    assert page_align(0) == 0 and page_align(1) == PAGE and page_align((1 << 64) - 1) == 0
    assert [get_order(n) for n in (1, PAGE, PAGE + 1, 2 * PAGE, 3 * PAGE, MiB)] == [
        0, 0, 1, 1, 2, 8]


# -- GUP refuses heap and udmabuf mappings (special PTEs) ---------------------------------------


@pytest.mark.parametrize("node", ["/dev/dma_heap/system", "/dev/dma_heap/reserved"])
def test_gup_efault_on_heap_mapping(node):
    h = SimHost()
    fd = heap_alloc(h, node, 4 * PAGE)
    addr = h.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    vma = h.proc.mm.find_vma(addr)
    assert vma is not None and vma.special
    with pytest.raises(OSError) as e:
        pin_user_pages(h.proc.mm, addr, PAGE, write=True)
    assert e.value.errno == errno.EFAULT and "PFNMAP" in str(e.value)
    # the legacy KVM route (mmap + GUP) is refused the same way
    with pytest.raises(OSError) as e:
        kvm_legacy_map(h.proc, fd, 4 * PAGE)
    assert e.value.errno == errno.EFAULT
    h.exit()
    assert h.leaks() == []


def test_gup_efault_on_udmabuf_mapping_but_not_on_the_memfd():
    h = SimHost()
    m = sealed_memfd(h, 4)
    fd = udmabuf(h, m, 0, 4 * PAGE)
    ua = h.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    with pytest.raises(OSError) as e:
        pin_user_pages(h.proc.mm, ua, PAGE, write=True)
    assert e.value.errno == errno.EFAULT
    ma = h.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, m, 0)
    pin = pin_user_pages(h.proc.mm, ma, 4 * PAGE, write=True)  # the supported route
    pin.unpin()
    h.exit()
    assert h.leaks() == []


# -- udmabuf pins and seals ---------------------------------------------------------------------


def test_udmabuf_pins_block_f_seal_write_until_released():
    h = SimHost()
    m = sealed_memfd(h, 8)
    fd = udmabuf(h, m, 2 * PAGE, 4 * PAGE)
    cache = h.proc.lookup_fd(m).cache  # type: ignore[attr-defined]
    assert cache.has_pins() and h.kernel.live.get("pin") == 1
    with pytest.raises(OSError) as e:
        h.fcntl(m, L.F_ADD_SEALS, L.F_SEAL_WRITE)
    assert e.value.errno == errno.EBUSY
    h.close(fd)
    assert not cache.has_pins() and "pin" not in h.kernel.live
    h.fcntl(m, L.F_ADD_SEALS, L.F_SEAL_WRITE)
    h.exit()
    assert h.leaks() == []


def test_udmabuf_does_not_hold_the_memfd_file():
    h = SimHost()
    m = sealed_memfd(h, 2)
    f = h.proc.lookup_fd(m)
    fd = udmabuf(h, m, 0, 2 * PAGE)
    assert f.refcount == 1  # udmabuf_create fput()s the memfd once its folios are pinned
    h.pwrite(m, b"orphaned", 0)
    h.close(m)
    assert f.released
    buf = dmabuf(h, fd).priv
    assert isinstance(buf, Udmabuf)
    (_, _, p), = list(buf.pages)[:1]
    owner = h.kernel.phys.owner_of(p)
    assert owner is not None and owner.state == "orphan"  # kept alive by the pin only
    addr = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, fd, 0)
    assert h.peek(addr, 8) == b"orphaned"
    h.exit()
    assert h.sched.violations == [] and h.leaks() == []


def test_punch_hole_after_udmabuf_splits_memfd_and_buffer():
    # The udmabuf keeps the pinned page; the memfd gets a fresh one (udmabuf's coherency caveat).
    h = SimHost()
    m = sealed_memfd(h, 2)
    h.pwrite(m, b"old", 0)
    fd = udmabuf(h, m, 0, 2 * PAGE)
    addr = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, fd, 0)
    h.fallocate(m, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 0, PAGE)
    h.pwrite(m, b"new", 0)
    assert h.peek(addr, 3) == b"old"
    assert h.pread(m, 3, 0) == b"new"
    h.exit()
    assert h.sched.violations == [] and h.leaks() == []


def test_udmabuf_list_limit_and_size_limit_are_module_parameters(monkeypatch):
    h = SimHost()
    m = sealed_memfd(h, 8)
    dev = h.open("/dev/udmabuf", L.O_RDWR)
    monkeypatch.setattr(udmabuf_mod, "list_limit", 2)
    with pytest.raises(OSError) as e:
        h.ioctl(dev, U.UDMABUF_CREATE_LIST, U.create_list([(m, 0, PAGE)] * 3))
    assert e.value.errno == errno.EINVAL and "list_limit" in str(e.value)
    monkeypatch.setattr(udmabuf_mod, "size_limit_mb", 0)
    with pytest.raises(OSError) as e:
        h.ioctl(dev, U.UDMABUF_CREATE, U.udmabuf_create(memfd=m, offset=0, size=PAGE))
    assert e.value.errno == errno.EINVAL and "size_limit_mb" in str(e.value)
    h.exit()
    assert h.leaks() == []


def test_udmabuf_ebadfd_message_names_the_check():
    h = SimHost()
    dev = h.open("/dev/udmabuf", L.O_RDWR)
    with pytest.raises(OSError) as e:
        h.ioctl(dev, U.UDMABUF_CREATE, U.udmabuf_create(memfd=dev, offset=0, size=PAGE))
    assert e.value.errno == errno.EBADFD == 77 and "not a shmem" in str(e.value)


# -- DMA mappings: physical truth -------------------------------------------------------------


def test_udmabuf_mapping_has_one_range_per_contiguous_extent():
    h = SimHost()
    m = sealed_memfd(h, 6)
    other = h.memfd_create("interleaved", 0)
    # fault the memfd's pages in with another file's pages in between: 3 physical runs
    h.pwrite(m, b"a", 0)
    h.pwrite(m, b"b", PAGE)
    h.pwrite(other, b"x" * PAGE, 0)
    h.pwrite(m, b"c", 2 * PAGE)
    h.pwrite(other, b"y" * PAGE, PAGE)
    fd = udmabuf(h, m, 0, 6 * PAGE)  # pages 3-5 are allocated by memfd_pin_folios
    buf = dmabuf(h, fd)
    cache_runs = [(p, e - s) for s, e, p in h.proc.lookup_fd(m).cache.pages]  # type: ignore[attr-defined]
    assert len(cache_runs) == 3
    dev = DeviceImporter("nic", dynamic=False)
    dev.attach(buf)
    dev.map()
    mapping = dev.attach_.mapping  # type: ignore[union-attr]
    assert [(d, n) for d, n, _ in mapping.ranges] == cache_runs
    assert all(d == p for d, _, p in mapping.ranges)  # dma-direct
    assert mapping.length == 6 * PAGE
    assert dev.dma_read(2 * PAGE, 1) == b"c"
    dev.dma_write(4 * PAGE, b"from the device")
    assert h.pread(m, 15, 4 * PAGE) == b"from the device"
    dev.teardown()
    h.exit()
    assert h.sched.violations == [] and h.leaks() == []


def test_udmabuf_list_mapping_merges_contiguous_items():
    h = SimHost()
    m = sealed_memfd(h, 4)
    h.fallocate(m, 0, 0, 4 * PAGE)  # one physical run
    dev = h.open("/dev/udmabuf", L.O_RDWR)
    fd = h.ioctl(dev, U.UDMABUF_CREATE_LIST,
                 U.create_list([(m, 0, 2 * PAGE), (m, 2 * PAGE, 2 * PAGE), (m, 0, PAGE)]))
    buf = dmabuf(h, fd)
    a = core.dma_buf_attach(buf, "dev")
    mapping = core.dma_buf_map_attachment_unlocked(a)
    (p0, n0, _), (p1, n1, _) = mapping.ranges
    assert n0 == 4 * PAGE and n1 == PAGE and p1 == p0  # the third item repeats page 0
    core.dma_buf_unmap_attachment_unlocked(a)
    core.dma_buf_detach(buf, a)
    h.exit()
    assert h.leaks() == []


@pytest.mark.parametrize("node", ["/dev/dma_heap/system", "/dev/dma_heap/reserved"])
def test_heap_mapping_is_its_extents_and_the_cpu_sees_device_writes(node):
    h = SimHost()
    fd = heap_alloc(h, node, 3 * PAGE)
    buf = dmabuf(h, fd)
    buffer = buf.priv
    assert isinstance(buffer, (SystemHeapBuffer, CmaHeapBuffer))
    assert buf.ops.memory_model == core.PINNED and not buf.dynamic
    dev = DeviceImporter("gpu", dynamic=False)
    dev.attach(buf)
    dev.map()
    mapping = dev.attach_.mapping  # type: ignore[union-attr]
    assert [(r.dma, r.dma + r.length) for r in mapping.ranges] == buffer.extents()
    dev.dma_write(PAGE + 5, b"dma")
    addr = h.mmap(0, 3 * PAGE, RW, L.MAP_SHARED, fd, 0)
    assert h.peek(addr + PAGE + 5, 3) == b"dma"
    dev.teardown()
    h.exit()
    assert h.sched.violations == [] and h.leaks() == []


def test_heap_vmap_under_the_resv_lock():
    h = SimHost()
    fd = heap_alloc(h, "/dev/dma_heap/system", PAGE)
    buf = dmabuf(h, fd)
    buf.resv.lock_ctx()
    try:
        va = core.dma_buf_vmap(buf)
        assert core.dma_buf_vmap(buf) == va  # vmap_cnt: the same mapping again
        core.dma_buf_vunmap(buf)
        core.dma_buf_vunmap(buf)
    finally:
        buf.resv.unlock()
    h.exit()
    assert h.sched.violations == [] and h.leaks() == []


def test_access_after_release_is_a_physical_violation():
    h = SimHost()
    fd = heap_alloc(h, "/dev/dma_heap/reserved", PAGE)
    (p, _), = dmabuf(h, fd).priv.extents()
    h.close(fd)
    h.kernel.phys.read(p, 8, "dma:stale-device")
    assert [v.kind for v in h.sched.violations] == ["physical"]


# -- the CMA area --------------------------------------------------------------------------------


def test_cma_exhaustion_enomem_and_reuse():
    h = SimHost()
    heap = h.open("/dev/dma_heap/reserved", L.O_RDWR)
    area = h.proc.lookup_fd(heap).heap.priv  # type: ignore[attr-defined]
    assert area.size == CMA_DEFAULT_SIZE and area.available() == CMA_DEFAULT_SIZE
    fds = []
    for _ in range(4):
        data = H.dma_heap_allocation_data(len=64 * MiB, fd_flags=L.O_RDWR)
        h.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, data)
        fds.append(data.fd)
    assert area.available() == 0
    with pytest.raises(OSError) as e:
        h.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, H.dma_heap_allocation_data(len=PAGE))
    assert e.value.errno == errno.ENOMEM and "cma_alloc" in str(e.value)
    # the system heap still has RAM: the area is its own pool
    assert heap_alloc(h, "/dev/dma_heap/system", 64 * MiB) > 0
    h.close(fds[1])
    data = H.dma_heap_allocation_data(len=64 * MiB, fd_flags=L.O_RDWR)
    h.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, data)
    buf = dmabuf(h, data.fd).priv
    assert isinstance(buf, CmaHeapBuffer) and len(buf.extents()) == 1  # contiguous
    assert area.base <= buf.base and buf.base + 64 * MiB <= area.base + area.size
    h.exit()
    assert h.leaks() == [] and area.available() == CMA_DEFAULT_SIZE


def test_cma_allocations_are_aligned_to_their_order():
    h = SimHost()
    a = dmabuf(h, heap_alloc(h, "/dev/dma_heap/reserved", PAGE)).priv
    b = dmabuf(h, heap_alloc(h, "/dev/dma_heap/reserved", 3 * PAGE)).priv  # order 2
    c = dmabuf(h, heap_alloc(h, "/dev/dma_heap/reserved", 4 * MiB)).priv  # order capped at 8
    assert isinstance(a, CmaHeapBuffer) and isinstance(b, CmaHeapBuffer)
    assert isinstance(c, CmaHeapBuffer)
    assert b.base % (4 * PAGE) == 0 and b.base != a.base
    assert c.base % MiB == 0
    h.exit()
    assert h.leaks() == []


def test_cma_area_is_carved_out_of_the_page_allocator():
    h = SimHost()
    area = h.proc.lookup_fd(h.open("/dev/dma_heap/reserved", 0)).heap.priv  # type: ignore[attr-defined]
    phys = h.kernel.phys
    assert not phys.free.any_in(area.base, area.base + area.size)
    ram_free = sum(e - s for s, e, _ in phys.free)
    with pytest.raises(OSError) as e:
        phys.alloc(ram_free + PAGE, Owner("greedy"))  # the buddy allocator cannot reach it
    assert e.value.errno == errno.ENOMEM


def test_cma_fault_past_the_end_sigbus():
    h = SimHost()
    fd = heap_alloc(h, "/dev/dma_heap/reserved", 2 * PAGE)
    buf = dmabuf(h, fd)
    addr = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, fd, 0)
    vma = h.proc.mm.find_vma(addr)
    assert vma is not None
    buffer = buf.priv
    assert isinstance(buffer, CmaHeapBuffer) and buf.ops.fault is not None
    assert buf.ops.fault(buf, vma, PAGE, 2 * PAGE, False) == [
        (PAGE, 2 * PAGE, buffer.base + PAGE)]
    with pytest.raises(Fault) as e:
        buf.ops.fault(buf, vma, 2 * PAGE, 3 * PAGE, False)
    assert e.value.kind == "SIGBUS" and e.value.address == addr + 2 * PAGE
    h.exit()
    assert h.leaks() == []


def test_udmabuf_fault_past_the_end_sigbus():
    h = SimHost()
    fd = udmabuf(h, sealed_memfd(h, 2), 0, 2 * PAGE)
    buf = dmabuf(h, fd)
    addr = h.mmap(0, PAGE, RW, L.MAP_SHARED, fd, PAGE)
    vma = h.proc.mm.find_vma(addr)
    assert vma is not None
    with pytest.raises(Fault) as e:
        buf.fault(vma, 2 * PAGE, 3 * PAGE, False)
    assert e.value.kind == "SIGBUS" and e.value.address == addr + PAGE
    h.exit()
    assert h.leaks() == []


# -- the heap ioctl's corners ---------------------------------------------------------------------


def test_heap_copy_back_efault_leaves_the_fd_installed():
    # dma_heap_ioctl allocates, installs the fd, then copy_to_user fails: EFAULT, fd stays.
    h = SimHost()
    heap = h.open("/dev/dma_heap/system", L.O_RDWR)
    src = h.memfd_create("arg", 0)
    h.pwrite(src, bytes(H.dma_heap_allocation_data(len=PAGE, fd_flags=L.O_RDWR)), 0)
    ro = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, src, 0)
    before = set(h.proc.fds)
    with pytest.raises(OSError) as e:
        h.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, ro)
    assert e.value.errno == errno.EFAULT
    (new,) = set(h.proc.fds) - before
    assert isinstance(h.proc.lookup_fd(new), core.DmaBuf)
    h.exit()
    assert h.leaks() == []


def test_heap_short_request_copies_in_and_out_only_its_size():
    # _IOWR('H', 0, 8): only ``len`` is copied in (the rest reads as zero: fd_flags O_RDONLY)
    # and out, so the allocation succeeds and userspace never learns the fd number.
    h = SimHost()
    heap = h.open("/dev/dma_heap/system", L.O_RDWR)
    arg = bytearray(bytes(H.dma_heap_allocation_data(len=PAGE, fd_flags=L.O_RDWR))[:8])
    before = set(h.proc.fds)
    assert h.ioctl(heap, _IOWR("H", 0, 8), arg) == 0
    assert arg == bytearray(PAGE.to_bytes(8, "little"))
    (new,) = set(h.proc.fds) - before
    buf = h.proc.lookup_fd(new)
    assert isinstance(buf, core.DmaBuf) and buf.f_flags == L.O_RDONLY
    assert new not in h.proc.cloexec
    h.exit()
    assert h.leaks() == []


def test_heap_file_records_its_heap():
    h = SimHost()
    f = h.proc.lookup_fd(h.open("/dev/dma_heap/system", L.O_RDONLY))
    assert isinstance(f, DmaHeapFile) and f.heap.name == "system"


# -- failure injection: every allocation point, nothing leaks ------------------------------------


def _scenario(h: SimHost) -> None:
    for node in ("/dev/dma_heap/system", "/dev/dma_heap/reserved"):
        fd = heap_alloc(h, node, 2 * PAGE)
        addr = h.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, fd, 0)
        h.poke(addr, b"x")
    m = sealed_memfd(h, 4)
    dev = h.open("/dev/udmabuf", L.O_RDWR)
    h.ioctl(dev, U.UDMABUF_CREATE_LIST, U.create_list([(m, 0, PAGE), (m, 2 * PAGE, 2 * PAGE)]))


def test_fail_nth_sweep_leaks_nothing():
    clean = SimHost(sched=Scheduler())
    base = clean.sched.faults_seen
    _scenario(clean)
    total = clean.sched.faults_seen - base
    assert total >= 8
    for n in range(1, total + 1):
        h = SimHost(sched=Scheduler(fail_nth={base + n}))
        try:
            _scenario(h)
        except OSError as e:
            assert e.errno == errno.ENOMEM or e.errno == errno.EINVAL, (n, e)
        h.exit()
        assert h.sched.faults_failed, n
        assert h.leaks() == [], (n, h.sched.faults_failed, h.leaks())
        assert h.sched.violations == [], n
