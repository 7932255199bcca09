"""/dev/iommu: the iommufd context, its object table and ioctl dispatch
(drivers/iommu/iommufd/main.c, iommufd_private.h).

The context (struct iommufd_ctx) keeps every object the fd made in an xarray by u32 id
(XA_FLAGS_ALLOC1: the lowest free id from 1). An object is made in two steps: ``object_alloc``
reserves its id (XA_ZERO_ENTRY: not yet findable) and ``finalize`` publishes it once nothing
can fail; a failure before that calls ``abort_and_destroy``. Each object has a ``users``
count: one for the table, one for each object that depends on it (a HWPT on its IOAS, a
vDEVICE on its vIOMMU and device...), one for each ioctl holding it (``get_object`` /
``put_object``, the kernel's shortterm users folded in).

ioctl dispatch (iommufd_fops_ioctl), in the kernel's order of checks:
1. a number outside the op table (below IOMMUFD_CMD_BASE or past the last op) goes to the VFIO
   compatibility ioctls (ENOTTY for anything they do not know);
2. get_user of the leading u32 size: EFAULT;
3. a table slot whose ioctl number is not exactly ``cmd`` (a hole, or other direction/size
   bits): ENOTTY (ENOIOCTLCMD);
4. size below the op's minimum (offsetofend of its last mandatory field): EINVAL;
5. copy_struct_from_user: bytes past the kernel's struct must be zero (E2BIG), a shorter struct
   is zero-extended;
6. the op; an object it allocated with the ucmd is finalized on success, aborted on failure.

IOMMU_DESTROY (iommufd_object_remove): an id that is not there (or not yet finalized) ENOENT;
an object with users besides the table EBUSY; else it leaves the table and is destroyed.
Closing the fd (iommufd_fops_release) destroys every object whose only user is the table,
again and again, until the table is empty: leaves first.

Invariants: every id in ``objects`` maps to a finalized object or to None (reserved); an
object's ``users`` counts the table plus its dependants plus ioctls in flight; after release
the table is empty. Units: ids are u32 from 1.
Locking (sim/track.py): ``objects`` is the xarray under its xa_lock (``atomic``); ``users``
is a refcount_t (``atomic`` cell); ``account_mode`` is written under xa_lock with the table
empty (IOMMU_OPTION) and read by map (marked: a plain load in the kernel that cannot race a
non-empty table). ``ioas_creation_lock`` is the rw_semaphore IOAS_ALLOC takes for read and
IOAS_CHANGE_PROCESS for write.
Leaves out: /dev/vfio/vfio as an iommufd, iommufd's mmap of vIOMMU MMIO, the 10 s wait for
shortterm users (an in-flight ioctl makes DESTROY EBUSY at once).
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ....errors import kerr
from ....sim import track
from ....sim.locks import RwSem
from ....sim.track import Cell, TrackedDict
from ....uapi import iommufd as I
from ...fs.file import File
from ...fs.ioctl_table import IoctlTable
from ...init import initcall
from ...mm.mm import VM_DONTDUMP, VM_DONTEXPAND, VM_EXEC, VM_IO, VM_PFNMAP, VM_SHARED
from ...profile import IOMMUFD_RELEASE_IGNORES_USERS

if TYPE_CHECKING:
    from ...core import Kernel
    from ...fs.process import Process
    from ...fs.uaccess import UserArg

O = TypeVar("O", bound="IommufdObject")

#: IOPT_PAGES_ACCOUNT_*: whom pinned pages are charged to (io_pagetable.h).
ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM = 0, 1, 2


class IommufdObject(track.Tracked):
    """struct iommufd_object: an id in its context's table and a ``users`` count."""

    #: IOMMUFD_OBJ_* name, for messages and IOMMU_DESTROY's type checks.
    type: ClassVar[str] = "ANY"

    def __init__(self, ictx: IommufdCtx) -> None:
        self.ictx = ictx
        self.kernel = ictx.kernel
        self.id = 0
        self.users: Cell[int] = Cell(1, label=f"iommufd.{self.type.lower()}.users",
                                     atomic=True)
        self.track_init(f"iommufd.{self.type.lower()}")

    def __repr__(self) -> str:
        return f"<{self.type} {self.id}>"

    def get(self) -> None:
        """refcount_inc(&obj->users): another object (or an ioctl) depends on this one."""
        self.users.set(self.users.get() + 1)

    def put(self) -> None:
        """refcount_dec(&obj->users)."""
        n = self.users.get() - 1
        if n < 1 and self.ictx.unordered_release:
            return  # destroyed early by the seeded unordered release: nothing to drop
        assert n >= 1, f"{self!r}: users dropped below the table's reference"
        self.users.set(n)

    # The per-type ops (iommufd_object_ops[]): ``destroy`` undoes everything the object
    # holds; ``abort`` undoes a creation that failed before finalize (default: destroy).
    def destroy(self) -> None:
        pass

    def abort(self) -> None:
        self.destroy()


class IommufdCtx(File):
    """An open /dev/iommu (struct iommufd_ctx)."""

    kind = "iommufd"

    def __init__(self, kernel: Kernel, flags: int, name: str) -> None:
        if kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "iommufd_fops_open: kzalloc of the context failed "
                       "(injected)")
        super().__init__(kernel, flags, name)
        n = kernel.next_id("iommufd")
        self.label = f"iommufd{n}"
        self.objects: dict[int, IommufdObject | None] = TrackedDict(
            label=f"{self.label}.objects", atomic=True)
        self.account_mode = ACCOUNT_USER
        self.ioas_creation_lock = RwSem(kernel.sched, f"{self.label}.ioas_creation_lock",
                                        "ictx->ioas_creation_lock")
        self.vfio_ioas: Any = None
        self.unordered_release = False  # the seeded bug IOMMUFD_RELEASE_IGNORES_USERS ran
        self.i_mmap_writable = 0  # the inode's shared writable mappings (mm/vma.py counts)
        # offset -> Immap: what mmap of this fd may map (ictx->mt_mmap, its own spinlock).
        self.mt_mmap: dict[int, Immap] = TrackedDict(label=f"{self.label}.mt_mmap",
                                                     atomic=True)

    # ----- the object table -------------------------------------------------------------
    def object_alloc(self, obj: O) -> O:
        """_iommufd_object_alloc: kzalloc, then xa_alloc of the lowest free id (reserved,
        not findable until :meth:`finalize`)."""
        if self.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, f"iommufd_object_alloc({obj.type}): kzalloc failed "
                       "(injected)")
        if self.kernel.sched.fault("xa_alloc"):
            raise kerr(errno.ENOMEM, f"iommufd_object_alloc({obj.type}): xa_alloc failed "
                       "(injected)")
        used = set(self.objects)
        oid = 1
        while oid in used:
            oid += 1
        if oid > 0xFFFFFFFF:
            raise kerr(errno.EBUSY, "iommufd_object_alloc: no free id")
        obj.id = oid
        self.objects[oid] = None
        self.kernel.track("iommufd_obj", +1)
        return obj

    def finalize(self, obj: IommufdObject) -> None:
        """iommufd_object_finalize: publish the reserved id."""
        assert self.objects.get(obj.id, obj) is None, f"{obj!r} finalized twice"
        self.objects[obj.id] = obj
        self.kernel.sched.emit("iommufd", "new", obj=obj.type, id=obj.id)

    def abort(self, obj: IommufdObject) -> None:
        """iommufd_object_abort: give the reserved id back (the object held nothing)."""
        del self.objects[obj.id]
        self.kernel.track("iommufd_obj", -1)

    def abort_and_destroy(self, obj: IommufdObject) -> None:
        """iommufd_object_abort_and_destroy: undo what the object took, then its id."""
        obj.abort()
        self.abort(obj)

    def get_object(self, oid: int, cls: type[O], what: str) -> O:
        """iommufd_get_object: the finalized object ``oid`` of class ``cls``, with a users
        reference for the caller (ENOENT: no such id, not finalized, another type, or being
        destroyed)."""
        if self.kernel.sched.fault("iommufd_should_fail"):
            raise kerr(errno.ENOENT, f"{what}: iommufd_get_object({oid}) failed (injected)")
        obj = self.objects.get(oid)
        if obj is None or not isinstance(obj, cls):
            want = getattr(cls, "type", cls.__name__)
            got = "nothing" if obj is None else obj.type
            raise kerr(errno.ENOENT, f"{what}: id {oid} is {got}, not {want}")
        if obj.users.get() == 0:  # refcount_inc_not_zero failed: being destroyed
            raise kerr(errno.ENOENT, f"{what}: {obj!r} is being destroyed")
        obj.get()
        return obj

    def put_object(self, obj: IommufdObject) -> None:
        """iommufd_put_object."""
        obj.put()

    def object_remove(self, oid: int, what: str = "IOMMU_DESTROY") -> None:
        """iommufd_object_remove(ictx, NULL, id): ENOENT, EBUSY, or destroy."""
        obj = self.objects.get(oid)
        if obj is None:
            raise kerr(errno.ENOENT, f"{what}: no object {oid}")
        if obj.users.get() != 1:  # refcount_dec_if_one
            raise kerr(errno.EBUSY, f"{what}: {obj!r} is still used ({obj.users.get() - 1} "
                       "other user(s): an attached HWPT or device, a child, an ioctl)")
        obj.users.set(0)
        del self.objects[oid]
        if self.vfio_ioas is obj:
            self.vfio_ioas = None
        self._destroy(obj)

    def _destroy(self, obj: IommufdObject) -> None:
        obj.destroy()
        self.kernel.track("iommufd_obj", -1)
        self.kernel.sched.emit("iommufd", "destroy", obj=obj.type, id=obj.id)

    def release(self) -> None:
        """iommufd_fops_release: destroy every leaf (users == 1) until nothing is left."""
        if self.kernel.profile.has_bug(IOMMUFD_RELEASE_IGNORES_USERS):
            self._release_nested_first()
        while self.objects:
            destroyed = 0
            for oid in sorted(self.objects):
                obj = self.objects.get(oid)
                if obj is None or obj.users.get() != 1:
                    continue
                obj.users.set(0)
                del self.objects[oid]
                self._destroy(obj)
                destroyed += 1
            if not destroyed:
                left = ", ".join(repr(o) for o in self.objects.values())
                raise AssertionError(f"iommufd release made no progress: {left}")
        self.vfio_ioas = None


    def _release_nested_first(self) -> None:
        """The seeded bug IOMMUFD_RELEASE_IGNORES_USERS: every nested HWPT is destroyed (its
        domain freed) before the leaves-first loop, whatever its users — so a device PASID
        still points at freed tables until its own teardown detaches it."""
        self.unordered_release = True
        for oid in sorted(self.objects, reverse=True):
            obj = self.objects.get(oid)
            if obj is None or obj.type != "HWPT_NESTED":
                continue
            obj.users.set(0)
            del self.objects[oid]
            self._destroy(obj)


# ----- ioctl dispatch ---------------------------------------------------------------------
class Ucmd:
    """struct iommufd_ucmd: the copied-in command, the user buffer, and an object the op
    allocated (finalized or aborted by the dispatcher)."""

    def __init__(self, ictx: IommufdCtx, proc: Process, arg: UserArg, user_size: int,
                 cmd: Any) -> None:
        self.ictx = ictx
        self.proc = proc
        self.arg = arg
        self.user_size = user_size
        self.cmd = cmd
        self.new_obj: IommufdObject | None = None

    def alloc(self, obj: O) -> O:
        """iommufd_object_alloc_ucmd: allocated now, finalized or aborted by the dispatcher."""
        self.ictx.object_alloc(obj)
        self.new_obj = obj
        return obj

    def respond(self) -> None:
        """iommufd_ucmd_respond: copy the command back, up to the user's size (EFAULT)."""
        data = bytes(self.cmd)[: self.user_size]
        self.arg.write(data)


Execute = Callable[[Ucmd], int]


@dataclass(frozen=True)
class IoctlOp:
    """struct iommufd_ioctl_op: the struct (its size), the minimum size, the op."""

    ioctl_num: int
    struct: type[ctypes.Structure]
    min_size: int
    execute: Execute
    when: Callable[[Any], bool] | None = None


#: _IOC_NR - IOMMUFD_CMD_BASE -> op (iommufd_ioctl_ops[]).
IOCTL_OPS: dict[int, IoctlOp] = {}
_NR_MASK = 0xFF
PAGE_SIZE = 4096


def ioctl_op(cmd: int, struct: type[ctypes.Structure], last: str,
             when: Callable[[Any], bool] | None = None) -> Callable[[Execute], Execute]:
    """IOCTL_OP(cmd, fn, struct, last): register ``fn`` for ``cmd``; ``when`` (a predicate on
    the profile) stands for a config option that compiles the op out."""
    field = getattr(struct, last)
    min_size = field.offset + field.size

    def deco(fn: Execute) -> Execute:
        nr = (cmd & _NR_MASK) - I.IOMMUFD_CMD_BASE
        if nr in IOCTL_OPS:
            raise ValueError(f"iommufd: ioctl {cmd:#x} registered twice")
        IOCTL_OPS[nr] = IoctlOp(cmd, struct, min_size, fn, when)
        return fn

    return deco


def _vfio_compat(ictx: IommufdCtx, proc: Process, cmd: int, arg: UserArg) -> int:
    """iommufd_vfio_ioctl: the VFIO container ioctls on an iommufd (vfio_compat.py)."""
    from .vfio_compat import iommufd_vfio_ioctl  # vfio_compat.py imports this module: a cycle

    return iommufd_vfio_ioctl(ictx, proc, cmd, arg)


def iommufd_fops_ioctl(ictx: IommufdCtx, proc: Process, cmd: int, arg: UserArg) -> int:
    nr = cmd & _NR_MASK
    size = max(IOCTL_OPS) + 1 if IOCTL_OPS else 0
    if nr < I.IOMMUFD_CMD_BASE or nr - I.IOMMUFD_CMD_BASE >= size:
        return _vfio_compat(ictx, proc, cmd, arg)
    user_size = int.from_bytes(arg.read(4), "little")  # get_user: EFAULT
    op = IOCTL_OPS.get(nr - I.IOMMUFD_CMD_BASE)
    if op is None or op.ioctl_num != cmd or (op.when is not None
                                             and not op.when(ictx.kernel.profile)):
        raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: no iommufd op with this number")
    name = op.execute.__name__
    if user_size < op.min_size:
        raise kerr(errno.EINVAL, f"{name}: size {user_size} below the minimum {op.min_size}")
    ksize = ctypes.sizeof(op.struct)
    data = arg.read(min(user_size, ksize))
    if user_size > ksize:
        tail = arg.read(user_size - ksize, ksize)
        if any(tail):
            raise kerr(errno.E2BIG, f"{name}: non-zero bytes past the kernel's "
                       f"{ksize}-byte struct (copy_struct_from_user)")
    cmd_struct = op.struct.from_buffer_copy(data.ljust(ksize, b"\0"))
    ucmd = Ucmd(ictx, proc, arg, user_size, cmd_struct)
    try:
        rc = op.execute(ucmd)
    except BaseException:
        if ucmd.new_obj is not None:
            ictx.abort_and_destroy(ucmd.new_obj)
        raise
    if ucmd.new_obj is not None:
        ictx.finalize(ucmd.new_obj)
    return rc


IOMMUFD_IOCTLS = IoctlTable("iommufd", lambda f, proc, cmd, arg: iommufd_fops_ioctl(
    f, proc, cmd, arg))
# Every iommufd ioctl goes through iommufd_fops_ioctl, the table's default: the op table
# above is the one that dispatches.


@ioctl_op(I.IOMMU_DESTROY, I.iommu_destroy, "id")
def iommufd_destroy(ucmd: Ucmd) -> int:
    """IOMMU_DESTROY."""
    ucmd.ictx.object_remove(ucmd.cmd.id)
    return 0


@ioctl_op(I.IOMMU_OPTION, I.iommu_option, "val64")
def iommufd_option(ucmd: Ucmd) -> int:
    """IOMMU_OPTION: RLIMIT_MODE on the context, HUGE_PAGES on an IOAS (ioas.py)."""
    from .ioas import iommufd_ioas_option  # ioas.py imports this module: a cycle

    cmd = ucmd.cmd
    if cmd.__reserved:
        raise kerr(errno.EOPNOTSUPP, "IOMMU_OPTION: __reserved is not zero")
    if cmd.option_id == I.IOMMU_OPTION_RLIMIT_MODE:
        option_rlimit_mode(ucmd)
    elif cmd.option_id == I.IOMMU_OPTION_HUGE_PAGES:
        iommufd_ioas_option(ucmd)
    else:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_OPTION: unknown option_id {cmd.option_id}")
    ucmd.arg.write(cmd.val64.to_bytes(8, "little"), I.iommu_option.val64.offset)
    return 0


def option_rlimit_mode(ucmd: Ucmd) -> None:
    """iommufd_option_rlimit_mode: GET reports whether pins are charged to the mm; SET
    needs CAP_SYS_RESOURCE and an empty table (EBUSY)."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    if cmd.object_id:
        raise kerr(errno.EOPNOTSUPP, "IOMMU_OPTION_RLIMIT_MODE: object_id must be 0")
    if cmd.op == I.IOMMU_OPTION_OP_GET:
        cmd.val64 = int(ictx.account_mode == ACCOUNT_MM)
        return
    if cmd.op != I.IOMMU_OPTION_OP_SET:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_OPTION_RLIMIT_MODE: unknown op {cmd.op}")
    if not ucmd.proc.capable("CAP_SYS_RESOURCE"):
        raise kerr(errno.EPERM, "IOMMU_OPTION_RLIMIT_MODE: SET needs CAP_SYS_RESOURCE")
    if ictx.objects:
        raise kerr(errno.EBUSY, "IOMMU_OPTION_RLIMIT_MODE: the context already has objects")
    if cmd.val64 == 0:
        ictx.account_mode = ACCOUNT_USER
    elif cmd.val64 == 1:
        ictx.account_mode = ACCOUNT_MM
    else:
        raise kerr(errno.EINVAL, f"IOMMU_OPTION_RLIMIT_MODE: value {cmd.val64} is not 0 or 1")


@dataclass
class Immap:
    """struct iommufd_mmap: ``length`` bytes of MMIO (or the mock's pages) at physical
    ``phys``, offered to mmap at file offset ``offset`` while ``owner`` lives."""

    owner: IommufdObject
    offset: int
    length: int
    phys: int


class ImmapVmOps:
    """iommufd_vma_ops: each VMA over an Immap holds a users reference on its owner."""

    def __init__(self, immap: Immap) -> None:
        self.immap = immap

    def open(self, vma: Any) -> None:
        self.immap.owner.users.set(self.immap.owner.users.get() + 1)

    def close(self, vma: Any) -> None:
        self.immap.owner.users.set(self.immap.owner.users.get() - 1)


def iommufd_alloc_mmap(ictx: IommufdCtx, owner: IommufdObject, phys: int, length: int) -> int:
    """iommufd_viommu_alloc_mmap: a page-aligned offset (from PAGE_SIZE, the lowest that fits)
    at which userspace may mmap ``length`` bytes at ``phys``; returns the offset."""
    if ictx.kernel.sched.fault("mtree_alloc"):
        raise kerr(errno.ENOMEM, "iommufd_viommu_alloc_mmap: mtree_alloc_range (injected)")
    off = PAGE_SIZE
    for o in sorted(ictx.mt_mmap):
        if off + length <= o:
            break
        off = max(off, o + ictx.mt_mmap[o].length)
    ictx.mt_mmap[off] = Immap(owner, off, length, phys)
    return off


def iommufd_destroy_mmap(ictx: IommufdCtx, offset: int) -> None:
    """iommufd_viommu_destroy_mmap."""
    ictx.mt_mmap.pop(offset, None)


class IommufdFile(IommufdCtx):
    """The file /dev/iommu opens (iommufd_fops)."""

    ioctl_table = IOMMUFD_IOCTLS

    def mmap(self, proc: Process, vma: Any) -> None:
        """iommufd_fops_mmap: MAP_SHARED (EINVAL), no PROT_EXEC (EPERM), exactly one Immap's
        offset and length whose owner still lives (ENXIO); a VM_IO|VM_PFNMAP mapping whose
        VMAs hold the owner (IOMMU_DESTROY is EBUSY while it is mapped)."""
        length = vma.end - vma.start
        if length % PAGE_SIZE or not vma.vm_flags & VM_SHARED:
            raise kerr(errno.EINVAL, "iommufd mmap: needs MAP_SHARED and whole pages")
        if vma.vm_flags & VM_EXEC:
            raise kerr(errno.EPERM, "iommufd mmap: PROT_EXEC of MMIO")
        immap = next((m for o, m in self.mt_mmap.items()
                      if o <= vma.pgoff < o + m.length), None)
        if immap is None or immap.owner.users.get() == 0:
            raise kerr(errno.ENXIO, f"iommufd mmap: nothing offered at offset {vma.pgoff:#x}")
        if vma.pgoff != immap.offset or length != immap.length:
            raise kerr(errno.ENXIO, f"iommufd mmap: [{vma.pgoff:#x}, +{length:#x}) is not "
                       f"exactly the window [{immap.offset:#x}, +{immap.length:#x})")
        vma.vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        vma.ptes.set(vma.start, vma.end, immap.phys)
        vma.vm_ops = ImmapVmOps(immap)
        vma.vm_ops.open(vma)


@initcall("device")  # module_init(iommufd_init): misc_register(&iommu_misc_dev)
def iommufd_init(kernel: Kernel) -> None:
    kernel.register_device("/dev/iommu",
                           lambda proc, flags: IommufdFile(kernel, flags, "/dev/iommu"))
