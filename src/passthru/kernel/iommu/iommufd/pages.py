"""iopt_pages: the memory behind IOAS areas, pinned while a domain or an access needs it
(drivers/iommu/iommufd/pages.c, io_pagetable.h).

One IoptPages is made per IOAS_MAP / IOAS_MAP_FILE and shared (kref) by the areas IOAS_COPY
makes from it, so pinning is per map: the same user page mapped ten times holds ten pins, and
more domains or accesses on one pages object add none. Sources: ``user`` (a user VA range of
the mapping process, pinned with pin_user_pages), ``file`` (a memfd by offset, pinned with
memfd_pin_folios), ``dmabuf`` (a dma-buf attachment's physical ranges: never pinned, revocable;
kernel/iommu/iommufd/dmabuf.py).

Holding: ``holders`` counts, per byte range of the pages (page granular), who needs it pinned:
one per area filled into the IOAS's domains (``Area.filled``) and one per in-kernel access
pin. A range is pinned — and charged — on its 0 → 1 transition and unpinned and uncharged on
1 → 0, all as extents. With no domain and no access nothing is pinned: a map is lazy, and a bad
user VA shows only when a domain is attached (EFAULT) — as the kernel does; so does a file
range past the file's end or a file that is not a memfd (EINVAL from memfd_pin_folios, checked
against i_size at each pin: a range that fits after the file grew pins).

Accounting (``account_mode``), decided once when the pages are made, as iopt_alloc_pages and
iopt_map_common (io_pagetable.c) decide it for user-VA and file (memfd) pages alike:
ACCOUNT_NONE when the mapping process has CAP_IPC_LOCK, else ACCOUNT_USER — which the map
turns into ACCOUNT_MM when the context's IOMMU_OPTION_RLIMIT_MODE is MM. ACCOUNT_USER charges
the source process's user (``user->locked_vm``, incr_user_locked_vm), ACCOUNT_MM its mm
(``mm->locked_vm``, __account_locked_vm), each against the source process's RLIMIT_MEMLOCK
with no further capability check (kernel/mm/mlock.py). dma-buf pages are always ACCOUNT_NONE
(iopt_alloc_dmabuf_pages: "dmabuf does not use pinned page accounting"). The source process
(``proc``: the kernel's source_mm, source_task and source_user) is the mapping one until
IOAS_CHANGE_PROCESS moves a file pages object, and its charge, to another (ioas.py).

Invariants: ``phys`` covers exactly the ranges where ``holders`` > 0, and every byte in it has
a page pin in hw; ``npinned`` equals the pinned pages charged. Units: offsets are bytes from
the first page of the source (``base``); ``npinned`` in pages.
Locking (sim/track.py): ``holders``, ``phys`` and ``npinned`` change under ``mutex``
(pages->mutex, asserted), ``refs`` is a kref (``atomic``). The source fields are set at
creation; only ``proc`` changes after, by IOAS_CHANGE_PROCESS with every IOAS's iova_rwsem
held for write (as the kernel guards pages->source_*).
Leaves out: the batch/xarray storage split (pfns are kept here, not read back from a storage
domain), huge-page contiguity, FOLL_LONGTERM migration, IOMMU_OPTION_RLIMIT_MODE changes of
an existing pages object, ``mm->pinned_vm`` (counted by the kernel in every mode, never
limited).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....extents import RangeCounter, RangeMap
from ....sim import track
from ....sim.locks import Mutex
from ....sim.track import Cell
from ...dma_buf.udmabuf import memfd_pin_folios
from ...lockdep_assert import lockdep_assert_held
from ...mm import mlock
from ...mm.gup import Pin, pin_user_pages
from ...mm.memfd import MemfdFile
from ...mm.mm import PAGE, page_down, page_up
from .main import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER

if TYPE_CHECKING:
    from ...core import Kernel
    from ...fs.file import File
    from ...fs.process import Process

ULONG_MAX = (1 << 64) - 1
SIZE_MAX = ULONG_MAX


class IoptPages(track.Tracked):
    """struct iopt_pages."""

    def __init__(self, kernel: Kernel, kind: str, length: int, writable: bool, *,
                 proc: Process | None = None, uptr: int = 0, file: File | None = None,
                 start: int = 0, ictx_account_mode: int = ACCOUNT_USER) -> None:
        self.kernel = kernel
        self.kind = kind
        n = kernel.next_id("iopt_pages")
        self.label = f"iopt_pages{n}"
        self.writable = writable
        self.proc = proc
        # The source's first page: a user VA (user), a file offset (file), 0 (dmabuf).
        self.base = page_down(uptr if kind == "user" else start)
        self.uptr = uptr
        self.start = start
        self.file = file
        self.length = length
        first = (uptr if kind == "user" else start) - self.base
        self.npages = page_up(first + length) // PAGE
        if kind == "dmabuf":
            # iopt_alloc_dmabuf_pages: "dmabuf does not use pinned page accounting".
            self.account_mode = ACCOUNT_NONE
        else:
            assert proc is not None
            self.account_mode = iopt_pages_account_mode(proc, ictx_account_mode)
        # dma-buf pages get their own lock class, as iopt_alloc_dmabuf_pages'
        # lockdep_set_class(&pages->mutex, &pages_dmabuf_mutex_key): their mutex nests under
        # the buffer's resv, which nests under vfio's memory_lock, which a BAR fault takes
        # under mmap_lock, which pinning user pages takes under a user pages' mutex.
        cls = "pages_dmabuf->mutex" if kind == "dmabuf" else "pages->mutex"
        self.mutex = Mutex(kernel.sched, f"{self.label}.mutex", cls)
        self.holders = RangeCounter(label=f"{self.label}.holders")
        self.phys: RangeMap[int] = RangeMap(linear=True, label=f"{self.label}.pfns")
        self.npinned = 0
        self.refs: Cell[int] = Cell(1, label=f"{self.label}.kref", atomic=True)
        self.dmabuf: Any = None  # kernel/iommu/iommufd/dmabuf.py's attachment, kind dmabuf
        self.track_init(self.label)
        if file is not None:
            file.get()  # the pages hold the file (iopt_alloc_file_pages: get_file)
        kernel.track("iopt_pages", +1)

    def __repr__(self) -> str:
        return f"<iopt_pages {self.kind} {self.length:#x} bytes>"

    # ----- kref ---------------------------------------------------------------------------
    def get(self) -> IoptPages:
        self.refs.set(self.refs.get() + 1)
        return self

    def put(self) -> None:
        """iopt_put_pages: the last reference frees the pages (nothing may still be held)."""
        n = self.refs.get() - 1
        self.refs.set(n)
        if n:
            return
        assert not len(self.holders), f"{self!r} freed while pinned"
        if self.dmabuf is not None:
            self.dmabuf.detach()
        if self.file is not None:
            self.file.put()
        self.kernel.track("iopt_pages", -1)

    # ----- pinning --------------------------------------------------------------------------
    def page_range(self, start_byte: int, length: int) -> tuple[int, int]:
        """The page-granular byte range ``[lo, hi)`` of ``length`` bytes at ``start_byte``."""
        return page_down(start_byte), page_up(start_byte + length)

    def hold(self, lo: int, hi: int, what: str) -> None:
        """One more holder of ``[lo, hi)``: pin and charge what nobody held (pages->mutex
        held). All or nothing: a failed pin or charge leaves every count as it was."""
        lockdep_assert_held(self.mutex, "iopt_pages_fill")
        if self.kind == "dmabuf":
            self.holders.add(lo, hi, +1)
            return
        fresh = self.holders.gaps(lo, hi)
        done: list[tuple[int, int]] = []
        try:
            for s, e in fresh:
                self._pin(s, e, what)
                done.append((s, e))
            npages = sum(e - s for s, e in fresh) // PAGE
            self._charge(npages, what)
        except OSError:
            for s, e in done:
                self._unpin(s, e)
            raise
        self.npinned += npages
        self.holders.add(lo, hi, +1)

    def release(self, lo: int, hi: int) -> None:
        """One holder less of ``[lo, hi)``: unpin and uncharge what nobody holds now."""
        lockdep_assert_held(self.mutex, "iopt_pages_unfill")
        self.holders.add(lo, hi, -1)
        if self.kind == "dmabuf":
            return
        gone = self.holders.gaps(lo, hi)
        for s, e in gone:
            self._unpin(s, e)
        npages = sum(e - s for s, e in gone) // PAGE
        self._charge(-npages, "iopt_pages_unfill")
        self.npinned -= npages

    def pfns(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(offset start, offset end, physical address) of a held range (pages->mutex or
        iova_rwsem held by the caller)."""
        if self.kind == "dmabuf":
            return self.dmabuf.pfns(lo, hi)
        return [(s, e, p) for s, e, p in self.phys.overlapping(lo, hi)]

    def _pin(self, s: int, e: int, what: str) -> None:
        if self.kernel.sched.fault("pin_user_pages"):
            raise kerr(errno.ENOMEM, f"{what}: pinning failed (injected)")
        pin: Pin
        if self.kind == "user":
            assert self.proc is not None
            try:
                pin = pin_user_pages(self.proc.mm, self.base + s, e - s, self.writable)
            except OSError as err:
                raise kerr(err.errno or errno.EFAULT, f"{what}: {err.strerror}") from None
        else:
            # pfn_reader_user_pin -> pin_memfd_pages -> memfd_pin_folios (mm/gup.c): a file
            # that is not shmem, or a range reaching i_size, is EINVAL here — at the pin, not
            # at IOAS_MAP_FILE, which takes any file and any range (ioas.py).
            assert self.file is not None
            if not isinstance(self.file, MemfdFile):
                raise kerr(errno.EINVAL, f"{what}: memfd_pin_folios: {self.file.name} is a "
                           f"{self.file.kind}, not a shmem or hugetlbfs file")
            try:
                pin = memfd_pin_folios(self.file, self.base + s, self.base + e - 1)
            except OSError as err:
                raise kerr(err.errno or errno.EINVAL, f"{what}: {err.strerror}") from None
        off = s
        for ps, pe in pin.detach():
            self.phys.set(off, off + (pe - ps), ps)
            off += pe - ps
        self.kernel.track("iopt_pinned_bytes", e - s)

    def _unpin(self, s: int, e: int) -> None:
        """unpin_user_pages of ``[s, e)``: drop the page pins, forget the pfns."""
        for ps, pe, p in self.phys.remove(s, e):
            self.kernel.phys.unpin(p, p + (pe - ps))
        self.kernel.track("iopt_pinned_bytes", -(e - s))

    def _charge(self, npages: int, what: str) -> None:
        if not npages or self.account_mode == ACCOUNT_NONE:
            return
        assert self.proc is not None
        iopt_pages_update_pinned(self.proc, self.account_mode, abs(npages), npages > 0, what)


def iopt_pages_account_mode(proc: Process, ictx_account_mode: int) -> int:
    """The account mode of new user-VA or file pages mapped by ``proc``: iopt_alloc_pages'
    ``capable(CAP_IPC_LOCK) ? ACCOUNT_NONE : ACCOUNT_USER``, then iopt_map_common's upgrade
    of ACCOUNT_USER to ACCOUNT_MM when the context's mode is MM (IOMMU_OPTION_RLIMIT_MODE)."""
    mode = ACCOUNT_NONE if proc.capable("CAP_IPC_LOCK") else ACCOUNT_USER
    if ictx_account_mode == ACCOUNT_MM and mode == ACCOUNT_USER:
        mode = ACCOUNT_MM
    return mode


def iopt_pages_update_pinned(proc: Process, account_mode: int, npages: int, inc: bool,
                             what: str) -> None:
    """iopt_pages_update_pinned: charge (``inc``) or uncharge ``npages`` to ``proc`` in
    ``account_mode`` — ACCOUNT_USER its user's locked_vm (incr_user_locked_vm /
    decr_user_locked_vm), ACCOUNT_MM its mm's (update_mm_locked_vm: __account_locked_vm with
    bypass_rlim false), ACCOUNT_NONE nothing. A charge past RLIMIT_MEMLOCK is ENOMEM and
    leaves the ledger as it was; no capability is checked here (iopt_alloc_pages did)."""
    if account_mode == ACCOUNT_USER:
        if inc:
            mlock.incr_user_locked_vm(proc, npages, what)
        else:
            mlock.decr_user_locked_vm(proc, npages)
    elif account_mode == ACCOUNT_MM:
        mlock.account_locked_vm(proc, npages, inc, what, bypass_rlim=False)


def iopt_alloc_user_pages(proc: Process, uptr: int, length: int, writable: bool,
                          account_mode: int) -> IoptPages:
    """iopt_alloc_user_pages: EINVAL for length 0 or past SIZE_MAX - PAGE_SIZE, EOVERFLOW
    when uptr + length wraps."""
    if length == 0 or length > SIZE_MAX - PAGE:
        raise kerr(errno.EINVAL, f"iopt_alloc_pages: length {length:#x} is 0 or too large")
    if uptr + length > ULONG_MAX:
        raise kerr(errno.EOVERFLOW, f"iopt_alloc_pages: {uptr:#x} + {length:#x} overflows")
    if proc.kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "iopt_alloc_pages: kzalloc failed (injected)")
    return IoptPages(proc.kernel, "user", length, writable, proc=proc, uptr=uptr,
                     ictx_account_mode=account_mode)
