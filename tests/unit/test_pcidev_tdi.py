"""The TDISP responder wired into the PCI device model (hw/pcidev.py + hw/tdi.py): config
writes, resets and host MMIO accesses reach the TDI; the device refuses host access to a
locked TDI's private MMIO (a ``tdi-private-mmio`` violation) and TEE access before RUN."""

from __future__ import annotations

import pytest

from passthru.hw import tdisp as t
from passthru.hw.devices import GpuDevice, build_devices
from passthru.hw.machine import default_machine
from passthru.hw.pcidev import (
    PCI_BASE_ADDRESS_0,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    TDI_PRIVATE_MMIO,
)
from passthru.hw.physmem import PhysMem
from passthru.hw.tdisp import TdiState
from passthru.sim import Scheduler

MSE_BME = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER


def gpu() -> tuple[Scheduler, GpuDevice]:
    sched = Scheduler()
    machine = default_machine()
    devs = build_devices(PhysMem(sched, machine), sched, machine)
    dev = devs["gpu0"]
    assert isinstance(dev, GpuDevice) and dev.tdi is not None
    dev.cfg_write(PCI_COMMAND, 2, MSE_BME)
    return sched, dev


def ask(dev: GpuDevice, msg: t.Message) -> t.Message:
    assert dev.tdi is not None
    return t.decode(dev.tdi.handle(t.encode(msg)))


def lock(dev: GpuDevice) -> bytes:
    assert dev.tdi is not None
    resp = ask(dev, t.LockInterface(dev.tdi.function_id))
    assert isinstance(resp, t.LockInterfaceResponse)
    return resp.nonce


def run(dev: GpuDevice) -> None:
    assert dev.tdi is not None
    nonce = lock(dev)
    assert isinstance(ask(dev, t.StartInterface(dev.tdi.function_id, nonce)),
                      t.StartInterfaceResponse)


def kinds(sched: Scheduler) -> list[str]:
    return [v.kind for v in sched.violations]


def test_a_device_without_tdisp_has_no_tdi():
    sched = Scheduler()
    machine = default_machine()
    devs = build_devices(PhysMem(sched, machine), sched, machine)
    assert devs["edu0"].tdi is None


def test_host_access_to_private_mmio_is_refused_while_locked_and_allowed_after_stop():
    sched, dev = gpu()
    before = dev.mmio_read(0, 0, 4)
    lock(dev)
    assert dev.mmio_read(0, 0, 4) == 0xFFFF_FFFF
    dev.mmio_write(0, 0, 4, 0x1234)
    assert kinds(sched) == [TDI_PRIVATE_MMIO, TDI_PRIVATE_MMIO]
    assert "while its TDI is CONFIG_LOCKED" in sched.violations[0].message
    assert dev.tdi is not None
    assert isinstance(ask(dev, t.StopInterface(dev.tdi.function_id)), t.StopInterfaceResponse)
    assert dev.mmio_read(0, 0, 4) == before
    assert len(sched.violations) == 2


def test_tee_access_only_while_running_and_never_a_violation():
    sched, dev = gpu()
    lock(dev)
    assert dev.mmio_read(0, 0, 4, who="tee:vm0") == 0xFFFF_FFFF
    assert any(e.subsystem == "pci" and e.event == "tee-refused" for e in sched.log.events)
    assert dev.tdi is not None
    nonce_vm_view = dev.tdi.nonce
    assert nonce_vm_view is not None
    ask(dev, t.StartInterface(dev.tdi.function_id, nonce_vm_view))
    dev.mmio_write(0, 0, 4, 7, who="tee:vm0")
    assert sched.violations == []


@pytest.mark.parametrize("event", ["flr", "clear-mse", "clear-bme", "bar", "config", "ide",
                                   "bus-reset"])
def test_security_events_put_a_running_tdi_in_error(event: str):
    _, dev = gpu()
    run(dev)
    tdi = dev.tdi
    assert tdi is not None and tdi.tdi_state == TdiState.RUN
    if event == "flr":
        dev.flr()
    elif event == "clear-mse":
        dev.cfg_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER)
    elif event == "clear-bme":
        dev.cfg_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
    elif event == "bar":
        dev.cfg_write(PCI_BASE_ADDRESS_0, 4, dev.cfg_read(PCI_BASE_ADDRESS_0, 4))
    elif event == "config":
        dev.cfg_write(0x3C, 1, 5)  # INTERRUPT_LINE
    elif event == "ide":
        dev.cfg_write(dev.ide_cap + 4, 4, 1)
    else:
        dev.bus_reset()
    assert tdi.tdi_state == TdiState.ERROR


def test_doe_mailbox_and_status_writes_keep_the_tdi_locked():
    _, dev = gpu()
    lock(dev)
    dev.cfg_write(dev.doe_cap + 8, 4, 0x1)  # a DOE mailbox write carries TDISP itself
    dev.cfg_write(PCI_COMMAND, 2, MSE_BME)  # COMMAND written with MSE and BME still set
    dev.cfg_write(0x06, 2, 0xFFFF)  # STATUS (write-1-to-clear bits)
    assert dev.tdi is not None and dev.tdi.tdi_state == TdiState.CONFIG_LOCKED
