"""passthru.vmm.vfio on SimHost and LinuxHost: QEMU's edu device (1234:11e8) through its VFIO
cdev bound to iommufd — bind/attach, region and IRQ info, config space, BAR registers, the
edu's DMA through the IOMMU into guest memory, assign_device with a vCPU reaching the BAR
through a memslot (the legacy route, and the dma-buf route on an rfc-* profile), RESET, and a
teardown that leaves nothing.

The linux variant needs the edu bound to vfio-pci as /dev/vfio/devices/vfio0 (the real-kernel
lane's QEMU guest) and /dev/iommu; it skips naming the node otherwise. The tests that make a VM
(assign_device) are marked needs_kvm: the lane's TCG guest has no /dev/kvm, so they skip there;
the edu's DMA through the IOMMU is also tested without a VM (a memfd mapped in the IOAS).

QEMU's edu computes a factorial in a thread and runs DMA on a timer: the tests wait for the
status bit / the RUN bit as a driver does (tests/conformance/_vfio.py's helpers).
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

# tests/ is on sys.path (its conftest.py, rootdir-relative): the conformance helpers are shared
from conformance._vfio import edu_dma, edu_factorial

from passthru.uapi import vfio as V
from passthru.vmm import (
    GuestMemory,
    Iommufd,
    Kvm,
    Memfd,
    Vcpu,
    VfioDevice,
    Vm,
    assign_device,
)

VFIO0 = "/dev/vfio/devices/vfio0"
pytestmark = pytest.mark.node(VFIO0, "/dev/iommu")

EDU_ID = 0x010000ED
MiB = 1 << 20
PAGE = 4096
RAM_GPA = 0x100000  # below the edu's 28-bit DMA mask
BIOS_GPA, BIOS_SIZE, RESET_VECTOR = 0xFFFF0000, 0x10000, 0xFFFFFFF0
DMA_BUF = 0x40000  # the edu's 4 KiB DMA buffer, as DMA commands address it


def is_sim(host: Any) -> bool:
    return hasattr(host, "leaks")


def test_bind_attach_detach(host, assert_released):
    with Iommufd(host) as ifd, VfioDevice(host, VFIO0) as dev:
        assert not dev.bound
        with pytest.raises(OSError) as e:
            dev.get_info()  # nothing but BIND before the bind
        assert e.value.errno == errno.EINVAL
        devid = dev.bind(ifd)
        assert dev.bound and devid > 0
        ioas = ifd.alloc_ioas()
        hwpt = dev.attach(ioas)
        assert hwpt not in (0, ioas.id) and dev.hwpt_id == hwpt
        assert dev.attach(ioas) == hwpt  # attaching again reuses the domain
        dev.detach()
        assert dev.hwpt_id is None
    assert_released(host)


def test_info_regions_and_irqs(host, assert_released):
    with Iommufd(host) as ifd, VfioDevice(host, VFIO0) as dev:
        dev.bind(ifd)
        info = dev.get_info()
        assert info.is_pci and not info.can_reset  # the edu has no reset method
        assert (info.num_regions, info.num_irqs) == (V.VFIO_PCI_NUM_REGIONS, V.VFIO_PCI_NUM_IRQS)
        regions = {r.index: r for r in dev.regions()}
        assert V.VFIO_PCI_VGA_REGION_INDEX not in regions  # not VGA: EINVAL, skipped
        bar0 = regions[0]
        assert (bar0.size, bar0.offset) == (MiB, 0)
        assert bar0.readable and bar0.writable and bar0.mmappable
        assert all(regions[i].size == 0 and regions[i].flags == 0 for i in range(1, 6))
        cfg = regions[V.VFIO_PCI_CONFIG_REGION_INDEX]
        assert cfg.offset == V.vfio_pci_index_to_offset(7) and cfg.size >= 256
        assert cfg.readable and cfg.writable and not cfg.mmappable
        intx = dev.irq_info(V.VFIO_PCI_INTX_IRQ_INDEX)
        assert intx.count == 1 and intx.eventfd and intx.maskable
        assert dev.irq_info(V.VFIO_PCI_MSI_IRQ_INDEX).count == 1  # one MSI vector
        assert dev.irq_info(V.VFIO_PCI_MSIX_IRQ_INDEX).count == 0
    assert_released(host)


def test_config_ids_and_bar_registers(host, assert_released):
    with Iommufd(host) as ifd, VfioDevice(host, VFIO0) as dev:
        dev.bind(ifd)
        assert dev.config_read(0x00, 2) == 0x1234 and dev.config_read(0x02, 2) == 0x11E8
        assert dev.config_read(0x00, 4) == 0x11E81234
        assert dev.set_command(memory=True) & 0x2
        bar = dev.region(0)
        assert bar.read_int(0x00, 4) == EDU_ID
        bar.write_int(0x04, 4, 0x12345678)
        assert bar.read_int(0x04, 4) == ~0x12345678 & 0xFFFFFFFF  # liveness: bitwise NOT
        assert edu_factorial(bar, 5) == 120  # polls status bit 0x01 (computing) first
        assert edu_factorial(bar, 12) == 479001600
        with bar.mmap(PAGE) as m:  # the same registers through an mmap of the BAR
            assert int.from_bytes(m.read(0, 4), "little") == EDU_ID
            m.write(4, (0xA5A5A5A5).to_bytes(4, "little"))
            assert int.from_bytes(m.read(4, 4), "little") == 0x5A5A5A5A
    assert_released(host)


def test_edu_dma_round_trip_through_the_iommu(host, assert_released):
    """No VM: a memfd mapped into the IOAS at RAM_GPA, the edu attached to it, bus mastering
    on. RAM -> the edu's buffer -> RAM again through the IOMMU; with BME off the edu's DMA is
    dropped (nothing lands)."""
    with Memfd(host, "ram", size=4 * PAGE) as ram, Iommufd(host) as ifd, \
            VfioDevice(host, VFIO0) as dev:
        view = ram.mmap()
        dev.bind(ifd)
        ioas = ifd.alloc_ioas()
        dev.attach(ioas)
        assert ioas.map(view.addr, 4 * PAGE, iova=RAM_GPA) == RAM_GPA
        assert dev.set_command(memory=True, master=True) & 0x6 == 0x6
        bar = dev.region(0)
        data = bytes(range(256)) * 2
        view.write(0, data)
        edu_dma(bar, RAM_GPA, DMA_BUF, len(data), to_ram=False)  # RAM -> device buffer
        edu_dma(bar, DMA_BUF, RAM_GPA + 2 * PAGE, len(data), to_ram=True)  # and back
        assert view.read(2 * PAGE, len(data)) == data
        assert ram.pread(len(data), 2 * PAGE) == data  # the memfd's own pages
        dev.set_command(master=False)  # bus mastering off: the DMA is dropped
        edu_dma(bar, DMA_BUF, RAM_GPA + 3 * PAGE, 16, to_ram=True)
        assert view.read(3 * PAGE, 16) == bytes(16)
    assert_released(host)


def test_attach_to_an_ioas_with_a_file_range_past_its_end_is_einval(host, assert_released):
    """IOAS_MAP_FILE takes a memfd range past the file's end while nothing needs its pages;
    attaching the device fills its domain, and the pin (memfd_pin_folios) is EINVAL."""
    with Memfd(host, "ram", size=2 * PAGE) as ram, Iommufd(host) as ifd, \
            VfioDevice(host, VFIO0) as dev:
        dev.bind(ifd)
        ioas = ifd.alloc_ioas()
        assert ioas.map_file(ram, PAGE, 2 * PAGE, iova=RAM_GPA) == RAM_GPA
        with pytest.raises(OSError) as e:
            dev.attach(ioas)
        assert e.value.errno == errno.EINVAL
        assert dev.hwpt_id is None
        ram.truncate(3 * PAGE)  # the range fits now: the pin checks i_size each time
        assert dev.attach(ioas)
        dev.detach()
        assert ioas.unmap_all() == 2 * PAGE
    assert_released(host)


@pytest.mark.needs_kvm
def test_assign_device_maps_guest_ram_for_the_edus_dma(host, assert_released):
    with Iommufd(host) as ifd, Kvm(host) as kvm, VfioDevice(host, VFIO0) as dev:
        vm = kvm.create_vm()
        mem = vm.guest_memory([(RAM_GPA, 4 * PAGE)])
        ioas = ifd.alloc_ioas()
        assign_device(vm, dev, ioas, guest_memory=mem)  # IOVA == GPA, BME on
        bar = dev.region(0)
        data = bytes(range(256)) * 2
        mem.write(RAM_GPA, data)
        edu_dma(bar, RAM_GPA, DMA_BUF, len(data), to_ram=False)  # RAM -> device buffer
        edu_dma(bar, DMA_BUF, RAM_GPA + 2 * PAGE, len(data), to_ram=True)  # and back
        assert mem.read(RAM_GPA + 2 * PAGE, len(data)) == data
        dev.set_command(master=False)  # bus mastering off: the DMA is dropped
        edu_dma(bar, DMA_BUF, RAM_GPA + 3 * PAGE, 16, to_ram=True)
        assert mem.read(RAM_GPA + 3 * PAGE, 16) == bytes(16)
    assert_released(host)


# mov eax, [0x0000] ; mov [0x0004], eax ; hlt (16-bit code, operand-size prefix 0x66)
GUEST_READ_ID_WRITE_LIVENESS = bytes.fromhex("66 A1 00 00 66 A3 04 00 F4")


def _boot(host: Any, kvm: Kvm, code: bytes) -> tuple[Vm, GuestMemory, Vcpu]:
    vm = kvm.create_vm()
    mem = vm.guest_memory([(RAM_GPA, 4 * PAGE), (BIOS_GPA, BIOS_SIZE)])
    mem.write(RESET_VECTOR, code)
    return vm, mem, vm.create_vcpu(0)


@pytest.mark.needs_kvm
def test_assign_device_legacy_route_guest_reads_the_bar(host, assert_released):
    with Iommufd(host) as ifd, Kvm(host) as kvm, VfioDevice(host, VFIO0) as dev:
        vm, mem, cpu = _boot(host, kvm, GUEST_READ_ID_WRITE_LIVENESS)
        asg = assign_device(vm, dev, ioas=ifd.alloc_ioas(), guest_memory=mem, bars={0: 0},
                            route="legacy")
        slot = asg.bar(0)
        assert (slot.route, slot.gpa, slot.size) == ("legacy", 0, MiB)
        assert slot.mapping is not None and slot.dmabuf is None
        assert asg.devid == dev.devid and asg.hwpt_id == dev.hwpt_id
        ex = cpu.run()
        assert ex.reason == "HLT", ex
        assert cpu.get_regs().rax & 0xFFFFFFFF == EDU_ID
        assert dev.region(0).read_int(0x04, 4) == ~EDU_ID & 0xFFFFFFFF  # the guest's store
    assert_released(host)


@pytest.mark.needs_kvm
def test_assign_device_auto_route_follows_the_kernel(host, assert_released):
    """linux-6.18 (and any merged kernel) has neither the dma-buf export nor the proposed
    memslot flag: "auto" falls back to the legacy route; "dmabuf" fails as the kernel says."""
    with Iommufd(host) as ifd, Kvm(host) as kvm, VfioDevice(host, VFIO0) as dev:
        vm, mem, _ = _boot(host, kvm, b"\xf4")
        ioas = ifd.alloc_ioas()
        with pytest.raises(OSError) as e:
            assign_device(vm, dev, ioas, guest_memory=mem, bars={0: 0}, route="dmabuf")
        assert e.value.errno in (errno.ENOTTY, errno.EINVAL)
        assert dev.hwpt_id is None  # the failed assignment was undone (detached)
        asg = assign_device(vm, dev, ioas, guest_memory=mem, bars={0: 0})
        assert asg.bar(0).route == "legacy"
        asg.close()
        assert dev.hwpt_id is None and ioas.unmap_all() == 0
    assert_released(host)


def test_assign_device_dmabuf_route_on_an_rfc_profile():
    from passthru import SimHost

    host = SimHost("rfc-tdx-connect")
    with Iommufd(host) as ifd, Kvm(host) as kvm, VfioDevice(host, VFIO0) as dev:
        vm, mem, cpu = _boot(host, kvm, b"\xf4")
        asg = assign_device(vm, dev, ifd.alloc_ioas(), guest_memory=mem, bars={0: 0})
        slot = asg.bar(0)
        assert slot.route == "dmabuf" and slot.dmabuf is not None and slot.mapping is None
        assert slot.dmabuf.size == MiB
        got, ex = host.vcpu(cpu.fd).access(0x0, 4)
        assert ex is None and int.from_bytes(got, "little") == EDU_ID
        dev.set_command(memory=False)  # MSE clear revokes the buffer: KVM cannot map it
        with pytest.raises(OSError) as e:
            host.vcpu(cpu.fd).access(0x0, 4)
        assert e.value.errno == errno.EFAULT
        dev.set_command(memory=True)
        got, ex = host.vcpu(cpu.fd).access(0x0, 4)
        assert ex is None and int.from_bytes(got, "little") == EDU_ID
    host.exit()
    assert host.leaks() == []


def test_reset_is_einval_on_the_edu(host, assert_released):
    with Iommufd(host) as ifd, VfioDevice(host, VFIO0) as dev:
        dev.bind(ifd)
        with pytest.raises(OSError) as e:
            dev.reset()
        assert e.value.errno == errno.EINVAL
    assert_released(host)


def test_close_leaves_nothing(host, assert_released):
    ifd = Iommufd(host)
    dev = VfioDevice(host, VFIO0)
    dev.bind(ifd)
    dev.attach(ifd.alloc_ioas())
    dev.region(0).mmap(PAGE)
    dev.close()  # the mapping first, then the fd (unbind)
    ifd.close()
    assert dev.closed and ifd.closed
    if is_sim(host):
        host.exit()
        assert host.leaks() == []
    assert_released(host)
