"""The Autobahn runner's own logic: the allow-list, the verdict per case, how cases are split over clients, and
the skip without Python 2.7. (The fuzzing run itself is `make autobahn`.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.autobahn import run
from tests.autobahn.run import CaseResult, case_passes, judge, load_allowlist, plan_runs


def result(case: str, behavior: str = "OK", close: str = "OK") -> CaseResult:
    return CaseResult(case, behavior, close, 1000, 1)


def test_allowlist_maps_each_case_to_its_reason_and_skips_comments() -> None:
    text = "# why these may be NON-STRICT\n\n6.4.3  checked per frame\n6.4.4   also per frame, later\n"
    assert load_allowlist(text) == {"6.4.3": "checked per frame", "6.4.4": "also per frame, later"}


@pytest.mark.parametrize("text", ["6.4.3\n", "6.4.3   \n", "six  reason\n", "6.4.3 a\n6.4.3 b\n"])
def test_allowlist_refuses_a_case_without_a_reason_a_bad_id_or_a_repeat(text: str) -> None:
    with pytest.raises(ValueError, match="line"):
        load_allowlist(text)


def test_the_shipped_allowlist_gives_a_written_reason_for_every_case() -> None:
    allowed = load_allowlist(run.ALLOWLIST_PATH.read_text())
    assert all(len(reason.split()) >= 8 for reason in allowed.values())


def test_ok_and_informational_cases_pass() -> None:
    assert case_passes(result("1.1.1"), {})
    assert case_passes(result("7.1.6", "INFORMATIONAL", "INFORMATIONAL"), {})


def test_non_strict_passes_only_when_the_allowlist_gives_a_reason() -> None:
    assert not case_passes(result("6.4.3", "NON-STRICT"), {})
    assert case_passes(result("6.4.3", "NON-STRICT"), {"6.4.3": "reason"})
    assert not case_passes(result("6.4.4", "NON-STRICT"), {"6.4.3": "reason"})


@pytest.mark.parametrize(
    ("behavior", "close"),
    [("FAILED", "OK"), ("UNIMPLEMENTED", "OK"), ("NO_CLOSE", "OK"), ("OK", "WRONG CODE"), ("OK", "UNCLEAN"),
     ("NON-STRICT", "FAILED BY CLIENT")],
)  # fmt: skip
def test_a_failed_case_or_a_bad_closing_handshake_fails_even_if_allowed(behavior: str, close: str) -> None:
    assert not case_passes(result("3.2", behavior, close), {"3.2": "reason"})


def test_judge_lists_the_failing_cases_in_case_order() -> None:
    results = {r.case: r for r in [result("10.1.1", "FAILED"), result("2.1"), result("9.2.1", "FAILED")]}
    assert [r.case for r in judge(results, {})] == ["9.2.1", "10.1.1"]


def test_protocol_cases_run_in_one_strict_client_and_bulk_cases_are_dealt_over_the_jobs(tmp_path: Path) -> None:
    cases = ["1.1.1", "6.4.3", "12.1.1", "12.1.2", "12.1.3", "13.1.1", "9.1.1"]
    runs = plan_runs(cases, 2, tmp_path)
    assert [(r.name, r.cases, r.validate_utf8) for r in runs] == [
        ("protocol", ["1.1.1", "6.4.3"], True),
        ("bulk-1", ["12.1.1", "12.1.3", "9.1.1"], False),
        ("bulk-2", ["12.1.2", "13.1.1"], False),
    ]


def test_the_runner_skips_with_status_0_without_python_2_7(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(run, "find_python27", lambda: None)
    assert run.main([]) == 0
    assert "SKIPPED: no CPython 2.7" in capsys.readouterr().out
