"""The test mock's in-kernel access (drivers/iommu/iommufd/selftest.c: struct selftest_access,
iommufd_test_create_access, _access_replace_ioas, _access_pages, _access_item_destroy,
_access_rw, SET_TEMP_MEMORY_LIMIT, and the mock's unmap callback).

IOMMU_TEST_OP_CREATE_ACCESS makes an anonymous file "[iommufd_test_staccess]" holding an
iommufd_access (access.py) attached to the IOAS ``cmd.id``, and returns its fd
(``out_access_fd``, O_CLOEXEC): the other access ops name the access by that fd (not an
fd of this file: EBADFD), and closing the last reference to the file unpins everything and
destroys the access. MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES picks the ops that may pin
(ACCESS_PAGES on an access without them: EOPNOTSUPP).

ACCESS_PAGES pins ``[iova, +length)`` (MOCK_FLAGS_ACCESS_WRITE for a write pin), checks
that the pinned pages are the pages under ``uptr`` (EBADE, as iommufd_test_check_pages;
``uptr`` 0 skips the check) and records an item with the next id (``out_access_pages_id``);
DESTROY_ACCESS_PAGES unpins one (ENOENT: no such id, e.g. an unmap already dropped it).
The unmap callback drops every item that overlaps the unmapped IOVA range, so IOAS_UNMAP
of pinned memory succeeds. ACCESS_RW copies through iommufd_access_rw with a kernel buffer
(MOCK_ACCESS_RW_WRITE, MOCK_ACCESS_RW_SLOW_PATH). Lengths above 16 MiB are ENOMEM (the
mock's guard against kvzalloc warnings).

Invariants: ``items`` lists exactly the pins the mock holds on its access (each one
pin_pages not yet unpinned); the file owns the access from install until release.
Units: bytes. Locking: ``items`` and ``next_id`` under ``lock`` (staccess->lock), which is
held across pin + record and across unpin, so an unmap callback never sees a half-made item.
Lock order: staccess->lock -> access->ioas_lock (access.py).
Leaves out: MOCK_FLAGS_ACCESS_SYZ's IOVA conversion (the flag is accepted and ignored);
the fd is installed before the response is written (the kernel reserves it first and
installs last), so a failed response closes an fd another thread might have seen;
SET_TEMP_MEMORY_LIMIT only stores the limit: the model's pinning has no batch memory for it
to bound.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ....sim.locks import Mutex
from ....sim.track import Cell, TrackedDict
from ....uapi import iommufd as I
from ....uapi import linux as L
from ...fs.file import File, fput
from ...init import kernel_static
from ...mm.gup import pin_user_pages
from ...mm.mm import PAGE, page_down, page_up
from .access import IommufdAccess, iommufd_access_create
from .ioas import read_user, write_user
from .main import Ucmd
from .pages import ULONG_MAX
from .selftest import test_op

if TYPE_CHECKING:
    from ...core import Kernel
    from ...fs.process import Process

MAX_LENGTH = 16 * 1024 * 1024  # "Prevent syzkaller from triggering a WARN_ON in kvzalloc()"


def _memory_limit(kernel: Kernel) -> Cell[int]:
    return Cell(65536, label="iommufd_test_memory_limit")


#: iommufd_test_memory_limit: bytes of batch memory pinning may use (stored, not used).
iommufd_test_memory_limit = kernel_static("iommufd.iommufd_test_memory_limit", _memory_limit)


class SelftestAccess(File):
    """struct selftest_access behind its anon file; also the access's ops and data."""

    kind = "iommufd_test_staccess"

    def __init__(self, kernel: Kernel, needs_pin_pages: bool) -> None:
        super().__init__(kernel, L.O_RDWR, "[iommufd_test_staccess]")
        self.needs_pin_pages = needs_pin_pages  # selftest_access_ops_pin vs _ops
        self.access: IommufdAccess | None = None
        n = kernel.next_id("iommufd_staccess")
        self.label = f"staccess{n}"
        self.lock = Mutex(kernel.sched, f"{self.label}.lock", "staccess->lock")
        # item id -> (iova, length), in creation order (the items list).
        self.items: dict[int, tuple[int, int]] = TrackedDict(label=f"{self.label}.items")
        self.next_id = 0

    def unmap(self, iova: int, length: int) -> None:
        """iommufd_test_access_unmap: unpin every item overlapping ``[iova, +length)``."""
        last = min(iova + length - 1, ULONG_MAX)
        with self.lock:
            for item_id, (i_iova, i_len) in list(self.items.items()):
                if iova > i_iova + i_len - 1 or last < i_iova:
                    continue
                del self.items[item_id]
                assert self.access is not None
                self.access.unpin_pages(i_iova, i_len)

    def release(self) -> None:
        """iommufd_test_staccess_release: drop every pin, destroy the access."""
        if self.access is not None:
            self.unmap(0, ULONG_MAX)
            self.access.destroy_user()
            self.access = None


def staccess_get(proc: Process, fd: int) -> SelftestAccess:
    """iommufd_access_get: the staccess behind ``fd`` with a file reference (EBADFD)."""
    f = proc.fget_or_none(fd)
    if f is None:
        raise kerr(errno.EBADFD, f"IOMMU_TEST_CMD: fd {fd} is not open")
    if not isinstance(f, SelftestAccess):
        fput(f)
        raise kerr(errno.EBADFD, f"IOMMU_TEST_CMD: fd {fd} is a {f.kind}, not a test access")
    return f


def _access(st: SelftestAccess) -> IommufdAccess:
    assert st.access is not None, "an installed test access always has its access"
    return st.access


@test_op(I.IOMMU_TEST_OP_CREATE_ACCESS)
def iommufd_test_create_access(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_CREATE_ACCESS: a new access on IOAS ``cmd.id``, as an fd."""
    cmd, kernel = ucmd.cmd, ucmd.ictx.kernel
    flags = cmd.create_access.flags
    if flags & ~I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
        raise kerr(errno.EOPNOTSUPP, f"CREATE_ACCESS: unknown flags {flags:#x}")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "iommufd_test_alloc_access: kzalloc failed (injected)")
    if kernel.sched.fault("anon_inode_getfile"):
        raise kerr(errno.ENOMEM, "iommufd_test_alloc_access: anon_inode_getfile failed "
                   "(injected)")
    st = SelftestAccess(kernel, bool(flags & I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES))
    try:
        if kernel.sched.fault("get_unused_fd"):
            raise kerr(errno.ENOMEM, "CREATE_ACCESS: get_unused_fd_flags failed (injected)")
        access = iommufd_access_create(ucmd.ictx, st)
        try:
            access.attach(cmd.id)
        except BaseException:
            access.destroy_user()
            raise
    except BaseException:
        fput(st)  # the access is not set yet: release frees only the staccess
        raise
    st.access = access
    fd = ucmd.proc.fd_install(st, cloexec=True)  # EMFILE: fput, and release destroys
    cmd.create_access.out_access_fd = fd
    try:
        ucmd.respond()
    except OSError:
        ucmd.proc.close(fd)
        raise
    return 0


@test_op(I.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS)
def iommufd_test_access_replace_ioas(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: move the access to ``ioas_id``."""
    st = staccess_get(ucmd.proc, ucmd.cmd.id)
    try:
        _access(st).replace(ucmd.cmd.access_replace_ioas.ioas_id)
    finally:
        fput(st)
    return 0


def _runs(extents: list[tuple[int, int]], nbytes: int) -> list[tuple[int, int]]:
    """The first ``nbytes`` of physical ``extents`` as maximal contiguous runs: two page lists
    are the same pages in the same order iff their runs are equal (no per-page list)."""
    out: list[tuple[int, int]] = []
    for s, e in extents:
        if nbytes <= 0:
            break
        e = min(e, s + nbytes)
        nbytes -= e - s
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def check_pages(proc: Process, uptr: int, pinned: list[tuple[int, int]], npages: int) -> None:
    """iommufd_test_check_pages: the ``npages`` pages at ``uptr`` are the pinned ones
    (EBADE otherwise; EFAULT where nothing is mapped)."""
    got = _runs(pinned, npages * PAGE)
    pin = pin_user_pages(proc.mm, page_down(uptr), npages * PAGE, False)  # get/put_page
    try:
        want = _runs(pin.extents, npages * PAGE)
    finally:
        pin.unpin()
    if got != want:
        raise kerr(errno.EBADE, f"ACCESS_PAGES: the pinned pages are not the pages at user "
                   f"address {uptr:#x}")


@test_op(I.IOMMU_TEST_OP_ACCESS_PAGES)
def iommufd_test_access_pages(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_ACCESS_PAGES: pin, check against ``uptr``, record an item."""
    cmd, kernel = ucmd.cmd, ucmd.ictx.kernel
    c = cmd.access_pages
    iova, length, uptr, flags = c.iova, c.length, c.uptr, c.flags
    if length > MAX_LENGTH:
        raise kerr(errno.ENOMEM, f"ACCESS_PAGES: length {length:#x} above 16 MiB")
    if flags & ~(I.MOCK_FLAGS_ACCESS_WRITE | I.MOCK_FLAGS_ACCESS_SYZ):
        raise kerr(errno.EOPNOTSUPP, f"ACCESS_PAGES: unknown flags {flags:#x}")
    st = staccess_get(ucmd.proc, cmd.id)
    try:
        if not st.needs_pin_pages:
            raise kerr(errno.EOPNOTSUPP, "ACCESS_PAGES: the access was created without "
                       "MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES")
        access = _access(st)
        npages = (page_up(iova + length) - page_down(iova)) // PAGE
        if kernel.sched.fault("kvcalloc"):
            raise kerr(errno.ENOMEM, "ACCESS_PAGES: kvcalloc of the page array failed "
                       "(injected)")
        # The lock is held from pin to record: an unmap callback waits for the item.
        with st.lock:
            pinned = access.pin_pages(iova, length, flags & I.MOCK_FLAGS_ACCESS_WRITE)
            try:
                if uptr:
                    check_pages(ucmd.proc, uptr - (iova - page_down(iova)), pinned, npages)
                if kernel.sched.fault("kzalloc"):
                    raise kerr(errno.ENOMEM, "ACCESS_PAGES: kzalloc of the item failed "
                               "(injected)")
                item_id = st.next_id
                st.next_id += 1
                st.items[item_id] = (iova, length)
                c.out_access_pages_id = item_id
                try:
                    ucmd.respond()
                except OSError:
                    del st.items[item_id]
                    raise
            except OSError:
                access.unpin_pages(iova, length)
                raise
    finally:
        fput(st)
    return 0


@test_op(I.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES)
def iommufd_test_access_item_destroy(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: unpin one item (ENOENT: no such id)."""
    item_id = ucmd.cmd.destroy_access_pages.access_pages_id
    st = staccess_get(ucmd.proc, ucmd.cmd.id)
    try:
        with st.lock:
            item = st.items.pop(item_id, None)
            if item is None:
                raise kerr(errno.ENOENT, f"DESTROY_ACCESS_PAGES: no pinned range {item_id}")
            _access(st).unpin_pages(*item)
    finally:
        fput(st)
    return 0


@test_op(I.IOMMU_TEST_OP_ACCESS_RW)
def iommufd_test_access_rw(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_ACCESS_RW: iommufd_access_rw between ``uptr`` and the IOVAs."""
    cmd, kernel = ucmd.cmd, ucmd.ictx.kernel
    c = cmd.access_rw
    iova, length, uptr, flags = c.iova, c.length, c.uptr, c.flags
    if length > MAX_LENGTH:
        raise kerr(errno.ENOMEM, f"ACCESS_RW: length {length:#x} above 16 MiB")
    if flags & ~(I.MOCK_ACCESS_RW_WRITE | I.MOCK_ACCESS_RW_SLOW_PATH | I.MOCK_FLAGS_ACCESS_SYZ):
        raise kerr(errno.EOPNOTSUPP, f"ACCESS_RW: unknown flags {flags:#x}")
    st = staccess_get(ucmd.proc, cmd.id)
    try:
        if kernel.sched.fault("kvzalloc"):
            raise kerr(errno.ENOMEM, "ACCESS_RW: kvzalloc of the buffer failed (injected)")
        write = bool(flags & I.MOCK_ACCESS_RW_WRITE)
        tmp = bytearray(read_user(ucmd, uptr, length)) if write else bytearray(length)
        _access(st).rw(iova, tmp, flags & ~I.MOCK_FLAGS_ACCESS_SYZ, ucmd.proc)
        if not write:
            write_user(ucmd, uptr, bytes(tmp))
    finally:
        fput(st)
    return 0


@test_op(I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT)
def iommufd_test_set_temp_memory_limit(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: at least one batch element (u64 + u32), else
    EINVAL."""
    limit = ucmd.cmd.memory_limit.limit
    if limit < 8 + 4:
        raise kerr(errno.EINVAL, f"SET_TEMP_MEMORY_LIMIT: {limit} is below one batch element")
    iommufd_test_memory_limit(ucmd.ictx.kernel).set(limit)
    return 0
