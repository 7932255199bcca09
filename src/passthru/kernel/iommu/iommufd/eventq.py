"""Event queues: the IOPF fault object and its fd (drivers/iommu/iommufd/eventq.c,
IOMMU_FAULT_QUEUE_ALLOC); the vIOMMU's vEVENTQ reuses :class:`EventqFile` (viommu.py).

IOMMU_FAULT_QUEUE_ALLOC: ``flags`` non-zero EOPNOTSUPP; makes a FAULT object and an anon-inode
fd ("[iommufd-pgfault]", O_RDWR) that holds a users reference on the object and a reference on
the iommufd (so IOMMU_DESTROY of the fault is EBUSY while the fd is open, and the iommufd
outlives it). A HWPT allocated with IOMMU_HWPT_FAULT_ID_VALID delivers its I/O page faults
here (the test mock's TRIGGER_IOPF queues one).
read(): whole groups of ``struct iommu_hwpt_pgfault`` records, each group given a response
cookie; a count that is not a multiple of the record size, or a file position, ESPIPE.
write(): ``struct iommu_hwpt_page_response`` records; a code other than SUCCESS/INVALID or an
unknown cookie EINVAL (after the records before it were consumed: the byte count of those).

Invariants: a group is either queued for delivery or awaiting its response (by cookie), never
both. Units: bytes for read/write counts. Locking: ``deliver``/``response`` under the queue's
``mutex`` (asserted by the Mutex context); the object's users as in main.py.
Leaves out: poll(), the iopf core's page-request groups (one record per group here), the
device-side responses to the PRI (the mock only checks the cookie).
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....sim.locks import Mutex
from ....sim.track import TrackedDict, TrackedList
from ....uapi import iommufd as I
from ...fs.file import File
from ...lockdep_assert import lockdep_assert_held
from .main import IommufdCtx, IommufdObject, Ucmd, ioctl_op

if TYPE_CHECKING:
    from ...fs.process import Process

PGFAULT_SIZE = ctypes.sizeof(I.iommu_hwpt_pgfault)
RESPONSE_SIZE = ctypes.sizeof(I.iommu_hwpt_page_response)


class EventqFile(File):
    """The anon-inode fd of an event queue: it holds the object (users) and the iommufd."""

    kind = "iommufd-eventq"

    def __init__(self, obj: Eventq, name: str) -> None:
        super().__init__(obj.kernel, 0o2, name)  # O_RDWR
        self.obj = obj
        obj.get()
        obj.ictx.get()  # iommufd_ctx_get: the fd keeps the iommufd open

    def release(self) -> None:
        self.obj.put()
        self.obj.ictx.put()

    def read(self, proc: Process, n: int, pos: int | None) -> bytes:
        return self.obj.fops_read(n, self.f_pos if pos is None else pos)

    def write(self, proc: Process, data: bytes, pos: int | None) -> int:
        return self.obj.fops_write(proc, data, self.f_pos if pos is None else pos)


class Eventq(IommufdObject):
    """struct iommufd_eventq: what is queued for userspace, under ``mutex``."""

    type = "EVENTQ"

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.mutex = Mutex(ictx.kernel.sched, f"{ictx.label}.eventq.mutex", "eventq->mutex")
        self.deliver: list[Any] = TrackedList(label=f"{ictx.label}.eventq.deliver")
        self.file: EventqFile | None = None

    def fops_read(self, n: int, pos: int) -> bytes:
        raise kerr(errno.EINVAL, "read of an event queue of no type")

    def fops_write(self, proc: Process, data: bytes, pos: int) -> int:
        raise kerr(errno.EINVAL, "write to an event queue of no type")


class Fault(Eventq):
    """struct iommufd_fault (IOMMUFD_OBJ_FAULT)."""

    type = "FAULT"

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.response: dict[int, bytes] = TrackedDict(label=f"{ictx.label}.fault.response")
        self._cookie = 0

    def report(self, record: I.iommu_hwpt_pgfault) -> None:
        """iommufd_fault_iopf_handler: queue one fault group (a single record here)."""
        with self.mutex:
            self.deliver.append(bytes(record))
        self.kernel.sched.emit("iommufd", "iopf", fault=self.id, addr=record.addr)

    def fops_read(self, n: int, pos: int) -> bytes:
        """iommufd_fault_fops_read."""
        if pos or n % PGFAULT_SIZE:
            raise kerr(errno.ESPIPE, f"read of the fault fd: {n} bytes is not a multiple of "
                       f"{PGFAULT_SIZE}, or a position was given")
        out = b""
        with self.mutex:
            while self.deliver and len(out) + PGFAULT_SIZE <= n:
                raw = self.deliver.pop(0)
                self._cookie += 1
                rec = I.iommu_hwpt_pgfault.from_buffer_copy(raw)
                rec.cookie = self._cookie
                self.response[self._cookie] = raw
                out += bytes(rec)
        return out

    def fops_write(self, proc: Process, data: bytes, pos: int) -> int:
        """iommufd_fault_fops_write: responses by cookie."""
        if pos or len(data) % RESPONSE_SIZE:
            raise kerr(errno.ESPIPE, f"write to the fault fd: {len(data)} bytes is not a "
                       f"multiple of {RESPONSE_SIZE}, or a position was given")
        done = 0
        with self.mutex:
            lockdep_assert_held(self.mutex, "iommufd_fault_fops_write")
            while done < len(data):
                resp = I.iommu_hwpt_page_response.from_buffer_copy(data, done)
                if resp.code not in (I.IOMMUFD_PAGE_RESP_SUCCESS, I.IOMMUFD_PAGE_RESP_INVALID):
                    if done:
                        return done
                    raise kerr(errno.EINVAL, f"fault response code {resp.code} is neither "
                               "SUCCESS nor INVALID")
                if resp.cookie not in self.response:
                    if done:
                        return done
                    raise kerr(errno.EINVAL, f"fault response for unknown cookie {resp.cookie}")
                del self.response[resp.cookie]
                done += RESPONSE_SIZE
        return done

    def destroy(self) -> None:
        """iommufd_fault_destroy: answer every outstanding fault INVALID, drop the queue."""
        self.deliver[:] = []
        self.response.clear()


def install_eventq_fd(ucmd: Ucmd, obj: Eventq, name: str) -> int:
    """iommufd_eventq_init + get_unused_fd: the fd that reads the queue (installed now; the
    dispatcher aborts the object if a later step fails, which closes nothing: the fd is the
    last thing made)."""
    if ucmd.ictx.kernel.sched.fault("anon_inode_getfile"):
        raise kerr(errno.ENOMEM, f"{name}: anon_inode_getfile failed (injected)")
    f = EventqFile(obj, name)
    obj.file = f
    return ucmd.proc.fd_install(f)


@ioctl_op(I.IOMMU_FAULT_QUEUE_ALLOC, I.iommu_fault_alloc, "out_fault_fd")
def iommufd_fault_alloc(ucmd: Ucmd) -> int:
    """IOMMU_FAULT_QUEUE_ALLOC."""
    cmd = ucmd.cmd
    if cmd.flags:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_FAULT_QUEUE_ALLOC: unknown flags {cmd.flags:#x}")
    fault = ucmd.alloc(Fault(ucmd.ictx))
    cmd.out_fault_id = fault.id
    cmd.out_fault_fd = 0
    ucmd.respond()  # the id first: a failing copy must not leave an installed fd behind
    cmd.out_fault_fd = install_eventq_fd(ucmd, fault, "[iommufd-pgfault]")
    ucmd.arg.write(int(cmd.out_fault_fd).to_bytes(4, "little"),
                   I.iommu_fault_alloc.out_fault_fd.offset)
    return 0
