"""VFIO races (drivers/vfio/pci/, issue 11 §4): who can still reach a BAR, and a device's
DMA, while vfio-pci resets the device, the guest turns its memory off, or the VMM dies; each
buggy and fixed.

- reset vs DMA and vCPU: VFIO_DEVICE_RESET of the GPU (an FLR) while its DMA is in flight and
  a vCPU accesses BAR0 through the legacy route (the VMM mmaps the BAR and registers the
  mapping as a KVM memslot; KVM follows the VM_PFNMAP PTE). vfio zaps the BAR PTEs under
  memory_lock before the reset, and the zap reaches KVM through its mmu_notifier, so no SPTE
  maps the BAR while it does not decode. Buggy: KVM without the mmu_notifier hook (its
  invalidate_begin/end patched out): the stale SPTE lets the vCPU reach the device in reset.
- MSE clear vs a peer NIC: the guest clears COMMAND.MEMORY of the GPU while a NIC DMAs into
  its BAR through an iommufd mapping of the vfio-pci dma-buf (IOAS_MAP_FILE; the NIC attached
  to that IOAS). The revoke unmaps the area from every domain before MSE goes off; setting
  MSE again un-revokes the buffer but leaves the area unmapped until the VMM remaps it.
  Buggy: ``iommufd.revoke_skips_unmap`` (the NIC's DMA reaches a BAR that does not decode).
- a VMM that dies: every fd (kvm, vm, iommufd, the vfio cdev, the dma-buf; the guest RAM's
  memfd last) closed in a few orders and by two threads at once, after its BAR mapping went
  (do_exit: exit_mm before exit_files), while the edu's DMA is in flight: the device ends
  detached, its DMA blocked, its BARs mapped nowhere, nothing pinned or leaked (the
  checker's leak check runs after teardown). Buggy: ``iommufd.detach_after_free``.
- lock order memory_lock → resv → pages mutex: IOAS_MAP_FILE of the vfio-pci dma-buf racing
  the guest's MSE clear (buggy: ``iommufd.dmabuf_map_lock_inversion``, pages mutex before
  resv), and an importer whose map path takes memory_lock under the resv (ABBA with the MSE
  clear's revoke) against one that relies on the revoke instead.

The GPU is bound to vfio-pci at set-up (kapi.vfio_pci_bind: the default machine binds only
the edu) and the NIC hot-plugged (kapi.hotplug_nic).
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from ..host.sim import SimHost
from ..kapi import (
    IOMMUFD_DETACH_AFTER_FREE,
    IOMMUFD_DMABUF_MAP_LOCK_INVERSION,
    IOMMUFD_REVOKE_SKIPS_UNMAP,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    ImporterOps,
    Sandbox,
    attach,
    detach,
    dmabuf_of,
    edu_dma_in_flight,
    export_bar,
    hotplug_nic,
    ioas_alloc,
    iommu_reaches_disabled_bar,
    kerr,
    map_attachment,
    map_ram,
    mmap_bar,
    patch,
    pci_dev,
    resv_locked,
    scenario,
    set_command,
    sptes_reach_disabled_bar,
    unmap_attachment,
    vfio_device_of,
    vfio_open,
    vfio_pci_bind,
)
from ..uapi import iommufd as I
from ..uapi import kvm as K
from ..uapi import linux as L
from ..uapi import vfio as V

PROFILES = ("linux-7.1",)
PAGE = L.PAGE_SIZE
IOVA = 0x10_0000  # guest RAM (below the edu's 28-bit DMA mask)
BAR_IOVA = 0x20_0000  # the P2P window onto a BAR
BAR_GPA = 0x8000_0000
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
FIXED = I.IOMMU_IOAS_MAP_FIXED_IOVA
VFIO0 = "/dev/vfio/devices/vfio0"
POLLS = 3  # DMA reads the edu makes after its programmed DMA


def _sz(cls: type[ctypes.Structure]) -> int:
    return ctypes.sizeof(cls)


def _map_memfd(host: SimHost, fd: int, ioas: int, iova: int, length: int) -> int:
    """Guest RAM from a memfd, mapped by file (IOAS_MAP_FILE): pinned from the page cache,
    with no mmap_lock under iommufd's pages mutex; the memfd's fd."""
    mfd = host.memfd_create("guest-ram", 0)
    host.ftruncate(mfd, length)
    _map_file(host, fd, ioas, mfd, iova, length)
    return mfd


def _map_file(host: SimHost, fd: int, ioas: int, dfd: int, iova: int, length: int) -> None:
    host.ioctl(fd, I.IOMMU_IOAS_MAP_FILE, I.iommu_ioas_map_file(
        size=_sz(I.iommu_ioas_map_file), flags=RW | FIXED, ioas_id=ioas, fd=dfd, start=0,
        length=length, iova=iova))


def _unmap(host: SimHost, fd: int, ioas: int, iova: int, length: int) -> None:
    host.ioctl(fd, I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap(
        size=_sz(I.iommu_ioas_unmap), ioas_id=ioas, iova=iova, length=length))


def _vm_over(host: SimHost, va: int, length: int) -> tuple[int, int, int]:
    """The legacy route: a VM whose slot 0 is the VMM's mapping at ``va`` (a BAR mmap);
    (kvm fd, vm fd, vcpu fd)."""
    kvm = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
    vm = host.ioctl(kvm, K.KVM_CREATE_VM, K.KVM_X86_DEFAULT_VM)
    host.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
        slot=0, guest_phys_addr=BAR_GPA, memory_size=length, userspace_addr=va))
    return kvm, vm, host.ioctl(vm, K.KVM_CREATE_VCPU, 0)


# ----- VFIO_DEVICE_RESET vs the device's DMA and a vCPU on the BAR --------------------------


def _no_mmu_notifier(s: Sandbox) -> None:
    """KVM without the mmu_notifier hook: invalidations of the VMM's mappings never reach
    the stage-2 tables (no zap, no sequence bump)."""
    patch(s, "kvm_mmu_invalidate_begin", lambda self, start, end: None)
    patch(s, "kvm_mmu_invalidate_end", lambda self: None)


def _reset_vs_dma_and_vcpu(s: Sandbox, hook: bool) -> None:
    host = s.host
    if not hook:
        _no_mmu_notifier(s)
    path = vfio_pci_bind(host, "gpu0")
    ifd, ioas = ioas_alloc(host)
    map_ram(host, ifd, ioas, IOVA, PAGE)
    gfd = vfio_open(host, path, ifd, ioas)
    gpu = vfio_device_of(host, gfd).pdev
    set_command(host, gfd, PCI_COMMAND_MASTER, True)  # the guest driver enables DMA
    bar = mmap_bar(host, gfd, 0, PAGE)
    # At exit the BAR mapping goes before the files (do_exit: exit_mm, then exit_files).
    s.final("exit-mm", lambda: host.munmap(bar, PAGE))  # type: ignore[func-returns-value]
    kvm, vm, vcpu_fd = _vm_over(host, bar, PAGE)
    host.close(kvm)
    vcpu = host.vcpu(vcpu_fd)

    def dma() -> None:  # the GPU's DMA engine, busy when the reset comes
        gpu.dma(IOVA, 8, True, b"\x11" * 8)

    def guest() -> None:  # the guest driver pokes VRAM through BAR0 (a fault, then a store)
        vcpu.access(BAR_GPA, data=b"\x5a" * 8)

    def vmm() -> None:
        host.ioctl(gfd, V.VFIO_DEVICE_RESET, 0)

    s.spawn("gpu-dma", dma)
    s.spawn("vcpu0", guest)
    s.spawn("vmm", vmm)
    s.invariant("vcpu-reaches-disabled-bar", sptes_reach_disabled_bar(host, vm, gpu))


@scenario(profiles=PROFILES, expect="safe")
def vfio_reset_vs_dma_and_vcpu(s: Sandbox) -> None:
    """VFIO_DEVICE_RESET of the GPU while its DMA is in flight and a vCPU writes its BAR
    through a legacy memslot: vfio's zap reaches KVM through the mmu_notifier, so no SPTE
    maps the BAR during the FLR."""
    _reset_vs_dma_and_vcpu(s, hook=True)


@scenario(profiles=PROFILES, expect="violation")
def vfio_reset_vs_vcpu_no_mmu_notifier(s: Sandbox) -> None:
    """The same reset with KVM's mmu_notifier hook patched out: the stale SPTE lets the
    vCPU reach the GPU in reset."""
    _reset_vs_dma_and_vcpu(s, hook=False)


# ----- MSE clear vs a peer NIC's P2P DMA through iommufd -------------------------------------


def _mse_vs_nic(s: Sandbox) -> None:
    host = s.host
    gpath = vfio_pci_bind(host, "gpu0")
    nic = hotplug_nic(host)
    npath = vfio_pci_bind(host, nic.name)
    ifd, ioas = ioas_alloc(host)
    gfd = vfio_open(host, gpath, ifd)
    gpu = vfio_device_of(host, gfd).pdev
    nfd = vfio_open(host, npath, ifd, ioas)
    set_command(host, nfd, PCI_COMMAND_MASTER, True)
    dfd = export_bar(host, gfd, 0, 2 * PAGE)
    _map_file(host, ifd, ioas, dfd, BAR_IOVA, 2 * PAGE)
    stale = s.shared(None, "vmm.stale_after_unrevoke")
    remapped = s.shared(False, "vmm.remapped")
    unit = nic.iommu
    assert unit is not None

    def translates() -> bool:
        dom = unit.domain_of(nic.name)
        return dom is not None and dom.kind == "paging" and dom.iova_to_phys(
            BAR_IOVA) is not None

    def peer() -> None:  # the NIC writes received packets into the GPU's VRAM
        nic.dma_to(BAR_IOVA + PAGE, b"\x5a" * 8)

    def guest() -> None:
        """The guest's GPU driver turns memory decoding off and on; each config write traps
        to the VMM, which writes the cdev's config region and, seeing MSE back on, remaps
        the P2P window (the un-revoke alone leaves it unmapped)."""
        set_command(host, gfd, PCI_COMMAND_MEMORY, False)
        set_command(host, gfd, PCI_COMMAND_MEMORY, True)
        stale.set(translates())
        _unmap(host, ifd, ioas, BAR_IOVA, 2 * PAGE)
        _map_file(host, ifd, ioas, dfd, BAR_IOVA, 2 * PAGE)
        remapped.set(True)

    s.spawn("nic", peer)
    s.spawn("guest", guest)
    s.invariant("dma-reaches-disabled-bar",
                iommu_reaches_disabled_bar(nic, BAR_IOVA, 2 * PAGE, gpu))
    s.final("unrevoke-remaps", lambda: (
        "after the un-revoke the NIC still translated the P2P window before the VMM remapped"
        if stale.peek() else None))
    s.final("vmm-remapped", lambda: None if not remapped.peek() or translates() else
            "the VMM's remap after the un-revoke did not reach the NIC's domain")


@scenario(profiles=PROFILES, expect="safe")
def vfio_mse_clear_vs_peer_dma(s: Sandbox) -> None:
    """The guest clears the GPU's MSE while a peer NIC DMAs into its BAR through an iommufd
    mapping of the vfio-pci dma-buf: the revoke unmaps it first, and the un-revoke leaves it
    unmapped until the VMM remaps."""
    _mse_vs_nic(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(IOMMUFD_REVOKE_SKIPS_UNMAP,))
def vfio_mse_clear_vs_peer_dma_buggy(s: Sandbox) -> None:
    """The same race with iommufd's revoke leaving the domains mapped: the NIC's DMA reaches
    a BAR whose memory is off."""
    _mse_vs_nic(s)


# ----- a VMM that dies -----------------------------------------------------------------------


def _vmm_dies(s: Sandbox, orders: tuple[tuple[str, ...], ...]) -> None:
    """The edu assigned with everything a VMM holds, its BAR mapping already gone (do_exit
    runs exit_mm before exit_files); one task per order in ``orders`` closes those fds in
    that order (a single order: the VMM's exit; several: its threads racing), while the
    edu's DMA is in flight."""
    host = s.host
    ifd, ioas = ioas_alloc(host)
    mfd = _map_memfd(host, ifd, ioas, IOVA, PAGE)
    efd = vfio_open(host, VFIO0, ifd, ioas)
    vdev = vfio_device_of(host, efd)
    edu = pci_dev(host, "edu0")
    set_command(host, efd, PCI_COMMAND_MASTER, True)
    dfd = export_bar(host, efd, 0, PAGE)
    _map_file(host, ifd, ioas, dfd, BAR_IOVA, PAGE)
    bar = mmap_bar(host, efd, 0, PAGE)
    kvm, vm, vcpu_fd = _vm_over(host, bar, PAGE)
    host.vcpu(vcpu_fd).access(BAR_GPA, 4)  # the guest reads the edu's ID: an SPTE on BAR0
    host.close(vcpu_fd)  # the vCPU thread is gone; the VM holds the vCPU
    fds = {"kvm": kvm, "vm": vm, "iommufd": ifd, "vfio": efd, "dmabuf": dfd, "memfd": mfd}
    edu_dma_in_flight(edu, IOVA, 8)
    unit = edu.iommu
    assert unit is not None
    host.munmap(bar, PAGE)  # do_exit: exit_mm (the BAR mapping) before exit_files

    def device() -> None:  # the DMA in flight, then the guest's driver polling descriptors
        edu.run_dma()  # type: ignore[attr-defined]
        for _ in range(POLLS):
            edu.dma(IOVA, 8, False)

    s.spawn("edu-dma", device)

    def closer(order: tuple[str, ...]) -> None:
        for name in order:
            host.close(fds[name])

    for order in orders:
        s.spawn(f"close-{'-'.join(order)}" if len(order) > 1 else f"close-{order[0]}",
                closer, order + (("memfd",) if order is orders[-1] else ()))

    def dead() -> str | None:
        dom = unit.domain_of(edu.name)
        if dom is not None and dom.kind != "blocked":
            return f"edu0 still attached to {dom.name} ({dom.kind}) after the VMM died"
        if vdev.iommufd_device is not None or vdev.open_count:
            return "the vfio device is still open or bound to an iommufd"
        if vdev.dmabufs or vdev.i_mmap:
            return "the BAR is still exported or mapped"
        if edu.bus_master:
            return "edu0 can still master DMA after close"
        return None

    s.final("vmm-died-clean", dead)


def _order_scenario(name: str, orders: tuple[tuple[str, ...], ...], doc: str,
                    expect: str = "safe", bugs: tuple[str, ...] = ()) -> None:
    def fn(s: Sandbox) -> None:
        _vmm_dies(s, orders)

    fn.__doc__ = doc
    fn.__name__ = name
    fn.__module__ = __name__
    scenario(profiles=PROFILES, expect=expect, bugs=bugs, name=name)(fn)
    globals()[name] = fn


_ORDERS: dict[str, tuple[str, ...]] = {
    "vfio_vmm_dies_cdev_first": ("vfio", "dmabuf", "iommufd", "vm", "kvm"),
    "vfio_vmm_dies_iommufd_first": ("iommufd", "vfio", "kvm", "dmabuf", "vm"),
    "vfio_vmm_dies_dmabuf_first": ("dmabuf", "vm", "kvm", "iommufd", "vfio"),
    "vfio_vmm_dies_kvm_first": ("kvm", "vm", "vfio", "iommufd", "dmabuf"),
}
for _name, _order in _ORDERS.items():
    _order_scenario(_name, (_order,), (
        f"A VMM dies while the edu's DMA is in flight, closing {', '.join(_order)} in that "
        "order: the device ends detached, blocked and unmapped, with nothing leaked."))
_order_scenario("vfio_vmm_dies_all_at_once", (("vfio",), ("iommufd", "dmabuf", "vm", "kvm")), (
    "Two threads of a dying VMM close the vfio cdev and, at the same time, the iommufd, "
    "dma-buf, vm and kvm fds while the edu's DMA is in flight: every interleaving ends "
    "detached, blocked and unmapped."))
_order_scenario("vfio_vmm_dies_buggy", (_ORDERS["vfio_vmm_dies_cdev_first"],), (
    "A VMM dies with iommufd detaching the device only after freeing its automatic HWPT: "
    "the edu's in-flight DMA walks the freed domain."),
    expect="violation", bugs=(IOMMUFD_DETACH_AFTER_FREE,))


# ----- lock order: memory_lock -> resv -> pages mutex ----------------------------------------


def _edu_export(s: Sandbox) -> tuple[SimHost, int, int, int, int]:
    host = s.host
    ifd, ioas = ioas_alloc(host)
    efd = vfio_open(host, VFIO0, ifd, ioas)
    dfd = export_bar(host, efd, 0, PAGE)
    return host, ifd, ioas, efd, dfd


def _map_file_vs_mse(s: Sandbox) -> None:
    host, ifd, ioas, efd, dfd = _edu_export(s)

    def vmm() -> None:
        _map_file(host, ifd, ioas, dfd, BAR_IOVA, PAGE)

    def guest() -> None:
        set_command(host, efd, PCI_COMMAND_MEMORY, False)

    s.spawn("vmm", vmm, expect_errors=(errno.ENODEV,))  # revoked first: as designed
    s.spawn("guest", guest)


@scenario(profiles=PROFILES, expect="safe")
def vfio_dmabuf_map_file_vs_mse_clear(s: Sandbox) -> None:
    """IOAS_MAP_FILE of the edu's vfio-pci dma-buf races the guest's MSE clear: memory_lock
    → resv → pages mutex on the revoke side, resv → pages mutex on the map side."""
    _map_file_vs_mse(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(IOMMUFD_DMABUF_MAP_LOCK_INVERSION,))
def vfio_dmabuf_map_file_vs_mse_clear_abba(s: Sandbox) -> None:
    """The map takes iommufd's pages mutex before the resv, against the revoke's resv →
    pages mutex under memory_lock: ABBA."""
    _map_file_vs_mse(s)


def _importer_vs_mse(s: Sandbox, takes_memory_lock: bool) -> None:
    host = s.host
    path = vfio_pci_bind(host, "gpu0")
    nic = hotplug_nic(host, bdf="0000:01:00.1", beside="gpu0")  # a P2P path below rp1
    ifd, _ = ioas_alloc(host)
    efd = vfio_open(host, path, ifd)
    dfd = export_bar(host, efd, 0, PAGE)
    vdev = vfio_device_of(host, efd)
    buf = dmabuf_of(host, dfd)
    ops = ImporterOps(invalidate=lambda a: None, name="nic-driver")
    att: Any = attach(buf, nic.bdf, ops)

    def map_() -> None:
        with resv_locked(buf):
            if takes_memory_lock:  # "is the device's memory on?" asked with the resv held
                with vdev.memory_lock.read():
                    if not vdev.memory_enabled():
                        raise kerr(errno.ENODEV, "importer: the BAR is off")
                    map_attachment(att)
            else:  # the revoke tells it; the map checks the revoked state under the resv
                map_attachment(att)
            unmap_attachment(att)

    def guest() -> None:
        set_command(host, efd, PCI_COMMAND_MEMORY, False)

    s.spawn("importer", map_, expect_errors=(errno.ENODEV,))
    s.spawn("guest", guest)
    s.final("detach", lambda: detach(att))  # type: ignore[func-returns-value]


@scenario(profiles=PROFILES, expect="safe")
def vfio_importer_vs_mse_clear(s: Sandbox) -> None:
    """A NIC driver maps the GPU's vfio-pci dma-buf under its resv while the guest clears MSE
    (memory_lock, then the resv): the importer relies on the revoke, no ABBA."""
    _importer_vs_mse(s, takes_memory_lock=False)


@scenario(profiles=PROFILES, expect="violation")
def vfio_importer_resv_then_memory_lock_abba(s: Sandbox) -> None:
    """A NIC driver takes vfio's memory_lock under the dma-buf's resv: ABBA with the MSE
    clear's memory_lock → resv."""
    _importer_vs_mse(s, takes_memory_lock=True)


