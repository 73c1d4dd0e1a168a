"""A sample of the corpus through ``python -m histosam`` in a child process: nothing patched (the random model's
real network for images), the interpreter's own stderr (warnings included), a 60 s timeout."""

from __future__ import annotations

import pytest
from corpus import cli_cases
from harness import run_case

FAST = ["images/junk-text.jpg", "slides/declares-30000x30000-tiled-no-pyramid.svs",
        "checkpoints/shipped-nano-copy-20-flipped-bytes-seed0.pt", "configs/billion-laughs-alias-bomb"]
SLOW = ["images/truncated-png-50pct.png", "images/float32-nan.tif", "images/huge-png-100000x100000.png",
        "images/shape-1x1.png", "images/uint16-rgb.tif", "images/mixed-folder-2-good-4-bad",
        "options/segment-tile-63", "slides/random-bytes.svs", "slides/tile-20-flipped-bytes-seed0",
        "slides/declares-1000000x1000000.svs", "checkpoints/random-1k.pt", "checkpoints/pickle-payload-eval.pt",
        "checkpoints/truncated-histosam-file-50pct.pt", "configs/yaml-syntax-error"]
CASES = {c.id: c for c in cli_cases()}


@pytest.mark.parametrize("case_id", FAST + [pytest.param(i, marks=pytest.mark.slow) for i in SLOW])
def test_subprocess_sample(case_id, tmp_path, rel_ctx):
    case = CASES[case_id]
    assert not case.xfail
    res, problems = run_case(case, tmp_path, rel_ctx, subprocess_mode=True)
    assert not problems, f"{case_id}: " + "; ".join(problems) + f"\nstderr:\n{res.stderr[-2000:]}"
