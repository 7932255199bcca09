"""The iommufd fuzzer's machinery (tests/robustness/test_iommufd_fuzz.py has the rules and
the properties): drawing sane or garbage arguments (``Args``), calling the host with the
snapshot check, and building the starting object graph."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
)

from passthru import SimHost
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

from .iommufd_fuzz_values import (
    LENGTH,
    MAP_RW,
    PAGE,
    U64_MAX,
    Field,
    bad_fd,
    diff,
    snapshot,
    u32,
    u64,
    unmap_partial_ok,
)

FAILED = object()
RW = L.PROT_READ | L.PROT_WRITE
SCRATCH = 64 * PAGE
RESV = "__reserved"  # a field name: spelled as a string (no name mangling in the class)
UNMAPS = (I.IOMMU_IOAS_UNMAP, V.VFIO_IOMMU_UNMAP_DMA)


def mk(struct: type[Any], **kw: int) -> Any:
    """``struct(**kw)`` with each value wrapped to its field's C type, as a register or a
    memory store would (an fd in a u32, a u64 in a u16)."""
    types = dict((f[0], f[1]) for f in struct._fields_)
    out = {}
    for k, v in kw.items():
        t = types[k]
        bits = 8 * ctypes.sizeof(t)
        v &= (1 << bits) - 1
        if t(-1).value < 0 and v >= 1 << (bits - 1):
            v -= 1 << bits
        out[k] = v
    return struct(**out)


def sz(struct: type[ctypes.Structure]) -> int:
    return ctypes.sizeof(struct)


class Args:
    """One call's arguments: all sane, or each sane or garbage."""

    def __init__(self, m: IommufdFuzzBase, data: st.DataObject) -> None:
        self.m = m
        self.data = data
        self.sane = data.draw(st.integers(0, 3), label="sane") > 0

    def __call__(self, field: Field) -> Any:
        return self.data.draw(field.sane if self.sane else field.wild)

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def garbage(self) -> bool:
        return not self.sane and self.draw(st.integers(0, 3)) == 0

    def fd(self, *kinds: str) -> int:
        mine, live = self.m.fds(*kinds), self.m.fds()
        if mine and (self.sane or self.draw(st.integers(0, 3))):
            return self.draw(st.sampled_from(mine))
        if live and (self.sane or self.draw(st.booleans())):
            return self.draw(st.sampled_from(live))
        return self.draw(st.one_of(bad_fd, st.sampled_from(self.m.closed or [-1])))

    def ictx(self) -> int:
        return self.fd("iommufd")

    def obj(self, fd: int, *types: str) -> int:
        """An object id of one of ``types`` in ``fd``'s context; unless sane, sometimes
        another id of this or another context, 0, or a random u32."""
        mine = self.m.ids(fd, *types)
        if mine and (self.sane or self.draw(st.integers(0, 3))):
            return self.draw(st.sampled_from(mine))
        anyid = self.m.ids(fd) + self.m.all_ids()
        if anyid and self.draw(st.booleans()):
            return self.draw(st.sampled_from(anyid))
        return self.draw(st.one_of(st.just(0), st.integers(1, 12), u32))

    def uptr(self, length: int) -> int:
        """A user pointer to ``length`` bytes: scratch (or a buffer), else garbage."""
        if self.garbage():
            return self.draw(st.one_of(st.just(0), u64, st.sampled_from(self.m.stale or [0])))
        if self.m.bufs and self.draw(st.booleans()):
            addr, n = self.draw(st.sampled_from(self.m.bufs))
            return addr + self.draw(st.integers(0, max(n // PAGE - 1, 0))) * PAGE
        return self.m.scratch_alloc(max(length, 1))

    def va_len(self) -> tuple[int, int]:
        """A user VA and a length for IOAS_MAP: inside a buffer, or garbage."""
        if self.m.bufs and (self.sane or self.draw(st.integers(0, 2))):
            addr, n = self.draw(st.sampled_from(self.m.bufs))
            first = self.draw(st.integers(0, n // PAGE - 1))
            npages = self.draw(st.integers(1, n // PAGE - first))
            va, length = addr + first * PAGE, npages * PAGE
            if not self.sane and self.draw(st.booleans()):
                length = self.draw(LENGTH.wild)
            return va, length
        va = self.draw(st.one_of(st.just(0), u64, st.sampled_from(self.m.stale or [0])))
        return va, self(LENGTH)

    def arg(self, obj: ctypes.Structure) -> Any:
        """``obj`` as the ioctl argument; unless sane, sometimes with its size prefix a lie,
        cut short, padded with junk, or a user pointer to wherever."""
        if self.sane:
            return obj
        how = self.draw(st.sampled_from(["struct"] * 5 + ["size", "short", "long", "pointer"]))
        raw = bytearray(bytes(obj))
        if how == "size":
            raw[0:4] = self.draw(st.sampled_from([0, 4, len(raw) - 4, len(raw) + 8, PAGE,
                                                  (1 << 32) - 1])).to_bytes(4, "little")
            return raw
        if how == "short":
            return raw[: self.draw(st.integers(0, len(raw) - 1))]
        if how == "long":
            tail = self.draw(st.binary(min_size=1, max_size=32))
            raw[0:4] = (len(raw) + len(tail)).to_bytes(4, "little")
            return raw + tail
        if how == "pointer":
            return self.draw(st.one_of(st.just(0), u64, st.just(self.m.scratch)))
        return obj


class IommufdFuzzBase(RuleBasedStateMachine):
    """State, helpers, the checked call and the set-up; rules live in the subclass."""

    PROFILE = "linux-7.1"

    def __init__(self) -> None:
        super().__init__()
        self.host = SimHost(profile=self.PROFILE)
        self.closed: list[int] = []
        self.stale: list[int] = []  # addresses mmap returned, possibly unmapped since
        self.bufs: list[tuple[int, int]] = []  # mmapped buffers (addr, length), still mapped
        self.pages_ids: list[tuple[int, int]] = []  # (access fd, access_pages id)
        # successful IOAS_MAPs: (iommufd fd, ioas id, iova, user va, length)
        self.maps: list[tuple[int, int, int, int, int]] = []
        self.scratch = self.host.mmap(0, SCRATCH, RW, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        self._scratch_off = 0
        self.calls = 0
        self.failed_calls = 0

    # ----- helpers -----------------------------------------------------------------------
    def scratch_alloc(self, n: int, data: bytes | None = None) -> int:
        n = min(n, SCRATCH)
        off = (self._scratch_off + 63) & ~63
        if off + n > SCRATCH:
            off = 0
        self._scratch_off = off + n
        if data:
            self.host.poke(self.scratch + off, data[: SCRATCH - off])
        return self.scratch + off

    def fds(self, *kinds: str) -> list[int]:
        return [fd for fd, f in sorted(self.host.proc.fds.items()) if not kinds or f.kind in kinds]

    def ids(self, fd: int, *types: str) -> list[int]:
        f = self.host.proc.fds.get(fd)
        objs = getattr(f, "objects", None)
        if objs is None:
            return []
        return [oid for oid, o in sorted(objs.items())
                if o is not None and (not types or o.type in types)]

    def all_ids(self) -> list[int]:
        return sorted({i for fd in self.fds("iommufd") for i in self.ids(fd)})

    def call(self, method: str, *args: Any) -> Any:
        host = self.host
        before = snapshot(host)
        self.calls += 1
        nviol = len(host.sched.violations)
        try:
            ret = getattr(host, method)(*args)
        except OSError as err:
            assert len(host.sched.violations) == nviol, (
                f"{method}{args!r} -> {err!r}: {host.sched.violations[nviol:]}")
            self.failed_calls += 1
            after = snapshot(host)
            changed = diff(before, after)
            if changed:
                why = self.excuse(method, args, err, before, after)
                assert why is None, (
                    f"failed call {method}{args!r} -> {err!r} changed state ({why}): "
                    + "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
                                for k in changed))
            return FAILED
        assert len(host.sched.violations) == nviol, (
            f"{method}{args!r}: {host.sched.violations[nviol:]}")
        if method == "close":
            self.closed.append(args[0])
        if method == "mmap":
            self.stale.append(ret)
        return ret

    def excuse(self, method: str, args: tuple[Any, ...], err: OSError,
               before: dict[str, Any], after: dict[str, Any]) -> str | None:
        """None if the real kernel leaves this partial state too, else why not."""
        if method != "ioctl" or args[1] not in UNMAPS:
            return "not an unmap"
        if err.errno not in (errno.ENOENT, errno.EBUSY):
            return f"unmap failed with {errno.errorcode.get(err.errno or 0)}, not ENOENT/EBUSY"
        arg = args[2]
        if not isinstance(arg, ctypes.Structure):
            return "unmap argument not a struct"
        if args[1] == I.IOMMU_IOAS_UNMAP:
            iova, length = arg.iova, arg.length
        elif arg.flags & V.VFIO_DMA_UNMAP_FLAG_ALL:  # iopt_unmap_all: [0, ULONG_MAX]
            iova, length = 0, U64_MAX
        else:
            iova, length = arg.iova, arg.size
        return unmap_partial_ok(before, after, iova, length)

    def ioctl(self, fd: int, req: int, arg: Any) -> Any:
        return self.call("ioctl", fd, req, arg)

    def test_cmd(self, a: Args, fd: int, op: int, obj_id: int, member: str | None = None,
                 **fields: int) -> Any:
        cmd = mk(I.iommu_test_cmd, size=sz(I.iommu_test_cmd), op=op, id=obj_id & 0xFFFFFFFF)
        if member is not None:
            sub = getattr(cmd, member)
            for k, v in fields.items():  # an fd or a u64 value in a narrower field: wrapped
                setattr(sub, k, v & ((1 << 8 * getattr(type(sub), k).size) - 1))
        if a.garbage():
            setattr(cmd, RESV, a.draw(u32))
        ret = self.ioctl(fd, I.IOMMU_TEST_CMD, a.arg(cmd))
        return FAILED if ret is FAILED else cmd

    # ----- setup -------------------------------------------------------------------------
    @initialize(plan=st.sampled_from(["none", "basic", "full", "full", "full", "two"]))
    def start(self, plan: str) -> None:
        """Most runs start from a built graph: an iommufd with an IOAS, a mapped buffer, mock
        devices (one PASID-capable), and ("full") a fault queue, a nest-parent HWPT, a
        vIOMMU with a vDEVICE, a vEVENTQ and a HW queue, a nested HWPT, an IOPF-capable
        HWPT, a test access with pinned pages, and a mock dma-buf mapped by MAP_FILE;
        "two" builds it in two iommufds."""
        for _ in range(2 if plan == "two" else 1):
            fd = self.call("open", "/dev/iommu", L.O_RDWR)
            buf = self.call("mmap", 0, 16 * PAGE, RW, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
            self.bufs.append((buf, 16 * PAGE))
            if plan != "none":
                self.build(fd, buf, full=plan != "basic")

    def sane_cmd(self, fd: int, op: int, obj_id: int = 0, member: str | None = None,
                 **fields: int) -> Any:
        cmd = mk(I.iommu_test_cmd, size=sz(I.iommu_test_cmd), op=op, id=obj_id)
        if member is not None:
            for k, v in fields.items():
                setattr(getattr(cmd, member), k, v)
        ret = self.ioctl(fd, I.IOMMU_TEST_CMD, cmd)
        return cmd if ret is not FAILED else None

    def map_sane(self, fd: int, ioas: int, va: int, length: int, iova: int) -> None:
        cmd = mk(I.iommu_ioas_map, size=sz(I.iommu_ioas_map),
                 flags=MAP_RW | I.IOMMU_IOAS_MAP_FIXED_IOVA, ioas_id=ioas, user_va=va,
                 length=length, iova=iova)
        if self.ioctl(fd, I.IOMMU_IOAS_MAP, cmd) is not FAILED:
            self.maps.append((fd, ioas, iova, va, length))

    def build(self, fd: int, buf: int, full: bool) -> None:
        cmd = mk(I.iommu_ioas_alloc, size=sz(I.iommu_ioas_alloc))
        if self.ioctl(fd, I.IOMMU_IOAS_ALLOC, cmd) is FAILED:
            return
        ioas = cmd.out_ioas_id
        base = I.MOCK_APERTURE_START
        md = self.sane_cmd(fd, I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas, "mock_domain_flags",
                           dev_flags=I.MOCK_FLAGS_DEVICE_PASID)
        self.map_sane(fd, ioas, buf, 4 * PAGE, base)
        self.map_sane(fd, ioas, buf + 4 * PAGE, 2 * PAGE, base + 4 * PAGE)
        if not full or md is None:
            return
        idev = md.mock_domain_flags.out_idev_id
        fa = mk(I.iommu_fault_alloc, size=sz(I.iommu_fault_alloc))
        fault = fa.out_fault_id if self.ioctl(fd, I.IOMMU_FAULT_QUEUE_ALLOC, fa) is not FAILED \
            else 0

        def hwpt(pt: int, flags: int, data: bytes = b"", fault_id: int = 0) -> int:
            uptr = self.scratch_alloc(len(data), data) if data else 0
            c = mk(I.iommu_hwpt_alloc, size=sz(I.iommu_hwpt_alloc), flags=flags, dev_id=idev,
                   pt_id=pt, data_type=I.IOMMU_HWPT_DATA_SELFTEST if data else 0,
                   data_len=len(data), data_uptr=uptr, fault_id=fault_id)
            return 0 if self.ioctl(fd, I.IOMMU_HWPT_ALLOC, c) is FAILED else c.out_hwpt_id

        parent = hwpt(ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT | I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        sdata = bytes(I.iommu_hwpt_selftest(iotlb=I.IOMMU_TEST_IOTLB_DEFAULT))
        hwpt(parent, 0, sdata)
        if fault:
            iopf = hwpt(parent, I.IOMMU_HWPT_FAULT_ID_VALID, sdata, fault)
            if iopf:
                self.sane_cmd(fd, I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
                              md.mock_domain_flags.out_stdev_id, "mock_domain_replace",
                              pt_id=iopf)
        hwpt(ioas, I.IOMMU_HWPT_ALLOC_PASID)
        blob = bytes(I.iommu_viommu_selftest(in_data=1))
        va = mk(I.iommu_viommu_alloc, size=sz(I.iommu_viommu_alloc),
                type=I.IOMMU_VIOMMU_TYPE_SELFTEST, dev_id=idev, hwpt_id=parent,
                data_len=len(blob), data_uptr=self.scratch_alloc(len(blob), blob))
        if parent and self.ioctl(fd, I.IOMMU_VIOMMU_ALLOC, va) is not FAILED:
            vi = va.out_viommu_id
            self.ioctl(fd, I.IOMMU_VDEVICE_ALLOC, mk(
                I.iommu_vdevice_alloc, size=sz(I.iommu_vdevice_alloc), viommu_id=vi,
                dev_id=idev, virt_id=1))
            self.ioctl(fd, I.IOMMU_VEVENTQ_ALLOC, mk(
                I.iommu_veventq_alloc, size=sz(I.iommu_veventq_alloc), viommu_id=vi,
                type=I.IOMMU_VEVENTQ_TYPE_SELFTEST, veventq_depth=2))
            self.ioctl(fd, I.IOMMU_HW_QUEUE_ALLOC, mk(
                I.iommu_hw_queue_alloc, size=sz(I.iommu_hw_queue_alloc), viommu_id=vi,
                type=I.IOMMU_HW_QUEUE_TYPE_SELFTEST, index=0,
                nesting_parent_iova=base + 4 * PAGE, length=PAGE))
        acc = self.sane_cmd(fd, I.IOMMU_TEST_OP_CREATE_ACCESS, ioas, "create_access",
                            flags=I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        if acc is not None:
            afd = acc.create_access.out_access_fd
            ap = self.sane_cmd(fd, I.IOMMU_TEST_OP_ACCESS_PAGES, afd, "access_pages",
                               iova=base, length=PAGE, uptr=buf)
            if ap is not None:
                self.pages_ids.append((afd, ap.access_pages.out_access_pages_id))
        dbuf = mk(I.iommu_test_cmd, size=sz(I.iommu_test_cmd), op=I.IOMMU_TEST_OP_DMABUF_GET)
        dbuf.dmabuf_get.length = 4 * PAGE
        dfd = self.ioctl(fd, I.IOMMU_TEST_CMD, dbuf)
        if dfd is not FAILED:
            self.ioctl(fd, I.IOMMU_IOAS_MAP_FILE, mk(
                I.iommu_ioas_map_file, size=sz(I.iommu_ioas_map_file),
                flags=MAP_RW | I.IOMMU_IOAS_MAP_FIXED_IOVA, ioas_id=ioas, fd=dfd, start=0,
                length=2 * PAGE, iova=base + 16 * PAGE))

    # ----- files and memory ----------------------------------------------------------------
