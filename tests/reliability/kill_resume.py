"""Kill-and-resume: SIGKILL a real ``histosam segment`` / ``histosam slide`` run at a random point, rerun it, and
compare every output with an uninterrupted run.

The killed run is a child process running the CLI with a slowed fake predictor of the same identity (for slides
the predictor's name is the run key's model identity, so the slowed function is named like the original; for
images the run key holds the loaded model's weights hash, and only the map predictor is slowed). The rerun is the
ordinary CLI in this process (:func:`harness.fast_models`). Comparison: byte for byte; where a file carries run
times (provenance JSON) the volatile fields are dropped and the rest compared; GeoJSON.gz also by content when the
gzip header differs. After the rerun no temporary file may be left.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import Ctx, fast_models, run_main, temp_files

SEGMENT_SCRIPT = textwrap.dedent("""
    import sys, time
    import histosam.inference.maps as maps_mod
    from histosam.wsi.fake import colour_threshold_maps
    delay = float(sys.argv[3])
    def slow(tiles):
        time.sleep(delay)
        return colour_threshold_maps(tiles)
    slow.__name__ = "colour_threshold_maps"
    maps_mod.make_map_predictor = lambda *a, **k: slow  # the model loads as usual: its weights are the run key
    from histosam.cli.main import main
    sys.exit(main(sys.argv[4:]))
""")

SLIDE_SCRIPT = textwrap.dedent("""
    import sys, time
    import histosam.wsi.fake as fake
    real = fake.colour_threshold_maps
    delay = float(sys.argv[3])
    def slow(tiles, radius=6.0):
        time.sleep(delay)
        return real(tiles, radius)
    slow.__name__ = "colour_threshold_maps"  # the same maps, slowed down: the run key must match on resume
    fake.colour_threshold_maps = slow
    from histosam.cli.main import main
    sys.exit(main(sys.argv[4:]))
""")

#: provenance fields that differ between two runs by design (times, this-run counters, output paths)
VOLATILE = {"started", "finished", "timings", "compute_seconds", "total_seconds", "chunks_computed_this_run",
            "tiles_predicted_this_run", "outputs", "workers"}


@dataclass
class Rep:
    """One kill-and-resume repetition."""

    seed: int
    killed_after: str = ""
    killed: bool = False
    identical: bool = False
    byte_identical_files: int = 0
    content_identical_files: int = 0
    differing: list[str] = field(default_factory=list)
    temp_left_after_kill: int = 0
    temp_left_after_rerun: list[str] = field(default_factory=list)
    rerun_rc: int | None = None
    rerun_problem: str = ""


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def compare_folders(ref: Path, got: Path) -> tuple[int, int, list[str]]:
    """(byte-identical files, content-identical files, differences) between two output folders (the chunk store
    and the tissue mask included)."""
    names = sorted({p.name for p in ref.iterdir()} | {p.name for p in got.iterdir()})
    same_bytes = same_content = 0
    diffs: list[str] = []
    for name in names:
        a, b = ref / name, got / name
        if not a.exists() or not b.exists():
            diffs.append(f"{name}: only in {'reference' if a.exists() else 'resumed run'}")
            continue
        if a.is_dir() or b.is_dir():
            diffs.append(f"{name}: a folder")
            continue
        if name.endswith(".sqlite"):
            ra, rb = _store_rows(a), _store_rows(b)
            if ra == rb:
                same_content += 1
            else:
                diffs.append(f"{name}: chunk records differ")
            continue
        da, db = a.read_bytes(), b.read_bytes()
        if da == db:
            same_bytes += 1
            continue
        if name.endswith(".json"):
            if _strip(json.loads(da)) == _strip(json.loads(db)):
                same_content += 1
                continue
        elif name.endswith(".gz") and gzip.decompress(da) == gzip.decompress(db):
            same_content += 1
            continue
        diffs.append(f"{name}: {len(da)} vs {len(db)} bytes, content differs")
    return same_bytes, same_content, diffs


def _store_rows(path: Path) -> list:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT idx, data FROM chunks ORDER BY idx"))


def _count_store(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(db_path, timeout=0.2) as db:
            return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_when(proc: subprocess.Popen, progress, target: int, extra_s: float, deadline_s: float = 120.0) -> str:
    """Wait until ``progress() >= target``, then ``extra_s`` more seconds, then SIGKILL; returns what was done."""
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < deadline_s:
        if progress() >= target:
            break
        time.sleep(0.02)
    end = time.time() + extra_s
    while proc.poll() is None and time.time() < end:
        time.sleep(0.01)
    if proc.poll() is not None:
        return f"finished before the kill (progress {progress()})"
    done = progress()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"SIGKILL after {done} committed units (+{extra_s:.2f} s)"


# ---------------------------------------------------------------------------------------------------- segment
def segment_inputs(folder: Path, n: int = 6, size: int = 200) -> Path:
    from crafting import he_image, png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(png_bytes(he_image(size, size + 8 * i, seed=i)))
    return folder


SEGMENT_ARGS = ("--tile", "128", "--halo", "32", "--chunk", "128", "--no-progress")


def segment_argv(inputs: Path, out: Path, ctx: Ctx) -> list[str]:
    return ["segment", str(inputs), "-o", str(out), "--model", str(ctx.model), *SEGMENT_ARGS]


def segment_kill_resume(tmp: Path, ctx: Ctx, reps: int, seed: int = 0, delay: float = 0.05) -> list[Rep]:
    """``reps`` kill-and-resume repetitions of ``histosam segment FOLDER`` (6 images)."""
    inputs = segment_inputs(tmp / "in")
    n_images = len(list(inputs.iterdir()))
    ref = tmp / "ref"
    with fast_models(ctx):
        res = run_main(segment_argv(inputs, ref, ctx), tmp)
    assert res.rc == 0, res.stderr
    rng = random.Random(seed)
    out: list[Rep] = []
    for k in range(reps):
        rep = Rep(seed=seed * 1000 + k)
        target, extra = rng.randrange(n_images), rng.uniform(0.0, 1.2)
        for attempt in range(4):  # a run that ends before its kill is started again with a shorter delay
            run_dir = tmp / f"killed{k}" if attempt == 0 else tmp / f"killed{k}-{attempt}"
            argv = segment_argv(inputs, run_dir, ctx)
            proc = subprocess.Popen([sys.executable, "-c", SEGMENT_SCRIPT, "-", "-", str(delay), *argv],
                                    env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def progress(d=run_dir) -> int:
                return len(list(d.glob("*_provenance.json"))) if d.is_dir() else 0

            rep.killed_after = _kill_when(proc, progress, target, extra / 4**attempt)
            rep.killed = rep.killed_after.startswith("SIGKILL")
            if rep.killed:
                break
        rep.temp_left_after_kill = len(temp_files(run_dir)) if run_dir.exists() else 0
        with fast_models(ctx):
            res = run_main(argv, tmp)
        rep.rerun_rc = res.rc
        if res.rc != 0 or "Traceback" in res.stderr:
            rep.rerun_problem = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.rc}"
        rep.temp_left_after_rerun = [p.name for p in temp_files(run_dir)]
        rep.byte_identical_files, rep.content_identical_files, rep.differing = compare_folders(ref, run_dir)
        rep.identical = (res.rc == 0 and not rep.differing and not rep.temp_left_after_rerun)
        out.append(rep)
    return out


# ---------------------------------------------------------------------------------------------------- slide
SLIDE_ARGS = ("--fake-model", "--target-mpp", "0.5", "--tile", "256", "--halo", "32", "--chunk", "512",
              "--context", "64", "--batch-size", "1", "--csv", "--no-progress")


def slide_argv(slide: Path, out: Path) -> list[str]:
    return ["slide", str(slide), "-o", str(out), *SLIDE_ARGS]


def slide_kill_resume(tmp: Path, ctx: Ctx, reps: int, seed: int = 0, delay: float = 0.04) -> list[Rep]:
    """``reps`` kill-and-resume repetitions of ``histosam slide`` on a 2048² synthetic slide (8 tissue chunks)."""
    from histosam.wsi.synthetic import write_synthetic_slide

    (tmp / "in").mkdir(parents=True, exist_ok=True)
    slide = write_synthetic_slide(tmp / "in" / "syn.tif", 2048, 2048, mpp=0.5, levels=3)
    ref = tmp / "ref"
    res = run_main(slide_argv(slide, ref), tmp)
    assert res.rc == 0, res.stderr
    n_chunks = json.loads((ref / "syn.provenance.json").read_text())["chunks_with_tissue"]
    rng = random.Random(seed)
    out: list[Rep] = []
    for k in range(reps):
        rep = Rep(seed=seed * 1000 + k)
        # targets 0..n: n kills during the final merge (every chunk committed, outputs being written)
        target, extra = rng.randrange(n_chunks + 1), rng.uniform(0.0, 0.4)
        for attempt in range(4):  # a run that ends before its kill is started again with a shorter delay
            run_dir = tmp / f"killed{k}" if attempt == 0 else tmp / f"killed{k}-{attempt}"
            argv = slide_argv(slide, run_dir)
            proc = subprocess.Popen([sys.executable, "-c", SLIDE_SCRIPT, "-", "-", str(delay), *argv],
                                    env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rep.killed_after = _kill_when(proc, lambda d=run_dir: _count_store(d / "syn.chunks.sqlite"), target,
                                          extra / 4**attempt)
            rep.killed = rep.killed_after.startswith("SIGKILL")
            if rep.killed:
                break
        rep.temp_left_after_kill = len(temp_files(run_dir)) if run_dir.exists() else 0
        res = run_main(argv, tmp)
        rep.rerun_rc = res.rc
        if res.rc != 0 or "Traceback" in res.stderr:
            rep.rerun_problem = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.rc}"
        rep.temp_left_after_rerun = [p.name for p in temp_files(run_dir)]
        rep.byte_identical_files, rep.content_identical_files, rep.differing = compare_folders(ref, run_dir)
        rep.identical = (res.rc == 0 and not rep.differing and not rep.temp_left_after_rerun)
        out.append(rep)
    return out


def summary(name: str, reps: list[Rep]) -> str:
    k = sum(r.identical for r in reps)
    killed = sum(r.killed for r in reps)
    temp_kill = sum(r.temp_left_after_kill for r in reps)
    temp_rerun = sum(len(r.temp_left_after_rerun) for r in reps)
    bytes_ = sum(r.byte_identical_files for r in reps)
    content = sum(r.content_identical_files for r in reps)
    lines = [f"{name}: {k}/{len(reps)} identical to the uninterrupted run ({killed} killed mid-run, "
             f"{temp_kill} temporary files found right after the kills, {temp_rerun} left after the reruns; "
             f"{bytes_} files byte-identical, {content} equal once run times are dropped)"]
    for r in reps:
        if not r.identical:
            lines.append(f"  rep {r.seed}: {r.killed_after}; rerun rc {r.rerun_rc} {r.rerun_problem}; "
                         f"differs: {r.differing[:3]}; temp left: {r.temp_left_after_rerun[:3]}")
    return "\n".join(lines)
