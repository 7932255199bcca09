"""Counterexample files: what they record, what loads, what is refused."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest

from passthru.check import schedfile
from passthru.check.discover import builtin, from_paths
from passthru.check.runner import Verdict
from passthru.check.schedfile import ScheduleError

ABBA = next(sc for sc in builtin() if sc.name == "abba")

USER_SCENARIO = (
    "from passthru.check.scenario import scenario\n"
    "@scenario(expect='violation', teardown=False)\n"
    "def mine(s):\n"
    "    s.final('always', lambda: 'broken')\n"
)


def test_schedule_names_its_source_file_and_hash() -> None:
    data = schedfile.schedule_json(ABBA, "linux-7.1", None, [1, 2], (3,))
    src = inspect.getsourcefile(ABBA.fn)
    assert src is not None
    assert data["version"] == schedfile.SCHEDULE_VERSION == 2
    assert data["source"] == str(Path(src).resolve())
    assert data["source_sha256"] == hashlib.sha256(Path(src).read_bytes()).hexdigest()
    assert (data["scenario"], data["profile"], data["design"]) == ("abba", "linux-7.1", None)
    assert (data["choices"], data["fail_nth"]) == ([1, 2], [3])
    # Verdict.schedule_json is the same file.
    assert Verdict(ABBA, "linux-7.1", None).schedule_json() == {
        **schedfile.schedule_json(ABBA, "linux-7.1", None, [], ())}


def test_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(schedfile.dumps(schedfile.schedule_json(ABBA, "linux-6.19", "vmm", [0, 2, 1],
                                                         [2, 1])))
    s = schedfile.load(f)
    assert (s.scenario, s.profile, s.design, s.version) == ("abba", "linux-6.19", "vmm", 2)
    assert s.choices == (0, 2, 1) and s.fail_nth == frozenset({1, 2})
    assert s.source is not None and s.source.endswith("demos.py")
    assert schedfile.source_warning(s, ABBA) is None


def test_version_1_files_still_load(tmp_path: Path) -> None:
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"version": 1, "scenario": "abba", "profile": "linux-7.1",
                             "choices": [1, 1, 2]}))
    s = schedfile.load(f)
    assert s.version == 1 and s.choices == (1, 1, 2) and s.fail_nth == frozenset()
    assert s.design is None and s.source is None and s.source_sha256 is None
    assert schedfile.source_warning(s, ABBA) is None  # nothing recorded, nothing to compare


def test_version_2_requires_the_source_fields(tmp_path: Path) -> None:
    data = schedfile.schedule_json(ABBA, "linux-7.1", None, [], ())
    del data["source_sha256"]
    with pytest.raises(ScheduleError, match="missing source_sha256"):
        schedfile.parse(data, "x.json")


def test_source_change_and_removal_are_noticed(tmp_path: Path) -> None:
    f = tmp_path / "mine_scn.py"
    f.write_text(USER_SCENARIO)
    (sc,) = from_paths([str(f)])
    s = schedfile.parse(schedfile.schedule_json(sc, "linux-7.1", None, [], ()))
    assert s.source == str(f.resolve())
    assert schedfile.source_warning(s, sc) is None and schedfile.source_warning(s) is None
    f.write_text(USER_SCENARIO + "# edited\n")
    for w in (schedfile.source_warning(s, sc), schedfile.source_warning(s)):
        assert w is not None and "source changed since the counterexample was saved" in w
    f.unlink()
    w = schedfile.source_warning(s)
    assert w is not None and "gone" in w


GOOD = {"version": 2, "scenario": "abba", "profile": "linux-7.1", "design": None,
        "choices": [1, 2], "fail_nth": [], "source": None, "source_sha256": None}


@pytest.mark.parametrize(("data", "why"), [
    ([1, 2], "JSON object"),
    ("abba", "JSON object"),
    ({**GOOD, "version": 3}, "unsupported schedule version 3"),
    ({**GOOD, "version": "2"}, "unsupported schedule version"),
    ({**GOOD, "version": True}, "unsupported schedule version"),
    ({k: v for k, v in GOOD.items() if k != "choices"}, "missing choices"),
    ({k: v for k, v in GOOD.items() if k != "scenario"}, "missing scenario"),
    ({**GOOD, "scenario": ""}, "'scenario' must be a non-empty string"),
    ({**GOOD, "profile": 7}, "'profile' must be a non-empty string"),
    ({**GOOD, "design": 1}, "'design' must be a string or null"),
    ({**GOOD, "choices": "1,2"}, "'choices' must be a list of integers"),
    ({**GOOD, "choices": {"0": 1}}, "'choices' must be a list of integers"),
    ({**GOOD, "choices": [1, "2"]}, r"choices\[1\] is \"2\", not an integer"),
    ({**GOOD, "choices": [1, 2.0]}, r"choices\[1\] is 2.0, not an integer"),
    ({**GOOD, "choices": [True]}, r"choices\[0\] is true, not an integer"),
    ({**GOOD, "choices": [[1]]}, "not an integer"),
    ({**GOOD, "choices": [-1]}, r"choices\[0\] = -1 is out of range"),
    ({**GOOD, "choices": [1 << 40]}, "out of range"),
    ({**GOOD, "fail_nth": [0]}, r"fail_nth\[0\] = 0 is out of range"),
    ({**GOOD, "fail_nth": [-3]}, "out of range"),
    ({**GOOD, "fail_nth": None}, "'fail_nth' must be a list"),
    ({**GOOD, "source_sha256": "abc"}, "not a sha256"),
    ({**GOOD, "source": ["x"]}, "'source' must be a string or null"),
])
def test_malformed_schedules_are_refused(data: object, why: str) -> None:
    with pytest.raises(ScheduleError, match=why):
        schedfile.parse(data, "bad.json")


def test_huge_lists_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedfile, "MAX_CHOICES", 5)
    monkeypatch.setattr(schedfile, "MAX_FAIL_NTH", 2)
    schedfile.parse({**GOOD, "choices": [0] * 5})
    with pytest.raises(ScheduleError, match=r"'choices' has 6 entries \(at most 5\)"):
        schedfile.parse({**GOOD, "choices": [0] * 6})
    with pytest.raises(ScheduleError, match="'fail_nth' has 3 entries"):
        schedfile.parse({**GOOD, "fail_nth": [1, 2, 3]})


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "not a schedule file"),
    (b"{not json", "not a schedule file"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[" * 200_000 + b"]" * 200_000, "not a schedule file"),  # nesting past the recursion limit
    (b'{"version": 2, "choices": [' + b"9" * 10_000 + b"]}", "not a schedule file"),
])
def test_unreadable_files_are_refused(tmp_path: Path, raw: bytes, why: str) -> None:
    f = tmp_path / "bad.json"
    f.write_bytes(raw)
    with pytest.raises(ScheduleError, match=why) as e:
        schedfile.load(f)
    assert str(f) in str(e.value)


def test_oversized_and_missing_files_are_refused(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big.json"
    f.write_text(json.dumps({**GOOD, "choices": [0] * 100}))
    monkeypatch.setattr(schedfile, "MAX_FILE_BYTES", 64)
    with pytest.raises(ScheduleError, match="too large"):
        schedfile.load(f)
    with pytest.raises(ScheduleError, match="cannot read"):
        schedfile.load(tmp_path / "nope.json")


def test_the_schema_names_every_key_a_saved_file_has_and_designs_are_checked() -> None:
    sc = next(s for s in builtin() if s.name == "abba")
    saved = schedfile.schedule_json(sc, "linux-7.1", None, [1, 2], ())
    assert set(saved) == set(schedfile.SCHEMA)
    required = {k for k, (_, since) in schedfile.SCHEMA.items() if since is not None}
    for key in required - {"version"}:  # (no version: "unsupported schedule version")
        with pytest.raises(ScheduleError, match=f"missing {key}"):
            schedfile.parse({k: v for k, v in saved.items() if k != key})
    assert schedfile.parse({**saved, "design": "vmm"}).design == "vmm"
    with pytest.raises(ScheduleError, match="unknown design \"tsm\""):
        schedfile.parse({**saved, "design": "tsm"})
