"""The real-kernel lanes: the linux halves of the conformance tests, run on a real kernel in a
QEMU guest, reported here as ordinary pytest results.

Lane 2 is Debian's stock 7.3 kernel (legacy VFIO container, udmabuf, dma_heap, memfd);
lane 3 a small 7.3 kernel built with IOMMUFD, IOMMUFD_TEST, the VFIO cdev and VFIO_PCI's
dma-buf (tools/realkernel/). Each lane boots once per session (tools/realkernel/laneN.sh,
which streams the guest's pytest output and hands back its JUnit XML); each conformance file
the lane runs is one test here, which fails with the guest's own assertion messages when any
of its linux cases failed, and also when a case was skipped for a reason the lane does not
expect (a skip naming /dev/iommu on lane 3 would hide that the kernel lacks what the lane is
for). A lane that cannot be set up or booted fails every one of its tests with the script's
message (which names a missing package), never skips.

These tests take minutes (lane 3 builds its kernel once, about 10 minutes on 2 cores, cached
in ~/.cache/passthru/lane3/); ``pytest -m "not lane"`` leaves them out of a quick local run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "realkernel"

# The skips each lane expects, by the reason's text, and why they are not missing work.
EXPECTED_SKIPS: dict[str, dict[str, str]] = {
    "lane2": {
        # Debian's kernel has neither IOMMUFD nor the VFIO cdev: lane 3 runs those files.
        "/dev/iommu absent": "no IOMMUFD in Debian's 7.3 (lane 3 has it)",
        "/dev/vfio/devices/vfio0 absent": "no VFIO cdev in Debian's 7.3 (lane 3 has it)",
        # No CMA area is reserved on the guest's command line (QEMU q35 has no reserved-memory
        # node), so the kernel registers no CMA heap.
        "/dev/dma_heap/reserved absent": "no CMA heap in a q35 guest",
    },
    "lane3": {
        "/dev/dma_heap/reserved absent": "no CMA heap in a q35 guest",
    },
}
for _skips in EXPECTED_SKIPS.values():
    # The TCG guest has no KVM (lane 1, this machine's own kernel, runs the KVM cases).
    _skips["/dev/kvm absent"] = "no KVM in the TCG guest (lane 1 runs those)"
    # The kernel selftest's own skips, ported with it (the same on SimHost): a case its
    # variant does not apply to.
    _skips["the selftest skips this case for variant"] = "tools/testing/selftests/iommu"
    _skips["the selftest returns early with a domain"] = "tools/testing/selftests/iommu"
# Both lanes run 7.3: the sim halves of the same files run again with the 7.3 profile, so
# each file's cases hold on SimHost(linux-7.3) and on the real 7.3 alike.
LANE_PROFILE = {"lane2": "linux-7.3", "lane3": "linux-7.3"}


def _lane_files(lane: str) -> list[str]:
    return (TOOLS / f"{lane}.tests").read_text().split()


@dataclass
class LaneRun:
    """What one boot of a lane gave back: the script's status and output, and the cases."""

    lane: str
    rc: int
    output: str
    cases: dict[str, list[ET.Element]] = field(default_factory=dict)  # file -> testcases
    error: str = ""
    sim_cases: dict[str, list[ET.Element]] = field(default_factory=dict)  # the sim halves


def _read_junit(junit: Path) -> dict[str, list[ET.Element]]:
    cases: dict[str, list[ET.Element]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        cases.setdefault(path, []).append(case)
    return cases


def run_sim_halves(lane: str, tmp: Path) -> dict[str, list[ET.Element]]:
    """The sim halves of the lane's files, on this machine, with the lane kernel's profile."""
    junit = tmp / f"{lane}-sim.xml"
    env = dict(os.environ, PASSTHRU_SIM_PROFILE=LANE_PROFILE[lane])
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "sim",
         f"--junitxml={junit}", *_lane_files(lane)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, timeout=20 * 60, check=False,
    )
    cases = _read_junit(junit) if junit.exists() else {}
    for path in _lane_files(lane):  # a file with no sim case at all is reported, not ignored
        cases.setdefault(path, [])
    return cases


def run_lane(lane: str, tmp: Path, script: Path | None = None) -> LaneRun:
    """Run a lane's script (default tools/realkernel/LANE.sh) and read its JUnit XML."""
    script = script or TOOLS / f"{lane}.sh"
    junit = tmp / f"{lane}.xml"
    log = tmp / f"{lane}.out"
    env = dict(os.environ, LANE_JUNIT=str(junit))
    with log.open("w") as out:
        try:
            rc = subprocess.run(
                [str(script)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=40 * 60,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    output = log.read_text(errors="replace")
    run = LaneRun(lane, rc, output)
    if rc == -1:
        run.error = f"{script.name} did not finish in 40 minutes"
    elif rc >= 90 or not junit.exists():
        tail = "\n".join(output.splitlines()[-30:])
        run.error = f"{script.name} could not run the lane (rc={rc}):\n{tail}"
    else:
        run.cases = _read_junit(junit)
    return run


_RUNS: dict[str, LaneRun] = {}


@pytest.fixture(scope="session")
def lane_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LaneRun]:
    def get(lane: str) -> LaneRun:
        if lane not in _RUNS:
            tmp = tmp_path_factory.mktemp(lane)
            _RUNS[lane] = run_lane(lane, tmp)
            _RUNS[lane].sim_cases = run_sim_halves(lane, tmp)
        return _RUNS[lane]

    return get


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error", "skipped"):
        el = case.find(tag)
        if el is not None:
            return tag, (el.get("message") or "") + "\n" + (el.text or "")
    return "passed", ""


PARAMS = [
    pytest.param(lane, path, id=f"{lane}-{Path(path).name}")
    for lane in ("lane2", "lane3")
    for path in _lane_files(lane)
]


def judge(run: LaneRun, path: str) -> tuple[str, list[str]]:
    """The counts of one file's linux cases in a lane, and what is wrong with them."""
    if run.error:
        return "", [run.error]
    cases = run.cases.get(path, [])
    if not cases:
        return "", [f"{run.lane}: the guest ran no linux case of {path} (rc={run.rc})"]
    bad: list[str] = []
    counts = {"passed": 0, "skipped": 0, "failure": 0, "error": 0}
    for case in cases:
        kind, text = _outcome(case)
        counts[kind] += 1
        name = case.get("name")
        if kind in ("failure", "error"):
            bad.append(f"{kind.upper()} {path}::{name} (in the {run.lane} guest)\n{text.strip()}")
        elif kind == "skipped":
            reason = text.split("\n", 1)[0].strip()
            if not any(r in reason for r in EXPECTED_SKIPS[run.lane]):
                bad.append(f"UNEXPECTED SKIP {path}::{name} in {run.lane}: {reason}")
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    sim = run.sim_cases.get(path)
    if sim is not None:  # None: the sim halves were not run (the runner's own unit tests)
        profile = LANE_PROFILE[run.lane]
        if not sim:
            bad.append(f"no sim case of {path} ran with profile {profile}")
        for case in sim:
            kind, text = _outcome(case)
            if kind in ("failure", "error"):
                bad.append(f"{kind.upper()} {path}::{case.get('name')} (SimHost, profile "
                           f"{profile}, the lane kernel's)\n{text.strip()}")
        summary += f"; sim ({profile}): {len(sim)} cases"
    return summary, bad


@pytest.mark.lane
@pytest.mark.parametrize(("lane", "path"), PARAMS)
def test_conformance_file_on_a_real_kernel(
    lane_run: Callable[[str], LaneRun], lane: str, path: str
) -> None:
    summary, bad = judge(lane_run(lane), path)
    if bad:
        pytest.fail(f"{lane}, {path}: {summary}\n\n" + "\n\n".join(bad), pytrace=False)
    print(f"{lane} {path}: {summary}")
