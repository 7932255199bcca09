"""Guest memory for a VMM: memfds, guest_memfds, host mappings, and a VM's RAM layout.

The userspace half of what vm-memory and vmm-sys-util give a rust-vmm VMM, over the Host
protocol only (so the same code runs on SimHost and LinuxHost):

- :class:`Mapping` — one ``mmap`` of the calling process (vm-memory's ``MmapRegion``); read and
  write go through ``host.peek``/``host.poke``, so on SimHost they obey the modelled page
  tables (a touch of a private guest_memfd page raises ``passthru.Fault``) and on LinuxHost
  they touch real memory (the same touch is a real SIGBUS: probe it in a child).
- :class:`Memfd` — ``memfd_create`` with ftruncate, seals, pread/pwrite, fallocate and mmap
  (vmm-sys-util's ``MemfdOptions`` plus ``SealFlags``; mm/memfd.c).
- :class:`GuestMemfd` — a KVM guest_memfd (virt/kvm/guest_memfd.c): made by
  ``Vm.create_guest_memfd``; mmap (with GUEST_MEMFD_FLAG_MMAP), punch hole, allocate.
- :class:`GuestMemory` — a VM's RAM from a list of (gpa, size) regions, each backed by a memfd
  mapping (a legacy hva memslot) or a guest_memfd, one memslot per region (what QEMU's
  memory backends plus kvm_set_user_memory_region do); torn down in reverse order.

Errors are the host's: OSError with the kernel's errno. Wrong use of a wrapper (a closed
object, an access outside a mapping) is ValueError. Left out: fstat (the Host protocol has
none, so ``Memfd.size`` is the size this wrapper last set), hugetlb, NUMA policy, dirty
tracking, guest-physical address space management beyond one slot per region.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..host.protocol import Host
from ..uapi import kvm as K
from ..uapi import linux as L
from ._resource import Resource

if TYPE_CHECKING:
    from .kvm import Vm

PROT_RW = L.PROT_READ | L.PROT_WRITE
PAGE_SIZE = L.PAGE_SIZE


class Mapping(Resource):
    """A mapping ``[addr, addr + length)`` in the calling process; ``unmap``/``close`` munmaps.

    Offsets are relative to ``addr``; an access outside the mapping is ValueError (the host is
    never asked). Equivalent of vm-memory's MmapRegion / vmm-sys-util's MmapRegion.
    """

    def __init__(self, host: Host, addr: int, length: int) -> None:
        super().__init__(host)
        self.addr = addr
        self.length = length

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Mapping [{self.addr:#x}, {self.addr + self.length:#x}){state}>"

    def __len__(self) -> int:
        return self.length

    def _bounds(self, offset: int, n: int) -> int:
        self._check_open()
        if offset < 0 or n < 0 or offset + n > self.length:
            raise ValueError(f"[{offset:#x}, {offset + n:#x}) outside {self!r}")
        return self.addr + offset

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` into the mapping (``host.peek``; a touch of a private
        guest_memfd page raises passthru.Fault on SimHost)."""
        return bytes(self.host.peek(self._bounds(offset, n), n))

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset`` into the mapping (``host.poke``)."""
        self.host.poke(self._bounds(offset, len(data)), bytes(data))

    def unmap(self) -> None:
        """munmap the mapping (the same as ``close``)."""
        self.close()

    def _release(self) -> None:
        self.host.munmap(self.addr, self.length)


class _FileBacked(Resource):
    """An fd that can be mmapped and fallocated (shared by Memfd and GuestMemfd)."""

    fd: int
    size: int

    def _release(self) -> None:
        self.host.close(self.fd)

    def mmap(
        self,
        length: int | None = None,
        offset: int = 0,
        prot: int = PROT_RW,
        shared: bool = True,
    ) -> Mapping:
        """mmap ``length`` bytes (default: the whole file from ``offset``) at ``offset``."""
        self._check_open()
        if length is None:
            length = self.size - offset
        flags = L.MAP_SHARED if shared else L.MAP_PRIVATE
        addr = self.host.mmap(0, length, prot, flags, self.fd, offset)
        return self._adopt(Mapping(self.host, addr, length))

    def punch_hole(self, offset: int, length: int) -> None:
        """fallocate(PUNCH_HOLE | KEEP_SIZE): free the pages, keep the size."""
        self._check_open()
        mode = L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE
        self.host.fallocate(self.fd, mode, offset, length)


class Memfd(_FileBacked):
    """A memfd (``memfd_create``; mm/memfd.c, mm/shmem.c).

    ``size`` (if non-zero) is set with ftruncate at creation. ``seals`` reads F_GET_SEALS;
    ``add_seals`` is F_ADD_SEALS. The equivalent of vmm-sys-util's MemfdOptions + SealFlags.
    """

    def __init__(
        self,
        host: Host,
        name: str = "passthru",
        flags: int = L.MFD_ALLOW_SEALING | L.MFD_CLOEXEC,
        size: int = 0,
    ) -> None:
        super().__init__(host)
        self.name = name
        self.flags = flags
        self.size = 0
        self.fd = host.memfd_create(name, flags)
        if size:
            try:
                self.truncate(size)
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Memfd {self.name!r} fd={self.fd} size={self.size:#x}{state}>"

    def truncate(self, length: int) -> None:
        """ftruncate to ``length`` bytes (EPERM once sealed with F_SEAL_GROW/SHRINK)."""
        self._check_open()
        self.host.ftruncate(self.fd, length)
        self.size = length

    @property
    def seals(self) -> int:
        """F_GET_SEALS: the F_SEAL_* bits set on this memfd."""
        self._check_open()
        return int(self.host.fcntl(self.fd, L.F_GET_SEALS))

    def add_seals(self, seals: int) -> None:
        """F_ADD_SEALS (``seals`` is F_SEAL_* bits; EPERM once F_SEAL_SEAL is set)."""
        self._check_open()
        self.host.fcntl(self.fd, L.F_ADD_SEALS, seals)

    def pread(self, n: int, offset: int) -> bytes:
        """pread: up to ``n`` bytes at ``offset`` (short at end of file)."""
        self._check_open()
        return bytes(self.host.pread(self.fd, n, offset))

    def pwrite(self, data: bytes, offset: int) -> int:
        """pwrite ``data`` at ``offset``; returns the bytes written (the file grows to fit)."""
        self._check_open()
        n = int(self.host.pwrite(self.fd, bytes(data), offset))
        self.size = max(self.size, offset + n)
        return n

    def allocate(self, offset: int, length: int, keep_size: bool = False) -> None:
        """fallocate mode 0 (grows the file) or KEEP_SIZE."""
        self._check_open()
        mode = L.FALLOC_FL_KEEP_SIZE if keep_size else 0
        self.host.fallocate(self.fd, mode, offset, length)
        if not keep_size:
            self.size = max(self.size, offset + length)


class GuestMemfd(_FileBacked):
    """A KVM guest_memfd (virt/kvm/guest_memfd.c), made by :meth:`Vm.create_guest_memfd`.

    Its size is fixed at creation (ftruncate is EINVAL); it can be mmapped only if created
    with GUEST_MEMFD_FLAG_MMAP, and only MAP_SHARED; its pages are private to the guest
    unless GUEST_MEMFD_FLAG_INIT_SHARED (touching a private page is SIGBUS). read/write and
    seals are not supported by the kernel, so they are not offered here.
    """

    def __init__(self, host: Host, fd: int, size: int, flags: int) -> None:
        super().__init__(host)
        self.fd = fd
        self.size = size
        self.flags = flags

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<GuestMemfd fd={self.fd} size={self.size:#x} flags={self.flags:#x}{state}>"

    def allocate(self, offset: int, length: int) -> None:
        """fallocate(KEEP_SIZE): preallocate pages inside the file (the only mode allowed)."""
        self._check_open()
        self.host.fallocate(self.fd, L.FALLOC_FL_KEEP_SIZE, offset, length)


@dataclass
class GuestRegion:
    """One RAM region of a :class:`GuestMemory`: a memslot and what backs it.

    ``view`` is the host's mapping of the region's shared memory (the memfd mapping, or the
    guest_memfd mapping when the guest_memfd has GUEST_MEMFD_FLAG_MMAP); it is also the slot's
    userspace_addr. A guest_memfd without MMAP gets a memfd view for its shared half, as a
    confidential VM's RAM does.
    """

    slot: int
    gpa: int
    size: int
    view: Mapping
    memfd: Memfd | None = None
    gmem: GuestMemfd | None = None

    def contains(self, gpa: int, n: int = 1) -> bool:
        """Whether [gpa, gpa + n) lies inside this region."""
        return self.gpa <= gpa and gpa + n <= self.gpa + self.size


def _region_list(regions: Any) -> list[tuple[int, int]]:
    """``regions`` as a list of (gpa, size) int pairs, or a TypeError/ValueError saying what
    was expected (checked before anything is created)."""
    example = "e.g. [(0, 0x10000)] for 64 KiB at guest-physical 0"
    if isinstance(regions, (int, str, bytes)) or not isinstance(regions, Iterable):
        raise TypeError(f"GuestMemory: regions must be a list of (gpa, size) pairs, {example}; "
                        f"got {regions!r}")
    out: list[tuple[int, int]] = []
    for i, item in enumerate(regions):
        ok = (isinstance(item, (tuple, list)) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in item))
        if not ok:
            what = f"{item:#x} (an int)" if isinstance(item, int) else repr(item)
            raise TypeError(f"GuestMemory: region {i} must be a (gpa, size) pair of ints, "
                            f"{example}; got {what}")
        gpa, size = item
        if gpa < 0 or size <= 0:
            raise ValueError(f"GuestMemory: region {i} ({gpa:#x}, {size:#x}): the gpa must be "
                             ">= 0 and the size > 0")
        out.append((gpa, size))
    return out


class GuestMemory(Resource):
    """A VM's RAM: one memslot per (gpa, size) region, registered in order, slots numbered
    from ``first_slot``.

    Backing: with ``guest_memfd=False`` each region is a memfd mapped MAP_SHARED into the VMM
    and registered as a plain hva slot (KVM_SET_USER_MEMORY_REGION2 without GUEST_MEMFD). With
    ``guest_memfd=True`` each region is a guest_memfd made with ``gmem_flags`` (default
    MMAP | INIT_SHARED: the 6.18 "gmem-only" RAM of a non-confidential VM, which the VMM loads
    through the gmem mapping) bound with KVM_MEM_GUEST_MEMFD, its mapping (or, without MMAP,
    a memfd) as userspace_addr — KVM's own accesses to guest memory (instruction emulation)
    go through that hva: on this project's 6.18 kvm_pvm host, where real-mode code is
    emulated, a gmem-only slot with userspace_addr 0 or unmapped gives
    KVM_EXIT_INTERNAL_ERROR (emulation) at the first instruction.

    ``read(gpa, n)``/``write(gpa, data)`` go through the region's host view. ``close`` deletes
    the slots and releases the backing, newest region first; if building fails half-way, what
    was built is torn down before the error propagates. The GuestMemory is owned by the VM:
    closing the VM closes it first. Leaves out: holes/overlap checks beyond the kernel's
    (EEXIST), hotplug, dirty logging, huge pages.
    """

    def __init__(
        self,
        vm: Vm,
        regions: Iterable[tuple[int, int]],
        *,
        guest_memfd: bool = False,
        gmem_flags: int = K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED,
        first_slot: int = 0,
        name: str = "ram",
    ) -> None:
        vm._check_open()
        spans = _region_list(regions)
        super().__init__(vm.host)
        self.vm = vm
        self.regions: list[GuestRegion] = []
        try:
            for i, (gpa, size) in enumerate(spans):
                self._add(first_slot + i, gpa, size, guest_memfd, gmem_flags, name)
        except BaseException:
            with contextlib.suppress(OSError):  # the build error is the one to report
                self._teardown()
            raise
        vm._adopt(self)

    def __repr__(self) -> str:
        spans = ", ".join(f"[{r.gpa:#x}, {r.gpa + r.size:#x})" for r in self.regions)
        return f"<GuestMemory {spans}>"

    def _add(self, slot: int, gpa: int, size: int, use_gmem: bool, gflags: int, name: str) -> None:
        memfd: Memfd | None = None
        gmem: GuestMemfd | None = None
        view: Mapping | None = None
        try:
            if use_gmem:
                gmem = self.vm.create_guest_memfd(size, gflags)
                if gflags & K.GUEST_MEMFD_FLAG_MMAP:
                    view = gmem.mmap()
            if view is None:
                memfd = Memfd(self.host, f"{name}@{gpa:#x}", L.MFD_CLOEXEC, size)
                view = memfd.mmap()
            self.vm.set_user_memory_region(slot, gpa, size, view.addr, guest_memfd=gmem)
        except BaseException:
            for res in (view, memfd, gmem):
                if res is not None:
                    res.close()
            raise
        self.regions.append(GuestRegion(slot, gpa, size, view, memfd, gmem))

    def region(self, gpa: int, n: int = 1) -> GuestRegion:
        """The region holding all of [gpa, gpa + n); ValueError if no single one does."""
        for r in self.regions:
            if r.contains(gpa, n):
                return r
        raise ValueError(f"guest range [{gpa:#x}, {gpa + n:#x}) is not inside one RAM region")

    def read(self, gpa: int, n: int) -> bytes:
        """``n`` bytes of guest memory at guest-physical ``gpa``, read through the region's host
        view (ValueError if the range is not inside one region)."""
        self._check_open()
        r = self.region(gpa, n)
        return r.view.read(gpa - r.gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        """Store ``data`` into guest memory at guest-physical ``gpa`` through the region's host
        view (ValueError if the range is not inside one region)."""
        self._check_open()
        r = self.region(gpa, len(data))
        r.view.write(gpa - r.gpa, data)

    def _teardown(self) -> None:
        errors: list[BaseException] = []
        while self.regions:
            r = self.regions.pop()
            steps: list[Any] = []
            if not self.vm.closed:
                steps.append(lambda r=r: self.vm.delete_memory_region(r.slot))
            steps += [r.view.close]
            steps += [res.close for res in (r.memfd, r.gmem) if res is not None]
            for step in steps:
                try:
                    step()
                except OSError as e:  # keep tearing down; report the first failure
                    errors.append(e)
        if errors:
            raise errors[0]

    def _release(self) -> None:
        self._teardown()
