"""The IOAS object and its ioctls (drivers/iommu/iommufd/ioas.c).

IOAS_ALLOC, IOAS_IOVA_RANGES, IOAS_ALLOW_IOVAS, IOAS_MAP, IOAS_MAP_FILE, IOAS_COPY,
IOAS_UNMAP, IOAS_CHANGE_PROCESS, IOMMU_OPTION_HUGE_PAGES and IOMMU_VFIO_IOAS, each checking
its arguments in the kernel's order (flags and reserved fields EOPNOTSUPP, then EOVERFLOW for
an iova or length of ULONG_MAX and above, then EINVAL without READ or WRITE, then the object
lookup ENOENT), then acting through the io_pagetable (io_pagetable.py).

Invariants: an IOAS owns its io_pagetable; destroying it unmaps everything (pins dropped,
charges returned) and removes the test mock's reserved ranges. Units: bytes.
Locking: see io_pagetable.py; ``ioas_creation_lock`` (read) around finalize of a new IOAS,
as iommufd_ioas_alloc_ioctl takes it.
IOAS_CHANGE_PROCESS (iommufd_ioas_change_process) moves every pages object of the context
— file pages only: a user-VA or dma-buf area makes it EINVAL, a half-made area EBUSY — to the
calling process, and with it the pinned-page charges: the new process is charged first
(charge_current: per account mode, ENOMEM past its RLIMIT_MEMLOCK undoing the modes already
charged and leaving everything as it was), then each pages object is uncharged from its old
process and takes the new one as its source (change_mm).
Leaves out: iommufd_take_all_iova_rwsem's xa_store failure (ENOMEM), ``mm->pinned_vm``.
"""

from __future__ import annotations

import ctypes
import errno
from contextlib import ExitStack
from typing import TYPE_CHECKING

from ....errors import kerr
from ....uapi import iommufd as I
from ...fs.uaccess import UserArg
from ...mm.mm import PAGE
from .dmabuf import iopt_alloc_dmabuf_pages, is_dma_buf_file
from .io_pagetable import IoPagetable, PagesSlice
from .main import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, IommufdCtx, IommufdObject, Ucmd, ioctl_op
from .pages import ULONG_MAX, IoptPages, iopt_alloc_user_pages, iopt_pages_update_pinned

if TYPE_CHECKING:
    from ...fs.file import File
    from ...fs.process import Process

MAP_FLAGS = I.IOMMU_IOAS_MAP_FIXED_IOVA | I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE
RW = I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE
# include/linux/iommu.h
IOMMU_READ, IOMMU_WRITE, IOMMU_CACHE = 1, 2, 4


class Ioas(IommufdObject):
    """struct iommufd_ioas: an io_pagetable and the HWPTs made on it."""

    type = "IOAS"

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.iopt = IoPagetable(ictx.kernel, f"{ictx.label}.ioas")
        self.iopt.thp = ictx.kernel.profile.thp
        self.hwpt_list: list[IommufdObject] = []

    def destroy(self) -> None:
        """iommufd_ioas_destroy: unmap all, then the table (the mock's reservations)."""
        self.iopt.unmap_all()
        with self.iopt.iova_rwsem.write():
            self.iopt.remove_reserved(None)
            self.iopt.allowed[:] = []


def conv_iommu_prot(flags: int) -> int:
    """conv_iommu_prot: IOMMU_CACHE always (coherency is required at bind)."""
    prot = IOMMU_CACHE
    if flags & I.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= IOMMU_WRITE
    if flags & I.IOMMU_IOAS_MAP_READABLE:
        prot |= IOMMU_READ
    return prot


def get_ioas(ucmd: Ucmd, oid: int, what: str) -> Ioas:
    return ucmd.ictx.get_object(oid, Ioas, what)


@ioctl_op(I.IOMMU_IOAS_ALLOC, I.iommu_ioas_alloc, "out_ioas_id")
def iommufd_ioas_alloc_ioctl(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_ALLOC."""
    cmd = ucmd.cmd
    if cmd.flags:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_IOAS_ALLOC: unknown flags {cmd.flags:#x}")
    ioas = ucmd.alloc(Ioas(ucmd.ictx))
    cmd.out_ioas_id = ioas.id
    ucmd.respond()
    return 0


@ioctl_op(I.IOMMU_IOAS_IOVA_RANGES, I.iommu_ioas_iova_ranges, "out_iova_alignment")
def iommufd_ioas_iova_ranges(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_IOVA_RANGES: the usable ranges (holes of the reserved ones); EMSGSIZE with
    the count when the array is too small (the header is written back first)."""
    cmd = ucmd.cmd
    if getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_IOAS_IOVA_RANGES: __reserved is not zero")
    ioas = get_ioas(ucmd, cmd.ioas_id, "IOMMU_IOAS_IOVA_RANGES")
    try:
        with ioas.iopt.iova_rwsem.read():
            room = cmd.num_iovas
            ranges = ioas.iopt.iova_ranges()
            cmd.num_iovas = len(ranges)
            cmd.out_iova_alignment = ioas.iopt.iova_alignment
            size = ctypes.sizeof(I.iommu_iova_range)
            for i, (start, last) in enumerate(ranges[:room]):
                write_user(ucmd, cmd.allowed_iovas + i * size,
                           bytes(I.iommu_iova_range(start=start, last=last)))
            ucmd.respond()
            if len(ranges) > room:
                raise kerr(errno.EMSGSIZE, f"IOMMU_IOAS_IOVA_RANGES: {len(ranges)} ranges, "
                           f"room for {room}")
    finally:
        ucmd.ictx.put_object(ioas)
    return 0


def write_user(ucmd: Ucmd, addr: int, data: bytes) -> None:
    """copy_to_user to a user pointer inside a command (EFAULT)."""
    UserArg(ucmd.proc, addr).write(data)


def read_user(ucmd: Ucmd, addr: int, n: int) -> bytes:
    """copy_from_user from a user pointer inside a command (EFAULT)."""
    return UserArg(ucmd.proc, addr).read(n)


@ioctl_op(I.IOMMU_IOAS_ALLOW_IOVAS, I.iommu_ioas_allow_iovas, "allowed_iovas")
def iommufd_ioas_allow_iovas(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_ALLOW_IOVAS: each range start < last and not overlapping an earlier one
    (EINVAL); the whole set replaces the old one, or nothing changes."""
    cmd = ucmd.cmd
    if getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_IOAS_ALLOW_IOVAS: __reserved is not zero")
    ioas = get_ioas(ucmd, cmd.ioas_id, "IOMMU_IOAS_ALLOW_IOVAS")
    try:
        size = ctypes.sizeof(I.iommu_iova_range)
        ranges: list[tuple[int, int]] = []
        for i in range(cmd.num_iovas):
            r = I.iommu_iova_range.from_buffer_copy(
                read_user(ucmd, cmd.allowed_iovas + i * size, size))
            if r.start >= r.last:
                raise kerr(errno.EINVAL, f"IOMMU_IOAS_ALLOW_IOVAS: range {i} start "
                           f"{r.start:#x} >= last {r.last:#x}")
            if any(a <= r.last and r.start <= b for a, b in ranges):
                raise kerr(errno.EINVAL, f"IOMMU_IOAS_ALLOW_IOVAS: range {i} overlaps another")
            if ucmd.ictx.kernel.sched.fault("kzalloc"):
                raise kerr(errno.ENOMEM, "IOMMU_IOAS_ALLOW_IOVAS: kzalloc failed (injected)")
            ranges.append((r.start, r.last))
        ioas.iopt.set_allow_iova(ranges)
    finally:
        ucmd.ictx.put_object(ioas)
    return 0


def check_map_flags(flags: int, reserved: int, iovas: tuple[int, ...], what: str) -> None:
    """The common prologue of MAP, MAP_FILE and COPY."""
    if flags & ~MAP_FLAGS or reserved:
        raise kerr(errno.EOPNOTSUPP, f"{what}: unknown flags {flags:#x} or non-zero "
                   "__reserved")
    if any(v >= ULONG_MAX for v in iovas):
        raise kerr(errno.EOVERFLOW, f"{what}: iova or length at or above ULONG_MAX")
    if not flags & RW:
        raise kerr(errno.EINVAL, f"{what}: neither IOMMU_IOAS_MAP_READABLE nor WRITEABLE")


@ioctl_op(I.IOMMU_IOAS_MAP, I.iommu_ioas_map, "iova")
def iommufd_ioas_map(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_MAP: user memory at ``user_va`` (pinned when a domain needs it)."""
    cmd = ucmd.cmd
    check_map_flags(cmd.flags, getattr(cmd, "__reserved"), (cmd.iova, cmd.length),
                    "IOMMU_IOAS_MAP")
    ioas = get_ioas(ucmd, cmd.ioas_id, "IOMMU_IOAS_MAP")
    try:
        prot = conv_iommu_prot(cmd.flags)
        pages = iopt_alloc_user_pages(ucmd.proc, cmd.user_va, cmd.length,
                                      bool(prot & IOMMU_WRITE), ucmd.ictx.account_mode)
        try:
            fixed = cmd.flags & I.IOMMU_IOAS_MAP_FIXED_IOVA
            cmd.iova = ioas.iopt.map_pages(
                [PagesSlice(pages, cmd.user_va - pages.base, cmd.length)], cmd.length,
                cmd.iova if fixed else None, prot, cmd.user_va)
        finally:
            pages.put()
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(ioas)
    return 0


@ioctl_op(I.IOMMU_IOAS_MAP_FILE, I.iommu_ioas_map_file, "iova")
def iommufd_ioas_map_file(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_MAP_FILE: a memfd by file offset, or (profile ``iommufd_map_dmabuf``) a
    dma-buf (dmabuf.py)."""
    cmd = ucmd.cmd
    check_map_flags(cmd.flags, 0, (cmd.iova, cmd.length), "IOMMU_IOAS_MAP_FILE")
    ioas = get_ioas(ucmd, cmd.ioas_id, "IOMMU_IOAS_MAP_FILE")
    try:
        f = ucmd.proc.fget_or_none(cmd.fd)
        if f is None:
            raise kerr(errno.EBADF, f"IOMMU_IOAS_MAP_FILE: fd {cmd.fd} is not open")
        try:
            prot = conv_iommu_prot(cmd.flags)
            pages = iopt_alloc_file_pages(ucmd, f, cmd.start, cmd.length,
                                          bool(prot & IOMMU_WRITE))
            try:
                fixed = cmd.flags & I.IOMMU_IOAS_MAP_FIXED_IOVA
                cmd.iova = ioas.iopt.map_pages(
                    [PagesSlice(pages, cmd.start - pages.base, cmd.length)], cmd.length,
                    cmd.iova if fixed else None, prot, cmd.start)
            finally:
                pages.put()
        finally:
            f.put()
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(ioas)
    return 0


def iopt_alloc_file_pages(ucmd: Ucmd, f: File, start: int, length: int,
                          writable: bool) -> IoptPages:
    """iopt_map_file_pages (io_pagetable.c) up to the pages: length 0 EINVAL, ``start +
    length - 1`` wrapping EOVERFLOW, then a dma-buf (when the profile has it; dmabuf.py
    checks its size) or any other file (pages.c iopt_alloc_file_pages: length past
    SIZE_MAX - PAGE_SIZE EINVAL, else a reference to the file). Neither the file's type nor
    its size is checked here: a memfd range past the end of the file, or a file that is no
    memfd, maps while nothing needs the pages; the pin (memfd_pin_folios, when a domain is
    attached or filled, or an access pins or reads) is what fails, EINVAL (pages.py)."""
    kernel = ucmd.ictx.kernel
    if length == 0:
        raise kerr(errno.EINVAL, "IOMMU_IOAS_MAP_FILE: length 0")
    if start + length - 1 > ULONG_MAX:
        raise kerr(errno.EOVERFLOW, f"IOMMU_IOAS_MAP_FILE: {start:#x} + {length:#x} - 1 "
                   "overflows")
    if is_dma_buf_file(f) and kernel.profile.iommufd_map_dmabuf:
        return iopt_alloc_dmabuf_pages(ucmd, f, start, length, writable)
    if length > ULONG_MAX - PAGE:
        raise kerr(errno.EINVAL, f"iopt_alloc_pages: length {length:#x} is too large")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "iopt_alloc_file_pages: kzalloc failed (injected)")
    return IoptPages(kernel, "file", length, writable, file=f, start=start,
                     proc=ucmd.proc, ictx_account_mode=ucmd.ictx.account_mode)


@ioctl_op(I.IOMMU_IOAS_COPY, I.iommu_ioas_copy, "src_iova")
def iommufd_ioas_copy(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_COPY: the pages behind ``[src_iova, +length)`` of one IOAS (contiguous
    areas, else ENOENT) mapped again in another, sharing their pins."""
    cmd = ucmd.cmd
    check_map_flags(cmd.flags, 0, (cmd.length, cmd.src_iova, cmd.dst_iova),
                    "IOMMU_IOAS_COPY")
    src = get_ioas(ucmd, cmd.src_ioas_id, "IOMMU_IOAS_COPY")
    try:
        slices = iopt_get_pages(src.iopt, cmd.src_iova, cmd.length)
    finally:
        ucmd.ictx.put_object(src)
    try:
        dst = get_ioas(ucmd, cmd.dst_ioas_id, "IOMMU_IOAS_COPY")
        try:
            fixed = cmd.flags & I.IOMMU_IOAS_MAP_FIXED_IOVA
            first = slices[0]
            addr = first.pages.base + first.start_byte if first.pages.kind == "user" else 0
            cmd.dst_iova = dst.iopt.map_pages(slices, cmd.length,
                                              cmd.dst_iova if fixed else None,
                                              conv_iommu_prot(cmd.flags), addr)
            ucmd.respond()
        finally:
            ucmd.ictx.put_object(dst)
    finally:
        for sl in slices:
            sl.pages.put()
    return 0


def iopt_get_pages(iopt: IoPagetable, iova: int, length: int) -> list[PagesSlice]:
    """iopt_get_pages: one slice (with a pages reference) per area covering ``[iova,
    +length)`` back to back; a gap or a half-made area ENOENT."""
    if not length:
        raise kerr(errno.EINVAL, "IOMMU_IOAS_COPY: length 0")
    last = iova + length - 1
    if last > ULONG_MAX:
        raise kerr(errno.EOVERFLOW, "IOMMU_IOAS_COPY: source range overflows")
    out: list[PagesSlice] = []
    with iopt.iova_rwsem.read():
        pos = iova
        for ext in iopt.areas.overlapping(iova, last + 1):
            area = ext.value
            if area.pages is None or max(area.iova, iova) != pos:
                break
            end = min(last, area.last)
            out.append(PagesSlice(area.pages.get(), area.start_byte + (pos - area.iova),
                                  end - pos + 1))
            pos = end + 1
        if pos != last + 1:
            for sl in out:
                sl.pages.put()
            raise kerr(errno.ENOENT, f"IOMMU_IOAS_COPY: [{iova:#x}, {last:#x}] is not fully "
                       "mapped by contiguous areas")
    return out


@ioctl_op(I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap, "length")
def iommufd_ioas_unmap(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_UNMAP: iova 0 + length U64_MAX unmaps all; ``length`` returns the bytes
    unmapped."""
    cmd = ucmd.cmd
    ioas = get_ioas(ucmd, cmd.ioas_id, "IOMMU_IOAS_UNMAP")
    try:
        if cmd.iova == 0 and cmd.length == ULONG_MAX:
            unmapped = ioas.iopt.unmap_all()
        else:
            if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
                raise kerr(errno.EOVERFLOW, "IOMMU_IOAS_UNMAP: iova or length at or above "
                           "ULONG_MAX")
            unmapped = ioas.iopt.unmap_iova(cmd.iova, cmd.length)
            if not unmapped:
                raise kerr(errno.ENOENT, f"IOMMU_IOAS_UNMAP: nothing mapped in "
                           f"[{cmd.iova:#x}, +{cmd.length:#x})")
        cmd.length = unmapped
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(ioas)
    return 0


def need_charge_update(pages: IoptPages, current: Process) -> bool:
    """need_charge_update: does moving ``pages`` to ``current`` move a charge? ACCOUNT_MM
    when the mm differs, ACCOUNT_USER when the user or the mm does (the kernel also counts
    ``mm->pinned_vm``), ACCOUNT_NONE never."""
    if pages.account_mode == ACCOUNT_NONE:
        return False
    assert pages.proc is not None
    if pages.account_mode == ACCOUNT_MM:
        return pages.proc.mm is not current.mm
    return pages.proc.uid != current.uid or pages.proc.mm is not current.mm


def charge_current(current: Process, npinned: dict[int, int]) -> None:
    """charge_current: charge ``npinned[mode]`` pages to ``current`` for each account mode in
    order; a failure (ENOMEM) uncharges the modes already charged, in reverse, and raises."""
    modes = (ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM)
    for i, mode in enumerate(modes):
        if not npinned[mode]:
            continue
        try:
            iopt_pages_update_pinned(current, mode, npinned[mode], True,
                                     "IOMMU_IOAS_CHANGE_PROCESS")
        except OSError:
            for undo in reversed(modes[:i]):
                if npinned[undo]:
                    iopt_pages_update_pinned(current, undo, npinned[undo], False,
                                             "IOMMU_IOAS_CHANGE_PROCESS")
            raise


@ioctl_op(I.IOMMU_IOAS_CHANGE_PROCESS, I.iommu_ioas_change_process, "__reserved")
def iommufd_ioas_change_process(ucmd: Ucmd) -> int:
    """IOMMU_IOAS_CHANGE_PROCESS: see the module docstring. Under ioas_creation_lock and
    every IOAS's iova_rwsem for write, taken in ID order (iommufd_take_all_iova_rwsem)."""
    cmd = ucmd.cmd
    if getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_IOAS_CHANGE_PROCESS: __reserved is not zero")
    ictx, current = ucmd.ictx, ucmd.proc
    with ictx.ioas_creation_lock.write(), ExitStack() as locks:
        ioas_list: list[Ioas] = []
        for _oid, obj in sorted(ictx.objects.items()):
            if not isinstance(obj, Ioas) or obj.users.get() == 0:
                continue  # refcount_inc_not_zero failed: being destroyed
            obj.get()
            locks.callback(obj.put)
            locks.enter_context(obj.iopt.iova_rwsem.write())
            ioas_list.append(obj)
        areas = [ext.value for ioas in ioas_list for ext in ioas.iopt.areas]
        for area in areas:
            if area.pages is None:
                raise kerr(errno.EBUSY, f"IOMMU_IOAS_CHANGE_PROCESS: {area!r} is being "
                           "mapped or unmapped")
            if area.pages.kind != "file":
                raise kerr(errno.EINVAL, f"IOMMU_IOAS_CHANGE_PROCESS: {area!r} maps "
                           f"{area.pages.kind} pages (only file mappings can change process)")
        # Each pages object counted once, however many areas (IOAS_COPY) share it: the
        # kernel zeroes last_npinned as it counts.
        all_npinned = {ACCOUNT_NONE: 0, ACCOUNT_USER: 0, ACCOUNT_MM: 0}
        moved: list[IoptPages] = []
        for area in areas:
            pages = area.pages
            assert pages is not None
            if pages not in moved:
                moved.append(pages)
                if need_charge_update(pages, current):
                    all_npinned[pages.account_mode] += pages.npinned
        charge_current(current, all_npinned)
        for pages in moved:
            # Uncharge the old process, then change_mm: the new one is the source now.
            if need_charge_update(pages, current):
                assert pages.proc is not None
                iopt_pages_update_pinned(pages.proc, pages.account_mode, pages.npinned,
                                         False, "IOMMU_IOAS_CHANGE_PROCESS")
            pages.proc = current
    return 0


def iommufd_ioas_option(ucmd: Ucmd) -> None:
    """IOMMU_OPTION_HUGE_PAGES on an IOAS: GET says whether large pages are allowed; SET 0
    disables them (EINVAL once a domain has mappings), SET 1 enables."""
    cmd = ucmd.cmd
    ioas = get_ioas(ucmd, cmd.object_id, "IOMMU_OPTION_HUGE_PAGES")
    try:
        iopt = ioas.iopt
        if cmd.op == I.IOMMU_OPTION_OP_GET:
            cmd.val64 = int(not iopt.disable_large_pages)
            return
        if cmd.op != I.IOMMU_OPTION_OP_SET:
            raise kerr(errno.EOPNOTSUPP, f"IOMMU_OPTION_HUGE_PAGES: unknown op {cmd.op}")
        if cmd.val64 not in (0, 1):
            raise kerr(errno.EINVAL, f"IOMMU_OPTION_HUGE_PAGES: value {cmd.val64} is not 0/1")
        with iopt.domains_rwsem.write(), iopt.iova_rwsem.write():
            if cmd.val64 == 1:
                iopt.disable_large_pages = False
                iopt.calculate_iova_alignment()
                return
            if iopt.disable_large_pages:
                return
            if iopt.domains and iopt.areas:
                raise kerr(errno.EINVAL, "IOMMU_OPTION_HUGE_PAGES: domains already have pages")
            iopt.disable_large_pages = True
            try:
                iopt.calculate_iova_alignment()
            except OSError:
                iopt.disable_large_pages = False
                raise
    finally:
        ucmd.ictx.put_object(ioas)


@ioctl_op(I.IOMMU_VFIO_IOAS, I.iommu_vfio_ioas, "__reserved")
def iommufd_vfio_ioas(ucmd: Ucmd) -> int:
    """IOMMU_VFIO_IOAS: GET (ENODEV when none), SET, CLEAR the IOAS the VFIO compatibility
    ioctls use."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    if getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_VFIO_IOAS: __reserved is not zero")
    if cmd.op == I.IOMMU_VFIO_IOAS_GET:
        if ictx.vfio_ioas is None:
            raise kerr(errno.ENODEV, "IOMMU_VFIO_IOAS_GET: no compatibility IOAS")
        cmd.ioas_id = ictx.vfio_ioas.id
        ucmd.respond()
        return 0
    if cmd.op == I.IOMMU_VFIO_IOAS_SET:
        ioas = get_ioas(ucmd, cmd.ioas_id, "IOMMU_VFIO_IOAS_SET")
        ictx.vfio_ioas = ioas
        ictx.put_object(ioas)
        return 0
    if cmd.op == I.IOMMU_VFIO_IOAS_CLEAR:
        ictx.vfio_ioas = None
        return 0
    raise kerr(errno.EOPNOTSUPP, f"IOMMU_VFIO_IOAS: unknown op {cmd.op}")
