"""The VFIO device cdev's iommufd ioctls (drivers/vfio/device_cdev.c).

- VFIO_DEVICE_BIND_IOMMUFD (:func:`vfio_df_ioctl_bind_iommufd`), in the kernel's order:
  argsz below offsetofend(out_devid), a negative iommufd or unknown flags EINVAL; a group fd
  EINVAL; the device's group open (the legacy path) EBUSY (group.py's
  vfio_device_block_group: the group cannot be opened from here until the unbind or a
  failure); under ``dev_set.lock``: this file already bound EINVAL; a VF token
  (BIND_FLAG_TOKEN: argsz must reach token_uuid_ptr, the 16 bytes are copied, EFAULT) that
  the device does not take EINVAL; the iommufd fd not open EBADF, not an iommufd EBADFD; then
  vfio_df_open (another file has the device open EINVAL; iommufd_device_bind's errors), then
  ``out_devid`` is written (EFAULT closes the device again) and ``access_granted`` is
  published. The file holds the iommufd context (a file reference) until unbind.
- VFIO_DEVICE_ATTACH_IOMMUFD_PT (:func:`vfio_df_ioctl_attach_pt`): argsz below
  offsetofend(pt_id) EINVAL; flags other than ATTACH_PASID EINVAL; PASID without the
  driver's pasid ops EOPNOTSUPP, argsz not reaching ``pasid`` EINVAL; then, under the
  lock, the driver's (pasid_)attach_ioas — attach or replace — and ``pt_id`` is written
  back with the HWPT id (EFAULT detaches again).
- VFIO_DEVICE_DETACH_IOMMUFD_PT (:func:`vfio_df_ioctl_detach_pt`): argsz below
  offsetofend(flags) EINVAL, flags other than DETACH_PASID EINVAL, PASID without ops
  EOPNOTSUPP, argsz not reaching ``pasid`` EINVAL; the detach itself never fails.
- :func:`vfio_df_unbind_iommufd` (file release): close the device, unblock the group, drop
  the context.

Invariants: a file's ``access_granted`` is set only after the device is open and bound; the
iommufd context a file holds is released exactly once, by unbind or by a failed bind.
Locking: ``dev_set.lock`` around bind, attach, detach and unbind, as the kernel's.
Leaves out: KVM references.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...uapi import vfio as V
from ..fs.file import fput
from ..fs.uaccess import UserArg
from ..iommu.iommufd.main import IommufdCtx
from .group import vfio_device_block_group, vfio_device_unblock_group
from .vfio_main import VfioDeviceFile, vfio_df_close, vfio_df_open

if TYPE_CHECKING:
    from ..fs.process import Process

_BIND_MIN = V.vfio_device_bind_iommufd.out_devid.offset + 4
_BIND_TOKEN_END = V.vfio_device_bind_iommufd.token_uuid_ptr.offset + 8
_ATTACH_MIN = V.vfio_device_attach_iommufd_pt.pt_id.offset + 4
_ATTACH_PASID_END = V.vfio_device_attach_iommufd_pt.pasid.offset + 4
_DETACH_MIN = V.vfio_device_detach_iommufd_pt.flags.offset + 4
_DETACH_PASID_END = V.vfio_device_detach_iommufd_pt.pasid.offset + 4


def _struct(arg: UserArg, ctype: type[ctypes.Structure], n: int) -> ctypes.Structure:
    """copy_from_user of the first ``n`` bytes of ``ctype`` (the rest zero)."""
    return ctype.from_buffer_copy(arg.read(n).ljust(ctypes.sizeof(ctype), b"\0"))


def iommufd_ctx_from_fd(proc: Process, fd: int) -> IommufdCtx:
    """iommufd_ctx_from_fd: the context with a file reference; EBADF, or EBADFD when the fd
    is not an iommufd."""
    f = proc.fget(fd, "VFIO_DEVICE_BIND_IOMMUFD: iommufd")
    if not isinstance(f, IommufdCtx):
        fput(f)
        raise kerr(errno.EBADFD, f"VFIO_DEVICE_BIND_IOMMUFD: fd {fd} is a {f.kind}, not an "
                   "iommufd")
    return f


def vfio_df_ioctl_bind_iommufd(df: VfioDeviceFile, proc: Process, arg: UserArg) -> int:
    device = df.device
    bind = _struct(arg, V.vfio_device_bind_iommufd, _BIND_MIN)
    if bind.argsz < _BIND_MIN or bind.iommufd < 0 or bind.flags & ~V.VFIO_DEVICE_BIND_FLAG_TOKEN:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_BIND_IOMMUFD: argsz {bind.argsz} (min "
                   f"{_BIND_MIN}), iommufd {bind.iommufd}, flags {bind.flags:#x}")
    if df.group is not None:
        raise kerr(errno.EINVAL, "VFIO_DEVICE_BIND_IOMMUFD: only on a cdev fd")
    vfio_device_block_group(device)  # EBUSY while the group is open
    try:
        _bind_locked(df, proc, arg, bind)
    except BaseException:
        vfio_device_unblock_group(device)  # out_unlock
        raise
    device.kernel.sched.emit("vfio", "bind", dev=device.name, iommufd=bind.iommufd,
                             devid=df.devid)
    return 0


def _bind_locked(df: VfioDeviceFile, proc: Process, arg: UserArg,
                 bind: ctypes.Structure) -> None:
    """The bind under ``dev_set.lock``, from the VF token on (its failures leave nothing)."""
    device = df.device
    assert device.dev_set is not None
    with device.dev_set.lock:
        if df.granted():
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_BIND_IOMMUFD: {df.name} is already bound")
        if bind.flags & V.VFIO_DEVICE_BIND_FLAG_TOKEN:  # vfio_df_check_token
            if bind.argsz < _BIND_TOKEN_END:
                raise kerr(errno.EINVAL, "VFIO_DEVICE_BIND_IOMMUFD: BIND_FLAG_TOKEN with argsz "
                           f"{bind.argsz} short of token_uuid_ptr")
            tok = V.vfio_device_bind_iommufd.from_buffer_copy(arg.read(_BIND_TOKEN_END))
            UserArg(proc, tok.token_uuid_ptr).read(16)  # copy_from_user of the uuid
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_BIND_IOMMUFD: {device.name} takes no VF "
                       "token (not a PF or VF)")
        df.iommufd = iommufd_ctx_from_fd(proc, bind.iommufd)
        try:
            vfio_df_open(df)
        except BaseException:
            fput(df.iommufd)
            df.iommufd = None
            raise
        try:
            arg.write(bytes(ctypes.c_uint32(df.devid)), V.vfio_device_bind_iommufd.out_devid.offset)
        except OSError:
            vfio_df_close(df)
            fput(df.iommufd)
            df.iommufd = None
            raise
        device.cdev_opened = True
        df.access_granted.set(True)  # smp_store_release


def vfio_df_unbind_iommufd(df: VfioDeviceFile) -> None:
    """vfio_df_unbind_iommufd (release): nothing to do when this file never bound."""
    if not df.access_granted.get():
        return
    device = df.device
    assert device.dev_set is not None
    with device.dev_set.lock:
        vfio_df_close(df)
        ictx, df.iommufd = df.iommufd, None
        device.cdev_opened = False
    vfio_device_unblock_group(device)
    fput(ictx)  # iommufd_ctx_put
    device.kernel.sched.emit("vfio", "unbind", dev=device.name)


def _copy_pt_arg(df: VfioDeviceFile, arg: UserArg, verb: str,
                 ctype: type[ctypes.Structure], pasid_flag: int, minsz: int,
                 pasid_end: int) -> tuple[ctypes.Structure, bool]:
    """The checks attach and detach share (vfio_df_ioctl_{attach,detach}_pt): argsz, flags,
    then, for a PASID, the device's pasid ops and the longer copy that includes ``pasid``."""
    cmd = f"VFIO_DEVICE_{verb}_IOMMUFD_PT"
    data: ctypes.Structure = _struct(arg, ctype, minsz)
    if data.argsz < minsz:
        raise kerr(errno.EINVAL, f"{cmd}: argsz {data.argsz} < {minsz}")
    if data.flags & ~pasid_flag:
        raise kerr(errno.EINVAL, f"{cmd}: unknown flags {data.flags:#x}")
    use_pasid = bool(data.flags & pasid_flag)
    if use_pasid:
        if not df.device.has_pasid_ops:
            raise kerr(errno.EOPNOTSUPP, f"{cmd}: {df.device.name} has no "
                       f"pasid_{verb.lower()}_ioas")
        if data.argsz < pasid_end:
            raise kerr(errno.EINVAL, f"{cmd}: {verb}_PASID with argsz "
                       f"{data.argsz} short of pasid")
        data = _struct(arg, ctype, pasid_end)
    return data, use_pasid


def vfio_df_ioctl_attach_pt(df: VfioDeviceFile, proc: Process, arg: UserArg) -> int:
    device = df.device
    attach, use_pasid = _copy_pt_arg(df, arg, "ATTACH", V.vfio_device_attach_iommufd_pt,
                                     V.VFIO_DEVICE_ATTACH_PASID, _ATTACH_MIN, _ATTACH_PASID_END)
    assert device.dev_set is not None
    with device.dev_set.lock:
        if use_pasid:
            hwpt_id = device.pasid_attach_ioas(attach.pasid, attach.pt_id)
        else:
            hwpt_id = device.attach_ioas(attach.pt_id)
        try:
            arg.write(bytes(ctypes.c_uint32(hwpt_id)), V.vfio_device_attach_iommufd_pt.pt_id.offset)
        except OSError:
            device.detach_ioas()  # the kernel's out_detach (the RID, even for a PASID)
            raise
    device.kernel.sched.emit("vfio", "attach", dev=device.name, pt_id=attach.pt_id,
                             hwpt=hwpt_id, pasid=attach.pasid if use_pasid else None)
    return 0


def vfio_df_ioctl_detach_pt(df: VfioDeviceFile, proc: Process, arg: UserArg) -> int:
    device = df.device
    detach, use_pasid = _copy_pt_arg(df, arg, "DETACH", V.vfio_device_detach_iommufd_pt,
                                     V.VFIO_DEVICE_DETACH_PASID, _DETACH_MIN, _DETACH_PASID_END)
    assert device.dev_set is not None
    with device.dev_set.lock:
        if use_pasid:
            device.pasid_detach_ioas(detach.pasid)
        else:
            device.detach_ioas()
    device.kernel.sched.emit("vfio", "detach", dev=device.name,
                             pasid=detach.pasid if use_pasid else None)
    return 0
