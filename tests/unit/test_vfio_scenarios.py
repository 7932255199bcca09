"""The VFIO scenarios (passthru/scenarios/vfio.py): each verdict under DPOR (and the buggy
ones under DFS too), the kind of violation each buggy variant reports, and the kapi helpers
they stand on (kapi_vfio.py): binding the GPU after boot, a NIC hot-plugged beside it, a
scenario's KVM patch undone after its run."""

from __future__ import annotations

import pytest

from passthru import SimHost
from passthru.check.discover import builtin
from passthru.check.runner import check
from passthru.kapi import hotplug_nic, pci_dev, vfio_pci_bind
from passthru.kernel.dma.p2pdma import PCI_P2PDMA_MAP_BUS_ADDR, calc_map_type_and_dist
from passthru.kernel.kvm.mmu import KvmMmu
from passthru.kernel.vfio.pci.vfio_pci import vfio_pci_devices
from passthru.uapi import linux as L

SCENARIOS = {sc.name: sc for sc in builtin() if sc.module.endswith("scenarios.vfio")}

SAFE = [
    "vfio_reset_vs_dma_and_vcpu",
    "vfio_mse_clear_vs_peer_dma",
    "vfio_vmm_dies_cdev_first",
    "vfio_vmm_dies_iommufd_first",
    "vfio_vmm_dies_dmabuf_first",
    "vfio_vmm_dies_kvm_first",
    "vfio_vmm_dies_all_at_once",
    "vfio_dmabuf_map_file_vs_mse_clear",
    "vfio_importer_vs_mse_clear",
]
BUGGY = {
    "vfio_reset_vs_vcpu_no_mmu_notifier": "vcpu-reaches-disabled-bar",
    "vfio_mse_clear_vs_peer_dma_buggy": "dma-reaches-disabled-bar",
    "vfio_vmm_dies_buggy": "iommu-domain-uaf",
    "vfio_dmabuf_map_file_vs_mse_clear_abba": "lock-order",
    "vfio_importer_resv_then_memory_lock_abba": "lock-order",
}


def test_every_vfio_scenario_is_listed_here() -> None:
    assert set(SCENARIOS) == set(SAFE) | set(BUGGY)
    for name in BUGGY:
        assert SCENARIOS[name].expect == "violation"
    for name in SAFE:
        assert SCENARIOS[name].expect == "safe"
        assert SCENARIOS[name].doc  # the first sentence says what it shows


@pytest.mark.parametrize("name", SAFE)
def test_safe_under_dpor(name: str) -> None:
    sc = SCENARIOS[name]
    v = check(sc, sc.profiles[-1], strategy="dpor")
    assert v.ok and v.complete and not v.found, [x.text() for x in v.violations]


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
@pytest.mark.parametrize("name", sorted(BUGGY))
def test_buggy_found_as_what_it_is(name: str, strategy: str) -> None:
    sc = SCENARIOS[name]
    v = check(sc, sc.profiles[-1], strategy=strategy)
    assert v.ok and v.found
    assert v.violations[0].kind == BUGGY[name], [x.text() for x in v.violations]


def test_no_mmu_notifier_patch_is_undone_after_the_run() -> None:
    before = (KvmMmu.invalidate_begin, KvmMmu.invalidate_end)
    sc = SCENARIOS["vfio_reset_vs_vcpu_no_mmu_notifier"]
    assert check(sc, sc.profiles[-1], strategy="dpor").found
    assert (KvmMmu.invalidate_begin, KvmMmu.invalidate_end) == before


def test_gpu_binds_after_boot_once_and_nic_beside_it_is_p2p() -> None:
    h = SimHost()
    assert "gpu0" not in vfio_pci_devices(h.kernel)  # VFIO_PCI_IDS: only the edu at boot
    path = vfio_pci_bind(h, "gpu0")
    assert path != "/dev/vfio/devices/vfio0" and vfio_pci_bind(h, "gpu0") == path
    fd = h.open(path, L.O_RDWR)
    nic = hotplug_nic(h, bdf="0000:01:00.1", beside="gpu0")
    gpu = pci_dev(h, "gpu0")
    topo = gpu.fabric.topology  # type: ignore[union-attr]
    assert calc_map_type_and_dist(topo, gpu.func, nic.func)[0] == PCI_P2PDMA_MAP_BUS_ADDR
    h.close(fd)
    h.exit()
    assert h.leaks() == []
