"""The selftest's ``iommufd_device_pasid`` fixture (tools/testing/selftests/iommu/iommufd.c;
KERNEL.md §7): PASID attach, replace and detach through the mock device, PASID-compatible
HWPTs (IOMMU_HWPT_ALLOC_PASID), the RID/PASID compatibility rule, and the reported PASID
width. Each failure is followed by PASID_CHECK_HWPT showing the PASID kept its old domain.
Needs CONFIG_IOMMUFD_TEST."""

from __future__ import annotations

import errno

import pytest

from passthru.uapi import iommufd as I

from ._iommufd import NODE, mock_fixture_setup, raises

pytestmark = pytest.mark.node(NODE)

PASID = I.IOMMU_HWPT_ALLOC_PASID


class DevicePasid:
    def __init__(self, host, pasid_capable):
        self.host = host
        self.ctx = ctx = mock_fixture_setup(host)
        self.ioas_id = ctx.ioas_alloc()
        self.stdev_id, self.hwpt_id, self.device_id = ctx.mock_domain_flags(
            self.ioas_id, I.MOCK_FLAGS_DEVICE_PASID)
        self.pasid_capable = pasid_capable
        self.no_pasid_stdev_id = self.no_pasid_device_id = 0
        if not pasid_capable:
            self.no_pasid_stdev_id, _, self.no_pasid_device_id = ctx.mock_domain_flags(
                self.ioas_id, 0)

    def check(self, pasid, hwpt):
        self.ctx.pasid_check_hwpt(self.stdev_id, pasid, hwpt)


@pytest.fixture(params=[False, True], ids=["no_pasid", "has_pasid"])
def p(request, host):
    st = DevicePasid(host, request.param)
    yield st
    st.ctx.teardown()


def test_max_pasid_width(p):
    assert p.ctx.get_hw_info(p.device_id).out_max_pasid_log2 == I.MOCK_PASID_WIDTH
    if p.no_pasid_device_id:
        assert p.ctx.get_hw_info(p.no_pasid_device_id).out_max_pasid_log2 == 0


def test_pasid_attach(p):
    ctx, dev, stdev = p.ctx, p.device_id, p.stdev_id
    pasid = 100
    ctx.pasid_detach(stdev, pasid)  # detach without attach: not expected, but no failure
    parent = ctx.hwpt_alloc(dev, p.ioas_id, I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    n0 = ctx.hwpt_alloc_nested(dev, parent, PASID)
    n1 = ctx.hwpt_alloc_nested(dev, parent, PASID)
    fault_id, fault_fd = ctx.fault_alloc()
    iopf = ctx.hwpt_alloc_nested(dev, parent, I.IOMMU_HWPT_FAULT_ID_VALID | PASID,
                                 fault_id=fault_id)
    viommu = ctx.viommu_alloc(dev, parent)
    ctx.hwpt_alloc_nested(dev, viommu, PASID)
    s2 = ctx.hwpt_alloc(dev, p.ioas_id, PASID)

    # RID on a non-PASID-compatible domain: PASID attach fails
    ctx.mock_domain_replace(stdev, parent)
    raises(errno.EINVAL, ctx.pasid_attach, stdev, pasid, s2)
    p.check(pasid, 0)
    # RID on a PASID-compatible domain: PASID attach works, and then the RID cannot go back
    ctx.mock_domain_replace(stdev, s2)
    ctx.pasid_attach(stdev, pasid, n0)
    raises(errno.EINVAL, ctx.mock_domain_replace, stdev, parent)
    ctx.pasid_detach(stdev, pasid)
    p.check(pasid, 0)

    if not p.pasid_capable:
        nps = p.no_pasid_stdev_id
        ctx.mock_domain_replace(nps, n0)  # a PASID-compat domain on a non-PASID device is fine
        ctx.mock_domain_replace(nps, p.ioas_id)
        raises(errno.EINVAL, ctx.pasid_attach, nps, pasid, parent)
        raises(errno.EINVAL, ctx.pasid_attach, nps, pasid, s2)

    raises(errno.EINVAL, ctx.pasid_attach, stdev, pasid, parent)  # not PASID-compatible
    p.check(pasid, 0)
    raises(errno.EINVAL, ctx.pasid_attach, stdev, pasid, p.ioas_id)  # an IOAS
    p.check(pasid, 0)
    ctx.pasid_attach(stdev, pasid, s2)
    p.check(pasid, s2)
    raises(errno.EBUSY, ctx.pasid_attach, stdev, pasid, n0)  # attach never overwrites
    p.check(pasid, s2)
    ctx.pasid_detach(stdev, pasid)
    p.check(pasid, 0)
    ctx.pasid_attach(stdev, pasid, n0)
    p.check(pasid, n0)
    raises(errno.EBUSY, ctx.pasid_attach, stdev, pasid, n0)
    ctx.pasid_detach(stdev, pasid)

    # replace
    pasid = 200
    raises(errno.EINVAL, ctx.pasid_replace, stdev, pasid, s2)  # nothing attached
    ctx.pasid_attach(stdev, pasid, s2)
    p.check(pasid, s2)
    raises(errno.EINVAL, ctx.pasid_replace, stdev, pasid, p.ioas_id)
    p.check(pasid, s2)
    ctx.pasid_replace(stdev, pasid, n0)
    p.check(pasid, n0)
    ctx.pasid_replace(stdev, pasid, n1)
    p.check(pasid, n1)
    ctx.pasid_detach(stdev, pasid)

    # the mock's designed failure: replace on IOMMU_TEST_PASID_RESERVED is ENOMEM, old kept
    pasid = I.IOMMU_TEST_PASID_RESERVED
    ctx.pasid_attach(stdev, pasid, s2)
    p.check(pasid, s2)
    raises(errno.ENOMEM, ctx.pasid_replace, stdev, pasid, n0)
    p.check(pasid, s2)
    ctx.pasid_detach(stdev, pasid)

    # an IOPF-capable HWPT on a PASID
    pasid = 2048
    ctx.pasid_attach(stdev, pasid, iopf)
    p.check(pasid, iopf)
    ctx.trigger_iopf(dev, pasid, fault_fd)
    ctx.pasid_replace(stdev, pasid, s2)
    p.check(pasid, s2)
    ctx.pasid_detach(stdev, pasid)
    ctx.destroy(iopf)
    p.host.close(fault_fd)
    ctx.destroy(fault_id)
    ctx.mock_domain_replace(stdev, p.ioas_id)
