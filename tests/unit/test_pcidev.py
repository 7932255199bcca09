"""PCI functions as hardware (hw/pcidev.py, hw/devices/): config space, BAR sizing, PM, FLR,
master abort, the edu device (QEMU hw/misc/edu.c), DMA through the IOMMU, P2P from a NIC into
a GPU's VRAM, and physmem's MMIO routing. Model-only: no kernel interface reaches these."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.check.explore import ReplayChooser
from passthru.hw.devices import EduDevice, GpuDevice, NicDevice, build_devices
from passthru.hw.devices.edu import DMA_IRQ, DMA_START, FACT_IRQ
from passthru.hw.devices.nic import NIC_BUF, NIC_CMD, NIC_DMA_ADDR_LO, NIC_DMA_LEN, NIC_STATUS
from passthru.hw.iommu import IOMMU_MMIO, IOMMU_READ, IOMMU_WRITE
from passthru.hw.machine import GiB, Machine, MiB, PciDesc, default_machine
from passthru.hw.pci import Bar, PciFunction
from passthru.hw.pcidev import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_PM,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_EXP_DEVCAP,
    PCI_EXP_DEVCAP_FLR,
    PCI_EXP_DEVCAP_TEE,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_EXT_CAP_ID_DOE,
    PCI_EXT_CAP_ID_IDE,
    PCI_PM_CTRL,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
)
from passthru.hw.physmem import Owner, PhysMem
from passthru.sim import Scheduler

RW = IOMMU_READ | IOMMU_WRITE
MSE_BME = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
EDU_BASE = 0xF000_0000
GPU_BASE = 0xE000_0000


class Hw:
    """A machine's hardware alone: physical truth and the devices build_devices makes."""

    def __init__(self, machine: Machine, track: bool = False) -> None:
        self.machine = machine
        self.sched = Scheduler(track=track)
        self.phys = PhysMem(self.sched, machine)


def boot(machine: Machine | None = None, track: bool = False) -> tuple[Hw, dict]:
    h = Hw(machine or default_machine(), track)
    return h, build_devices(h.phys, h.sched, h.machine)


def events(h: Hw | SimHost, sub: str, name: str) -> list[dict]:
    return [dict(e.args) for e in h.sched.log.events if e.subsystem == sub and e.event == name]


def caps(dev) -> dict[int, int]:
    """The standard capability list walked as pci_find_capability() does: id -> offset."""
    out, pos = {}, dev.cfg_read(PCI_CAPABILITY_LIST, 1)
    while pos:
        out[dev.cfg_read(pos, 1)] = pos
        pos = dev.cfg_read(pos + 1, 1)
    return out


def ext_caps(dev) -> dict[int, int]:
    out, pos = {}, 0x100
    while pos:
        hdr = dev.cfg_read(pos, 4)
        if not hdr:
            break
        out[hdr & 0xFFFF] = pos
        pos = hdr >> 20
    return out


def enable(dev, cmd: int = MSE_BME) -> None:
    dev.cfg_write(PCI_COMMAND, 2, cmd)


# ----- config space ------------------------------------------------------------------------


def test_default_machine_has_edu_behind_the_iommu_and_a_gpu_in_the_pci_window():
    h, devs = boot()
    edu, gpu = devs["edu0"], devs["gpu0"]
    assert isinstance(edu, EduDevice) and isinstance(gpu, GpuDevice)
    assert edu.iommu is not None and edu.iommu is gpu.iommu and edu.iommu.name == "iommu0"
    (win,) = h.machine.mmio
    for d in (edu, gpu):
        for bar in d.func.bars.values():
            assert win[0] <= bar.base and bar.end <= win[1]
    assert edu.fabric is not None and edu.fabric is gpu.fabric
    assert edu.fabric.iommus == {"iommu0": edu.iommu}
    assert edu.func.parent is edu.fabric.topology.host  # root-complex integrated


def test_ids_class_and_capability_lists():
    _, devs = boot()
    edu, gpu = devs["edu0"], devs["gpu0"]
    assert (edu.cfg_read(0, 2), edu.cfg_read(2, 2)) == (0x1234, 0x11E8)
    assert edu.cfg_read(0, 4) == 0x11E81234
    assert edu.cfg_read(0x08, 4) == 0x00FF0010  # PCI_CLASS_OTHERS (base 0, sub 0xff), rev 0x10
    assert edu.cfg_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST
    assert set(caps(edu)) == {PCI_CAP_ID_MSI}  # like QEMU's: no PM, no PCIe
    assert edu.cfg_size == 256 and edu.cfg_read(0x100, 4) == 0xFFFFFFFF
    assert not edu.has_flr and not edu.has_reset_method
    c = caps(gpu)
    assert set(c) == {PCI_CAP_ID_PM, PCI_CAP_ID_MSI, PCI_CAP_ID_EXP}
    devcap = gpu.cfg_read(c[PCI_CAP_ID_EXP] + PCI_EXP_DEVCAP, 4)
    assert devcap & PCI_EXP_DEVCAP_FLR and devcap & PCI_EXP_DEVCAP_TEE
    assert set(ext_caps(gpu)) == {PCI_EXT_CAP_ID_DOE, PCI_EXT_CAP_ID_IDE}
    assert gpu.has_flr and gpu.has_reset_method and gpu.cfg_size == 4096


def test_read_only_registers_keep_their_value_and_command_is_logged():
    h, devs = boot()
    edu = devs["edu0"]
    edu.cfg_write(0, 4, 0xDEADBEEF)
    assert edu.cfg_read(0, 4) == 0x11E81234
    edu.cfg_write(PCI_COMMAND, 2, 0xFFFF)
    cmd = edu.cfg_read(PCI_COMMAND, 2)
    assert cmd & MSE_BME == MSE_BME and not cmd & 0x1  # IO, a read-only zero here
    assert edu.memory_enabled and edu.bus_master
    assert events(h, "pci", "command")[-1]["new"] == cmd
    with pytest.raises(ValueError):
        edu.cfg_read(0x3, 2)  # not naturally aligned


def test_bar_sizing_write_all_ones_reads_the_size_mask():
    _, devs = boot()
    edu, gpu = devs["edu0"], devs["gpu0"]
    bar0 = PCI_BASE_ADDRESS_0
    assert edu.cfg_read(bar0, 4) == EDU_BASE
    edu.cfg_write(bar0, 4, 0xFFFFFFFF)
    assert edu.cfg_read(bar0, 4) == 0xFFF00000  # ~(1 MiB - 1)
    edu.cfg_write(bar0, 4, EDU_BASE)
    assert edu.cfg_read(bar0, 4) == EDU_BASE
    edu.cfg_write(bar0 + 4, 4, 0xFFFFFFFF)  # BAR1 absent: hard-wired zero
    assert edu.cfg_read(bar0 + 4, 4) == 0
    gpu.cfg_write(bar0, 4, 0xFFFFFFFF)
    assert gpu.cfg_read(bar0, 4) == 0xF0000008  # 256 MiB, prefetchable


def test_64bit_bar_sizing_uses_two_slots():
    big = PciDesc("gpu9", "gpu", "0000:05:00.0", ((0, 64 * GiB, 16 * GiB),))
    m = Machine(ram=((0, 3 * GiB),), mmio=((3 * GiB, 4 * GiB), (64 * GiB, 128 * GiB)),
                pci=(big,))
    _, devs = boot(m)
    g = devs["gpu9"]
    assert g.cfg_read(PCI_BASE_ADDRESS_0, 4) == 0xC  # 64-bit, prefetchable
    assert g.cfg_read(PCI_BASE_ADDRESS_0 + 4, 4) == 64 * GiB >> 32
    g.cfg_write(PCI_BASE_ADDRESS_0, 4, 0xFFFFFFFF)
    g.cfg_write(PCI_BASE_ADDRESS_0 + 4, 4, 0xFFFFFFFF)
    assert g.cfg_read(PCI_BASE_ADDRESS_0, 4) == 0xC
    assert g.cfg_read(PCI_BASE_ADDRESS_0 + 4, 4) == 0xFFFFFFFC  # ~(16 GiB - 1) >> 32


# ----- PM, FLR and master abort ------------------------------------------------------------


def test_master_abort_with_mse_clear_reads_all_ones_drops_writes_and_is_logged():
    h, devs = boot()
    gpu = devs["gpu0"]
    enable(gpu)
    gpu.mmio_write(0, 0x100, 4, 0xCAFE)
    enable(gpu, PCI_COMMAND_MASTER)
    assert not gpu.memory_enabled
    assert gpu.mmio_read(0, 0x100, 4) == 0xFFFFFFFF
    gpu.mmio_write(0, 0x100, 4, 0x1111)
    ab = events(h, "pci", "master-abort")
    assert [(a["why"], a["write"]) for a in ab] == [("mse-clear", False), ("mse-clear", True)]
    enable(gpu)
    assert gpu.mmio_read(0, 0x100, 4) == 0xCAFE  # the dropped write never landed


def test_d3hot_master_aborts_and_d0_keeps_state_with_no_soft_reset():
    h, devs = boot()
    gpu = devs["gpu0"]
    enable(gpu)
    gpu.mmio_write(0, 0, 8, 0x0123456789ABCDEF)
    pmcsr = caps(gpu)[PCI_CAP_ID_PM] + PCI_PM_CTRL
    gpu.cfg_write(pmcsr, 2, 1)  # D1: not supported, ignored
    assert gpu.power_state == "D0"
    gpu.cfg_write(pmcsr, 2, 3)
    assert gpu.power_state == "D3hot" and not gpu.memory_enabled
    assert gpu.mmio_read(0, 0, 8) == (1 << 64) - 1
    assert events(h, "pci", "master-abort")[-1]["why"] == "d3hot"
    assert gpu.dma(0x1000, 4, False) is None
    assert events(h, "pci", "dma-blocked")[-1]["why"] == "d3hot"
    gpu.cfg_write(pmcsr, 2, 0)
    assert gpu.power_state == "D0" and gpu.memory_enabled  # NO_SOFT_RESET: COMMAND kept
    assert gpu.mmio_read(0, 0, 8) == 0x0123456789ABCDEF
    assert events(h, "pci", "power")[-1] == {"dev": "gpu0", "old": "D3hot", "new": "D0"}


def test_flr_through_devctl_resets_registers_and_is_self_clearing():
    h, devs = boot()
    gpu = devs["gpu0"]
    enable(gpu)
    devctl = caps(gpu)[PCI_CAP_ID_EXP] + PCI_EXP_DEVCTL
    gpu.cfg_write(devctl, 2, gpu.cfg_read(devctl, 2) | PCI_EXP_DEVCTL_BCR_FLR)
    assert gpu.cfg_read(PCI_COMMAND, 2) == 0 and not gpu.memory_enabled
    assert not gpu.cfg_read(devctl, 2) & PCI_EXP_DEVCTL_BCR_FLR
    assert not gpu.in_flr
    assert gpu.cfg_read(PCI_BASE_ADDRESS_0, 4) == GPU_BASE | 0x8  # BARs kept
    assert [e["dev"] for e in events(h, "pci", "flr-done")] == ["gpu0"]
    enable(gpu)
    gpu.reset()  # pci_reset_function's method: FLR
    assert gpu.command == 0 and len(events(h, "pci", "flr-done")) == 2


def test_edu_has_no_reset_method():
    _, devs = boot()
    edu = devs["edu0"]
    for op in (edu.flr, edu.reset):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.ENOTTY


def test_access_during_flr_master_aborts_and_dma_stays_in_the_device():
    """Task 1 starts an FLR and stops at its scheduling point; task 2 accesses the BAR,
    config space and DMA meanwhile; with footprints tracked, none of it is a data race."""
    h, devs = boot(track=True)
    gpu = devs["gpu0"]
    sched = h.sched
    enable(gpu)
    gpu.mmio_write(0, 0, 4, 0xAA55)
    seen: dict = {}

    def accessor() -> None:
        seen["in_flr"] = gpu.in_flr
        seen["bar"] = gpu.mmio_read(0, 0, 4)
        gpu.mmio_write(0, 0, 4, 0x1234)
        seen["cfg"] = gpu.cfg_read(0, 4)
        seen["dma"] = gpu.dma(0x1000, 4, False)

    sched.chooser = ReplayChooser([1, 2, 2, 2, 2, 2])
    sched.spawn("flr", gpu.flr)
    sched.spawn("vcpu", accessor)
    sched.run()
    assert seen == {"in_flr": True, "bar": 0xFFFFFFFF, "cfg": 0xFFFFFFFF, "dma": None}
    assert {a["why"] for a in events(h, "pci", "master-abort")} == {"flr"}
    assert events(h, "pci", "dma-blocked")[-1]["why"] == "flr"
    enable(gpu)
    assert gpu.mmio_read(0, 0, 4) == 0xAA55  # the write during the FLR was dropped
    assert sched.violations == []


# ----- the edu device ----------------------------------------------------------------------


def test_edu_registers_id_liveness_factorial_and_interrupts():
    h, devs = boot()
    edu = devs["edu0"]
    enable(edu)
    assert edu.mmio_read(0, 0x00, 4) == 0x010000ED
    edu.mmio_write(0, 0x04, 4, 0x12345678)
    assert edu.mmio_read(0, 0x04, 4) == 0xEDCBA987
    assert edu.mmio_read(0, 0x00, 2) == 0  # below min_access_size: QEMU reads unassigned 0
    assert edu.mmio_read(0, 0x00, 8) == (1 << 64) - 1  # 8 bytes below 0x80: edu_mmio_read's ~0
    assert edu.mmio_read(0, DMA_START, 4) == 0xFFFFFFFF  # the buffer is not in the BAR
    edu.mmio_write(0, 0x08, 4, 5)
    assert edu.mmio_read(0, 0x08, 4) == 120
    assert edu.mmio_read(0, 0x20, 4) & 0x01 == 0  # done computing
    assert edu.mmio_read(0, 0x24, 4) == 0
    edu.mmio_write(0, 0x20, 4, 0x80)  # IRQ when the factorial is done
    edu.mmio_write(0, 0x08, 4, 12)
    assert edu.mmio_read(0, 0x08, 4) == 479001600
    assert edu.mmio_read(0, 0x24, 4) == FACT_IRQ
    edu.mmio_write(0, 0x60, 4, 0x40)
    assert edu.mmio_read(0, 0x24, 4) == FACT_IRQ | 0x40
    edu.mmio_write(0, 0x64, 4, FACT_IRQ | 0x40)
    assert edu.mmio_read(0, 0x24, 4) == 0
    assert events(h, "pci", "irq")[-1]["via"] == "intx"  # MSI not enabled
    edu.mmio_write(0, 0x08, 4, 40)
    assert edu.mmio_read(0, 0x08, 4) == 0  # 40! mod 2^32


def edu_with_ram(h: Hw | SimHost, edu, iova: int = 0x10000) -> int:
    """Map two pages of RAM at ``iova`` in a paging domain of edu's IOMMU; their address."""
    phys = h.kernel.phys if isinstance(h, SimHost) else h.phys
    ((pa, _),) = phys.alloc(0x2000, Owner("dma-buf-ram"))
    dom = edu.iommu.domain("paging")
    dom.map_pages(iova, pa, 0x2000, RW)
    edu.iommu.attach(edu.name, dom)
    return pa


def edu_dma(edu, src: int, dst: int, cnt: int, to_ram: bool) -> None:
    edu.mmio_write(0, 0x80, 8, src)
    edu.mmio_write(0, 0x88, 8, dst)
    edu.mmio_write(0, 0x90, 8, cnt)
    edu.mmio_write(0, 0x98, 8, 0x1 | (0x2 if to_ram else 0) | 0x4)


def test_edu_dma_round_trip_through_the_iommu_into_physical_truth():
    h, devs = boot()
    edu = devs["edu0"]
    enable(edu)
    pa = edu_with_ram(h, edu)
    h.phys.write(pa, b"hello, edu dma!!", "cpu")
    edu_dma(edu, 0x10000, DMA_START + 0x100, 16, to_ram=False)  # RAM -> buffer
    assert edu.dma_buf.read(0x100, 16) == b"hello, edu dma!!"
    assert edu.mmio_read(0, 0x24, 4) == DMA_IRQ and edu.mmio_read(0, 0x98, 8) & 1 == 0
    edu_dma(edu, DMA_START + 0x100, 0x11000, 16, to_ram=True)  # buffer -> RAM (2nd page)
    assert h.phys.read(pa + 0x1000, 16, "cpu") == b"hello, edu dma!!"
    assert [e["iova"] for e in events(h, "iommu", "dma")] == [0x10000, 0x11000]
    assert h.sched.violations == []


def test_edu_dma_with_bme_clear_does_not_happen():
    h, devs = boot()
    edu = devs["edu0"]
    enable(edu, PCI_COMMAND_MEMORY)  # MSE only
    pa = edu_with_ram(h, edu)
    edu.dma_buf.write(0, b"leak")
    edu_dma(edu, DMA_START, 0x10000, 4, to_ram=True)
    assert h.phys.read(pa, 4, "cpu") == bytes(4)
    assert events(h, "pci", "dma-blocked")[-1] == {
        "dev": "edu0", "iova": 0x10000, "n": 4, "write": True, "why": "bme-clear"}
    assert events(h, "iommu", "dma") == []  # it never reached the IOMMU


def test_edu_dma_to_an_unmapped_iova_faults_in_the_iommu():
    h, devs = boot()
    edu = devs["edu0"]
    enable(edu)
    pa = edu_with_ram(h, edu)
    edu.dma_buf.write(0, b"oops")
    edu_dma(edu, DMA_START, 0x40000, 4, to_ram=True)
    assert events(h, "iommu", "fault")[-1]["dev"] == "edu0"
    assert h.phys.read(pa, 4, "cpu") == bytes(4)


def test_edu_deferred_dma_is_in_flight_until_the_timer_runs():
    h, devs = boot()
    edu = devs["edu0"]
    enable(edu)
    pa = edu_with_ram(h, edu)
    edu.defer_dma = True
    edu.dma_buf.write(0, b"late")
    edu_dma(edu, DMA_START, 0x10000, 4, to_ram=True)
    assert edu.mmio_read(0, 0x98, 8) & 1  # running: registers frozen
    edu.mmio_write(0, 0x88, 8, 0x10800)
    assert edu.mmio_read(0, 0x88, 8) == 0x10000
    assert h.phys.read(pa, 4, "cpu") == bytes(4)
    edu.run_dma()
    assert h.phys.read(pa, 4, "cpu") == b"late"


# ----- physmem routing ---------------------------------------------------------------------


def test_cpu_access_to_a_bar_address_reaches_the_device():
    h, devs = boot()
    edu, gpu = devs["edu0"], devs["gpu0"]
    phys = h.phys
    enable(edu)
    enable(gpu)
    assert phys.read(EDU_BASE, 4, "cpu") == (0x010000ED).to_bytes(4, "little")
    phys.write(EDU_BASE + 4, (0xF0F0F0F0).to_bytes(4, "little"), "vcpu:vm1")
    assert edu.mmio_read(0, 4, 4) == 0x0F0F0F0F
    phys.write(GPU_BASE + 0x1000, b"pixels", "cpu")
    assert gpu.vram.read(0x1000, 6) == b"pixels"
    assert phys.read(GPU_BASE + 0x1000, 6, "cpu") == b"pixels"
    assert phys.data.read(GPU_BASE + 0x1000, 6) == bytes(6)  # BARs are not memory
    phys.zero(GPU_BASE + 0x1000, GPU_BASE + 0x1002, "cpu")
    assert gpu.vram.read(0x1000, 6) == b"\0\0xels"
    # an access straddling the end of edu's BAR: the BAR answers its part (no register at
    # 0xffffc: all ones), the plain MMIO window the rest
    assert phys.read(EDU_BASE + MiB - 4, 8, "cpu") == b"\xff" * 4 + bytes(4)
    enable(gpu, 0)
    assert phys.read(GPU_BASE + 0x1000, 6, "cpu") == b"\xff" * 6
    assert events(h, "pci", "master-abort")[-1]["who"] == "cpu"
    assert h.sched.violations == []


def test_register_mmio_refuses_ram_and_overlaps():
    h, devs = boot()
    phys = h.phys
    with pytest.raises(ValueError, match="not inside"):
        phys.register_mmio(0x1000, 0x2000, devs["edu0"].windows[0])
    with pytest.raises(ValueError, match="overlaps"):
        phys.register_mmio(EDU_BASE, EDU_BASE + 0x1000, devs["edu0"].windows[0])
    f = PciFunction("edu1", "0000:00:05.0", {0: Bar(EDU_BASE, MiB)})
    with pytest.raises(ValueError, match="overlaps"):
        EduDevice("edu1", f, phys, h.sched)
    hit = phys.mmio_lookup(EDU_BASE + 8)
    assert hit is not None and getattr(hit[2], "dev", None) is devs["edu0"]
    assert phys.mmio_lookup(EDU_BASE + MiB) is None


def test_physmem_without_devices_is_unchanged():
    p = PhysMem(Scheduler(), Machine())  # no devices: MMIO windows hold plain contents
    p.write(3 * GiB + 0x10, b"bar", "cpu")
    assert p.read(3 * GiB + 0x10, 3, "dma:x") == b"bar"


# ----- P2P: a NIC into the GPU's VRAM ------------------------------------------------------

NIC_BASE = 0xF010_0000


def p2p_machine(acs: bool = False) -> Machine:
    gpu = PciDesc("gpu0", "gpu", "0000:02:00.0", ((0, GPU_BASE, 256 * MiB),),
                  iommu="iommu0", switch="sw0")
    nic = PciDesc("nic0", "nic", "0000:02:01.0", ((0, NIC_BASE, 128 * 1024),),
                  iommu="iommu0", switch="sw0", acs_redir=acs)
    return Machine(iommus=("iommu0",), pci=(gpu, nic))


def test_nic_p2p_write_through_a_switch_lands_in_vram_without_the_iommu():
    h, devs = boot(p2p_machine())
    gpu, nic = devs["gpu0"], devs["nic0"]
    assert isinstance(nic, NicDevice)
    enable(gpu)
    enable(nic)
    assert nic.dma_to(GPU_BASE + 0x2000, b"packet")  # nic0 has no IOMMU context at all
    assert gpu.vram.read(0x2000, 6) == b"packet"
    assert events(h, "pci", "p2p")[-1]["route"] == "switch"
    assert events(h, "iommu", "dma") == []
    assert nic.dma_from(GPU_BASE + 0x2000, 6) == b"packet"
    enable(gpu, 0)  # the GPU's MSE cleared: the peer write master-aborts
    assert nic.dma_to(GPU_BASE + 0x2000, b"PACKET")
    enable(gpu)
    assert gpu.vram.read(0x2000, 6) == b"packet"
    assert events(h, "pci", "master-abort")[-1]["who"] == "dma:nic0"


def test_nic_p2p_with_acs_redirect_goes_through_the_iommu_and_the_host_bridge():
    h, devs = boot(p2p_machine(acs=True))
    gpu, nic = devs["gpu0"], devs["nic0"]
    enable(gpu)
    enable(nic)
    assert not nic.dma_to(GPU_BASE, b"x")  # up to the IOMMU: no context entry, faults
    assert events(h, "iommu", "fault")[-1]["dev"] == "nic0"
    dom = nic.iommu.domain("paging")
    dom.map_pages(0x100000, GPU_BASE, 0x1000, RW | IOMMU_MMIO)
    nic.iommu.attach("nic0", dom)
    assert nic.dma_to(0x100000 + 8, b"via host")
    assert gpu.vram.read(8, 8) == b"via host"
    assert events(h, "pci", "p2p") == []
    assert h.sched.violations == []


def test_nic_registers_drive_its_dma_engine_and_bme_gates_it():
    h, devs = boot(p2p_machine())
    gpu, nic = devs["gpu0"], devs["nic0"]
    enable(gpu)
    enable(nic, PCI_COMMAND_MEMORY)
    nic.mmio_write_bytes(0, NIC_BUF, b"doorbell")
    nic.mmio_write(0, NIC_DMA_ADDR_LO, 4, GPU_BASE + 0x40)
    nic.mmio_write(0, NIC_DMA_LEN, 4, 8)
    nic.mmio_write(0, NIC_CMD, 4, 0x3)
    assert nic.mmio_read(0, NIC_STATUS, 4) == 0x3  # done, error: BME clear
    assert gpu.vram.read(0x40, 8) == bytes(8)
    enable(nic)
    nic.mmio_write(0, NIC_CMD, 4, 0x3)
    assert nic.mmio_read(0, NIC_STATUS, 4) == 0x1
    assert gpu.vram.read(0x40, 8) == b"doorbell"
    nic.flr()
    assert nic.mmio_read(0, NIC_STATUS, 4) == 0xFFFFFFFF  # COMMAND cleared by the FLR
    enable(nic)
    assert nic.mmio_read(0, NIC_STATUS, 4) == 0 and nic.buffer.read(0, 8) == bytes(8)


def test_unknown_model_and_bad_bars_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        boot(Machine(pci=(PciDesc("x", "fpga", "0000:03:00.0", ()),)))
    with pytest.raises(ValueError, match="1 MiB BAR0"):
        boot(Machine(pci=(PciDesc("e", "edu", "0000:03:00.0", ((0, EDU_BASE, 4096),)),)))
    s = Scheduler()
    with pytest.raises(ValueError, match="power of two"):
        GpuDevice("g", PciFunction("g", "0000:04:00.0", {0: (GPU_BASE + 4096, 8192)}),
                  PhysMem(s, Machine()), s)


def test_the_booted_kernel_s_physical_memory_reaches_the_default_devices():
    """On a SimHost the devices are the ones the kernel booted with (its vfio-pci initcall
    builds them) — found through physmem's MMIO registry; an edu DMA round trip ends in
    kernel.phys."""
    h = SimHost()
    phys = h.kernel.phys
    if phys.mmio_lookup(EDU_BASE) is None:  # the kernel side does not build them (yet)
        build_devices(h.kernel, h.kernel.sched, h.kernel.machine)
    hit = phys.mmio_lookup(EDU_BASE)
    assert hit is not None
    edu = getattr(hit[2], "dev", None)
    assert isinstance(edu, EduDevice) and edu.iommu is not None
    enable(edu)
    assert phys.read(EDU_BASE, 4, "cpu") == (0x010000ED).to_bytes(4, "little")
    pa = edu_with_ram(h, edu)
    phys.write(pa, b"kernel phys", "cpu")
    edu_dma(edu, 0x10000, DMA_START, 11, to_ram=False)
    edu_dma(edu, DMA_START, 0x11000, 11, to_ram=True)
    assert phys.read(pa + 0x1000, 11, "cpu") == b"kernel phys"
    assert h.kernel.sched.violations == []
