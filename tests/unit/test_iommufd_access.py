"""In-kernel iommufd accesses (kernel/iommu/iommufd/access.py) and the test mock's access ops
(selftest_access.py) on SimHost: pins and memlock charges, the unmap notification that makes
an access unpin (and EDEADLOCK when it does not), rw through the access, the access fd's
lifetime against the iommufd's, and fail_nth over CREATE_ACCESS and ACCESS_PAGES."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

import pytest
from iommufd_state import snapshot, sweep

from passthru import SimHost
from passthru.kernel.iommu.iommufd.access import (
    IOMMUFD_ACCESS_RW_WRITE,
    IommufdAccess,
    iommufd_access_create,
)
from passthru.kernel.iommu.iommufd.io_pagetable import UNMAP_TRIES
from passthru.kernel.iommu.iommufd.ioas import Ioas
from passthru.kernel.iommu.iommufd.main import IommufdCtx
from passthru.kernel.iommu.iommufd.selftest_access import SelftestAccess, iommufd_test_memory_limit
from passthru.kernel.mm import mlock
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
NPAGES = 8
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
PIN = I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES
IOVA = 1 << 24


class Ctx:
    """An iommufd with one IOAS and an 8-page shared anonymous buffer (optionally mapped at
    IOVA with no domain: nothing pinned until an access pins)."""

    def __init__(self, h: SimHost, mapped: bool = True, flags: int = RW) -> None:
        self.h = h
        # Without CAP_IPC_LOCK, so the pages are ACCOUNT_USER and the pins show in the
        # user's locked_vm (iopt_alloc_pages makes a CAP_IPC_LOCK process's ACCOUNT_NONE).
        h.proc.caps = h.proc.caps - {"CAP_IPC_LOCK"}
        self.fd = h.open("/dev/iommu", L.O_RDWR)
        cmd = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        h.ioctl(self.fd, I.IOMMU_IOAS_ALLOC, cmd)
        self.ioas_id = cmd.out_ioas_id
        self.buf = h.mmap(0, NPAGES * PAGE, L.PROT_READ | L.PROT_WRITE,
                          L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        h.poke(self.buf, bytes(range(256)) * (NPAGES * PAGE // 256))
        if mapped:
            self.map(IOVA, flags)

    @property
    def ictx(self) -> IommufdCtx:
        f = self.h.proc.fds[self.fd]
        assert isinstance(f, IommufdCtx)
        return f

    @property
    def ioas(self) -> Ioas:
        obj = self.ictx.objects[self.ioas_id]
        assert isinstance(obj, Ioas)
        return obj

    def map(self, iova: int, flags: int = RW) -> None:
        cmd = I.iommu_ioas_map(size=ctypes.sizeof(I.iommu_ioas_map),
                               flags=flags | I.IOMMU_IOAS_MAP_FIXED_IOVA, ioas_id=self.ioas_id,
                               user_va=self.buf, length=NPAGES * PAGE, iova=iova)
        self.h.ioctl(self.fd, I.IOMMU_IOAS_MAP, cmd)

    def unmap(self, iova: int, length: int) -> int:
        cmd = I.iommu_ioas_unmap(size=ctypes.sizeof(I.iommu_ioas_unmap), ioas_id=self.ioas_id,
                                 iova=iova, length=length)
        self.h.ioctl(self.fd, I.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def destroy(self, oid: int) -> None:
        self.h.ioctl(self.fd, I.IOMMU_DESTROY,
                     I.iommu_destroy(size=ctypes.sizeof(I.iommu_destroy), id=oid))

    def test_cmd(self, op: int, oid: int, member: str | None = None,
                 **fields: int) -> Any:
        cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd), op=op, id=oid)
        if member is not None:
            for k, v in fields.items():
                setattr(getattr(cmd, member), k, v)
        self.h.ioctl(self.fd, I.IOMMU_TEST_CMD, cmd)
        return cmd

    def create_access(self, flags: int = PIN, ioas_id: int | None = None) -> int:
        cmd = self.test_cmd(I.IOMMU_TEST_OP_CREATE_ACCESS, ioas_id or self.ioas_id,
                            "create_access", flags=flags)
        return int(cmd.create_access.out_access_fd)

    def pin(self, afd: int, iova: int, length: int, uptr: int, flags: int = 0) -> int:
        cmd = self.test_cmd(I.IOMMU_TEST_OP_ACCESS_PAGES, afd, "access_pages", iova=iova,
                            length=length, uptr=uptr, flags=flags)
        return int(cmd.access_pages.out_access_pages_id)

    def unpin(self, afd: int, item: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, afd, "destroy_access_pages",
                      access_pages_id=item)

    def rw(self, afd: int, iova: int, length: int, uptr: int, flags: int = 0) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_ACCESS_RW, afd, "access_rw", iova=iova, length=length,
                      uptr=uptr, flags=flags)

    def staccess(self, afd: int) -> SelftestAccess:
        f = self.h.proc.fds[afd]
        assert isinstance(f, SelftestAccess)
        return f

    # ----- observations -------------------------------------------------------------------
    def phys_pages(self, off: int, n: int) -> list[int]:
        """The physical pages under buffer pages [off, off + n)."""
        mm = self.h.proc.mm
        with mm.mmap_lock.read():
            pieces = mm.resolve(self.buf + off * PAGE, n * PAGE, False)
        return [p for s, e, p0 in pieces for p in range(p0, p0 + (e - s), PAGE)]

    def pins(self, off: int = 0, n: int = NPAGES) -> list[int]:
        """The physical pin count of each buffer page in [off, off + n)."""
        pins = self.h.kernel.phys.pins
        out = []
        for p in self.phys_pages(off, n):
            hit = [c for _, _, c in pins.overlapping(p, p + PAGE)]
            out.append(hit[0] if hit else 0)
        return out

    def charged(self) -> int:
        """Pages charged to the user's locked_vm (the default ACCOUNT_USER mode)."""
        return mlock.charged(self.h.kernel, self.h.proc)[0]

    def num_accesses(self) -> int:
        ((_, _, area),) = list(self.ioas.iopt.areas)
        return int(area.num_accesses)


def raises(err: int, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == err, e.value


def finish(h: SimHost) -> None:
    h.exit()
    assert h.leaks() == []


# ----- pins and charges ----------------------------------------------------------------------
def test_pin_unpin_counts_and_charges() -> None:
    h = SimHost()
    c = Ctx(h)
    assert c.pins() == [0] * NPAGES and c.charged() == 0  # no domain: the map pinned nothing
    afd = c.create_access()
    a = c.pin(afd, IOVA + PAGE, 2 * PAGE, c.buf + PAGE)
    assert c.pins() == [0, 1, 1, 0, 0, 0, 0, 0]
    assert c.charged() == 2 and c.num_accesses() == 1
    # The same range again: the pages are pinned once per map, charged once.
    b = c.pin(afd, IOVA + PAGE, 2 * PAGE, c.buf + PAGE)
    assert a != b
    assert c.pins() == [0, 1, 1, 0, 0, 0, 0, 0]
    assert c.charged() == 2 and c.num_accesses() == 2
    # An overlapping range adds only the page nobody held.
    d = c.pin(afd, IOVA + 2 * PAGE, 2 * PAGE, c.buf + 2 * PAGE)
    assert c.pins() == [0, 1, 1, 1, 0, 0, 0, 0] and c.charged() == 3
    c.unpin(afd, a)
    assert c.pins() == [0, 1, 1, 1, 0, 0, 0, 0] and c.charged() == 3
    c.unpin(afd, b)
    assert c.pins() == [0, 0, 1, 1, 0, 0, 0, 0] and c.charged() == 2
    c.unpin(afd, d)
    assert c.pins() == [0] * NPAGES and c.charged() == 0 and c.num_accesses() == 0
    raises(errno.ENOENT, c.unpin, afd, d)  # already gone
    finish(h)


def test_pin_errors_change_nothing() -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access()
    before = snapshot(h)
    raises(errno.ENOENT, c.pin, afd, IOVA + NPAGES * PAGE, PAGE, 0)  # past the area
    raises(errno.ENOENT, c.pin, afd, IOVA + (NPAGES - 1) * PAGE, 2 * PAGE, 0)  # runs off it
    raises(errno.EINVAL, c.pin, afd, IOVA, 0, 0)  # length 0
    raises(errno.EBADE, c.pin, afd, IOVA, PAGE, c.buf + PAGE)  # not the pages at uptr
    raises(errno.EOPNOTSUPP, c.pin, afd, IOVA, PAGE, 0, flags=1 << 3)
    raises(errno.ENOMEM, c.pin, afd, IOVA, (16 << 20) + PAGE, 0)  # the mock's size guard
    assert snapshot(h) == before
    nopin = c.create_access(flags=0)
    raises(errno.EOPNOTSUPP, c.pin, nopin, IOVA, PAGE, 0)  # ops without pin_pages
    raises(errno.EBADFD, c.pin, c.fd, IOVA, PAGE, 0)  # the iommufd is no test access
    raises(errno.EOPNOTSUPP, c.create_access, flags=2)
    finish(h)


def test_write_pin_of_read_only_map_is_eperm() -> None:
    h = SimHost()
    c = Ctx(h, flags=I.IOMMU_IOAS_MAP_READABLE)
    afd = c.create_access()
    raises(errno.EPERM, c.pin, afd, IOVA, PAGE, 0, flags=I.MOCK_FLAGS_ACCESS_WRITE)
    c.unpin(afd, c.pin(afd, IOVA, PAGE, c.buf))  # a read pin is fine
    assert c.pins() == [0] * NPAGES
    finish(h)


def test_pin_before_map_with_domainless_ioas_is_enoent() -> None:
    h = SimHost()
    c = Ctx(h, mapped=False)
    afd = c.create_access()
    raises(errno.ENOENT, c.pin, afd, IOVA, PAGE, 0)
    c.map(IOVA)
    c.unpin(afd, c.pin(afd, IOVA, PAGE, c.buf))
    finish(h)


# ----- unmap notification -------------------------------------------------------------------
def test_unmap_makes_the_access_unpin() -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access()
    item = c.pin(afd, IOVA, 3 * PAGE, c.buf)
    other = c.pin(afd, IOVA + 5 * PAGE, PAGE, c.buf + 5 * PAGE)
    assert c.charged() == 4
    assert c.unmap(IOVA, NPAGES * PAGE) == NPAGES * PAGE
    assert c.pins() == [0] * NPAGES and c.charged() == 0
    assert not c.ioas.iopt.areas and not c.staccess(afd).items
    raises(errno.ENOENT, c.unpin, afd, item)  # the callback dropped both
    raises(errno.ENOENT, c.unpin, afd, other)
    finish(h)


def test_unmap_drops_only_the_overlapping_pins() -> None:
    h = SimHost()
    c = Ctx(h)
    c.map(IOVA + (1 << 20))  # the same buffer again: its own pages object, its own pins
    afd = c.create_access()
    first = c.pin(afd, IOVA, PAGE, c.buf)
    second = c.pin(afd, IOVA + (1 << 20), 2 * PAGE, c.buf)
    assert c.pins()[:2] == [2, 1] and c.charged() == 3
    assert c.unmap(IOVA + (1 << 20), NPAGES * PAGE) == NPAGES * PAGE
    assert c.pins()[:2] == [1, 0] and c.charged() == 1
    raises(errno.ENOENT, c.unpin, afd, second)
    c.unpin(afd, first)  # the other area's pin was left alone
    assert c.pins() == [0] * NPAGES and c.charged() == 0
    finish(h)


class Deaf:
    """Access ops that ignore the unmap notification (a broken driver)."""

    needs_pin_pages = True

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def unmap(self, iova: int, length: int) -> None:
        self.calls.append((iova, length))


def test_access_ignoring_unmap_gives_edeadlock() -> None:
    h = SimHost()
    c = Ctx(h)
    ops = Deaf()
    access = iommufd_access_create(c.ictx, ops)
    access.attach(c.ioas_id)
    extents = access.pin_pages(IOVA, 2 * PAGE, IOMMUFD_ACCESS_RW_WRITE)
    assert [p for s, e in extents for p in range(s, e, PAGE)] == c.phys_pages(0, 2)
    before = (c.pins(), c.charged(), c.num_accesses())
    raises(errno.EDEADLOCK, c.unmap, IOVA, NPAGES * PAGE)
    assert len(ops.calls) == UNMAP_TRIES + 1
    assert set(ops.calls) == {(IOVA, NPAGES * PAGE)}
    # Nothing was torn down half-way: the area, its pins and charges are as they were...
    assert (c.pins(), c.charged(), c.num_accesses()) == before
    ((_, _, area),) = list(c.ioas.iopt.areas)
    # ...but, as in the kernel, the area stays closed to new pins and rw.
    assert area.prevent_access
    raises(errno.EINVAL, access.pin_pages, IOVA, PAGE, 0)
    raises(errno.EINVAL, access.read, IOVA, 16)
    access.unpin_pages(IOVA, 2 * PAGE)
    assert c.pins() == [0] * NPAGES and c.charged() == 0
    assert c.unmap(IOVA, NPAGES * PAGE) == NPAGES * PAGE
    raises(errno.EBUSY, c.destroy, access.id)  # the driver holds it
    raises(errno.EBUSY, c.destroy, c.ioas_id)  # the access holds the IOAS
    access.destroy_user()
    assert access.id not in c.ictx.objects and not c.ioas.iopt.accesses
    c.destroy(c.ioas_id)
    assert not h.kernel.sched.violations
    finish(h)


def test_replace_ioas_drops_pins_and_releases_the_old_ioas() -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access()
    c.pin(afd, IOVA, 2 * PAGE, c.buf)
    cmd = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
    h.ioctl(c.fd, I.IOMMU_IOAS_ALLOC, cmd)
    new = cmd.out_ioas_id
    raises(errno.EBUSY, c.destroy, c.ioas_id)
    c.test_cmd(I.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, afd, "access_replace_ioas", ioas_id=new)
    assert c.pins() == [0] * NPAGES and c.charged() == 0 and not c.staccess(afd).items
    assert c.unmap(IOVA, NPAGES * PAGE) == NPAGES * PAGE
    c.destroy(c.ioas_id)  # no longer used by the access
    raises(errno.ENOENT, c.pin, afd, IOVA, PAGE, 0)  # nothing mapped in the new IOAS
    raises(errno.ENOENT, c.test_cmd, I.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, afd,
           "access_replace_ioas", ioas_id=c.ioas_id)
    finish(h)


# ----- rw -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [0, I.MOCK_ACCESS_RW_SLOW_PATH])
@pytest.mark.parametrize("off,length", [(5, 17), (PAGE - 3, 9), (100, 3 * PAGE)])
def test_rw_round_trip(flags: int, off: int, length: int) -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access(flags=0)
    tmp = h.mmap(0, 4 * PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_PRIVATE | L.MAP_ANONYMOUS,
                 -1, 0)
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))
    h.poke(tmp, data)
    c.rw(afd, IOVA + off, length, tmp, flags | I.MOCK_ACCESS_RW_WRITE)
    assert h.peek(c.buf + off, length) == data
    h.poke(c.buf + off, data[::-1])
    c.rw(afd, IOVA + off, length, tmp + PAGE, flags)
    assert h.peek(tmp + PAGE, length) == data[::-1]
    # rw pins nothing it keeps, and charges nothing once done
    assert c.pins() == [0] * NPAGES and c.charged() == 0
    finish(h)


def test_rw_errors() -> None:
    h = SimHost()
    c = Ctx(h, flags=I.IOMMU_IOAS_MAP_READABLE)
    afd = c.create_access(flags=0)
    raises(errno.EPERM, c.rw, afd, IOVA, 8, c.buf + PAGE, I.MOCK_ACCESS_RW_WRITE)
    raises(errno.ENOENT, c.rw, afd, IOVA + NPAGES * PAGE - 4, 8, c.buf)  # runs off the area
    raises(errno.EINVAL, c.rw, afd, IOVA, 0, c.buf)
    raises(errno.EOPNOTSUPP, c.rw, afd, IOVA, 8, c.buf, 1 << 1)
    raises(errno.EFAULT, c.rw, afd, IOVA, 8, 0)  # copy_to_user to a bad pointer
    finish(h)


# ----- lifetime -----------------------------------------------------------------------------
def test_close_access_fd_then_iommufd() -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access()
    c.pin(afd, IOVA, 2 * PAGE, c.buf)
    h.close(afd)  # release unpins and destroys the access
    assert c.pins() == [0] * NPAGES and c.charged() == 0
    assert [o.type for o in c.ictx.objects.values() if o is not None] == ["IOAS"]
    c.destroy(c.ioas_id)
    h.close(c.fd)
    finish(h)


def test_close_iommufd_then_access_fd() -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access()
    c.pin(afd, IOVA, 2 * PAGE, c.buf)
    ictx = c.ictx
    h.close(c.fd)
    # The access holds the context: nothing is released while it lives.
    assert not ictx.released and ictx.objects and c.pins()[:2] == [1, 1]
    h.close(afd)
    assert ictx.released and not ictx.objects
    assert c.pins() == [0] * NPAGES and c.charged() == 0
    finish(h)


def test_exit_with_everything_open() -> None:
    h = SimHost()
    c = Ctx(h)
    afd = c.create_access()
    c.pin(afd, IOVA, NPAGES * PAGE, c.buf)
    c.create_access(flags=0)
    finish(h)


def test_access_counts_in_iova_alignment() -> None:
    h = SimHost()
    c = Ctx(h, mapped=False)
    assert c.ioas.iopt.iova_alignment == 1
    afd = c.create_access()
    assert c.ioas.iopt.iova_alignment == PAGE  # a pinning access needs whole pages
    h.close(afd)
    assert c.ioas.iopt.iova_alignment == 1
    finish(h)


def test_set_temp_memory_limit() -> None:
    h = SimHost()
    c = Ctx(h, mapped=False)
    c.test_cmd(I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, "memory_limit", limit=16)
    assert iommufd_test_memory_limit(h.kernel).get() == 16
    raises(errno.EINVAL, c.test_cmd, I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0,
           "memory_limit", limit=11)
    assert iommufd_test_memory_limit(h.kernel).get() == 16
    finish(h)


def test_misused_unpin_is_reported() -> None:
    h = SimHost()
    c = Ctx(h)
    access = iommufd_access_create(c.ictx, Deaf())
    access.attach(c.ioas_id)
    access.unpin_pages(IOVA, PAGE)  # never pinned: the kernel WARNs and ignores it
    assert [v.kind for v in h.kernel.sched.violations] == ["iommufd-access"]
    assert c.num_accesses() == 0
    access.destroy_user()
    finish(h)


# ----- fail_nth -----------------------------------------------------------------------------
def _setup(h: SimHost) -> Ctx:
    return Ctx(h)


def test_fail_nth_create_access() -> None:
    assert sweep(_setup, lambda h, c: c.create_access()) > 0


def _setup_access(h: SimHost) -> tuple[Ctx, int]:
    c = Ctx(h)
    return c, c.create_access()


def test_fail_nth_access_pages() -> None:
    def call(h: SimHost, ca: tuple[Ctx, int]) -> None:
        c, afd = ca
        c.pin(afd, IOVA, 2 * PAGE, c.buf)

    assert sweep(_setup_access, call) > 0


def test_fail_nth_access_rw_slow() -> None:
    def call(h: SimHost, ca: tuple[Ctx, int]) -> None:
        c, afd = ca
        c.rw(afd, IOVA + 100, 2 * PAGE, c.buf + 4 * PAGE, I.MOCK_ACCESS_RW_SLOW_PATH)

    assert sweep(_setup_access, call) > 0


def test_access_object_type() -> None:
    h = SimHost()
    c = Ctx(h, mapped=False)
    afd = c.create_access()
    access = c.staccess(afd).access
    assert isinstance(access, IommufdAccess) and access.type == "ACCESS"
    assert c.ictx.objects[access.id] is access
    finish(h)
