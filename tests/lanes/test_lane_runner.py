"""The lane runner's own logic, with fake lane scripts (fast; no QEMU): a guest failure
fails the file's test with the guest's message, an unexpected skip fails it, a lane that
cannot boot fails every file with the script's message."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
from pathlib import Path

from .test_lanes import LaneRun, judge, run_lane

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.conformance.test_a" name="test_ok[linux]" />
<testcase classname="tests.conformance.test_a" name="test_bad[linux]">
<failure message="AssertionError: errno 22 != 95">assert e.errno == 95</failure></testcase>
<testcase classname="tests.conformance.test_b" name="test_cma[linux]">
<skipped message="/dev/dma_heap/reserved absent" /></testcase>
<testcase classname="tests.conformance.test_b" name="test_iommu[linux]">
<skipped message="/dev/iommu absent" /></testcase>
</testsuite></testsuites>"""


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-lane.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _fake_run(tmp_path: Path, lane: str) -> LaneRun:
    (tmp_path / "junit.xml").write_text(JUNIT)
    body = f'echo "guest output"; cp {tmp_path}/junit.xml "$LANE_JUNIT"; exit 1\n'
    script = _script(tmp_path, body)
    return run_lane(lane, tmp_path, script)


def test_a_guest_failure_fails_the_file_with_the_guest_message(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "lane3")
    summary, bad = judge(run, "tests/conformance/test_a.py")
    assert summary == "1 passed, 1 failure"
    assert len(bad) == 1
    assert "test_bad[linux]" in bad[0] and "errno 22 != 95" in bad[0] and "lane3" in bad[0]


def test_skips_are_judged_against_the_lane(tmp_path: Path) -> None:
    lane3 = _fake_run(tmp_path, "lane3")
    _, bad = judge(lane3, "tests/conformance/test_b.py")
    # No CMA heap is expected on both lanes; a missing /dev/iommu only on lane 2.
    assert bad == [
        "UNEXPECTED SKIP tests/conformance/test_b.py::test_iommu[linux] in lane3: /dev/iommu absent"
    ]
    lane2 = _fake_run(tmp_path, "lane2")
    assert judge(lane2, "tests/conformance/test_b.py") == ("2 skipped", [])


def test_a_file_the_guest_did_not_run_fails(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "lane2")
    _, bad = judge(run, "tests/conformance/test_c.py")
    assert bad and "ran no linux case of tests/conformance/test_c.py" in bad[0]


def test_a_lane_that_cannot_boot_fails_loudly(tmp_path: Path) -> None:
    body = 'echo "lane: could not install the Debian packages qemu-system-x86"; exit 90\n'
    script = _script(tmp_path, body)
    run = run_lane("lane2", tmp_path, script)
    _, bad = judge(run, "tests/conformance/test_a.py")
    assert len(bad) == 1
    assert "rc=90" in bad[0] and "qemu-system-x86" in bad[0]


def test_a_sim_half_failing_with_the_lane_profile_fails_the_file(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "lane3")
    sim = ET.fromstring(
        '<testcase classname="tests.conformance.test_a" name="test_ok[sim]">'
        '<failure message="assert 16 == 12">boom</failure></testcase>'
    )
    run.sim_cases = {"tests/conformance/test_a.py": [sim]}
    summary, bad = judge(run, "tests/conformance/test_a.py")
    assert "sim (linux-7.3): 1 cases" in summary
    assert any("test_ok[sim]" in b and "linux-7.3" in b and "assert 16 == 12" in b for b in bad)
    run.sim_cases = {"tests/conformance/test_a.py": []}
    _, bad = judge(run, "tests/conformance/test_a.py")
    assert any("no sim case of tests/conformance/test_a.py" in b for b in bad)
