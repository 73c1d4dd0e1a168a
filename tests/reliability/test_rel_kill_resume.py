"""Kill-and-resume: SIGKILL ``histosam segment`` (a folder of 6 images) and ``histosam slide`` (a synthetic slide)
at random points, rerun, compare every output with an uninterrupted run (tests/reliability/kill_resume.py).

The 2-repetition versions run in CI; the 20-repetition versions are ``slow`` (the figures of docs/reliability.md).
"""

from __future__ import annotations

import pytest
from kill_resume import segment_kill_resume, slide_kill_resume, summary


def _check(name, reps):
    text = summary(name, reps)
    print(text)
    assert all(r.killed for r in reps), text
    assert all(r.identical for r in reps), text
    assert not any(r.temp_left_after_rerun for r in reps), text


def test_segment_kill_resume_2(tmp_path, rel_ctx):
    _check("segment", segment_kill_resume(tmp_path, rel_ctx, reps=2, seed=1))


def test_slide_kill_resume_2(tmp_path, rel_ctx):
    _check("slide", slide_kill_resume(tmp_path, rel_ctx, reps=2, seed=1))


@pytest.mark.slow
def test_segment_kill_resume_20(tmp_path, rel_ctx):
    _check("segment", segment_kill_resume(tmp_path, rel_ctx, reps=20, seed=20))


@pytest.mark.slow
def test_slide_kill_resume_20(tmp_path, rel_ctx):
    _check("slide", slide_kill_resume(tmp_path, rel_ctx, reps=20, seed=20))
