"""hw/pci.py: the PCI tree as data, and the walks p2pdma.c makes over it."""

from __future__ import annotations

import pytest

from passthru.hw.pci import (
    Bar,
    PciFunction,
    Topology,
    pci_find_host_bridge,
    pci_upstream_bridge,
)

GiB = 1 << 30


def tree():
    #  host ── rp0 ── sw0.up ─┬─ dp0 ── gpu (00.0), gpu_audio (00.1)
    #       │                 └─ dp1 ── nic
    #       ├─ rp1 ── nvme
    #       └─ rciep (on the root bus)
    t = Topology()
    rp0 = t.add_root_port("rp0")
    rp1 = t.add_root_port("rp1")
    sw = t.add_switch("sw0", rp0)
    dp0 = sw.port()
    gpu = t.add_function(PciFunction("gpu", "0000:03:00.0", {0: (0x40_0000_0000, 128 * GiB)}), dp0)
    audio = t.add_function(PciFunction("gpu_audio", "0000:03:00.1"), dp0)
    nic = t.add_function(PciFunction("nic", "0000:04:00.0"), sw)
    nvme = t.add_function(PciFunction("nvme", "0000:05:00.0"), rp1)
    rciep = t.add_function(PciFunction("rciep", "0000:00:04.0"))
    return t, dict(rp0=rp0, rp1=rp1, sw=sw, gpu=gpu, audio=audio, nic=nic, nvme=nvme, rciep=rciep)


def names(nodes):
    return [n.name for n in nodes]


def test_bars_accept_tuples_and_carry_bus_offset():
    f = PciFunction("f", "0000:01:00.0", {0: (0x1000, 0x1000), 2: Bar(0x8000, 0x100, True, 0x10)})
    assert f.bars[0] == Bar(0x1000, 0x1000) and f.bars[0].bus_offset == 0
    assert f.bars[2].bus_offset == 0x10 - 0x8000
    with pytest.raises(ValueError):
        PciFunction("g", "0000:01:00.1", {6: (0, 1)})


def test_upstream_bridge_stops_at_the_root_bus():
    t, d = tree()
    assert pci_upstream_bridge(d["nic"]) is d["sw"].downstream[1]
    assert pci_upstream_bridge(d["sw"].upstream) is d["rp0"]
    assert pci_upstream_bridge(d["rp0"]) is None  # a root port sits on the root bus
    assert pci_upstream_bridge(d["rciep"]) is None
    assert pci_find_host_bridge(d["gpu"]) is t.host


def test_common_upstream_through_a_switch():
    t, d = tree()
    assert t.common_upstream(d["gpu"], d["nic"]) is d["sw"].upstream
    assert names(t.path(d["gpu"], d["nic"])) == ["gpu", "sw0.dp0", "sw0.up", "sw0.dp1", "nic"]
    assert t.distance(d["gpu"], d["nic"]) == 4  # the kernel's example: one switch


def test_same_function_and_sibling_functions():
    t, d = tree()
    assert t.common_upstream(d["gpu"], d["gpu"]) is d["gpu"]
    assert t.distance(d["gpu"], d["gpu"]) == 0
    assert t.common_upstream(d["gpu"], d["audio"]) is d["sw"].downstream[0]
    assert t.distance(d["gpu"], d["audio"]) == 2


def test_no_common_bridge_goes_through_the_root_complex():
    t, d = tree()
    assert t.common_upstream(d["gpu"], d["nvme"]) is None
    p = t.path(d["gpu"], d["nvme"])
    assert names(p) == ["gpu", "sw0.dp0", "sw0.up", "rp0", "pci0000:00", "rp1", "nvme"]
    assert t.distance(d["gpu"], d["nvme"]) == 4 + 2
    assert t.common_upstream(d["rciep"], d["nvme"]) is None


def test_two_host_bridges_both_appear_on_the_path():
    t, d = tree()
    hb1 = t.add_host_bridge("pci0000:80")
    rp = t.add_root_port("rp80", hb1)
    far = t.add_function(PciFunction("far", "0000:81:00.0"), rp)
    assert names(t.path(d["nvme"], far)) == [
        "nvme",
        "rp1",
        "pci0000:00",
        "pci0000:80",
        "rp80",
        "far",
    ]


def test_add_function_refuses_a_duplicate_bdf():
    t, d = tree()
    with pytest.raises(ValueError, match="already present"):
        t.add_function(PciFunction("again", d["nic"].bdf))
