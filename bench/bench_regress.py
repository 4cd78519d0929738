"""No regression: this engine (one shard) against an earlier build, and both against DBOS,
back to back in one run (issue 17).

This machine's speed varies about 3x from day to day, so figures from different days
do not compare; ratios measured in the same run do. Each round runs ``bench_saga.py``
of the earlier tree with that tree's own virtualenv, then this tree's ``bench_saga.py
--shards 1`` with this one's (the order alternates between rounds), and with
``--dbos-port`` the DBOS peer bench (``--dbos-bench``, run by ``--dbos-python`` on a
fresh database of the Postgres at that port). The same workload on each: a 3-step saga
with no-op handlers, ``--n`` one at a time, then 200 in flight for ``--duration`` s.

Prints each run's figures and load average, then per figure the ratio now/before of
each round with its median and spread; with DBOS, whizorch/DBOS for each engine and
the two side by side. Every run's full output is kept under ``--log-dir``.

Build the earlier engine apart first (it is run, never imported here)::

    git -C /work/main worktree add /tmp/engine-before 63731c4
    make -C /tmp/engine-before setup
    python bench/bench_regress.py --before /tmp/engine-before [--rounds 3] [--n 200] [--duration 8]
        [--dbos-port 60179 --dbos-python /tmp/dbos-venv/bin/python --dbos-bench /work/shared/peer/bench_dbos.py]

About 80 s per round without DBOS, 2 1/2 minutes with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOW_TREE = HERE.parent

# bench_saga.py's lines (the same at the earlier commit): figure -> pattern, group
SAGA_FIGURES: dict[str, tuple[str, int]] = {
    "p50 ms": (r"p50 ([\d.]+) ms\s+p99 ([\d.]+) ms", 1),
    "p99 ms": (r"p50 ([\d.]+) ms\s+p99 ([\d.]+) ms", 2),
    "commits/saga in series": (r"etcd commits per saga, all in series: ([\d.]+)", 1),
    "steps/s": (r"(\d+) sagas/s\s+(\d+) steps/s", 2),
    "commits/step": (r"etcd commits per step under load: ([\d.]+)", 1),
    "CPU ms/step": (r"Python CPU per step, orchestrators \+ workers: ([\d.]+) ms", 1),
    "leader failover s": (r"new leader after ([\d.]+) s", 1),
}
LOWER_IS_BETTER = {
    "p50 ms", "p99 ms", "commits/saga in series", "commits/step", "CPU ms/step", "CPU ms/step less the standby",
    "leader failover s",
}  # fmt: skip


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse_saga(text: str) -> dict[str, float]:
    out = {}
    for name, (pattern, group) in SAGA_FIGURES.items():
        m = re.search(pattern, text)
        if m:
            out[name] = float(m.group(group))
    # this tree's bench_saga.py also prints each process's CPU: the candidate that leads
    # nothing (it watches every event since shards; the earlier engine watched only
    # while leading) is taken out, to see what the leader and the workers cost
    m = re.search(r"each process: orch-0 ([\d.]+) ms, orch-1 ([\d.]+) ms", text)
    if m and "CPU ms/step" in out:
        out["standby CPU ms/step"] = min(float(m.group(1)), float(m.group(2)))
    return out


def run_saga(tree: Path, label: str, args: argparse.Namespace, extra: list[str], log: Path) -> dict[str, float]:
    """``bench_saga.py`` of ``tree`` with that tree's virtualenv; its figures."""
    python = tree / ".venv" / "bin" / "python"
    cmd = [str(python), str(tree / "bench" / "bench_saga.py"), "--n", str(args.n), "--duration", str(args.duration), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    before = load()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, timeout=900)
    log.write_text(f"$ {' '.join(cmd)}\n# load before {before}, after {load()}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"{label}: bench_saga.py failed ({proc.returncode}); see {log}")
    figures = parse_saga(proc.stdout)
    print(f"  {label:<8} {time.monotonic() - t0:4.0f} s  " + "  ".join(f"{k} {v:g}" for k, v in figures.items())
          + f"   load {before}", flush=True)  # fmt: skip
    return figures


def run_dbos(args: argparse.Namespace, db: str, log: Path) -> dict[str, float]:
    """The DBOS peer bench on a fresh database; its (a) latency and (b) throughput."""
    create = f"import psycopg; psycopg.connect('host=127.0.0.1 port={args.dbos_port} user=postgres dbname=postgres', autocommit=True).execute('create database {db}')"
    subprocess.run([args.dbos_python, "-c", create], check=True, capture_output=True)
    out = log.with_suffix(".json")
    cmd = [
        args.dbos_python, args.dbos_bench, "--port", str(args.dbos_port), "--db", db, "--seq", str(args.n),
        "--inflight", "200", "--window", str(args.duration), "--stats-wait", "2", "--out", str(out),
    ]  # fmt: skip
    before = load()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log.write_text(f"$ {' '.join(cmd)}\n# load before {before}, after {load()}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"DBOS bench failed ({proc.returncode}); see {log}")
    res = json.loads(out.read_text())
    figures = {
        "p50 ms": res["seq_sync"]["p50_ms"], "p99 ms": res["seq_sync"]["p99_ms"],
        "steps/s": res["tput_async"]["steps_per_s"],
    }  # fmt: skip
    print(f"  {'DBOS':<8} {time.monotonic() - t0:4.0f} s  " + "  ".join(f"{k} {v:g}" for k, v in figures.items())
          + f"   load {before}", flush=True)  # fmt: skip
    return figures


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the earlier engine's tree (with its .venv: make setup)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=200, help="sequential sagas per run")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of the throughput phase")
    parser.add_argument("--dbos-port", type=int, default=None, help="a Postgres on 127.0.0.1 at this port: run DBOS too")
    parser.add_argument("--dbos-python", default="/tmp/dbos-venv/bin/python", help="a python with dbos installed")
    parser.add_argument("--dbos-bench", default="/work/shared/peer/bench_dbos.py")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench-regress"))
    parser.add_argument("--summarize", metavar="STAMP", help="print the summary of an earlier run from its logs (no run)")
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(from_logs(args.log_dir, args.summarize))
        return 0
    before_python = args.before / ".venv" / "bin" / "python"
    if not before_python.exists():
        raise SystemExit(f"{before_python} not found: run `make setup` in {args.before} first")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    head = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"bench_regress: before = {args.before} ({head.stdout.strip()}), now = {NOW_TREE} (--shards 1); "
          f"{args.rounds} rounds, --n {args.n} --duration {args.duration:g}; DBOS: {'yes' if args.dbos_port else 'no'}; "
          f"load {load()}; logs in {args.log_dir}", flush=True)  # fmt: skip

    runs: dict[str, list[dict[str, float]]] = {"before": [], "now": [], "DBOS": []}
    for r in range(args.rounds):
        print(f"round {r + 1}")
        order = ["before", "now"] if r % 2 == 0 else ["now", "before"]
        for label in order:
            tree, extra = (args.before, []) if label == "before" else (NOW_TREE, ["--shards", "1"])
            runs[label].append(run_saga(tree, label, args, extra, args.log_dir / f"{stamp}-r{r + 1}-{label}.log"))
        if args.dbos_port:
            runs["DBOS"].append(run_dbos(args, f"regress_{stamp.replace('-', '_')}_{r + 1}", args.log_dir / f"{stamp}-r{r + 1}-dbos.log"))

    summarize(runs)
    return 0


def from_logs(log_dir: Path, stamp: str) -> dict[str, list[dict[str, float]]]:
    """The figures of an earlier run, from its logs."""
    runs: dict[str, list[dict[str, float]]] = {"before": [], "now": [], "DBOS": []}
    for r in range(1, 1000):
        logs = {label: log_dir / f"{stamp}-r{r}-{label}.log" for label in ("before", "now")}
        if not all(p.exists() for p in logs.values()):
            break
        for label, path in logs.items():
            runs[label].append(parse_saga(path.read_text()))
        dbos = log_dir / f"{stamp}-r{r}-dbos.json"
        if dbos.exists():
            res = json.loads(dbos.read_text())
            runs["DBOS"].append({
                "p50 ms": res["seq_sync"]["p50_ms"], "p99 ms": res["seq_sync"]["p99_ms"],
                "steps/s": res["tput_async"]["steps_per_s"],
            })  # fmt: skip
    if len(runs["DBOS"]) != len(runs["now"]):
        runs["DBOS"] = []
    return runs


def summarize(runs: dict[str, list[dict[str, float]]]) -> None:
    for n in runs["now"]:
        if "standby CPU ms/step" in n:
            n["CPU ms/step less the standby"] = n["CPU ms/step"] - n["standby CPU ms/step"]
    for b in runs["before"]:
        b.setdefault("CPU ms/step less the standby", b.get("CPU ms/step", 0.0))  # it watched nothing while standing by
    print(f"\nmedians of {len(runs['now'])} rounds: before / now" + (" / DBOS" if runs["DBOS"] else ""))
    for name in [*SAGA_FIGURES, "standby CPU ms/step", "CPU ms/step less the standby"]:
        cols = [[r[name] for r in runs[label] if name in r] for label in ("before", "now", "DBOS")]
        if cols[1]:
            print(f"  {name:<28} " + " / ".join(f"{statistics.median(c):g}" if c else "-" for c in cols[: 3 if runs["DBOS"] else 2]))
    print(f"\nnow / before, per round (load {load()}); for steps/s higher is better, for the rest lower")
    for name in [*SAGA_FIGURES, "CPU ms/step less the standby"]:
        ratios = [n[name] / b[name] for b, n in zip(runs["before"], runs["now"], strict=True) if name in b and name in n and b[name]]
        if not ratios:
            continue
        good = (statistics.median(ratios) <= 1.10) if name in LOWER_IS_BETTER else (statistics.median(ratios) >= 0.90)
        verdict = "within 10%" if good else "MORE than 10% worse"
        print(f"  {name:<28} {', '.join(f'{x:.2f}' for x in ratios):<34} {spread(ratios)}   {verdict}")
    if runs["DBOS"]:
        print("\nwhizorch / DBOS, same round (p50, p99: lower is better; steps/s: higher)")
        for name in ("p50 ms", "p99 ms", "steps/s"):
            for label in ("before", "now"):
                ratios = [w[name] / d[name] for w, d in zip(runs[label], runs["DBOS"], strict=True)]
                print(f"  {name:<8} {label:<7} {', '.join(f'{x:.2f}' for x in ratios):<24} {spread(ratios)}")


if __name__ == "__main__":
    raise SystemExit(main())
