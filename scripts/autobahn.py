#!/usr/bin/env python3
"""Run the Autobahn WebSocket conformance cases (via kosoku) against a server
and compare the verdicts with a checked-in expectation file.

Usage:
    scripts/autobahn.py URL EXPECTED_FILE [--update] [--timeout SECONDS]

    URL            e.g. ws://127.0.0.1:9001/conformance/echo (the path is sent)
    EXPECTED_FILE  e.g. tests/autobahn/expected.txt

Writes one line per case, sorted numerically by case id, to
reports/autobahn-summary.txt:

    <case id> <behavior> <behaviorClose>        e.g. "1.1.1 OK OK"

(verdict labels are kosoku's/Autobahn's, e.g. OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED, FAILED, ERROR; close: OK, INFORMATIONAL, FAILED, UNCLEAN,
WRONG CODE, FAILED BY CLIENT), plus the full Autobahn-style HTML/JSON report
under reports/autobahn/. Blank lines and lines starting with '#' in
EXPECTED_FILE are ignored when comparing.

Exit status:
    0  summary matches EXPECTED_FILE (or was written with --update) and no
       case FAILED / ERRORed
    1  a case FAILED (behavior or close) or ERRORed, or the summary differs
       from EXPECTED_FILE (a unified diff is printed), or EXPECTED_FILE is
       missing (run with --update to create it)
    2  usage error, kosoku crashed, or the run exceeded --timeout
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

# Every case group of the suite; 12 and 13 are permessage-deflate (RFC 7692), which the
# echo route negotiates like /ws does.
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*"]
EXCLUDE: list[str] = []

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORTS = REPO_ROOT / "reports"

# Verdicts that fail the run regardless of EXPECTED_FILE.
HARD_FAIL_BEHAVIOR = {"FAILED", "ERROR"}
HARD_FAIL_CLOSE = {"FAILED"}


def case_sort_key(case_id: str) -> tuple:
    """Numeric by component: 1.2.10 after 1.2.9; non-numeric parts last."""
    key = []
    for part in case_id.split("."):
        if part.isdigit():
            key.append((0, int(part), ""))
        else:
            key.append((1, 0, part))
    return tuple(key)


def summary_lines(results) -> list[str]:
    rows = []
    for r in results:
        rows.append((r.case_id, r.behavior.value, r.behavior_close.value))
    rows.sort(key=lambda row: case_sort_key(row[0]))
    return [f"{cid} {beh} {close}" for cid, beh, close in rows]


async def run_cases(url: str):
    from kosoku import FailureError, run_fuzzingclient

    try:
        return await run_fuzzingclient(url, CASES, EXCLUDE, concurrency=1)
    except FailureError as failure:
        # FailureError.results holds the results of *all* cases (verified
        # with kosoku 0.1.0), not only the failed ones.
        return list(failure.results)


def write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run Autobahn cases (kosoku) and compare with expected verdicts."
    )
    parser.add_argument("url", help="ws:// URL of the echo endpoint under test")
    parser.add_argument("expected", type=Path, help="expected summary file")
    parser.add_argument(
        "--update",
        action="store_true",
        help="write the summary to EXPECTED_FILE instead of comparing",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("AUTOBAHN_TIMEOUT", 1200)),
        help="total timeout for the run, seconds (default: $AUTOBAHN_TIMEOUT or 1200)",
    )
    parser.add_argument(
        "--reports-dir",
        type=Path,
        default=DEFAULT_REPORTS,
        help=f"where to write autobahn-summary.txt and autobahn/ (default: {DEFAULT_REPORTS})",
    )
    args = parser.parse_args(argv)

    try:
        import kosoku  # noqa: F401
    except ImportError as exc:
        print(f"autobahn: cannot import kosoku ({exc}); install kosoku==0.1.0", file=sys.stderr)
        return 2

    excluding = f" (excluding {' '.join(EXCLUDE)})" if EXCLUDE else ""
    print(f"autobahn: running {' '.join(CASES)}{excluding} "
          f"against {args.url}, timeout {args.timeout:.0f}s", flush=True)
    started = time.monotonic()

    def on_timeout() -> None:
        print(f"autobahn: ERROR: run did not finish within {args.timeout:.0f}s",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        # The native runner may not honour cancellation; do not wait for it.
        os._exit(2)

    watchdog = threading.Timer(args.timeout, on_timeout)
    watchdog.daemon = True
    watchdog.start()
    try:
        results = asyncio.run(run_cases(args.url))
    except Exception:
        traceback.print_exc()
        print("autobahn: ERROR: kosoku raised an unexpected exception", file=sys.stderr)
        return 2
    finally:
        watchdog.cancel()
    elapsed = time.monotonic() - started

    if not results:
        print("autobahn: ERROR: kosoku returned no results", file=sys.stderr)
        return 2

    lines = summary_lines(results)
    reports_dir: Path = args.reports_dir
    summary_path = reports_dir / "autobahn-summary.txt"
    write_text(summary_path, lines)
    print(f"autobahn: {len(lines)} cases in {elapsed:.1f}s; summary written to {summary_path}")

    try:
        from kosoku._report import write_reports

        write_reports(results, str(reports_dir / "autobahn"))
        print(f"autobahn: HTML/JSON report written to {reports_dir / 'autobahn'}/index.html")
    except Exception as exc:  # reports are a convenience; never fail the run on them
        print(f"autobahn: warning: could not write the HTML report: {exc!r}", file=sys.stderr)

    # Counts per verdict.
    behavior_counts = Counter(r.behavior.value for r in results)
    close_counts = Counter(r.behavior_close.value for r in results)
    print("autobahn: behavior counts:      "
          + ", ".join(f"{k}={v}" for k, v in sorted(behavior_counts.items())))
    print("autobahn: close behavior counts: "
          + ", ".join(f"{k}={v}" for k, v in sorted(close_counts.items())))

    # Hard failures, whatever the expectation file says.
    hard = sorted(
        (r for r in results
         if r.behavior.value in HARD_FAIL_BEHAVIOR or r.behavior_close.value in HARD_FAIL_CLOSE),
        key=lambda r: case_sort_key(r.case_id),
    )
    for r in hard:
        reason = r.result if r.behavior.value in HARD_FAIL_BEHAVIOR else r.result_close
        print(f"autobahn: FAILED {r.case_id}: behavior={r.behavior.value} "
              f"close={r.behavior_close.value}: {reason}", file=sys.stderr)

    rc = 0
    if args.update:
        write_text(args.expected, lines)
        print(f"autobahn: updated {args.expected}")
    elif not args.expected.exists():
        print(f"autobahn: ERROR: {args.expected} does not exist; review "
              f"{summary_path} and rerun with --update to create it", file=sys.stderr)
        rc = 1
    else:
        expected = args.expected.read_text().splitlines()
        expected = [line.rstrip() for line in expected if line.strip() and not line.startswith("#")]
        if expected != lines:
            diff = difflib.unified_diff(
                expected, lines, fromfile=str(args.expected), tofile=str(summary_path), lineterm=""
            )
            print("autobahn: verdicts differ from the expectation file:", file=sys.stderr)
            for line in diff:
                print(line, file=sys.stderr)
            print(f"autobahn: if the new verdicts are intended, rerun with --update "
                  f"(or copy {summary_path} to {args.expected})", file=sys.stderr)
            rc = 1
        else:
            print(f"autobahn: verdicts match {args.expected}")

    if hard:
        print(f"autobahn: {len(hard)} case(s) FAILED or ERRORed", file=sys.stderr)
        rc = 1
    print(f"autobahn: {'OK' if rc == 0 else 'FAILURE'} ({len(lines)} cases)", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
