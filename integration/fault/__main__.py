"""The fault suite's runner: many seeds, longer runs, a results table.

::

    .venv/bin/python -m integration.fault --seeds 20 --duration 60     # seeds 1000..1019
    .venv/bin/python -m integration.fault --seed 17 --seed 42          # exactly these
    .venv/bin/python -m integration.fault --seed 17 --duration 60 --sagas 240   # a replay

Run from the repository root. Exits 1 when any seed failed; each failed seed's work
directory (role logs, the handlers' lines, report.txt) is kept and named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # integration/: `fault`, `_children`

from fault import settings
from fault.suite import Options, main_log, run_seed
from whizorch.testing import find_etcd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.fault", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    parser.add_argument("--seeds", type=int, default=None, help="run N seeds from --first-seed on")
    parser.add_argument("--first-seed", type=int, default=settings.DEFAULT_FIRST_SEED)
    parser.add_argument("--duration", type=float, default=settings.DEFAULT_DURATION_S, help="nemesis seconds per seed")
    parser.add_argument("--sagas", type=int, default=None, help="transfers per seed (default 4 per second)")
    parser.add_argument("--shards", type=int, default=settings.DEFAULT_SHARDS, help="the namespace's shard count")
    parser.add_argument("--orchestrators", type=int, default=settings.DEFAULT_ORCHESTRATORS,
                        help="orchestrator processes sharing the shards")
    parser.add_argument("--delay", type=float, default=0.2, help="upper bound of the handlers' random delays (s)")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directories of passing seeds too")
    parser.add_argument("--json", metavar="FILE", help="write the results table as JSON")
    parser.add_argument(
        "--commit", metavar="REV", default=None,
        help="roles run whizorch as of this commit (git archive into the work dir), not the working tree, "
        "so edits made while the seeds run cannot reach a restarted role",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.shards <= 1024:
        parser.error(f"--shards {args.shards}: give a shard count from 1 to 1024")
    if not 1 <= args.orchestrators <= 16:
        parser.error(f"--orchestrators {args.orchestrators}: give a count from 1 to 16")
    seeds = args.seed or (list(range(args.first_seed, args.first_seed + args.seeds)) if args.seeds else list(settings.FIXED_SEEDS))
    etcd_bin = str(find_etcd())
    root = Path(tempfile.mkdtemp(prefix="whizorch-fault-"))
    snapshot = None
    if args.commit:
        repo = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", args.commit], check=True,
                             capture_output=True, text=True).stdout.strip()
        snapshot = root / f"whizorch-{rev}"
        snapshot.mkdir()
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "whizorch"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
        print(f"[fault suite] roles run whizorch at commit {rev} ({snapshot})")
    rows = []
    for seed in seeds:
        workdir = root / f"seed-{seed}"
        workdir.mkdir()
        began = time.monotonic()
        opts = Options(seed=seed, duration_s=args.duration, sagas=args.sagas, handler_delay_s=args.delay,
                       shards=args.shards, orchestrators=args.orchestrators, whizorch_path=str(snapshot) if snapshot else None)
        try:
            outcome = asyncio.run(run_seed(opts, workdir=workdir, etcd_bin=etcd_bin, log=main_log))
            row = {"seed": seed, "ok": outcome.ok, "faults": outcome.faults, "seconds": round(time.monotonic() - began, 1),
                   "violations": [str(v).splitlines()[0] for v in outcome.violations], "void": outcome.void}
        except Exception as exc:  # harness trouble: reported, the next seed still runs
            row = {"seed": seed, "ok": False, "faults": 0, "seconds": round(time.monotonic() - began, 1),
                   "violations": [f"harness error: {type(exc).__name__}: {exc}"], "void": None}
        row["dir"] = str(workdir)
        rows.append(row)
        if row["ok"] and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if not row["ok"] and not row["void"] and args.stop_on_failure:
            break
    print("\n== results ==")
    for r in rows:
        verdict = "ok" if r["ok"] else "VOID" if r["void"] else "FAILED"
        print(f"seed {r['seed']:>6}  {verdict:<6}  {r['faults']:>3} faults  {r['seconds']:>6.1f}s"
              + ("" if r["ok"] else f"  {r['dir']}"))
        for v in r["violations"]:
            print(f"    {v}")
    passed = sum(r["ok"] for r in rows)
    void = sum(bool(r["void"]) for r in rows)
    failed = len(rows) - passed - void
    print(f"{passed}/{len(rows)} seeds passed, {failed} failed, {void} void (etcd itself diverged, a known bug of "
          f"its version; see each report) (duration {args.duration:g}s each)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if passed == len(rows) and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
