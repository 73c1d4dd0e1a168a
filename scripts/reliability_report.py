"""Run the reliability corpus (tests/reliability) outside pytest and print the figures of docs/reliability.md.

    python scripts/reliability_report.py                 # every case, in-process (fast predictor)
    python scripts/reliability_report.py --only images   # one category (or a substring of case ids)
    python scripts/reliability_report.py --json out.json # every case's outcome as JSON

Each case's inputs are generated into a fresh temporary folder; the command line runs in this process
(``histosam.cli.main.main``) with the map predictor replaced by the colour-threshold one, exactly as the tests
run it. Failing cases are listed with their first problem and stderr's error line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from corpus import cli_cases, http_cases  # noqa: E402
from harness import error_lines, fast_models, make_ctx, make_http_client, run_case, run_http  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="category or substring of case ids")
    ap.add_argument("--json", default=None, help="write every outcome to this JSON file")
    ap.add_argument("--no-http", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory(prefix="histosam-rel-") as tmp:
        tmp = Path(tmp)
        ctx = make_ctx(tmp / "models")
        cases = [c for c in cli_cases() if args.only is None or args.only in c.id]
        with fast_models(ctx):
            for i, case in enumerate(cases):
                t0 = time.perf_counter()
                res, problems = run_case(case, tmp / f"case{i:04d}", ctx)
                errs = error_lines(res.stderr)
                rows.append({"id": case.id, "category": case.category, "expect": case.expect, "rc": res.rc,
                             "seconds": round(time.perf_counter() - t0, 2), "problems": problems,
                             "xfail": case.xfail, "error": errs[0] if errs else None})
                mark = ("XFAIL" if case.xfail else "FAIL ") if problems else ("XPASS" if case.xfail else "ok   ")
                print(f"{mark} {case.id} rc={res.rc} {res.seconds:.1f}s"
                      + (f"  <- {problems[0][:160]}" if problems else ""), flush=True)
        if not args.no_http and (args.only is None or "http" in args.only):
            client = make_http_client()
            for case in http_cases():
                t0 = time.perf_counter()
                status, text, problems = run_http(client, case)
                rows.append({"id": case.id, "category": "http", "expect": case.expect, "rc": status,
                             "seconds": round(time.perf_counter() - t0, 2), "problems": problems,
                             "xfail": case.xfail, "error": text[:200]})
                print(f"{'FAIL' if problems else 'ok  '} {case.id} status={status}"
                      + (f"  <- {problems[0][:160]}" if problems else ""), flush=True)
    total = Counter(r["category"] for r in rows)
    failed = Counter(r["category"] for r in rows if r["problems"])
    known = Counter(r["category"] for r in rows if r["problems"] and r["xfail"])
    print("\n| category | cases | pass | contract violations | of which known defects (xfail) |")
    print("|---|---:|---:|---:|---:|")
    for cat in sorted(total):
        print(f"| {cat} | {total[cat]} | {total[cat] - failed[cat]} | {failed[cat]} | {known[cat]} |")
    print(f"| **all** | **{sum(total.values())}** | **{sum(total.values()) - sum(failed.values())}** | "
          f"**{sum(failed.values())}** | **{sum(known.values())}** |")
    slowest = sorted(rows, key=lambda r: -r["seconds"])[:5]
    print("\nslowest:", ", ".join(f"{r['id']} {r['seconds']} s" for r in slowest))
    if failed:
        print("\nviolations:")
        for r in rows:
            if r["problems"]:
                print(f"- {r['id']}{' (known defect)' if r['xfail'] else ''}: {'; '.join(r['problems'])[:400]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    unknown = sum(failed.values()) - sum(known.values())
    xpass = [r["id"] for r in rows if r["xfail"] and not r["problems"]]
    if xpass:
        print("\nfixed (known defect no longer seen):", ", ".join(xpass))
    return 1 if unknown or xpass else 0


if __name__ == "__main__":
    sys.exit(main())
