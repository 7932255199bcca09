"""Random iommufd object graphs against SimHost (issue 10 §4): several /dev/iommu fds, IOASes
with maps (anonymous and memfd memory, memfd and mock dma-buf MAP_FILE), copies, unmaps,
allowed and reserved ranges, options, mock devices and their domains, paging / nest-parent /
nested HWPTs, invalidation, dirty tracking, fault queues read and written, vIOMMUs with
vDEVICEs, vEVENTQs and HW queues, test accesses with pinned pages and rw, PASID attach,
dma-buf revoke, IOMMU_DESTROY of any id, close of any fd, munmap of mapped memory, raw
ioctls in the iommufd and VFIO ranges with lying size prefixes, and the VFIO compat ioctls.
Each argument is sane or garbage (``Args``).

Properties, checked at each call:

1. only OSError escapes a call (anything else propagates and fails the test);
2. a call that fails leaves :func:`iommufd_fuzz_values.snapshot` unchanged, except
   IOAS_UNMAP (and VFIO_IOMMU_UNMAP_DMA, the same iopt_unmap_iova) failing with ENOENT or
   EBUSY, which may have unmapped a prefix of the range's areas, as the kernel does
   (:func:`iommufd_fuzz_values.unmap_partial_ok`);
3. the scheduler records no violation;
4. at teardown, after host.exit(), host.leaks() is empty.

PASSTHRU_FUZZ_EXAMPLES raises the example count for a longer local run.
"""

from __future__ import annotations

import ctypes
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    invariant,
    rule,
    run_state_machine_as_test,
)

from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

from .fuzz_values import fuzz_settings
from .iommufd_fuzz_base import FAILED, RESV, RW, SCRATCH, Args, IommufdFuzzBase, mk, sz
from .iommufd_fuzz_values import (
    ACCESS_FLAGS,
    DEPTH,
    DEV_FLAGS,
    EVENT_READ,
    FIXED,
    HWPT_DATA_TYPE,
    HWPT_FLAGS,
    IOVA,
    LENGTH,
    MAP_FLAGS,
    MEMLIMIT,
    OPTION,
    PAGE,
    PAGES_FLAGS,
    PASID,
    QINDEX,
    RAW_REQUEST,
    RESERVED,
    RESPONSE_CODE,
    RW_FLAGS,
    RW_LEN,
    U64_MAX,
    VIRT_ID,
    raw_bytes,
    u32,
    u64,
)


class IommufdFuzz(IommufdFuzzBase):
    """The rules (one per kind of call) and the properties."""

    @rule(data=st.data())
    def open_iommufd(self, data: st.DataObject) -> None:
        a = Args(self, data)
        path = "/dev/iommu" if a.sane or a.draw(st.booleans()) else "/dev/iommu/x"
        flags = a.draw(st.sampled_from([L.O_RDWR, L.O_RDWR | L.O_CLOEXEC]) if a.sane
                       else st.sampled_from([L.O_RDONLY, L.O_WRONLY, L.O_RDWR]))
        self.call("open", path, flags)

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("close", a.fd())

    @rule(data=st.data())
    def mmap_buffer(self, data: st.DataObject) -> None:
        a = Args(self, data)
        n = a.draw(st.integers(1, 16)) * PAGE
        if a.draw(st.booleans()):
            ret = self.call("mmap", 0, n, RW, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        else:
            mfd = self.call("memfd_create", "iommufd-fuzz", 0)
            if mfd is FAILED:
                return
            self.call("ftruncate", mfd, n)
            ret = self.call("mmap", 0, n, RW, L.MAP_SHARED, mfd, 0)
            if a.draw(st.booleans()):
                self.call("close", mfd)
        if ret is not FAILED:
            self.bufs.append((ret, n))

    @rule(data=st.data())
    def munmap_buffer(self, data: st.DataObject) -> None:
        if not self.bufs:
            return
        a = Args(self, data)
        i = a.draw(st.integers(0, len(self.bufs) - 1))
        addr, n = self.bufs[i]
        if a.draw(st.booleans()) or n == PAGE:
            if self.call("munmap", addr, n) is not FAILED:
                self.bufs.pop(i)
        else:  # the tail half: the buffer shrinks
            half = (n // PAGE // 2) * PAGE
            if self.call("munmap", addr + half, n - half) is not FAILED:
                self.bufs[i] = (addr, half)

    @rule(data=st.data())
    def memfd(self, data: st.DataObject) -> None:
        a = Args(self, data)
        mfd = self.call("memfd_create", "iommufd-file", 0)
        if mfd is not FAILED:
            self.call("ftruncate", mfd, a.draw(st.integers(0, 16)) * PAGE)

    # ----- IOAS ------------------------------------------------------------------------------
    @rule(data=st.data())
    def ioas_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        cmd = mk(I.iommu_ioas_alloc, size=sz(I.iommu_ioas_alloc), flags=a(RESERVED))
        self.ioctl(a.ictx(), I.IOMMU_IOAS_ALLOC, a.arg(cmd))

    @rule(data=st.data())
    def ioas_map(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        va, length = a.va_len()
        flags = a(MAP_FLAGS) | (I.IOMMU_IOAS_MAP_FIXED_IOVA if a(FIXED) else 0)
        cmd = mk(I.iommu_ioas_map, size=sz(I.iommu_ioas_map), flags=flags & 0xFFFFFFFF,
                               ioas_id=a.obj(fd, "IOAS"), user_va=va, length=length,
                               iova=a(IOVA), **{RESV: a(RESERVED)})
        if self.ioctl(fd, I.IOMMU_IOAS_MAP, a.arg(cmd)) is not FAILED and cmd is not None:
            self.maps.append((fd, cmd.ioas_id, cmd.iova, va, length))

    @rule(data=st.data())
    def ioas_map_file(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        src = a.fd("memfd", "dma-buf")
        flags = a(MAP_FLAGS) | (I.IOMMU_IOAS_MAP_FIXED_IOVA if a(FIXED) else 0)
        start = a.draw(st.integers(0, 4)) * PAGE if a.sane else a.draw(u64)
        cmd = mk(I.iommu_ioas_map_file, size=sz(I.iommu_ioas_map_file), flags=flags & 0xFFFFFFFF,
                                    ioas_id=a.obj(fd, "IOAS"), fd=src,
                                    start=start, length=a(LENGTH), iova=a(IOVA))
        self.ioctl(fd, I.IOMMU_IOAS_MAP_FILE, a.arg(cmd))

    def mapped(self, a: Args) -> tuple[int, int, int]:
        """(iova, length, user va) of pages some IOAS_MAP mapped (maybe unmapped since),
        or garbage."""
        if self.maps and (a.sane or a.draw(st.booleans())):
            _, _, iova, va, length = a.draw(st.sampled_from(self.maps))
            n = max(length // PAGE, 1)
            first = a.draw(st.integers(0, n - 1))
            k = a.draw(st.integers(1, n - first))
            return iova + first * PAGE, k * PAGE, va + first * PAGE
        va, length = a.va_len()
        return a(IOVA), length, va

    def areas(self, fd: int, ioas: int) -> list[tuple[int, int]]:
        obj = getattr(self.host.proc.fds.get(fd), "objects", {}).get(ioas)
        iopt = getattr(obj, "iopt", None)
        return [] if iopt is None else [(x.iova, x.last) for _, _, x in iopt.areas]

    def range_of(self, a: Args, fd: int, ioas: int) -> tuple[int, int]:
        """An (iova, length): exactly some areas, a part of one, or garbage."""
        areas = self.areas(fd, ioas)
        how = a.draw(st.sampled_from(["areas", "areas", "split", "wild"]))
        if areas and how == "areas":
            i = a.draw(st.integers(0, len(areas) - 1))
            j = a.draw(st.integers(i, len(areas) - 1))
            return areas[i][0], areas[j][1] - areas[i][0] + 1
        if areas and how == "split":
            s, e = a.draw(st.sampled_from(areas))
            lo = a.draw(st.integers(max(s - 4 * PAGE, 0), e))
            hi = a.draw(st.integers(lo, e + 4 * PAGE))
            return lo & ~(PAGE - 1), ((hi - lo) | (PAGE - 1)) + 1
        return a(IOVA), a(LENGTH)

    @rule(data=st.data())
    def ioas_unmap(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        ioas = a.obj(fd, "IOAS")
        if a.draw(st.integers(0, 4)) == 0:
            iova, length = 0, U64_MAX
        else:
            iova, length = self.range_of(a, fd, ioas)
        cmd = mk(I.iommu_ioas_unmap, size=sz(I.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                 length=length)
        if not a.sane and a.draw(st.booleans()):  # a lie in the size only: a struct still
            cmd.size = a.draw(st.sampled_from([0, 8, 16, 24, 32, 64]))
        self.ioctl(fd, I.IOMMU_IOAS_UNMAP, cmd)

    @rule(data=st.data())
    def ioas_copy(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        src = a.obj(fd, "IOAS")
        src_iova, length = self.range_of(a, fd, src)
        flags = a(MAP_FLAGS) | (I.IOMMU_IOAS_MAP_FIXED_IOVA if a(FIXED) else 0)
        cmd = mk(I.iommu_ioas_copy, size=sz(I.iommu_ioas_copy), flags=flags & 0xFFFFFFFF,
                                dst_ioas_id=a.obj(fd, "IOAS"), src_ioas_id=src, length=length,
                                dst_iova=a(IOVA), src_iova=src_iova)
        self.ioctl(fd, I.IOMMU_IOAS_COPY, a.arg(cmd))

    @rule(data=st.data())
    def allow_iovas(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        n = a.draw(st.integers(0, 3))
        ranges = []
        for _ in range(n):
            s = a(IOVA)
            ranges.append((s, s + a(LENGTH) - 1 if a.sane else a.draw(u64)))
        if a.sane:
            ranges.sort()
        raw = b"".join(I.iommu_iova_range(start=s % (1 << 64), last=e % (1 << 64))
                       for s, e in ranges)
        cmd = mk(I.iommu_ioas_allow_iovas, size=sz(I.iommu_ioas_allow_iovas),
                                       ioas_id=a.obj(fd, "IOAS"),
                                       num_iovas=n if a.sane else a.draw(st.one_of(
                                           st.just(n), u32)),
                                       allowed_iovas=a.uptr(len(raw)) if n else 0)
        if n and cmd.allowed_iovas == self.scratch + self._scratch_off - max(len(raw), 1):
            self.host.poke(cmd.allowed_iovas, raw)
        self.ioctl(fd, I.IOMMU_IOAS_ALLOW_IOVAS, a.arg(cmd))

    @rule(data=st.data())
    def iova_ranges(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        n = a.draw(st.integers(0, 4)) if a.sane else a.draw(u32)
        cmd = mk(I.iommu_ioas_iova_ranges, size=sz(I.iommu_ioas_iova_ranges),
                                       ioas_id=a.obj(fd, "IOAS"), num_iovas=n,
                                       allowed_iovas=a.uptr(16 * min(n, 8)))
        self.ioctl(fd, I.IOMMU_IOAS_IOVA_RANGES, a.arg(cmd))

    @rule(data=st.data())
    def option(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        opt, op, val = a(OPTION)
        cmd = mk(I.iommu_option, size=sz(I.iommu_option), option_id=opt, op=op,
                             object_id=a.obj(fd, "IOAS") if opt == I.IOMMU_OPTION_HUGE_PAGES
                             else 0, val64=val)
        self.ioctl(fd, I.IOMMU_OPTION, a.arg(cmd))

    @rule(data=st.data())
    def add_reserved(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        self.test_cmd(a, fd, I.IOMMU_TEST_OP_ADD_RESERVED, a.obj(fd, "IOAS"), "add_reserved",
                      start=a(IOVA), length=a(LENGTH))

    @rule(data=st.data())
    def vfio_ioas(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        cmd = mk(I.iommu_vfio_ioas, size=sz(I.iommu_vfio_ioas), ioas_id=a.obj(fd, "IOAS"),
                                op=a.draw(st.integers(0, 2) if a.sane else u32))
        self.ioctl(fd, I.IOMMU_VFIO_IOAS, a.arg(cmd))

    @rule(data=st.data())
    def change_process(self, data: st.DataObject) -> None:
        a = Args(self, data)
        cmd = mk(I.iommu_ioas_change_process, size=sz(I.iommu_ioas_change_process))
        self.ioctl(a.ictx(), I.IOMMU_IOAS_CHANGE_PROCESS, a.arg(cmd))

    # ----- mock devices and HWPTs -------------------------------------------------------------
    @rule(data=st.data())
    def mock_domain(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        pt = a.obj(fd, "IOAS", "HWPT_PAGING", "HWPT_NESTED")
        if a.draw(st.booleans()):
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_MOCK_DOMAIN, pt)
        else:
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, "mock_domain_flags",
                          dev_flags=a(DEV_FLAGS))

    @rule(data=st.data())
    def mock_domain_replace(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        self.test_cmd(a, fd, I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, a.obj(fd, "SELFTEST"),
                      "mock_domain_replace",
                      pt_id=a.obj(fd, "IOAS", "HWPT_PAGING", "HWPT_NESTED"))

    @rule(data=st.data())
    def hwpt_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        flags = a(HWPT_FLAGS)
        nested = a.draw(st.booleans())
        dtype = I.IOMMU_HWPT_DATA_SELFTEST if nested else a(HWPT_DATA_TYPE)
        pt = a.obj(fd, "HWPT_PAGING", "VIOMMU") if nested else a.obj(fd, "IOAS")
        data_len, uptr = 0, 0
        if dtype == I.IOMMU_HWPT_DATA_SELFTEST or a.garbage():
            blob = bytes(mk(I.iommu_hwpt_selftest, iotlb=I.IOMMU_TEST_IOTLB_DEFAULT,
                                               pagetable_type=a.draw(st.integers(0, 1))))
            if a.garbage():
                blob = a.draw(st.binary(max_size=24))
            data_len = len(blob) if a.sane else a.draw(st.one_of(st.just(len(blob)), u32))
            uptr = a.uptr(len(blob))
            if uptr >= self.scratch and uptr < self.scratch + SCRATCH - len(blob):
                self.host.poke(uptr, blob)
        fault = 0
        if flags & I.IOMMU_HWPT_FAULT_ID_VALID or a.draw(st.integers(0, 3)) == 0:
            fault = a.obj(fd, "FAULT")
            if a.sane:
                flags |= I.IOMMU_HWPT_FAULT_ID_VALID
        cmd = mk(I.iommu_hwpt_alloc, size=sz(I.iommu_hwpt_alloc), flags=flags & 0xFFFFFFFF,
                                 dev_id=a.obj(fd, "DEVICE"), pt_id=pt, data_type=dtype,
                                 data_len=data_len, data_uptr=uptr, fault_id=fault)
        self.ioctl(fd, I.IOMMU_HWPT_ALLOC, a.arg(cmd))

    @rule(data=st.data())
    def hwpt_invalidate(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        target = a.obj(fd, "HWPT_NESTED", "VIOMMU")
        obj = getattr(self.host.proc.fds.get(fd), "objects", {}).get(target)
        viommu = getattr(obj, "type", "") == "VIOMMU"
        n = a.draw(st.integers(0, 3))
        if viommu:
            dtype = I.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
            entries = [mk(I.iommu_viommu_invalidate_selftest,
                flags=a.draw(st.integers(0, 1) if a.sane else u32),
                vdev_id=a.draw(st.integers(0, 4)), cache_id=a.draw(st.integers(0, 4)))
                for _ in range(n)]
        else:
            dtype = I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
            entries = [mk(I.iommu_hwpt_invalidate_selftest,
                flags=a.draw(st.integers(0, 1) if a.sane else u32),
                iotlb_id=a.draw(st.integers(0, 4))) for _ in range(n)]
        if a.garbage():
            dtype = a.draw(st.sampled_from([I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
                                            I.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1]) | u32)
        raw = b"".join(bytes(e) for e in entries)
        elen = ctypes.sizeof(entries[0]) if entries else 8
        if a.garbage():
            elen = a.draw(st.one_of(st.integers(0, 32), u32))
        uptr = a.uptr(len(raw) + 64)
        if raw and self.scratch <= uptr < self.scratch + SCRATCH - len(raw):
            self.host.poke(uptr, raw)
        cmd = mk(I.iommu_hwpt_invalidate, size=sz(I.iommu_hwpt_invalidate), hwpt_id=target,
                                      data_uptr=uptr, data_type=dtype & 0xFFFFFFFF,
                                      entry_len=elen, entry_num=n if a.sane else a.draw(
                                          st.one_of(st.just(n), u32)))
        self.ioctl(fd, I.IOMMU_HWPT_INVALIDATE, a.arg(cmd))

    @rule(data=st.data())
    def dirty_tracking(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        hwpt = a.obj(fd, "HWPT_PAGING")
        what = a.draw(st.sampled_from(["set", "get", "mock"]))
        if what == "set":
            cmd = mk(I.iommu_hwpt_set_dirty_tracking,
                size=sz(I.iommu_hwpt_set_dirty_tracking), hwpt_id=hwpt,
                flags=a.draw(st.integers(0, 1) if a.sane else u32))
            self.ioctl(fd, I.IOMMU_HWPT_SET_DIRTY_TRACKING, a.arg(cmd))
            return
        iova, length = a(IOVA), a(LENGTH)
        psize = a.draw(st.sampled_from([PAGE, I.MOCK_PAGE_SIZE]) if a.sane else u64)
        bitmap = a.uptr(128)
        if what == "get":
            cmd2 = mk(I.iommu_hwpt_get_dirty_bitmap,
                size=sz(I.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt,
                flags=a.draw(st.sampled_from([0, I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR])
                             if a.sane else u32),
                iova=iova, length=length, page_size=psize, data=bitmap)
            self.ioctl(fd, I.IOMMU_HWPT_GET_DIRTY_BITMAP, a.arg(cmd2))
        else:
            self.host.poke(self.scratch_alloc(128), b"\xff" * 128)
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_DIRTY, hwpt, "dirty", iova=iova,
                          length=length, page_size=psize, uptr=bitmap)

    @rule(data=st.data())
    def get_hw_info(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        n = a.draw(st.integers(0, 16))
        cmd = mk(I.iommu_hw_info, size=sz(I.iommu_hw_info), dev_id=a.obj(fd, "DEVICE"),
                              data_len=n if a.sane else a.draw(u32), data_uptr=a.uptr(n))
        self.ioctl(fd, I.IOMMU_GET_HW_INFO, a.arg(cmd))

    # ----- fault queues, vIOMMU ------------------------------------------------------------
    @rule(data=st.data())
    def fault_queue_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        cmd = mk(I.iommu_fault_alloc, size=sz(I.iommu_fault_alloc), flags=a(RESERVED))
        self.ioctl(a.ictx(), I.IOMMU_FAULT_QUEUE_ALLOC, a.arg(cmd))

    @rule(data=st.data())
    def trigger_event(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        if a.draw(st.booleans()):
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_TRIGGER_IOPF, 0, "trigger_iopf",
                          dev_id=a.obj(fd, "DEVICE"), pasid=a.draw(st.integers(0, 2)),
                          grpid=2, perm=I.IOMMU_PGFAULT_PERM_READ, addr=0xDEADBEEF)
        else:
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_TRIGGER_VEVENT, 0, "trigger_vevent",
                          dev_id=a.obj(fd, "DEVICE"))

    @rule(data=st.data())
    def eventq_read(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("read", a.fd("iommufd-eventq"), a(EVENT_READ))

    @rule(data=st.data())
    def eventq_write(self, data: st.DataObject) -> None:
        a = Args(self, data)
        n = a.draw(st.integers(0, 3))
        raw = b"".join(bytes(mk(I.iommu_hwpt_page_response,
            cookie=a.draw(st.integers(0, 4) if a.sane else u32), code=a(RESPONSE_CODE)))
            for _ in range(n))
        if not a.sane:
            raw += a.draw(st.binary(max_size=7))
        self.call("write", a.fd("iommufd-eventq"), raw)

    @rule(data=st.data())
    def viommu_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        blob = bytes(mk(I.iommu_viommu_selftest, in_data=0xBAADF00D))
        with_data = a.draw(st.booleans())
        vtype = I.IOMMU_VIOMMU_TYPE_SELFTEST
        if a.garbage():
            vtype = a.draw(st.sampled_from([I.IOMMU_VIOMMU_TYPE_DEFAULT,
                                            I.IOMMU_VIOMMU_TYPE_ARM_SMMUV3]) | u32)
        uptr = self.scratch_alloc(len(blob), blob) if with_data else 0
        if with_data and a.garbage():
            uptr = a.uptr(len(blob))
        cmd = mk(I.iommu_viommu_alloc, size=sz(I.iommu_viommu_alloc), flags=a(RESERVED),
                                   type=vtype, dev_id=a.obj(fd, "DEVICE"),
                                   hwpt_id=a.obj(fd, "HWPT_PAGING"),
                                   data_len=len(blob) if with_data else 0, data_uptr=uptr)
        self.ioctl(fd, I.IOMMU_VIOMMU_ALLOC, a.arg(cmd))

    @rule(data=st.data())
    def vdevice_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        cmd = mk(I.iommu_vdevice_alloc, size=sz(I.iommu_vdevice_alloc),
                                    viommu_id=a.obj(fd, "VIOMMU"), dev_id=a.obj(fd, "DEVICE"),
                                    virt_id=a(VIRT_ID))
        self.ioctl(fd, I.IOMMU_VDEVICE_ALLOC, a.arg(cmd))

    @rule(data=st.data())
    def veventq_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        vtype = I.IOMMU_VEVENTQ_TYPE_SELFTEST if a.sane else a.draw(st.sampled_from(
            [I.IOMMU_VEVENTQ_TYPE_SELFTEST, I.IOMMU_VEVENTQ_TYPE_DEFAULT]) | u32)
        cmd = mk(I.iommu_veventq_alloc, size=sz(I.iommu_veventq_alloc),
                                    flags=a(RESERVED), viommu_id=a.obj(fd, "VIOMMU"),
                                    type=vtype, veventq_depth=a(DEPTH))
        self.ioctl(fd, I.IOMMU_VEVENTQ_ALLOC, a.arg(cmd))

    @rule(data=st.data())
    def hw_queue_alloc(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        vtype = I.IOMMU_HW_QUEUE_TYPE_SELFTEST if a.sane else a.draw(st.sampled_from(
            [I.IOMMU_HW_QUEUE_TYPE_SELFTEST, I.IOMMU_HW_QUEUE_TYPE_DEFAULT]) | u32)
        cmd = mk(I.iommu_hw_queue_alloc, size=sz(I.iommu_hw_queue_alloc), flags=a(RESERVED),
                                     viommu_id=a.obj(fd, "VIOMMU"), type=vtype,
                                     index=a(QINDEX), nesting_parent_iova=a(IOVA),
                                     length=a(LENGTH))
        self.ioctl(fd, I.IOMMU_HW_QUEUE_ALLOC, a.arg(cmd))

    # ----- accesses, PASID, dma-buf ---------------------------------------------------------
    @rule(data=st.data())
    def create_access(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        self.test_cmd(a, fd, I.IOMMU_TEST_OP_CREATE_ACCESS, a.obj(fd, "IOAS"), "create_access",
                      flags=a(ACCESS_FLAGS))

    @rule(data=st.data())
    def access_replace_ioas(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        self.test_cmd(a, fd, I.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS,
                      a.fd("iommufd_test_staccess"), "access_replace_ioas",
                      ioas_id=a.obj(fd, "IOAS"))

    @rule(data=st.data())
    def access_pages(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        afd = a.fd("iommufd_test_staccess")
        iova, length, uptr = self.mapped(a)
        cmd = self.test_cmd(a, fd, I.IOMMU_TEST_OP_ACCESS_PAGES, afd, "access_pages",
                            flags=a(PAGES_FLAGS), iova=iova, length=length, uptr=uptr)
        if cmd is not FAILED:
            self.pages_ids.append((afd, cmd.access_pages.out_access_pages_id))

    @rule(data=st.data())
    def destroy_access_pages(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        if self.pages_ids and (a.sane or a.draw(st.booleans())):
            afd, pid = a.draw(st.sampled_from(self.pages_ids))
        else:
            afd, pid = a.fd("iommufd_test_staccess"), a.draw(u32)
        self.test_cmd(a, fd, I.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, afd,
                      "destroy_access_pages", access_pages_id=pid)

    @rule(data=st.data())
    def access_rw(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        n = a(RW_LEN)
        iova = self.mapped(a)[0] if a.draw(st.booleans()) else a(IOVA)
        self.test_cmd(a, fd, I.IOMMU_TEST_OP_ACCESS_RW, a.fd("iommufd_test_staccess"),
                      "access_rw", iova=iova + a.draw(st.integers(0, 3)) * 1000,
                      length=n, uptr=a.uptr(min(n, SCRATCH)), flags=a(RW_FLAGS))

    @rule(data=st.data())
    def pasid(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        stdev = a.obj(fd, "SELFTEST")
        pt = a.obj(fd, "HWPT_PAGING", "HWPT_NESTED", "IOAS")
        op = a.draw(st.sampled_from(["attach", "replace", "detach", "check"]))
        if op == "attach":
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_PASID_ATTACH, stdev, "pasid_attach",
                          pasid=a(PASID), pt_id=pt)
        elif op == "replace":
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_PASID_REPLACE, stdev, "pasid_replace",
                          pasid=a(PASID), pt_id=pt)
        elif op == "detach":
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_PASID_DETACH, stdev, "pasid_detach",
                          pasid=a(PASID))
        else:
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev, "pasid_check",
                          pasid=a(PASID), hwpt_id=pt)

    @rule(data=st.data())
    def check_ops(self, data: st.DataObject) -> None:
        """The mock's check ops: read-only, fail with EINVAL on a mismatch."""
        a = Args(self, data)
        fd = a.ictx()
        op = a.draw(st.sampled_from(["map", "refs", "iotlb", "cache"]))
        if op == "map":
            iova, length, va = self.mapped(a)
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_MD_CHECK_MAP, a.obj(fd, "HWPT_PAGING", "IOAS"),
                          "check_map", iova=iova, length=length, uptr=va)
        elif op == "refs":
            va, length = a.va_len()
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_MD_CHECK_REFS, 0, "check_refs",
                          length=length, uptr=va, refs=a.draw(st.integers(0, 2)))
        elif op == "iotlb":
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_MD_CHECK_IOTLB, a.obj(fd, "HWPT_NESTED"),
                          "check_iotlb", id=a.draw(st.integers(0, 4)),
                          iotlb=I.IOMMU_TEST_IOTLB_DEFAULT)
        else:
            self.test_cmd(a, fd, I.IOMMU_TEST_OP_DEV_CHECK_CACHE, a.obj(fd, "DEVICE"),
                          "check_dev_cache", id=a.draw(st.integers(0, 4)), cache=0)

    @rule(data=st.data())
    def memory_limit(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.test_cmd(a, a.ictx(), I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, "memory_limit",
                      limit=a(MEMLIMIT))

    @rule(data=st.data())
    def dmabuf_get(self, data: st.DataObject) -> None:
        a = Args(self, data)
        cmd = mk(I.iommu_test_cmd, size=sz(I.iommu_test_cmd), op=I.IOMMU_TEST_OP_DMABUF_GET)
        cmd.dmabuf_get.length = a(LENGTH)
        cmd.dmabuf_get.open_flags = a.draw(st.sampled_from([L.O_CLOEXEC, 0, L.O_RDWR])
                                           if a.sane else u32)
        self.ioctl(a.ictx(), I.IOMMU_TEST_CMD, a.arg(cmd))

    @rule(data=st.data())
    def dmabuf_revoke(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.test_cmd(a, a.ictx(), I.IOMMU_TEST_OP_DMABUF_REVOKE, 0, "dmabuf_revoke",
                      dmabuf_fd=a.fd("dma-buf") & 0xFFFFFFFF,
                      revoked=a.draw(st.integers(0, 1) if a.sane else u32))

    # ----- destroy, raw, compat --------------------------------------------------------------
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.ictx()
        objs = getattr(self.host.proc.fds.get(fd), "objects", {})
        leaves = [i for i, o in sorted(objs.items()) if o is not None and o.users.peek() == 1]
        oid = a.draw(st.sampled_from(leaves)) if leaves and a.draw(st.booleans()) else a.obj(fd)
        cmd = mk(I.iommu_destroy, size=sz(I.iommu_destroy), id=oid)
        self.ioctl(fd, I.IOMMU_DESTROY, a.arg(cmd))

    @rule(data=st.data())
    def raw_ioctl(self, data: st.DataObject) -> None:
        a = Args(self, data)
        req = a.draw(RAW_REQUEST)
        raw = a.draw(raw_bytes())
        if a.draw(st.booleans()):
            arg: Any = raw
        else:  # through a user pointer: the kernel reads what the size prefix says
            arg = self.scratch_alloc(len(raw), bytes(raw))
        self.ioctl(a.fd("iommufd"), req, arg)

    @rule(data=st.data())
    def vfio_compat(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.fd("iommufd")
        what = a.draw(st.sampled_from(["version", "ext", "set", "info", "map", "unmap"]))
        if what == "version":
            self.ioctl(fd, V.VFIO_GET_API_VERSION, 0)
        elif what == "ext":
            self.ioctl(fd, V.VFIO_CHECK_EXTENSION, a.draw(st.integers(0, 12) | u32))
        elif what == "set":
            self.ioctl(fd, V.VFIO_SET_IOMMU, a.draw(st.sampled_from(
                [V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU]) if a.sane else u32))
        elif what == "info":
            info = mk(V.vfio_iommu_type1_info, argsz=a.draw(st.sampled_from(
                [sz(V.vfio_iommu_type1_info), 16]) if a.sane else u32))
            self.ioctl(fd, V.VFIO_IOMMU_GET_INFO, a.arg(info))
        elif what == "map":
            va, length = a.va_len()
            m = mk(V.vfio_iommu_type1_dma_map,
                argsz=sz(V.vfio_iommu_type1_dma_map),
                flags=a.draw(st.integers(0, 3) if a.sane else u32), vaddr=va, iova=a(IOVA),
                size=length)
            self.ioctl(fd, V.VFIO_IOMMU_MAP_DMA, a.arg(m))
        else:
            ioas = getattr(getattr(self.host.proc.fds.get(fd), "vfio_ioas", None), "id", 0)
            iova, length = self.range_of(a, fd, ioas)
            flags = a.draw(st.sampled_from([0, V.VFIO_DMA_UNMAP_FLAG_ALL]) if a.sane else u32)
            if flags == V.VFIO_DMA_UNMAP_FLAG_ALL and a.sane:
                iova = length = 0
            u = mk(V.vfio_iommu_type1_dma_unmap, argsz=sz(V.vfio_iommu_type1_dma_unmap),
                                             flags=flags, iova=iova, size=length)
            self.ioctl(fd, V.VFIO_IOMMU_UNMAP_DMA, u)

    # ----- properties ------------------------------------------------------------------------
    @invariant()
    def no_violation(self) -> None:
        assert not self.host.sched.violations, self.host.sched.violations

    def teardown(self) -> None:
        host = self.host
        host.exit()
        assert not host.sched.violations, host.sched.violations
        assert not host.proc.fds and not host.proc.mm.vmas
        assert host.leaks() == [], host.leaks()


SETTINGS = fuzz_settings(300)


def test_iommufd_fuzz() -> None:
    run_state_machine_as_test(IommufdFuzz, settings=SETTINGS)
