"""fget takes a reference and fput drops it (fs/file_table.c, fs/file.c): a syscall holds its
file for the whole call, so a close racing it cannot release the file under it; the KVM
memslot ioctl resolves its guest_memfd at the ioctl boundary and holds it the same way."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from passthru import SimHost
from passthru.kernel.fs.file import File, fput, no_such_ioctl
from passthru.kernel.fs.ioctl_table import IoctlTable
from passthru.kernel.kvm.guest_memfd import GmemFile
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = L.PAGE_SIZE
PROBE_IOCTLS = IoctlTable("probe", no_such_ioctl)
CLOSE_MY_FD = 1


class Probe(File):
    kind = "probe"
    ioctl_table = PROBE_IOCTLS

    def __init__(self, host: SimHost) -> None:
        super().__init__(host.kernel, L.O_RDWR, "probe")
        self.seen: list[tuple[bool, int]] = []


@PROBE_IOCTLS.handler(CLOSE_MY_FD)
def probe_close_my_fd(f: Probe, proc: Any, arg: Any) -> int:
    proc.close(arg.as_int())  # as another thread sharing the fd table would
    f.seen.append((f.released, f.refcount))
    return 0


def test_fget_takes_a_reference_and_fput_drops_it() -> None:
    h = SimHost()
    fd = h.memfd_create("m", 0)
    f = h.proc.lookup_fd(fd)
    assert f.refcount == 1
    g = h.proc.fget(fd, "test")
    assert g is f and f.refcount == 2
    fput(g)
    assert f.refcount == 1 and not f.released
    assert h.proc.fget_or_none(999) is None
    with pytest.raises(OSError) as e:
        h.proc.fget(999, "test")
    assert e.value.errno == errno.EBADF


def test_a_file_closed_under_a_running_ioctl_is_released_when_the_ioctl_ends() -> None:
    h = SimHost()
    probe = Probe(h)
    fd = h.proc.fd_install(probe)
    assert h.ioctl(fd, CLOSE_MY_FD, fd) == 0
    assert probe.seen == [(False, 1)]  # the fd is gone, the ioctl's reference is not
    assert probe.released and fd not in h.proc.fds
    with pytest.raises(OSError) as e:
        h.ioctl(fd, CLOSE_MY_FD, fd)
    assert e.value.errno == errno.EBADF
    assert h.leaks() == []


def test_a_file_without_an_ioctl_table_is_enotty() -> None:
    h = SimHost()
    null = h.open("/dev/null", L.O_RDWR)
    with pytest.raises(OSError) as e:
        h.ioctl(null, 0x1234, 0)
    assert e.value.errno == errno.ENOTTY
    assert h.proc.lookup_fd(null).refcount == 1


def _vm_and_gmem(h: SimHost) -> tuple[int, int]:
    kfd = h.open("/dev/kvm", L.O_RDWR)
    vm = h.ioctl(kfd, K.KVM_CREATE_VM, 0)
    h.close(kfd)
    g = h.ioctl(vm, K.KVM_CREATE_GUEST_MEMFD, K.kvm_create_guest_memfd(
        size=4 * PAGE, flags=K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED))
    return vm, g


def _region(g: int, size: int = PAGE) -> K.kvm_userspace_memory_region2:
    return K.kvm_userspace_memory_region2(slot=0, flags=K.KVM_MEM_GUEST_MEMFD,
                                          guest_phys_addr=0, memory_size=size, guest_memfd=g)


def test_memslot_ioctl_holds_the_guest_memfd_for_the_call(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The file is resolved at the ioctl boundary (fdget) and referenced while bound; a close
    of its fd during the call only defers the release, which then unbinds the slot."""
    h = SimHost()
    vm, g = _vm_and_gmem(h)
    gm = h.proc.lookup_fd(g)
    assert isinstance(gm, GmemFile)
    refs: list[int] = []
    bind = GmemFile.bind

    def spy(self: GmemFile, slot: Any, offset: int) -> None:
        refs.append(self.refcount)
        bind(self, slot, offset)
        h.close(g)  # a racing close: the ioctl still holds the file

    monkeypatch.setattr(GmemFile, "bind", spy)
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, _region(g))
    assert refs == [2]  # the fd's reference and the ioctl's
    assert gm.released  # released by the ioctl's fput, after slots_lock was dropped
    slot = h.proc.lookup_fd(vm).kvm.memslots.by_id[0]  # type: ignore[attr-defined]
    assert slot.gmem is None and not gm.bindings
    assert h.sched.violations == []


@pytest.mark.parametrize("which,size,err", [
    ("closed", PAGE, errno.EBADF),       # kvm_gmem_bind's fget fails
    ("memfd", PAGE, errno.EINVAL),       # not a guest_memfd
    ("closed", PAGE + 1, errno.EINVAL),  # the request's own checks come first
])
def test_memslot_guest_memfd_errors_keep_their_order_and_leak_nothing(which: str, size: int,
                                                                       err: int) -> None:
    h = SimHost()
    vm, _ = _vm_and_gmem(h)
    fd = h.memfd_create("plain", 0) if which == "memfd" else 200
    with pytest.raises(OSError) as e:
        h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, _region(fd, size))
    assert e.value.errno == err
    if which == "memfd":
        assert h.proc.lookup_fd(fd).refcount == 1  # the ioctl's reference is dropped
    h.exit()
    assert h.leaks() == []
