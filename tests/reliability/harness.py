"""Run corpus cases through the real command line and check the contract.

The contract, for every case:

- the run ends within :data:`TIMEOUT_S` (an in-process alarm; subprocesses get a timeout);
- no ``Traceback`` on stdout/stderr, no exception escapes ``main``, no ``unexpected error`` line (the CLI's
  "please report it" path);
- a failed run exits with 1 or 2 and prints exactly one error line (a line with ``error:``) per failed input;
  a valid input exits 0 with a complete output set and no error line;
- no partial outputs of a failed input, no empty output folder, no temporary files (atomic writers' ``.*.tmp``,
  ``.*.old``, ``*.tmp``, SQLite journals) anywhere under the case folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from corpus import CliCase, Ctx, HttpCase, Spec

TIMEOUT_S = 60.0

#: temporary names: histosam's atomic writers (``.<target>.<8 chars>.tmp[...]`` / ``.old``), synthetic
#: writers (``<name>.tmp``), SQLite journals
TEMP_NAME = re.compile(r"(^\..+\.[A-Za-z0-9_]{8}\.(tmp|old)(\..*)?$)|(\.tmp$)|(-journal$)|(-wal$)|(-shm$)")


class CaseTimeout(BaseException):
    """Raised by the alarm inside a case that runs too long (a BaseException: ``except Exception`` cannot
    swallow it)."""


@dataclass
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    raised: str | None = None


def temp_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if TEMP_NAME.search(name):
                found.append(Path(dirpath) / name)
    return found


def empty_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if not dirnames and not filenames:
            out.append(Path(dirpath))
    return out


@contextlib.contextmanager
def _alarm(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_main(argv: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> Outcome:
    """``histosam.cli.main.main(argv)`` in this process, stdout/stderr captured, in ``cwd``, with an alarm."""
    from histosam.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    rc: int | None = None
    timed_out, raised = False, None
    here = os.getcwd()
    t0 = time.perf_counter()
    try:
        os.chdir(cwd)
        with _alarm(timeout), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = int(main(argv) or 0)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CaseTimeout:
        timed_out = True
    except BaseException:  # noqa: BLE001 - an exception escaping main is a finding
        raised = traceback.format_exc()
    finally:
        os.chdir(here)
        os.environ.pop("HISTOSAM_DEBUG", None)
    return Outcome(rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, timed_out, raised)


def run_subprocess(argv: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> Outcome:
    """``python -m histosam ARGV`` in a child process (the installed entry point, nothing patched)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "histosam", *argv], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Outcome(None, str(exc.stdout or ""), str(exc.stderr or ""), time.perf_counter() - t0, True)
    return Outcome(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "error:" in ln]


def _complete(argv: list[str], path: Path, out: Path) -> bool:
    if argv[0] == "slide":
        prov = out / f"{path.name.split('.')[0]}.provenance.json"
        try:
            return json.loads(prov.read_text()).get("status") == "complete"
        except (OSError, ValueError):
            return False
    from histosam.pipeline import is_complete

    return is_complete(path, out)


def check(case: CliCase, spec: Spec, res: Outcome, root: Path) -> list[str]:
    """The contract's violations for one finished case (empty: the case passes)."""
    problems: list[str] = []
    text = res.stdout + res.stderr
    errs = error_lines(res.stderr)
    if res.timed_out:
        problems.append(f"hang: no result within {TIMEOUT_S:g} s")
    if res.raised:
        problems.append("exception escaped main: " + res.raised.strip().splitlines()[-1])
    if "Traceback" in text:
        problems.append("a traceback was printed")
    unexpected = [ln for ln in errs if "unexpected error" in ln]
    if unexpected:
        problems.append("unexpected-error path: " + unexpected[0][:300])
    if res.rc is not None:
        got = "ok" if res.rc == 0 else "fail"
        if case.expect != "any" and got != case.expect:
            problems.append(f"expected {case.expect}, got exit code {res.rc}" + (
                f" ({errs[0][:300]})" if errs else ""))
        if res.rc == 0:
            if errs:
                problems.append(f"exit code 0 but {len(errs)} error line(s): {errs[0][:200]}")
        else:
            if res.rc not in (1, 2):
                problems.append(f"exit code {res.rc} (expected 1 or 2)")
            n = max(spec.n_fail, 1)
            if len(errs) != n:
                problems.append(f"{len(errs)} error line(s) for {n} failed input(s): {errs[:3]}")
            if spec.argv[0] != "slide":
                odd = [ln for ln in errs if not ln.startswith((f"histosam {spec.argv[0]}: ", "histosam: "))]
                if odd:
                    problems.append(f"an error line does not start with 'histosam {spec.argv[0]}: ' (a message "
                                    f"broken over lines?): {odd[0][:200]!r}")
            if case.match and not any(case.match.lower() in ln.lower() for ln in errs):
                problems.append(f"no error line mentions {case.match!r}: {errs[:2]}")
        for p in spec.ok_inputs:
            if spec.out is not None and not _complete(spec.argv, p, spec.out):
                problems.append(f"no complete output set for valid input {p.name}")
    out = spec.out
    if out is not None and _is_dir(out):
        if res.rc not in (0, None) and not spec.ok_inputs and not any(out.iterdir()):
            problems.append(f"empty output folder left: {out}")
        for d in empty_dirs(out):
            if d != out or not spec.ok_inputs:
                problems.append(f"empty folder left: {d}")
                break
        for stem in spec.fail_stems if res.rc != 0 else []:
            left = [q.name for q in out.iterdir() if q.name.startswith(stem + ".") or q.name.startswith(stem + "_")]
            if left:
                problems.append(f"outputs of the failed input {stem!r} left: {left[:4]}")
    left = temp_files(root)
    if left:
        problems.append(f"temporary files left: {[str(p.relative_to(root)) for p in left[:4]]}")
    if spec.check is not None:
        problems += spec.check()
    return problems


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long
        return False


def run_case(case: CliCase, root: Path, ctx: Ctx, subprocess_mode: bool = False) -> tuple[Outcome, list[str]]:
    """Build the case's inputs under ``root``, run it, check it."""
    root.mkdir(parents=True, exist_ok=True)
    spec = case.make(root, ctx)
    res = (run_subprocess if subprocess_mode else run_main)(spec.argv, root)
    problems = check(case, spec, res, root)
    if res.rc == 0 and case.expect == "any" and spec.argv[0] in ("segment", "slide"):
        subject = _subject(spec)
        if subject is not None and spec.out is not None and not _complete(spec.argv, subject, spec.out):
            problems.append(f"exit code 0 but no complete output set for {subject.name}")
    return res, problems


def _subject(spec: Spec) -> Path | None:
    """The single input file of a one-input segment/slide case (``None`` for others)."""
    args = spec.argv[1:]
    files = [a for a in args[: args.index("-o")] if not a.startswith("-")] if "-o" in args else []
    try:
        return Path(files[0]) if len(files) == 1 and Path(files[0]).is_file() else None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------- models
@contextlib.contextmanager
def fast_models(ctx: Ctx):
    """The map predictor of every loaded model becomes the colour-threshold predictor (as tests/test_segment_cli.py's
    ``fast_maps``), and the corpus's random model file is loaded once (other files load as usual)."""
    import histosam.inference.maps as maps_mod
    import histosam.registry.loader as loader
    from histosam.wsi.fake import colour_threshold_maps

    real_load = loader.load_model
    real_maps = maps_mod.make_map_predictor
    cache: dict = {}

    def load_model(name_or_path=None, *args, **kwargs):
        if isinstance(name_or_path, str | os.PathLike) and str(name_or_path) == str(ctx.model):
            key = repr((args, sorted(kwargs.items())))
            if key not in cache:
                cache[key] = real_load(name_or_path, *args, **kwargs)
            return cache[key]
        return real_load(name_or_path, *args, **kwargs)

    loader.load_model = load_model
    maps_mod.make_map_predictor = lambda *a, **k: colour_threshold_maps
    try:
        yield
    finally:
        loader.load_model = real_load
        maps_mod.make_map_predictor = real_maps


def make_ctx(folder: Path) -> Ctx:
    """Random model files for the corpus (histosam-nano with its instance decoder; ``tiny`` without one)."""
    import torch

    from histosam.models.build import build_model
    from histosam.registry.formats import save_histosam

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = save_histosam(build_model("nano"), folder / "nano-random.pt")
    tiny = save_histosam(build_model("tiny"), folder / "tiny-random.pt")
    return Ctx(model=model, tiny_model=tiny, pickle_marker=folder / "PICKLE_PAYLOAD_RAN")


# ---------------------------------------------------------------------------------------------------- http
class FakeBackend:
    """Answers prompts with a small square and automask with two objects (model work is not under test)."""

    def predict(self, entry, image, points, labels, box, multimask, mask=None):
        import numpy as np

        from histosam.server import PromptResult

        m = np.zeros(image.shape, bool)
        m[1:4, 1:4] = True
        return PromptResult(masks=m[None], scores=np.array([0.9], np.float32))

    def automask(self, entry, image, amg_params):
        import numpy as np

        from histosam.server import AutoResult

        lab = np.zeros(image.shape, np.uint32)
        lab[2:6, 3:9] = 1
        lab[10:20, 10:12] = 2
        return AutoResult(labels=lab, mode="ais")

    def stats(self):
        return {}


def make_http_client():
    """A TestClient on ``create_app`` with a fake backend, one registered vit_b entry, a 1 MiB body limit."""
    from fastapi.testclient import TestClient

    from histosam.server import ServerConfig, WeightEntry, WeightsTable, create_app

    table = WeightsTable()
    table.add(WeightEntry(type="vit_b", name="histo", url="https://example.org/w/vit_b_histo.pth", source="unused"))
    cfg = ServerConfig(max_body_bytes=1 << 20, max_pixels=2000 * 2000)
    return TestClient(create_app(FakeBackend(), table, cfg), raise_server_exceptions=False)


def run_http(client, case: HttpCase) -> tuple[int | None, str, list[str]]:
    """Send one request; returns (status, body text, problems)."""
    kw: dict = {"headers": case.headers}
    if isinstance(case.body, bytes | str):
        kw["content"] = case.body
    elif case.body is not None:
        kw["json"] = case.body
    problems: list[str] = []
    try:
        with _alarm(TIMEOUT_S):
            r = client.request(case.method, case.path, **kw)
    except CaseTimeout:
        return None, "", [f"hang: no answer within {TIMEOUT_S:g} s"]
    except Exception as exc:  # noqa: BLE001
        return None, "", [f"request raised {type(exc).__name__}: {exc}"]
    text = r.text
    if "Traceback" in text:
        problems.append("a traceback in the response")
    if case.expect == "ok":
        if r.status_code != 200:
            problems.append(f"expected 200, got {r.status_code}: {text[:200]}")
        return r.status_code, text, problems
    if case.status is not None and r.status_code != case.status:
        problems.append(f"expected status {case.status}, got {r.status_code}: {text[:200]}")
    elif case.status is None and not 400 <= r.status_code < 500:
        problems.append(f"expected a 4xx answer, got {r.status_code}: {text[:200]}")
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        problems.append(f"no JSON {{'detail': str}} body: {text[:200]}")
    elif "\n" in detail or "\r" in detail:
        problems.append(f"multi-line detail: {detail[:200]!r}")
    elif case.match and case.match.lower() not in detail.lower():
        problems.append(f"detail lacks {case.match!r}: {detail[:200]}")
    return r.status_code, text, problems
