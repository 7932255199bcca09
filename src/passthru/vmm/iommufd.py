"""iommufd for a VMM: /dev/iommu, IOAS, HW page tables, vIOMMUs and vDEVICEs, plus the
CONFIG_IOMMUFD_TEST mock ops, in the shape of rust-vmm's iommufd crate and QEMU's iommufd
backend.

:class:`Iommufd` is the /dev/iommu fd (rust-vmm iommufd-ioctls' ``IommuFd``; QEMU's
``IOMMUFDBackend``), :class:`Ioas` an IO address space (``iommufd_backend_alloc_ioas``,
``iommufd_backend_map_dma`` / ``iommufd_backend_map_file_dma`` / ``iommufd_backend_unmap_dma``),
:class:`Hwpt` a HW page table (``iommufd_backend_alloc_hwpt``, ``..._set_dirty_tracking``,
``..._get_dirty_bitmap``, ``..._invalidate_cache``), :class:`Viommu` and :class:`Vdevice`
(``iommufd_backend_alloc_viommu`` / ``iommufd_backend_alloc_vdev``). They call nothing but the
Host protocol with the structs and request numbers of passthru.uapi.iommufd, so the same code
runs on SimHost (the model of drivers/iommu/iommufd/) and LinuxHost (the real kernel).

Kernel side: drivers/iommu/iommufd/ (main.c, ioas.c, hw_pagetable.c, viommu.c). Every
object is an id in the context's table; ``close()`` of its wrapper is IOMMU_DESTROY of that id.
User pointers inside arguments (IOVA range arrays, data blobs, invalidation arrays, dirty
bitmaps, ACCESS_RW buffers) point into a scratch ``host.mmap`` filled and read with
``host.poke``/``host.peek`` (never a Python buffer address), unmapped before the call returns.

Mock test ops (drivers/iommu/iommufd/selftest.c, only on a kernel with CONFIG_IOMMUFD_TEST;
elsewhere IOMMU_TEST_CMD is ENOTTY, see :meth:`Iommufd.has_test_ops`): :class:`MockDomain`
(IOMMU_TEST_OP_MOCK_DOMAIN: a mock device bound and attached to an IOAS or HWPT; its close
destroys the selftest device, which detaches and unbinds it), :class:`MockAccess`
(IOMMU_TEST_OP_CREATE_ACCESS: an emulated-device access, an fd; pin/unpin/rw), and
``check_map``, ``check_refs``, ``add_reserved``, ``set_temp_memory_limit`` on the Iommufd.

Ownership (passthru.vmm._resource): the Iommufd owns what it made, a vIOMMU its vDEVICEs;
``close()`` destroys them newest first (a HWPT before the IOAS it refers to), keeps going past
a failure, closes the fd, then raises the first error. An object whose Iommufd fd is closed is
not destroyed again (it died with the context). Units: bytes; IOVA ranges are inclusive
(start, last) pairs, as in the uAPI.

Errors: the host's OSError with the kernel's errno, unchanged; misuse of a wrapper (a closed
object, a bad argument shape) is ValueError. Left out: IOMMU_VFIO_IOAS, fault queues,
vEVENTQs, HW queues, IOAS_CHANGE_PROCESS, the PASID and dma-buf test ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Union

from ..host.protocol import Host
from ..uapi import iommufd as I
from ..uapi import linux as L
from ._resource import Resource

__all__ = ["HwInfo", "Hwpt", "Ioas", "Iommufd", "MockAccess", "MockDomain", "Vdevice",
           "Viommu"]

U64_MAX = (1 << 64) - 1
_RANGE_SIZE = ctypes.sizeof(I.iommu_iova_range)
_SCRATCH_FLAGS = L.MAP_SHARED | L.MAP_ANONYMOUS
_PROT_RW = L.PROT_READ | L.PROT_WRITE

ObjRef = Union[int, "_Object"]
Blob = Union[bytes, bytearray, ctypes.Structure, ctypes.Array]  # type: ignore[type-arg]


def _id(obj: ObjRef) -> int:
    """The object id of a wrapper or of a plain int id."""
    if isinstance(obj, _Object):
        obj._check_open()
        return obj.id
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    raise ValueError(f"expected an iommufd object id or wrapper, got {obj!r}")


def _map_flags(iova: int | None, readable: bool, writeable: bool) -> int:
    return ((I.IOMMU_IOAS_MAP_READABLE if readable else 0)
            | (I.IOMMU_IOAS_MAP_WRITEABLE if writeable else 0)
            | (I.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0))


def _sized(struct: type[ctypes.Structure], **fields: Any) -> Any:
    return struct(size=ctypes.sizeof(struct), **fields)


@contextlib.contextmanager
def _scratch(host: Host, n: int, data: bytes = b"") -> Iterator[int]:
    """User memory of the calling process for ``n`` bytes (page-rounded, at least a page),
    holding ``data`` at its start; unmapped on exit."""
    length = max(L.PAGE_SIZE, (n + L.PAGE_SIZE - 1) & ~(L.PAGE_SIZE - 1))
    addr = int(host.mmap(0, length, _PROT_RW, _SCRATCH_FLAGS, -1, 0))
    try:
        if data:
            host.poke(addr, bytes(data))
        yield addr
    finally:
        host.munmap(addr, length)


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO: ``data_type`` the IOMMU_HW_INFO_TYPE_* of ``data`` (the driver's
    info struct, at most the requested length), ``capabilities`` IOMMU_HW_CAP_* bits,
    ``max_pasid_log2`` the PASID width (0: no PASID), ``data_len`` the driver's full length."""

    data_type: int
    data: bytes
    data_len: int
    capabilities: int
    max_pasid_log2: int

    @property
    def dirty_tracking(self) -> bool:
        """Whether the IOMMU tracks dirty pages (IOMMU_HW_CAP_DIRTY_TRACKING)."""
        return bool(self.capabilities & I.IOMMU_HW_CAP_DIRTY_TRACKING)

    @property
    def max_pasids(self) -> int:
        """How many PASIDs the device can use (0: no PASID support)."""
        return 1 << self.max_pasid_log2 if self.max_pasid_log2 else 0


class Iommufd(Resource):
    """The /dev/iommu fd (rust-vmm ``IommuFd``; QEMU ``iommufd_backend_connect``)."""

    def __init__(self, host: Host, path: str = "/dev/iommu") -> None:
        super().__init__(host)
        self.path = path
        self.fd = int(host.open(path, L.O_RDWR | L.O_CLOEXEC))
        self._has_test_ops: bool | None = None

    def __repr__(self) -> str:
        return f"<Iommufd fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    def close(self, *, children: bool = True) -> None:
        """Destroy what this Iommufd made (newest first, continuing past failures), close the
        fd, then raise the first error, if any. ``children=False`` leaves the wrappers open
        (their objects die with the fd)."""
        if self.closed:
            return
        errors: list[OSError] = []
        for kid in reversed(list(self._children) if children else []):
            try:
                kid.close()
            except OSError as e:
                errors.append(e)
        try:
            super().close(children=children)
        except OSError as e:
            errors.append(e)
        if errors:
            raise errors[0]

    def ioctl(self, request: int, arg: Any) -> int:
        """One iommufd ioctl on this fd (the host's OSError propagates unchanged)."""
        self._check_open()
        return int(self.host.ioctl(self.fd, request, arg))

    # -- objects -----------------------------------------------------------------------------
    def destroy(self, obj: ObjRef | MockAccess) -> None:
        """IOMMU_DESTROY: a wrapper is closed (and so destroyed; a MockAccess's fd closed); a
        plain id destroyed as is."""
        if isinstance(obj, (_Object, MockAccess)):
            obj.close()
            return
        self.ioctl(I.IOMMU_DESTROY, _sized(I.iommu_destroy, id=_id(obj)))

    def alloc_ioas(self) -> Ioas:
        """IOMMU_IOAS_ALLOC (QEMU ``iommufd_backend_alloc_ioas``)."""
        cmd = _sized(I.iommu_ioas_alloc)
        self.ioctl(I.IOMMU_IOAS_ALLOC, cmd)
        return self._adopt(Ioas(self, int(cmd.out_ioas_id)))

    def alloc_hwpt(self, dev_id: int, pt_id: ObjRef, flags: int = 0,
                   data_type: int = I.IOMMU_HWPT_DATA_NONE, data: Blob = b"",
                   fault_id: int = 0) -> Hwpt:
        """IOMMU_HWPT_ALLOC on device ``dev_id`` over ``pt_id`` (an IOAS: a paging domain; a
        nesting-parent HWPT or a vIOMMU with ``data``: a nested one). QEMU
        ``iommufd_backend_alloc_hwpt``; rust-vmm ``alloc_iommu_hwpt``."""
        raw = bytes(data)
        if fault_id:
            flags |= I.IOMMU_HWPT_FAULT_ID_VALID
        with _scratch(self.host, len(raw), raw) as uptr:
            cmd = _sized(I.iommu_hwpt_alloc, flags=flags, dev_id=dev_id, pt_id=_id(pt_id),
                         data_type=data_type, data_len=len(raw),
                         data_uptr=uptr if raw else 0, fault_id=fault_id)
            self.ioctl(I.IOMMU_HWPT_ALLOC, cmd)
        return self._adopt(Hwpt(self, int(cmd.out_hwpt_id)))

    def alloc_viommu(self, dev_id: int, hwpt_id: ObjRef,
                     viommu_type: int = I.IOMMU_VIOMMU_TYPE_DEFAULT, data: Blob = b"",
                     flags: int = 0) -> Viommu:
        """IOMMU_VIOMMU_ALLOC over nesting-parent ``hwpt_id`` for the IOMMU of ``dev_id``;
        the driver may write into ``data`` (read back as ``Viommu.data``). QEMU
        ``iommufd_backend_alloc_viommu``."""
        raw = bytes(data)
        with _scratch(self.host, len(raw), raw) as uptr:
            cmd = _sized(I.iommu_viommu_alloc, flags=flags, type=viommu_type, dev_id=dev_id,
                         hwpt_id=_id(hwpt_id), data_len=len(raw),
                         data_uptr=uptr if raw else 0)
            self.ioctl(I.IOMMU_VIOMMU_ALLOC, cmd)
            out = bytes(self.host.peek(uptr, len(raw))) if raw else b""
        return self._adopt(Viommu(self, int(cmd.out_viommu_id), out))

    def get_hw_info(self, dev_id: int, data_len: int = 256,
                    data_type: int = I.IOMMU_HW_INFO_TYPE_DEFAULT) -> HwInfo:
        """IOMMU_GET_HW_INFO of device ``dev_id`` (QEMU ``iommufd_backend_get_device_info``);
        ``data_type`` other than DEFAULT asks for that type (IOMMU_HW_INFO_FLAG_INPUT_TYPE)."""
        with _scratch(self.host, data_len) as uptr:
            cmd = _sized(I.iommu_hw_info, dev_id=dev_id, data_len=data_len,
                         data_uptr=uptr if data_len else 0)
            if data_type != I.IOMMU_HW_INFO_TYPE_DEFAULT:
                cmd.flags = I.IOMMU_HW_INFO_FLAG_INPUT_TYPE
                cmd.in_data_type = data_type
            self.ioctl(I.IOMMU_GET_HW_INFO, cmd)
            n = min(data_len, int(cmd.data_len))
            data = bytes(self.host.peek(uptr, n)) if n else b""
        return HwInfo(int(cmd.out_data_type), data, int(cmd.data_len),
                      int(cmd.out_capabilities), int(cmd.out_max_pasid_log2))

    # -- options -------------------------------------------------------------------------------
    def option(self, option_id: int, op: int, object_id: int = 0, val64: int = 0) -> int:
        """IOMMU_OPTION; the val64 the kernel wrote back (the value, for OP_GET)."""
        cmd = _sized(I.iommu_option, option_id=option_id, op=op, object_id=object_id,
                     val64=val64)
        self.ioctl(I.IOMMU_OPTION, cmd)
        return int(cmd.val64)

    @property
    def rlimit_mode(self) -> bool:
        """IOMMU_OPTION_RLIMIT_MODE: True when pins are charged to the mm (RLIMIT_MEMLOCK per
        process), False when to the user. Setting it needs CAP_SYS_RESOURCE and no objects."""
        return bool(self.option(I.IOMMU_OPTION_RLIMIT_MODE, I.IOMMU_OPTION_OP_GET))

    @rlimit_mode.setter
    def rlimit_mode(self, per_mm: bool) -> None:
        self.option(I.IOMMU_OPTION_RLIMIT_MODE, I.IOMMU_OPTION_OP_SET, val64=int(per_mm))

    # -- per-id operations (the wrappers delegate here) -----------------------------------------
    def invalidate(self, obj_id: ObjRef, data_type: int, entries: Iterable[Blob],
                   entry_len: int | None = None) -> int:
        """IOMMU_HWPT_INVALIDATE on a nested HWPT or a vIOMMU: ``entries`` (structs or bytes,
        all ``entry_len`` long, default the first one's size) as one array; the number of
        entries the kernel handled (written back in entry_num)."""
        blobs = [bytes(e) for e in entries]
        if entry_len is None:
            entry_len = len(blobs[0]) if blobs else 0
        if any(len(b) != entry_len for b in blobs):
            raise ValueError(f"invalidate: every entry must be {entry_len} bytes")
        raw = b"".join(blobs)
        with _scratch(self.host, len(raw), raw) as uptr:
            cmd = _sized(I.iommu_hwpt_invalidate, hwpt_id=_id(obj_id),
                         data_uptr=uptr if raw else 0, data_type=data_type,
                         entry_len=entry_len, entry_num=len(blobs))
            self.ioctl(I.IOMMU_HWPT_INVALIDATE, cmd)
        return int(cmd.entry_num)

    def set_dirty_tracking(self, hwpt_id: ObjRef, enable: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING (QEMU ``iommufd_backend_set_dirty_tracking``)."""
        flags = I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0
        self.ioctl(I.IOMMU_HWPT_SET_DIRTY_TRACKING,
                   _sized(I.iommu_hwpt_set_dirty_tracking, flags=flags, hwpt_id=_id(hwpt_id)))

    def get_dirty_bitmap(self, hwpt_id: ObjRef, iova: int, length: int, page_size: int,
                         flags: int = 0) -> bytes:
        """IOMMU_HWPT_GET_DIRTY_BITMAP over ``[iova, iova + length)``: the bitmap, one bit
        per ``page_size`` (bit i of the little-endian u64 words is ``iova + i * page_size``),
        rounded up to whole u64 words. ``flags`` NO_CLEAR keeps the dirty bits set. QEMU
        ``iommufd_backend_get_dirty_bitmap``."""
        if page_size <= 0:
            raise ValueError(f"get_dirty_bitmap: page_size {page_size} must be > 0")
        nbits = (length + page_size - 1) // page_size
        nbytes = ((nbits + 63) // 64) * 8
        with _scratch(self.host, nbytes) as uptr:
            cmd = _sized(I.iommu_hwpt_get_dirty_bitmap, hwpt_id=_id(hwpt_id), flags=flags,
                         iova=iova, length=length, page_size=page_size, data=uptr)
            self.ioctl(I.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)
            return bytes(self.host.peek(uptr, nbytes)) if nbytes else b""

    # -- CONFIG_IOMMUFD_TEST (selftest.c) --------------------------------------------------------
    def test_cmd(self, op: int, obj_id: int = 0, member: str | None = None,
                 **fields: int) -> Any:
        """IOMMU_TEST_CMD ``op`` on ``obj_id`` with union ``member``'s ``fields`` set; the
        command after the call (out fields filled). ENOTTY without CONFIG_IOMMUFD_TEST."""
        cmd = _sized(I.iommu_test_cmd, op=op, id=obj_id)
        if member is not None:
            sub = getattr(cmd, member)
            for k, v in fields.items():
                setattr(sub, k, v)
        self.ioctl(I.IOMMU_TEST_CMD, cmd)
        return cmd

    def has_test_ops(self) -> bool:
        """Whether the kernel has CONFIG_IOMMUFD_TEST (IOMMU_TEST_CMD is not ENOTTY), probed
        once with SET_TEMP_MEMORY_LIMIT to the selftest's default (65536 pages)."""
        if self._has_test_ops is None:
            try:
                self.set_temp_memory_limit(65536)
                self._has_test_ops = True
            except OSError as e:
                self._has_test_ops = e.errno != errno.ENOTTY
        return self._has_test_ops

    def set_temp_memory_limit(self, limit: int) -> None:
        """IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: the pages a test may pin (selftest.c)."""
        self.test_cmd(I.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, "memory_limit", limit=limit)

    def mock_domain(self, pt_id: ObjRef, dev_flags: int | None = None) -> MockDomain:
        """IOMMU_TEST_OP_MOCK_DOMAIN (or _FLAGS with ``dev_flags``, MOCK_FLAGS_DEVICE_*): a
        mock device bound to this context and attached to ``pt_id`` (an IOAS: an automatic
        mock HWPT; or a HWPT). The selftest's ``test_cmd_mock_domain``."""
        if dev_flags is None:
            cmd = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN, _id(pt_id))
            out = cmd.mock_domain
        else:
            cmd = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, _id(pt_id),
                                "mock_domain_flags", dev_flags=dev_flags)
            out = cmd.mock_domain_flags
        return self._adopt(MockDomain(self, int(out.out_stdev_id), int(out.out_hwpt_id),
                                      int(out.out_idev_id)))

    def create_access(self, ioas: ObjRef, flags: int = 0) -> MockAccess:
        """IOMMU_TEST_OP_CREATE_ACCESS on ``ioas`` (``flags`` MOCK_FLAGS_ACCESS_*): an
        emulated-device access, returned as an fd (close it to destroy the access)."""
        cmd = self.test_cmd(I.IOMMU_TEST_OP_CREATE_ACCESS, _id(ioas), "create_access",
                            flags=flags)
        return self._adopt(MockAccess(self, int(cmd.create_access.out_access_fd)))

    def check_map(self, hwpt_id: ObjRef, iova: int, length: int, uptr: int) -> None:
        """IOMMU_TEST_OP_MD_CHECK_MAP: the mock domain ``hwpt_id`` maps ``[iova, +length)``
        to the pages behind user address ``uptr`` (EINVAL if not)."""
        self.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, _id(hwpt_id), "check_map", iova=iova,
                      length=length, uptr=uptr)

    def check_refs(self, uptr: int, length: int, refs: int) -> None:
        """IOMMU_TEST_OP_MD_CHECK_REFS: every page of ``[uptr, +length)`` has ``refs``
        extra pin references (EINVAL if not)."""
        self.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_REFS, 0, "check_refs", length=length,
                      uptr=uptr, refs=refs)

    def add_reserved(self, ioas: ObjRef, start: int, length: int) -> None:
        """IOMMU_TEST_OP_ADD_RESERVED: reserve ``[start, +length)`` in ``ioas``."""
        self.test_cmd(I.IOMMU_TEST_OP_ADD_RESERVED, _id(ioas), "add_reserved", start=start,
                      length=length)


class _Object(Resource):
    """One object id of an Iommufd; ``close()`` is IOMMU_DESTROY (skipped when the Iommufd's
    fd is already closed: the kernel freed the object with the context)."""

    kind = "object"

    def __init__(self, iommufd: Iommufd, obj_id: int) -> None:
        super().__init__(iommufd.host)
        self.iommufd = iommufd
        self.id = obj_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        if not self.iommufd.closed:
            self.iommufd.ioctl(I.IOMMU_DESTROY, _sized(I.iommu_destroy, id=self.id))


class Ioas(_Object):
    """An IO address space (IOMMU_IOAS_ALLOC; drivers/iommu/iommufd/ioas.c)."""

    def map(self, user_va: int, length: int, iova: int | None = None, readable: bool = True,
            writeable: bool = True) -> int:
        """IOMMU_IOAS_MAP of user memory ``[user_va, +length)``; with ``iova`` at that IOVA
        (FIXED_IOVA), else where the kernel finds room. The IOVA used. QEMU
        ``iommufd_backend_map_dma``; rust-vmm ``map_iommu_ioas``."""
        self._check_open()
        cmd = _sized(I.iommu_ioas_map, flags=_map_flags(iova, readable, writeable),
                     ioas_id=self.id, user_va=user_va, length=length, iova=iova or 0)
        self.iommufd.ioctl(I.IOMMU_IOAS_MAP, cmd)
        return int(cmd.iova)

    def map_file(self, fd: Any, start: int, length: int, iova: int | None = None,
                 readable: bool = True, writeable: bool = True) -> int:
        """IOMMU_IOAS_MAP_FILE of ``[start, +length)`` of a memfd (``fd`` an int or a Memfd);
        the IOVA used. QEMU ``iommufd_backend_map_file_dma``."""
        self._check_open()
        cmd = _sized(I.iommu_ioas_map_file, flags=_map_flags(iova, readable, writeable),
                     ioas_id=self.id, fd=int(getattr(fd, "fd", fd)), start=start, length=length,
                     iova=iova or 0)
        self.iommufd.ioctl(I.IOMMU_IOAS_MAP_FILE, cmd)
        return int(cmd.iova)

    def unmap(self, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP of ``[iova, +length)`` (whole areas only); the bytes unmapped.
        QEMU ``iommufd_backend_unmap_dma``; rust-vmm ``unmap_iommu_ioas``."""
        self._check_open()
        cmd = _sized(I.iommu_ioas_unmap, ioas_id=self.id, iova=iova, length=length)
        self.iommufd.ioctl(I.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def unmap_all(self) -> int:
        """IOMMU_IOAS_UNMAP with iova 0 and length U64_MAX: everything; the bytes unmapped."""
        return self.unmap(0, U64_MAX)

    def copy(self, src_ioas: ObjRef, src_iova: int, length: int, dst_iova: int | None = None,
             readable: bool = True, writeable: bool = True) -> int:
        """IOMMU_IOAS_COPY of ``[src_iova, +length)`` of ``src_ioas`` into this IOAS (the
        same pages, pinned once); the destination IOVA."""
        self._check_open()
        cmd = _sized(I.iommu_ioas_copy, flags=_map_flags(dst_iova, readable, writeable),
                     dst_ioas_id=self.id, src_ioas_id=_id(src_ioas), length=length,
                     dst_iova=dst_iova or 0, src_iova=src_iova)
        self.iommufd.ioctl(I.IOMMU_IOAS_COPY, cmd)
        return int(cmd.dst_iova)

    def _ranges(self) -> tuple[list[tuple[int, int]], int]:
        num = 4
        for _ in range(16):
            with _scratch(self.host, num * _RANGE_SIZE) as uptr:
                cmd = _sized(I.iommu_ioas_iova_ranges, ioas_id=self.id, num_iovas=num,
                             allowed_iovas=uptr)
                try:
                    self.iommufd.ioctl(I.IOMMU_IOAS_IOVA_RANGES, cmd)
                except OSError as e:
                    if e.errno != errno.EMSGSIZE:
                        raise
                    num = max(int(cmd.num_iovas), num * 2)  # grow and ask again (as QEMU)
                    continue
                n = int(cmd.num_iovas)
                raw = bytes(self.host.peek(uptr, n * _RANGE_SIZE)) if n else b""
                out = [I.iommu_iova_range.from_buffer_copy(raw, i * _RANGE_SIZE)
                       for i in range(n)]
                return [(int(r.start), int(r.last)) for r in out], int(cmd.out_iova_alignment)
        raise OSError(errno.EMSGSIZE, "IOMMU_IOAS_IOVA_RANGES: the range count kept growing")

    def iova_ranges(self) -> list[tuple[int, int]]:
        """IOMMU_IOAS_IOVA_RANGES: the usable IOVA ranges as inclusive (start, last) pairs
        (the array grows and the call repeats on EMSGSIZE, as QEMU's
        iommufd_cdev_get_info_iova_range does)."""
        self._check_open()
        return self._ranges()[0]

    @property
    def iova_alignment(self) -> int:
        """IOMMU_IOAS_IOVA_RANGES' out_iova_alignment: the IOVA and length granule mappings
        must respect (the largest page size of the attached domains)."""
        self._check_open()
        return self._ranges()[1]

    def allow_iovas(self, ranges: Iterable[tuple[int, int]]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: only these inclusive (start, last) ranges may be allocated
        automatically (an empty list lifts the restriction)."""
        self._check_open()
        spans = [(int(s), int(e)) for s, e in ranges]
        arr = (I.iommu_iova_range * len(spans))(
            *[I.iommu_iova_range(start=s, last=e) for s, e in spans])
        raw = bytes(arr)
        with _scratch(self.host, len(raw), raw) as uptr:
            cmd = _sized(I.iommu_ioas_allow_iovas, ioas_id=self.id, num_iovas=len(spans),
                         allowed_iovas=uptr if spans else 0)
            self.iommufd.ioctl(I.IOMMU_IOAS_ALLOW_IOVAS, cmd)

    @property
    def huge_pages(self) -> bool:
        """IOMMU_OPTION_HUGE_PAGES of this IOAS (whether areas may use huge IOMMU pages)."""
        self._check_open()
        return bool(self.iommufd.option(I.IOMMU_OPTION_HUGE_PAGES, I.IOMMU_OPTION_OP_GET,
                                        object_id=self.id))

    @huge_pages.setter
    def huge_pages(self, on: bool) -> None:
        self._check_open()
        self.iommufd.option(I.IOMMU_OPTION_HUGE_PAGES, I.IOMMU_OPTION_OP_SET,
                            object_id=self.id, val64=int(on))

    def add_reserved(self, start: int, length: int) -> None:
        """IOMMU_TEST_OP_ADD_RESERVED on this IOAS (CONFIG_IOMMUFD_TEST)."""
        self.iommufd.add_reserved(self, start, length)


class _Invalidatable(_Object):
    def invalidate(self, data_type: int, entries: Iterable[Blob],
                   entry_len: int | None = None) -> int:
        """IOMMU_HWPT_INVALIDATE with this id (a nested HWPT's or a vIOMMU's caches); the
        entries handled. QEMU ``iommufd_backend_invalidate_cache``."""
        self._check_open()
        return self.iommufd.invalidate(self, data_type, entries, entry_len)


class Hwpt(_Invalidatable):
    """A HW page table (IOMMU_HWPT_ALLOC; drivers/iommu/iommufd/hw_pagetable.c)."""

    def set_dirty_tracking(self, enable: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING (needs IOMMU_HWPT_ALLOC_DIRTY_TRACKING)."""
        self._check_open()
        self.iommufd.set_dirty_tracking(self, enable)

    def get_dirty_bitmap(self, iova: int, length: int, page_size: int,
                         flags: int = 0) -> bytes:
        """IOMMU_HWPT_GET_DIRTY_BITMAP (see :meth:`Iommufd.get_dirty_bitmap`)."""
        self._check_open()
        return self.iommufd.get_dirty_bitmap(self, iova, length, page_size, flags)


class Viommu(_Invalidatable):
    """A vIOMMU (IOMMU_VIOMMU_ALLOC; drivers/iommu/iommufd/viommu.c); ``data`` is the
    driver data as the kernel left it (e.g. iommu_viommu_selftest.out_data)."""

    def __init__(self, iommufd: Iommufd, obj_id: int, data: bytes = b"") -> None:
        super().__init__(iommufd, obj_id)
        self.data = data

    def alloc_vdevice(self, dev_id: int, virt_id: int) -> Vdevice:
        """IOMMU_VDEVICE_ALLOC: device ``dev_id`` as the guest's ``virt_id`` (its vSID/vRID)
        in this vIOMMU. QEMU ``iommufd_backend_alloc_vdev``."""
        self._check_open()
        cmd = _sized(I.iommu_vdevice_alloc, viommu_id=self.id, dev_id=dev_id, virt_id=virt_id)
        self.iommufd.ioctl(I.IOMMU_VDEVICE_ALLOC, cmd)
        return self._adopt(Vdevice(self.iommufd, int(cmd.out_vdevice_id), dev_id, virt_id))


class Vdevice(_Object):
    """A vDEVICE of a vIOMMU (IOMMU_VDEVICE_ALLOC): ``dev_id`` seen by the guest as
    ``virt_id``."""

    def __init__(self, iommufd: Iommufd, obj_id: int, dev_id: int, virt_id: int) -> None:
        super().__init__(iommufd, obj_id)
        self.dev_id = dev_id
        self.virt_id = virt_id


class MockDomain(_Object):
    """A CONFIG_IOMMUFD_TEST mock device (IOMMU_TEST_OP_MOCK_DOMAIN): ``id``/``stdev_id`` the
    selftest device object (closing destroys it: detach and unbind), ``hwpt_id`` the HWPT it
    is attached to, ``idev_id`` its iommufd device id (the dev_id of HWPT/vIOMMU allocs)."""

    def __init__(self, iommufd: Iommufd, stdev_id: int, hwpt_id: int, idev_id: int) -> None:
        super().__init__(iommufd, stdev_id)
        self.stdev_id, self.hwpt_id, self.idev_id = stdev_id, hwpt_id, idev_id

    def replace(self, pt_id: ObjRef) -> int:
        """IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: attach to ``pt_id`` instead; the HWPT now
        attached (an automatic one when ``pt_id`` is an IOAS), also kept in ``hwpt_id``."""
        self._check_open()
        cmd = self.iommufd.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, self.id,
                                    "mock_domain_replace", pt_id=_id(pt_id))
        self.hwpt_id = int(cmd.mock_domain_replace.pt_id)
        return self.hwpt_id

    def check_map(self, iova: int, length: int, uptr: int) -> None:
        """IOMMU_TEST_OP_MD_CHECK_MAP on this device's HWPT."""
        self._check_open()
        self.iommufd.check_map(self.hwpt_id, iova, length, uptr)


class MockAccess(Resource):
    """A CONFIG_IOMMUFD_TEST emulated-device access (IOMMU_TEST_OP_CREATE_ACCESS): an fd
    whose close destroys the access (and its pins). ``pin``/``unpin`` are ACCESS_PAGES /
    DESTROY_ACCESS_PAGES, ``rw`` is ACCESS_RW (iommufd_access_rw)."""

    def __init__(self, iommufd: Iommufd, fd: int) -> None:
        super().__init__(iommufd.host)
        self.iommufd = iommufd
        self.fd = fd

    def __repr__(self) -> str:
        return f"<MockAccess fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    def pin(self, iova: int, length: int, uptr: int, flags: int = 0) -> int:
        """IOMMU_TEST_OP_ACCESS_PAGES: pin ``[iova, +length)`` (``uptr`` the user address the
        kernel checks the pinned pages against); the access_pages id."""
        self._check_open()
        cmd = self.iommufd.test_cmd(I.IOMMU_TEST_OP_ACCESS_PAGES, self.fd, "access_pages",
                                    flags=flags, iova=iova, length=length, uptr=uptr)
        return int(cmd.access_pages.out_access_pages_id)

    def unpin(self, pages_id: int) -> None:
        """IOMMU_TEST_OP_DESTROY_ACCESS_PAGES of a ``pin``'s id."""
        self._check_open()
        self.iommufd.test_cmd(I.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, self.fd,
                              "destroy_access_pages", access_pages_id=pages_id)

    def rw(self, iova: int, data: bytes | int, flags: int = 0) -> bytes:
        """IOMMU_TEST_OP_ACCESS_RW at ``iova``: ``data`` bytes are written (returns b""), an
        int is the number of bytes to read (returns them). ``flags`` may add
        MOCK_ACCESS_RW_SLOW_PATH."""
        self._check_open()
        write = not isinstance(data, int)
        raw = bytes(data) if not isinstance(data, int) else b""
        length = len(raw) if write else int(data)
        if length < 0:
            raise ValueError(f"rw: negative length {length}")
        if write:
            flags |= I.MOCK_ACCESS_RW_WRITE
        with _scratch(self.host, length, raw) as uptr:
            self.iommufd.test_cmd(I.IOMMU_TEST_OP_ACCESS_RW, self.fd, "access_rw", iova=iova,
                                  length=length, uptr=uptr, flags=flags)
            return b"" if write else bytes(self.host.peek(uptr, length))

    def replace_ioas(self, ioas: ObjRef) -> None:
        """IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: move the access to ``ioas``."""
        self._check_open()
        self.iommufd.test_cmd(I.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, self.fd,
                              "access_replace_ioas", ioas_id=_id(ioas))
