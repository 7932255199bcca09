"""Helpers for the iommufd conformance tests: a Python port of the selftest's iommufd_utils.h
(tools/testing/selftests/iommu), written against the Host protocol only.

``Iommufd(host)`` opens /dev/iommu and owns the selftest's globals: ``buffer`` (BUFFER_SIZE =
16 pages of shared anonymous memory, aligned to 2 MiB like the selftest's posix_memalign) and
a scratch area from which ``put`` hands out user pointers for arrays and data blobs (filled
with ``poke``, read back with ``peek``), so the same test runs on SimHost and LinuxHost.

The CONFIG_IOMMUFD_TEST mock (IOMMU_TEST_CMD) is probed once per LinuxHost the first time a
test needs it: ENOTTY means the running kernel was built without CONFIG_IOMMUFD_TEST and the
linux variant skips, naming the config. SimHost never skips: the model must provide the mock.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

import pytest

from passthru.host.linux import LinuxHost
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

from ._probe import PAGE

NODE = "/dev/iommu"
RW = L.PROT_READ | L.PROT_WRITE
SHARED_ANON = L.MAP_SHARED | L.MAP_ANONYMOUS
BUFFER_SIZE = 16 * PAGE
HUGEPAGE_SIZE = 2 << 20
MOCK_PAGE_SIZE = I.MOCK_PAGE_SIZE  # PAGE_SIZE / 2
U64_MAX = (1 << 64) - 1
MAP_RW = I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE
CONFIG_SKIP = ("the running kernel has no CONFIG_IOMMUFD_TEST (IOMMU_TEST_CMD is ENOTTY): "
               "the iommufd mock device these cases need is absent")

_mock_probe: dict[int, bool] = {}


def raises(err: int, fn, *args, **kw) -> OSError:
    """``fn(*args, **kw)`` must fail with ``err``."""
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == err, f"expected {errno.errorcode.get(err, err)}, got {e.value!r}"
    return e.value


def is_linux(host: Any) -> bool:
    return isinstance(host, LinuxHost)


def ffs_align(length: int) -> int:
    """1 << (ffs(length) - 1): the largest power of two dividing ``length``."""
    return length & -length


class Iommufd:
    """One open /dev/iommu plus the selftest's buffers. Methods are the selftest's helpers:
    each returns what the C helper writes through its out pointers and raises OSError with
    the kernel's errno."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.fd = host.open(NODE, L.O_RDWR)
        raw = host.mmap(0, HUGEPAGE_SIZE + BUFFER_SIZE, RW, SHARED_ANON, -1, 0)
        self.buffer = (raw + HUGEPAGE_SIZE - 1) & ~(HUGEPAGE_SIZE - 1)
        self.scratch = host.mmap(0, 64 * PAGE, RW, SHARED_ANON, -1, 0)
        self._scratch_off = 0

    # -- user memory ---------------------------------------------------------------------
    def put(self, data: bytes | ctypes.Structure | ctypes.Array, align: int = 64) -> int:  # type: ignore[type-arg]
        """Copy ``data`` into fresh scratch memory; its user address."""
        raw = bytes(data)
        off = (self._scratch_off + align - 1) & ~(align - 1)
        if off + len(raw) > 64 * PAGE:
            off = 0
        self._scratch_off = off + max(len(raw), 1)
        addr = self.scratch + off
        if raw:
            self.host.poke(addr, raw)
        return addr

    def alloc(self, n: int, fill: int = 0, align: int = 64) -> int:
        return self.put(bytes([fill]) * n, align)

    def peek(self, addr: int, n: int) -> bytes:
        return self.host.peek(addr, n)

    def poke(self, addr: int, data: bytes) -> None:
        self.host.poke(addr, data)

    def mmap_anon(self, length: int, flags: int = SHARED_ANON) -> int:
        return self.host.mmap(0, length, RW, flags, -1, 0)

    # -- plain ioctls ----------------------------------------------------------------------
    def ioctl(self, request: int, arg: Any = 0) -> int:
        return self.host.ioctl(self.fd, request, arg)

    def close(self) -> None:
        self.host.close(self.fd)

    def destroy(self, obj_id: int) -> None:
        self.ioctl(I.IOMMU_DESTROY, I.iommu_destroy(size=ctypes.sizeof(I.iommu_destroy), id=obj_id))

    def ioas_alloc(self) -> int:
        cmd = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        self.ioctl(I.IOMMU_IOAS_ALLOC, cmd)
        assert cmd.out_ioas_id != 0
        return cmd.out_ioas_id

    def ioas_map(self, ioas: int, va: int, length: int, iova: int | None = None,
                 flags: int = MAP_RW) -> int:
        """IOAS_MAP; FIXED_IOVA when ``iova`` is given. The IOVA used."""
        if iova is not None:
            flags |= I.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd = I.iommu_ioas_map(size=ctypes.sizeof(I.iommu_ioas_map), flags=flags, ioas_id=ioas,
                               user_va=va, length=length, iova=iova or 0)
        self.ioctl(I.IOMMU_IOAS_MAP, cmd)
        return cmd.iova

    def ioas_map_file(self, ioas: int, mfd: int, start: int, length: int,
                      iova: int | None = None, flags: int = MAP_RW) -> int:
        if iova is not None:
            flags |= I.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd = I.iommu_ioas_map_file(size=ctypes.sizeof(I.iommu_ioas_map_file), flags=flags,
                                    ioas_id=ioas, fd=mfd, start=start, length=length,
                                    iova=iova or 0)
        self.ioctl(I.IOMMU_IOAS_MAP_FILE, cmd)
        return cmd.iova

    def ioas_unmap(self, ioas: int, iova: int, length: int) -> int:
        """IOAS_UNMAP; the length unmapped (written back by the kernel)."""
        cmd = I.iommu_ioas_unmap(size=ctypes.sizeof(I.iommu_ioas_unmap), ioas_id=ioas, iova=iova,
                                 length=length)
        self.ioctl(I.IOMMU_IOAS_UNMAP, cmd)
        return cmd.length

    def iova_ranges(self, ioas: int, num: int, addr: int | None = None) -> I.iommu_ioas_iova_ranges:
        if addr is None:
            addr = self.alloc(max(num, 1) * 16)
        cmd = I.iommu_ioas_iova_ranges(size=ctypes.sizeof(I.iommu_ioas_iova_ranges), ioas_id=ioas,
                                       num_iovas=num, allowed_iovas=addr)
        self.ioctl(I.IOMMU_IOAS_IOVA_RANGES, cmd)
        return cmd

    def read_ranges(self, addr: int, n: int) -> list[tuple[int, int]]:
        arr = (I.iommu_iova_range * n).from_buffer_copy(self.peek(addr, 16 * n))
        return [(r.start, r.last) for r in arr]

    def allow_iovas(self, ioas: int, ranges: list[tuple[int, int]]) -> None:
        arr = (I.iommu_iova_range * len(ranges))(
            *[I.iommu_iova_range(start=s, last=e) for s, e in ranges])
        cmd = I.iommu_ioas_allow_iovas(size=ctypes.sizeof(I.iommu_ioas_allow_iovas), ioas_id=ioas,
                                       num_iovas=len(ranges),
                                       allowed_iovas=self.put(arr) if ranges else 0)
        self.ioctl(I.IOMMU_IOAS_ALLOW_IOVAS, cmd)

    def ioas_copy(self, dst: int, src: int, length: int, src_iova: int,
                  dst_iova: int | None = None, flags: int = I.IOMMU_IOAS_MAP_WRITEABLE) -> int:
        if dst_iova is not None:
            flags |= I.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd = I.iommu_ioas_copy(size=ctypes.sizeof(I.iommu_ioas_copy), flags=flags, dst_ioas_id=dst,
                                src_ioas_id=src, length=length, dst_iova=dst_iova or 0,
                                src_iova=src_iova)
        self.ioctl(I.IOMMU_IOAS_COPY, cmd)
        return cmd.dst_iova

    def option(self, option_id: int, op: int, object_id: int = 0, val64: int = 0) -> int:
        cmd = I.iommu_option(size=ctypes.sizeof(I.iommu_option), option_id=option_id, op=op,
                             object_id=object_id, val64=val64)
        self.ioctl(I.IOMMU_OPTION, cmd)
        return cmd.val64

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0,
                   data_type: int = I.IOMMU_HWPT_DATA_NONE, data: Any = None,
                   data_len: int | None = None, fault_id: int = 0,
                   data_uptr: int | None = None) -> int:
        if data_uptr is None:
            data_uptr = self.put(data) if data is not None else 0
        if data_len is None:
            data_len = ctypes.sizeof(data) if data is not None else 0
        cmd = I.iommu_hwpt_alloc(size=ctypes.sizeof(I.iommu_hwpt_alloc), flags=flags & 0xFFFFFFFF,
                                 dev_id=dev_id, pt_id=pt_id, data_type=data_type,
                                 data_len=data_len, data_uptr=data_uptr, fault_id=fault_id)
        self.ioctl(I.IOMMU_HWPT_ALLOC, cmd)
        return cmd.out_hwpt_id

    def hwpt_alloc_nested(self, dev_id: int, pt_id: int, flags: int = 0, **kw: Any) -> int:
        kw.setdefault("data_type", I.IOMMU_HWPT_DATA_SELFTEST)
        kw.setdefault("data", I.iommu_hwpt_selftest(iotlb=I.IOMMU_TEST_IOTLB_DEFAULT))
        return self.hwpt_alloc(dev_id, pt_id, flags, **kw)

    def invalidate(self, hwpt_id: int, reqs: list[Any] | None, data_type: int, entry_len: int,
                   entry_num: int, uptr: int | None = None) -> tuple[int, int]:
        """HWPT_INVALIDATE: (errno or 0, entry_num written back). ``reqs`` None: NULL array."""
        if uptr is None:
            uptr = 0 if reqs is None else self.put(b"".join(bytes(r) for r in reqs) + bytes(PAGE))
        cmd = I.iommu_hwpt_invalidate(size=ctypes.sizeof(I.iommu_hwpt_invalidate),
                                      hwpt_id=hwpt_id, data_uptr=uptr, data_type=data_type,
                                      entry_len=entry_len, entry_num=entry_num)
        try:
            self.ioctl(I.IOMMU_HWPT_INVALIDATE, cmd)
        except OSError as e:
            return e.errno, cmd.entry_num
        return 0, cmd.entry_num

    def get_hw_info(self, dev_id: int, data_len: int = 0, data_type: int = 0,
                    uptr: int | None = None) -> I.iommu_hw_info:
        if uptr is None:
            uptr = self.alloc(data_len, fill=0xAA) if data_len else 0
        cmd = I.iommu_hw_info(size=ctypes.sizeof(I.iommu_hw_info), dev_id=dev_id,
                              data_len=data_len, data_uptr=uptr)
        if data_type != I.IOMMU_HW_INFO_TYPE_DEFAULT:
            cmd.flags = I.IOMMU_HW_INFO_FLAG_INPUT_TYPE
            cmd.in_data_type = data_type
        self.ioctl(I.IOMMU_GET_HW_INFO, cmd)
        return cmd

    def set_dirty_tracking(self, hwpt_id: int, enable: bool) -> None:
        cmd = I.iommu_hwpt_set_dirty_tracking(
            size=ctypes.sizeof(I.iommu_hwpt_set_dirty_tracking), hwpt_id=hwpt_id,
            flags=I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0)
        self.ioctl(I.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd)

    def get_dirty_bitmap(self, hwpt_id: int, length: int, iova: int, page_size: int, bitmap: int,
                         flags: int = 0) -> None:
        cmd = I.iommu_hwpt_get_dirty_bitmap(
            size=ctypes.sizeof(I.iommu_hwpt_get_dirty_bitmap), hwpt_id=hwpt_id, flags=flags,
            iova=iova, length=length, page_size=page_size, data=bitmap)
        self.ioctl(I.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)

    def fault_alloc(self) -> tuple[int, int]:
        cmd = I.iommu_fault_alloc(size=ctypes.sizeof(I.iommu_fault_alloc))
        self.ioctl(I.IOMMU_FAULT_QUEUE_ALLOC, cmd)
        assert cmd.out_fault_id and cmd.out_fault_fd
        return cmd.out_fault_id, cmd.out_fault_fd

    def viommu_alloc(self, dev_id: int, hwpt_id: int, vtype: int = I.IOMMU_VIOMMU_TYPE_SELFTEST,
                     data: Any = None, flags: int = 0) -> int:
        """VIOMMU_ALLOC; ``data`` (a struct) is updated from user memory afterwards."""
        uptr = self.put(data) if data is not None else 0
        cmd = I.iommu_viommu_alloc(size=ctypes.sizeof(I.iommu_viommu_alloc), flags=flags,
                                   type=vtype, dev_id=dev_id, hwpt_id=hwpt_id,
                                   data_len=ctypes.sizeof(data) if data is not None else 0,
                                   data_uptr=uptr)
        self.ioctl(I.IOMMU_VIOMMU_ALLOC, cmd)
        if data is not None:
            ctypes.memmove(ctypes.addressof(data), self.peek(uptr, ctypes.sizeof(data)),
                           ctypes.sizeof(data))
        return cmd.out_viommu_id

    def vdevice_alloc(self, viommu_id: int, dev_id: int, virt_id: int) -> int:
        cmd = I.iommu_vdevice_alloc(size=ctypes.sizeof(I.iommu_vdevice_alloc), viommu_id=viommu_id,
                                    dev_id=dev_id, virt_id=virt_id)
        self.ioctl(I.IOMMU_VDEVICE_ALLOC, cmd)
        return cmd.out_vdevice_id

    def hw_queue_alloc(self, viommu_id: int, qtype: int, index: int, iova: int,
                       length: int) -> int:
        cmd = I.iommu_hw_queue_alloc(size=ctypes.sizeof(I.iommu_hw_queue_alloc),
                                     viommu_id=viommu_id, type=qtype, index=index,
                                     nesting_parent_iova=iova, length=length)
        self.ioctl(I.IOMMU_HW_QUEUE_ALLOC, cmd)
        return cmd.out_hw_queue_id

    def veventq_alloc(self, viommu_id: int, depth: int = 2,
                      vtype: int = I.IOMMU_VEVENTQ_TYPE_SELFTEST) -> tuple[int, int]:
        cmd = I.iommu_veventq_alloc(size=ctypes.sizeof(I.iommu_veventq_alloc), viommu_id=viommu_id,
                                    type=vtype, veventq_depth=depth)
        self.ioctl(I.IOMMU_VEVENTQ_ALLOC, cmd)
        return cmd.out_veventq_id, cmd.out_veventq_fd

    # -- IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST) ----------------------------------------------
    def has_mock(self) -> bool:
        """Does the kernel have CONFIG_IOMMUFD_TEST? SimHost: always (the model must)."""
        if not is_linux(self.host):
            return True
        key = id(self.host)
        if key not in _mock_probe:
            cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd),
                                   op=I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT)
            cmd.memory_limit.limit = 65536
            try:
                self.ioctl(I.IOMMU_TEST_CMD, cmd)
                _mock_probe[key] = True
            except OSError as e:
                if e.errno != errno.ENOTTY:
                    raise
                _mock_probe[key] = False
        return _mock_probe[key]

    def need_mock(self) -> None:
        """Skip (LinuxHost only) when the kernel has no CONFIG_IOMMUFD_TEST."""
        if not self.has_mock():
            pytest.skip(CONFIG_SKIP)

    def test_cmd(self, op: int, obj_id: int = 0, member: str | None = None,
                 **fields: int) -> I.iommu_test_cmd:
        """IOMMU_TEST_CMD ``op`` on object ``obj_id`` with ``member``'s ``fields`` set; the
        command after the call (out fields filled)."""
        self.need_mock()
        cmd = self.make_test_cmd(op, obj_id, member, **fields)
        self.ioctl(I.IOMMU_TEST_CMD, cmd)
        return cmd

    @staticmethod
    def make_test_cmd(op: int, obj_id: int = 0, member: str | None = None,
                      **fields: int) -> I.iommu_test_cmd:
        cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd), op=op, id=obj_id)
        if member is not None:
            sub = getattr(cmd, member)
            for k, v in fields.items():
                setattr(sub, k, v)
        return cmd

    def test_cmd_ret(self, op: int, obj_id: int = 0, member: str | None = None,
                     **fields: int) -> int:
        """IOMMU_TEST_CMD whose result is the ioctl's return value (an fd)."""
        self.need_mock()
        return self.ioctl(I.IOMMU_TEST_CMD, self.make_test_cmd(op, obj_id, member, **fields))

    def set_temp_memory_limit(self, limit: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, "memory_limit", limit=limit)

    def set_default_memory_limit(self) -> None:
        self.set_temp_memory_limit(65536)

    def mock_domain(self, pt_id: int) -> tuple[int, int, int]:
        """(stdev_id, hwpt_id, idev_id) of a new mock device attached to ``pt_id``."""
        c = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id).mock_domain
        return c.out_stdev_id, c.out_hwpt_id, c.out_idev_id

    def mock_domain_flags(self, pt_id: int, dev_flags: int) -> tuple[int, int, int]:
        c = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id, "mock_domain_flags",
                          dev_flags=dev_flags).mock_domain_flags
        return c.out_stdev_id, c.out_hwpt_id, c.out_idev_id

    def mock_domain_replace(self, stdev_id: int, pt_id: int) -> int:
        return self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev_id, "mock_domain_replace",
                             pt_id=pt_id).mock_domain_replace.pt_id

    def add_reserved(self, ioas: int, start: int, length: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_ADD_RESERVED, ioas, "add_reserved", start=start,
                      length=length)

    def check_map(self, hwpt_id: int, iova: int, length: int, uptr: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt_id, "check_map", iova=iova,
                      length=length, uptr=uptr)

    def check_refs(self, uptr: int, length: int, refs: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_REFS, 0, "check_refs", length=length, uptr=uptr,
                      refs=refs)

    def check_iotlb(self, hwpt_id: int, iotlb_id: int, expected: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt_id, "check_iotlb", id=iotlb_id,
                      iotlb=expected)

    def check_iotlb_all(self, hwpt_id: int, expected: int) -> None:
        for i in range(I.MOCK_NESTED_DOMAIN_IOTLB_NUM):
            self.check_iotlb(hwpt_id, i, expected)

    def check_dev_cache(self, dev_id: int, cache_id: int, expected: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_DEV_CHECK_CACHE, dev_id, "check_dev_cache", id=cache_id,
                      cache=expected)

    def check_dev_cache_all(self, dev_id: int, expected: int) -> None:
        for i in range(I.MOCK_DEV_CACHE_NUM):
            self.check_dev_cache(dev_id, i, expected)

    def create_access(self, ioas: int, flags: int = 0) -> int:
        """A test access on ``ioas``; its id is an fd (close it to destroy the access)."""
        return self.test_cmd(I.IOMMU_TEST_OP_CREATE_ACCESS, ioas, "create_access",
                             flags=flags).create_access.out_access_fd

    def destroy_access(self, access_fd: int) -> None:
        self.host.close(access_fd)

    def access_pages(self, access_fd: int, iova: int, length: int, uptr: int,
                     flags: int = 0) -> int:
        return self.test_cmd(I.IOMMU_TEST_OP_ACCESS_PAGES, access_fd, "access_pages", flags=flags,
                             iova=iova, length=length, uptr=uptr).access_pages.out_access_pages_id

    def destroy_access_pages(self, access_fd: int, pages_id: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, access_fd, "destroy_access_pages",
                      access_pages_id=pages_id)

    def access_rw(self, access_fd: int, iova: int, length: int, uptr: int,
                  flags: int = 0) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_ACCESS_RW, access_fd, "access_rw", iova=iova,
                      length=length, uptr=uptr, flags=flags)

    def access_replace_ioas(self, access_fd: int, ioas: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, access_fd, "access_replace_ioas",
                      ioas_id=ioas)

    def mock_set_dirty(self, hwpt_id: int, length: int, iova: int, page_size: int,
                       bitmap: int) -> int:
        return self.test_cmd(I.IOMMU_TEST_OP_DIRTY, hwpt_id, "dirty", iova=iova, length=length,
                             page_size=page_size, uptr=bitmap).dirty.out_nr_dirty

    def trigger_iopf(self, dev_id: int, pasid: int, fault_fd: int) -> None:
        """The selftest's _test_cmd_trigger_iopf: inject, read the fault, answer it."""
        self.test_cmd(I.IOMMU_TEST_OP_TRIGGER_IOPF, 0, "trigger_iopf", dev_id=dev_id, pasid=pasid,
                      grpid=0x2, perm=I.IOMMU_PGFAULT_PERM_READ | I.IOMMU_PGFAULT_PERM_WRITE,
                      addr=0xDEADBEAF)
        raw = self.host.read(fault_fd, ctypes.sizeof(I.iommu_hwpt_pgfault))
        assert len(raw) == ctypes.sizeof(I.iommu_hwpt_pgfault)
        fault = I.iommu_hwpt_pgfault.from_buffer_copy(raw)
        assert fault.dev_id == dev_id and fault.addr == 0xDEADBEAF
        resp = I.iommu_hwpt_page_response(cookie=fault.cookie,
                                          code=I.IOMMUFD_PAGE_RESP_SUCCESS)
        assert self.host.write(fault_fd, bytes(resp)) == ctypes.sizeof(resp)

    def trigger_vevent(self, dev_id: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_TRIGGER_VEVENT, 0, "trigger_vevent", dev_id=dev_id)

    def pasid_attach(self, stdev_id: int, pasid: int, pt_id: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_PASID_ATTACH, stdev_id, "pasid_attach", pasid=pasid,
                      pt_id=pt_id)

    def pasid_replace(self, stdev_id: int, pasid: int, pt_id: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_PASID_REPLACE, stdev_id, "pasid_replace", pasid=pasid,
                      pt_id=pt_id)

    def pasid_detach(self, stdev_id: int, pasid: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_PASID_DETACH, stdev_id, "pasid_detach", pasid=pasid)

    def pasid_check_hwpt(self, stdev_id: int, pasid: int, hwpt_id: int) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev_id, "pasid_check", pasid=pasid,
                      hwpt_id=hwpt_id)

    def get_dmabuf(self, length: int) -> int:
        """IOMMU_TEST_OP_DMABUF_GET's return value: the new fd before 7.3, 0 on 7.3 (the fd is
        installed all the same; test_iommufd_dmabuf.get_dmabuf finds it)."""
        return self.test_cmd_ret(I.IOMMU_TEST_OP_DMABUF_GET, 0, "dmabuf_get", length=length,
                                 open_flags=L.O_CLOEXEC)

    def revoke_dmabuf(self, dmabuf_fd: int, revoked: bool) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_DMABUF_REVOKE, 0, "dmabuf_revoke", dmabuf_fd=dmabuf_fd,
                      revoked=int(revoked))

    def teardown(self) -> None:
        """The selftest's teardown_iommufd: close, reopen, and check that no page of
        ``buffer`` is still pinned (MD_CHECK_REFS refs 0; only where the mock exists)."""
        mock = self.has_mock()  # probed (once per host) while the fd is still open
        self.host.close(self.fd)
        if not mock:
            return
        fd = self.host.open(NODE, L.O_RDWR)
        try:
            cmd = self.make_test_cmd(I.IOMMU_TEST_OP_MD_CHECK_REFS, 0, "check_refs",
                                     length=BUFFER_SIZE, uptr=self.buffer, refs=0)
            self.host.ioctl(fd, I.IOMMU_TEST_CMD, cmd)
        finally:
            self.host.close(fd)


def mock_fixture_setup(host: Any) -> Iommufd:
    """An Iommufd whose linux variant skips without CONFIG_IOMMUFD_TEST, memory limit at the
    selftest's default."""
    ctx = Iommufd(host)
    ctx.need_mock()
    ctx.set_default_memory_limit()
    return ctx
