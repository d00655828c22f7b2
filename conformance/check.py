#!/usr/bin/env python3
"""Check an Autobahn client report written by kosoku, and diff it against the golden file.

    conformance/check.py target/autobahn/index.json conformance/expected-results.json
        [--agent NAME] [--allow-unimplemented '12.*,13.*'] [--expect-count N]
        [--partial] [--write-golden]

Exit status: 0 pass, 1 conformance failure or drift, 2 bad input (missing/corrupt report).

The report: kosoku 0.1.0 (`kosoku -m fuzzingserver ADDR -o DIR`) writes DIR/index.json
when the client under test calls /updateReports (kosoku/_report.py: write_reports). It is
Autobahn's own index format, one object per agent, one entry per case id:

    {
       "wsfleet": {                          <- agent, as the client sent it in ?agent=
          "1.1.1": {                         <- case id; keys are sorted as strings
             "behavior": "OK",               <- verdict on the message exchange
             "behaviorClose": "OK",          <- verdict on the closing handshake
             "duration": 0,                  <- milliseconds
             "remoteCloseCode": 1000,        <- close code the client sent (null if none)
             "reportfile": "wsfleet_case_1_1_1.json"   <- per-case detail, same dir
          },
          ...
       }
    }

`behavior` is one of OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, ERROR (ERROR:
the case could not be run to a verdict). `behaviorClose` is one of OK, INFORMATIONAL,
FAILED, FAILED BY CLIENT, WRONG CODE, UNCLEAN. The per-case file (`reportfile`) holds the
details worth reading on a failure: description, expectation, result, resultClose,
expected, received, wirelog, remote/local close code and reason, wasClean,
wasNotCleanReason, httpRequest, httpResponse. A full run has 517 cases (1.* to 13.*;
12.* and 13.* are permessage-deflate). Only the cases that ran are in the index: a client
that calls /updateReports early gets a partial report (hence --expect-count).

Verdicts that fail the check: behavior FAILED or ERROR; behaviorClose FAILED, WRONG CODE
or UNCLEAN; behavior UNIMPLEMENTED outside the --allow-unimplemented globs. NON-STRICT,
INFORMATIONAL and FAILED BY CLIENT pass, but the golden file pins them: any case whose
verdict changed for the worse (or sideways) fails as drift; one that got better is listed
with a hint to refresh the golden file (--write-golden).

Golden file format (conformance/expected-results.json): like index.json, keyed by agent,
with only the two verdicts per case, one case per line:

    {
      "wsfleet": {
        "1.1.1": {"behavior": "OK", "behaviorClose": "OK"},
        ...
      }
    }
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from collections import Counter

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
CLOSE_BEHAVIORS = ["OK", "INFORMATIONAL", "FAILED BY CLIENT", "WRONG CODE", "UNCLEAN", "FAILED"]

FAILING_BEHAVIOR = {"FAILED", "ERROR"}
FAILING_CLOSE = {"FAILED", "WRONG CODE", "UNCLEAN"}

# Higher is worse. Same rank but a different verdict counts as a change ("sideways").
BEHAVIOR_RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 1, "UNIMPLEMENTED": 2, "FAILED": 3, "ERROR": 3}
CLOSE_RANK = {"OK": 0, "INFORMATIONAL": 0, "FAILED BY CLIENT": 1, "WRONG CODE": 2, "UNCLEAN": 2, "FAILED": 3}

DEFAULT_ALLOWED_UNIMPLEMENTED = ""


def case_key(case_id: str) -> list[int]:
    """Numeric order: 1.2.10 after 1.2.9."""
    return [int(p) if p.isdigit() else 0 for p in case_id.split(".")]


def fail_input(message: str) -> None:
    print(f"check: error: {message}", file=sys.stderr)
    sys.exit(2)


def load_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        fail_input(f"{what} {path} does not exist")
    except (OSError, json.JSONDecodeError) as e:
        fail_input(f"cannot read {what} {path}: {e}")
    if not isinstance(data, dict):
        fail_input(f"{what} {path}: expected a JSON object at the top")
    return data


def pick_agent(index: dict, agent: str | None, path: str) -> tuple[str, dict]:
    if agent is None:
        if len(index) != 1:
            fail_input(f"{path} has agents {sorted(index)}; choose one with --agent")
        agent = next(iter(index))
    if agent not in index:
        fail_input(f"{path} has no agent {agent!r} (it has {sorted(index)})")
    cases = index[agent]
    if not isinstance(cases, dict):
        fail_input(f"{path}: agent {agent!r} is not an object of cases")
    return agent, cases


def verdict(entry: dict) -> tuple[str, str]:
    return entry.get("behavior", "?"), entry.get("behaviorClose", "?")


def explain(index_path: str, entry: dict) -> str:
    """The case's own explanation from its detail file, when it is readable."""
    name = entry.get("reportfile")
    if not isinstance(name, str):
        return ""
    try:
        with open(os.path.join(os.path.dirname(index_path), name)) as f:
            detail = json.load(f)
    except (OSError, json.JSONDecodeError):
        return ""
    lines = []
    for key in ("description", "result", "resultClose"):
        text = " ".join(str(detail.get(key) or "").split())
        if text:
            lines.append(f"\n      {key}: {text[:200]}")
    return "".join(lines)


def fmt(v: tuple[str, str]) -> str:
    return f"{v[0]}/{v[1]}"


def compare(old: tuple[str, str], new: tuple[str, str]) -> str:
    """'same', 'better' or 'worse' (a sideways change counts as worse)."""
    if old == new:
        return "same"
    b_old, b_new = BEHAVIOR_RANK.get(old[0], 9), BEHAVIOR_RANK.get(new[0], 9)
    c_old, c_new = CLOSE_RANK.get(old[1], 9), CLOSE_RANK.get(new[1], 9)
    if b_new <= b_old and c_new <= c_old and (b_new < b_old or c_new < c_old):
        return "better"
    return "worse"


def write_golden(path: str, agent: str, cases: dict, merge: bool) -> None:
    golden: dict = {}
    if os.path.exists(path):
        golden = load_json(path, "golden file")
    entries = dict(golden.get(agent, {})) if merge else {}
    for case_id, entry in cases.items():
        b, c = verdict(entry)
        entries[case_id] = {"behavior": b, "behaviorClose": c}
    golden[agent] = entries
    lines = ["{"]
    agents = sorted(golden)
    for ai, name in enumerate(agents):
        lines.append(f"  {json.dumps(name)}: {{")
        ids = sorted(golden[name], key=case_key)
        for ci, case_id in enumerate(ids):
            comma = "," if ci < len(ids) - 1 else ""
            lines.append(f"    {json.dumps(case_id)}: {json.dumps(golden[name][case_id])}{comma}")
        lines.append("  }" + ("," if ai < len(agents) - 1 else ""))
    lines.append("}")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    print(f"check: wrote {len(entries)} cases for agent {agent!r} to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Check a kosoku/Autobahn client report against the conformance bar and the golden file.",
    )
    parser.add_argument("index", help="the report's index.json")
    parser.add_argument("golden", nargs="?", help="golden file (optional; skipped when it does not exist)")
    parser.add_argument("--agent", help="agent to check (default: the only one in the report)")
    parser.add_argument(
        "--allow-unimplemented",
        default=DEFAULT_ALLOWED_UNIMPLEMENTED,
        metavar="GLOBS",
        help="comma-separated case globs where UNIMPLEMENTED is accepted; '' accepts none "
        f"(default: {DEFAULT_ALLOWED_UNIMPLEMENTED})",
    )
    parser.add_argument("--expect-count", type=int, help="fail unless the report has exactly N cases")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="a filtered run: golden cases missing from the report are not drift, "
        "and --write-golden merges instead of replacing",
    )
    parser.add_argument("--write-golden", action="store_true", help="record this run in the golden file")
    args = parser.parse_args()

    allowed = [g.strip() for g in args.allow_unimplemented.split(",") if g.strip()]
    index = load_json(args.index, "report")
    agent, cases = pick_agent(index, args.agent, args.index)
    ids = sorted(cases, key=case_key)
    problems: list[str] = []

    if not ids:
        problems.append("the report has no cases")
    if args.expect_count is not None and len(ids) != args.expect_count:
        problems.append(
            f"the report has {len(ids)} cases, the server offered {args.expect_count} "
            "(did the client stop early or call /updateReports before the last case?)"
        )

    failing: list[str] = []
    for case_id in ids:
        b, c = verdict(cases[case_id])
        reasons = []
        if b in FAILING_BEHAVIOR:
            reasons.append(f"behavior {b}")
        if c in FAILING_CLOSE:
            reasons.append(f"behaviorClose {c}")
        if b == "UNIMPLEMENTED" and not any(fnmatch.fnmatchcase(case_id, g) for g in allowed):
            reasons.append("UNIMPLEMENTED (not in --allow-unimplemented)")
        if b not in BEHAVIOR_RANK:
            reasons.append(f"unknown behavior {b!r}")
        if c not in CLOSE_RANK:
            reasons.append(f"unknown behaviorClose {c!r}")
        if reasons:
            entry = cases[case_id]
            detail = f" (remoteCloseCode {entry.get('remoteCloseCode')}, see {entry.get('reportfile', '?')})"
            failing.append(f"  {case_id}: {', '.join(reasons)}{detail}{explain(args.index, entry)}")
    if failing:
        problems.append(f"{len(failing)} case(s) fail the conformance bar:\n" + "\n".join(failing))

    worse: list[str] = []
    better: list[str] = []
    if args.golden and not args.write_golden:
        if not os.path.exists(args.golden):
            print(f"check: no golden file at {args.golden} (create it with --write-golden)")
        else:
            golden = load_json(args.golden, "golden file")
            if agent not in golden:
                print(f"check: the golden file has no entry for agent {agent!r}: no drift check")
            else:
                expected = golden[agent]
                for case_id in sorted(set(expected) | set(cases), key=case_key):
                    if case_id not in cases:
                        if not args.partial:
                            worse.append(f"  {case_id}: {fmt(verdict(expected[case_id]))} -> missing from the report")
                        continue
                    new = verdict(cases[case_id])
                    if case_id not in expected:
                        worse.append(f"  {case_id}: not in the golden file -> {fmt(new)}")
                        continue
                    old = verdict(expected[case_id])
                    change = compare(old, new)
                    if change == "worse":
                        worse.append(f"  {case_id}: {fmt(old)} -> {fmt(new)}")
                    elif change == "better":
                        better.append(f"  {case_id}: {fmt(old)} -> {fmt(new)}")
    if worse:
        problems.append(
            f"{len(worse)} case(s) drifted from {args.golden} (worse, changed or missing):\n" + "\n".join(worse)
        )
    if better:
        print(
            f"check: {len(better)} case(s) improved over {args.golden}; refresh it with "
            "scripts/autobahn --write-golden:\n" + "\n".join(better)
        )

    behavior_counts = Counter(verdict(cases[i])[0] for i in ids)
    close_counts = Counter(verdict(cases[i])[1] for i in ids)
    summary = " ".join(f"{k}={behavior_counts.get(k, 0)}" for k in BEHAVIORS if k != "ERROR" or behavior_counts.get(k))
    close_summary = " ".join(
        f"{k}={close_counts.get(k, 0)}" for k in CLOSE_BEHAVIORS if k in ("OK", "WRONG CODE") or close_counts.get(k)
    )

    if args.write_golden:
        write_golden(args.golden or "conformance/expected-results.json", agent, cases, merge=args.partial)

    for problem in problems:
        print(f"check: FAIL: {problem}")
    print(
        f"summary: agent {agent}: {len(ids)} cases | behavior {summary} | close {close_summary} | "
        + ("FAIL" if problems else "PASS")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
