"""The exporter × importer × profile matrix: every cell is computed by running the importer's
real path, so these assertions pin the model's memory-model rules (KERNEL.md §1)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from passthru.check.dma_buf_matrix import EXPORTERS, IMPORTERS, cell, matrix
from passthru.cli import main


@pytest.mark.parametrize("exporter,importer,profile,result", [
    # pinned buffers suit everyone
    ("pinned (heap/udmabuf)", "static device", "linux-7.1", "ok"),
    ("pinned (heap/udmabuf)", "rdma pinned MR", "linux-6.19", "ok"),
    # revocable: vfio refuses importers without peer2peer; RDMA does not take revocable
    ("revocable (vfio-pci)", "static device", "linux-7.1", "attach: EOPNOTSUPP"),
    ("revocable (vfio-pci)", "rdma pinned MR", "linux-7.1", "register: EOPNOTSUPP"),
    ("revocable (vfio-pci)", "iommufd", "linux-7.1", "ok"),
    ("revocable (vfio-pci)", "compositor gpu", "linux-7.1", "attach: EOPNOTSUPP"),
    # a pinned importer of a revocable exporter: refused at map (6.19 pin op) / attach (7.1)
    ("revocable (selftest mock)", "static device", "linux-6.19", "map: EOPNOTSUPP"),
    ("revocable (selftest mock)", "static device", "linux-7.1", "attach: EOPNOTSUPP"),
    # importer ops without invalidate: EINVAL before 7.1; 7.1 accepts unless revocable
    ("pinned (heap/udmabuf)", "dynamic, no invalidate op", "linux-6.19", "attach: EINVAL"),
    ("pinned (heap/udmabuf)", "dynamic, no invalidate op", "linux-7.1", "ok"),
    ("revocable (selftest mock)", "dynamic, no invalidate op", "linux-7.1",
     "attach: EOPNOTSUPP"),
    # movable: iommufd cannot fault; a static importer pins it in place
    ("movable (gpu vram)", "iommufd", "linux-7.1", "attach: EOPNOTSUPP"),
    ("movable (gpu vram)", "static device", "linux-7.1", "ok"),
    ("movable (gpu vram)", "kvm (faults, moves)", "linux-6.19", "ok"),
])
def test_matrix_cells(exporter, importer, profile, result):
    assert cell(exporter, importer, profile).result == result


def test_full_matrix_leaves_nothing_behind_and_is_deterministic():
    a = matrix(["linux-6.19", "linux-7.1"])
    b = matrix(["linux-6.19", "linux-7.1"])
    assert a == b and len(a) == 2 * len(EXPORTERS) * len(IMPORTERS)


def test_cli_matrix_prints_every_pair():
    r = CliRunner().invoke(main, ["matrix", "--profile", "linux-7.1"])
    assert r.exit_code == 0, r.output
    assert r.output.count("EOPNOTSUPP") >= 5 and "selftest mock" in r.output
    assert CliRunner().invoke(main, ["matrix", "--profile", "nope"]).exit_code == 2
