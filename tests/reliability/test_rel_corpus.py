"""The malformed-input corpus (tests/reliability/corpus.py) through the real command line, one test per case.

Every case: the exit code (non-zero for a refused input, 0 for a valid one), one error line per failed input,
no traceback, nothing over 60 s, no partial or empty output folder, no temporary file left (harness.check).
Cases naming a known defect are ``xfail(strict=True)``: they turn into failures once the defect is fixed, so the
mark must then be removed. ``python scripts/reliability_report.py`` prints the same figures as a table.
"""

from __future__ import annotations

import pytest
from corpus import cli_cases, http_cases
from harness import run_case, run_http

CLI = cli_cases()
HTTP = http_cases()


def _param(case):
    marks = []
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    if getattr(case, "slow", False):
        marks.append(pytest.mark.slow)
    return pytest.param(case, id=case.id, marks=marks)


def test_corpus_size():
    cats = {}
    for c in CLI + HTTP:
        cats[c.category] = cats.get(c.category, 0) + 1
    assert len(CLI) + len(HTTP) >= 300, cats
    assert {"images", "slides", "checkpoints", "configs", "options", "http"} <= set(cats), cats
    assert len({c.id for c in CLI + HTTP}) == len(CLI) + len(HTTP)


@pytest.mark.parametrize("case", [_param(c) for c in CLI])
def test_cli_case(case, tmp_path, fast):
    res, problems = run_case(case, tmp_path, fast)
    assert not problems, f"{case.id}: " + "; ".join(problems) + f"\nstderr:\n{res.stderr[-2000:]}"


@pytest.mark.parametrize("case", [_param(c) for c in HTTP])
def test_http_case(case, http_client):
    status, text, problems = run_http(http_client, case)
    assert not problems, f"{case.id}: " + "; ".join(problems)
