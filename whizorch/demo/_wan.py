"""``whizorch demo --wan``: the saga demo with its regions apart, on a `RegionLab`.

Two processes. This one (the *outer* demo) starts the lab (eu, us, ap; round trips
eu-us 80, us-ap 150, eu-ap 200 ms; one etcd member per region), moves etcd's Raft
leadership to eu (etcd's MoveLeader), writes down where everything is (`WanPlacement`)
and runs the saga demo itself as a process placed in eu (``whizorch demo --wan-lab
FILE``): from there it submits the sagas, and it starts every role placed in its
region, each with its own region's member first (workers in eu, us, ap; the three
orchestrators, which share the shards, in eu, beside etcd's leader). Placed means, as root, inside the
region's network namespace, so every byte to another region pays the matrix; without
root the lab's approximation (the host's loopback, each process given its region's
endpoints), which the output says. When the demo ends the lab is closed: members,
network process, namespaces and directories removed.

Signals: the placed demo runs in a session of its own; a SIGINT, SIGTERM or SIGHUP to
this process is passed on to it once (it stops its roles), then the lab is closed.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs

from whizorch.errors import WhizorchError
from whizorch.testing import RegionLab

if TYPE_CHECKING:
    from whizorch.demo._saga_demo import DemoOptions

__all__ = ["DEMO_REGION", "WanPlacement", "run_wan"]

DEMO_REGION = "eu"
"""Where etcd's leader is moved, the orchestrators run and the sagas are submitted from."""
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@attrs.frozen(kw_only=True)
class WanPlacement:
    """Where the lab put everything: what the placed demo needs to place its roles and
    to compare its figures with the matrix (written as JSON by the outer demo)."""

    mode: str
    """``netns`` (a network namespace per region) or ``approximate``."""
    mode_reason: str
    """Why the lab runs its approximation (empty in netns mode)."""
    regions: tuple[str, ...]
    rtt_ms: Mapping[str, Mapping[str, float]]
    """Round trips between regions, both ways."""
    leader: str
    """The region of etcd's Raft leader: the orchestrators and the demo run there."""
    election_ms: int
    etcd_version: str
    endpoints: Mapping[str, Sequence[str]]
    """Each region's client endpoints, its own member first."""
    commands: Mapping[str, Sequence[str]]
    """The argv prefix that places a process in each region (empty in approximate mode)."""

    def rtt(self, a: str, b: str) -> float:
        """The round trip between ``a`` and ``b`` (0 inside a region)."""
        return 0.0 if a == b else float(self.rtt_ms[a][b])

    @property
    def quorum_rtt_ms(self) -> float:
        """q: the round trip from the leader's region to its nearest other member."""
        others = sorted(self.rtt(self.leader, r) for r in self.regions if r != self.leader)
        return others[len(self.regions) // 2 - 1] if others else 0.0

    def put_floor_ms(self, region: str) -> float:
        """The least a linearizable write from ``region`` costs: RTT(region, L) + q."""
        return self.rtt(region, self.leader) + self.quorum_rtt_ms

    def saga_floor_ms(self, step_regions: Sequence[str]) -> float:
        """The least a saga submitted from the leader's region costs, one commit per step
        in its region: q + sum over the steps of (RTT(L, step region) + q)."""
        return self.quorum_rtt_ms + sum(self.put_floor_ms(r) for r in step_regions)

    @property
    def min_ttl_s(self) -> int:
        """etcd's least lease TTL here: 1.5 x its election timeout, in whole seconds."""
        return math.ceil(1.5 * self.election_ms / 1000)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> WanPlacement:
        data: dict[str, Any] = json.loads(text)
        data["regions"] = tuple(data["regions"])
        return cls(**data)

    @classmethod
    def of(cls, lab: RegionLab, leader: str) -> WanPlacement:
        """The placement of an open lab whose etcd leader is in ``leader``."""
        return cls(
            mode=lab.mode,
            mode_reason=lab.mode_reason,
            regions=tuple(lab.regions),
            rtt_ms={a: {b: lab.rtt_ms(a, b) for b in lab.regions if b != a} for a in lab.regions},
            leader=leader,
            election_ms=lab.election_ms,
            etcd_version=".".join(map(str, lab.cluster.version)),
            endpoints={r: lab.endpoints(r) for r in lab.regions},
            commands={r: lab.command(r, []) for r in lab.regions},
        )


def say(text: str) -> None:
    """One line of the outer demo, in the plain display's shape."""
    print(f"[   lab] {text}", flush=True)


def move_leader(lab: RegionLab, region: str, timeout_s: float = 30.0) -> str:
    """Move etcd's Raft leadership to ``region`` (etcdctl move-leader: the Maintenance
    MoveLeader call); return the region that led before."""
    before = lab.wait_leader_region()
    if before == region:
        return before
    members = json.loads(lab.cluster.etcdctl("member", "list", "-w", "json").stdout)["members"]
    target = next(m for m in members if m["name"] == region)
    lab.cluster.etcdctl("move-leader", f"{int(target['ID']):x}")
    deadline = time.monotonic() + timeout_s
    while lab.leader_region() != region:
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd's Raft leader did not move to {region} within {timeout_s:g}s")
        time.sleep(0.05)  # ok: polls etcd's status through the lab's direct view
    return before


def inner_argv(options: DemoOptions, placement_file: Path, ttl_s: int) -> list[str]:
    """The command line of the placed demo."""
    argv = [
        sys.executable, "-m", "whizorch", "demo", "--wan-lab", str(placement_file),
        "--duration", repr(options.duration_s), "--ttl", str(ttl_s), "--shards", str(options.shards), "--rate", repr(options.rate),
        "--max-in-flight", str(options.max_in_flight), "--seed", str(options.seed),
    ]
    if options.plain:
        argv.append("--plain")
    if options.json_summary is not None:
        argv += ["--json-summary", str(options.json_summary.resolve())]
    if options.namespace is not None:
        argv += ["--demo-namespace", options.namespace]
    return argv


def run_wan(options: DemoOptions) -> int:
    """Start the lab, run the placed demo to its end, close the lab; the demo's exit status
    (128 + the signal when interrupted)."""
    caught: list[int] = []
    child: list[subprocess.Popen[Any]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum not in caught:
            caught.append(signum)
            for proc in child:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _SIGNALS}
    workdir = Path(tempfile.mkdtemp(prefix="whizorch-demo-wan-"))
    consoles: list[Any] = []
    lab: RegionLab | None = None
    try:
        try:
            lab = RegionLab()
            pairs = ", ".join(
                f"{a}-{b} {lab.rtt_ms(a, b):g}" for i, a in enumerate(lab.regions) for b in lab.regions[i + 1 :]
            )
            say(f"starting a region lab: {', '.join(lab.regions)}, one etcd member each; round trips (ms) {pairs}")
            lab.start()
        except (WhizorchError, OSError) as exc:
            say(f"the region lab could not start: {type(exc).__name__}: {exc}")
            return 1
        if caught:
            return 128 + caught[0]
        if lab.mode == "netns":
            say("mode netns: each region is a network namespace; a process placed there reaches the others "
                "only through the delayed paths")
        else:
            say(f"mode approximate ({lab.mode_reason}): everything on the host loopback; each process reaches "
                "the members through its region's endpoints, which pay the matrix")
        before = move_leader(lab, DEMO_REGION)
        placement = WanPlacement.of(lab, DEMO_REGION)
        moved = "already there" if before == DEMO_REGION else f"moved from {before} (MoveLeader)"
        say(f"etcd {placement.etcd_version} up; its Raft leader is in {DEMO_REGION} ({moved}); "
            f"q = {placement.quorum_rtt_ms:g} ms (the leader's round trip to its nearest member)")
        ttl = max(options.ttl_s, placement.min_ttl_s)
        if ttl != options.ttl_s:
            say(f"lease TTL {ttl}s: etcd's least TTL here is 1.5 x its {lab.election_ms} ms election timeout "
                f"(asked {options.ttl_s}s)")
        path = workdir / "placement.json"
        path.write_text(placement.to_json())
        bind = options.console
        if bind is not None:
            from whizorch.demo._console import ConsoleProcess
            from whizorch.demo._saga_demo import demo_namespace

            options = attrs.evolve(options, namespace=options.namespace or demo_namespace())
            assert options.namespace is not None
            console = ConsoleProcess(",".join(lab.cluster.endpoints), options.namespace, bind, workdir)
            consoles.append(console)
            say(f"console: {console.start()} (on the host, reading the lab's members undelayed; read-only)")
        placed = "placed in its region" if lab.mode == "netns" else "given its region's endpoints"
        say(f"the demo runs in {DEMO_REGION} (it submits the sagas from there); workers in "
            f"{', '.join(placement.regions)} and the 3 orchestrators in {DEMO_REGION}, each {placed}")
        if caught:
            return 128 + caught[0]
        proc = lab.popen(DEMO_REGION, inner_argv(options, path, ttl), stdin=subprocess.DEVNULL,
                         start_new_session=True, env=lab.env(DEMO_REGION))
        child.append(proc)
        code = proc.wait()
        return 128 + caught[0] if caught else code
    finally:
        for c in consoles:
            c.stop()
        if lab is not None:
            try:
                made = lab.is_open
                lab.close()
                if made:
                    say("closed: etcd members, the network process, namespaces and directories removed")
            except Exception as exc:
                say(f"closing the lab failed: {type(exc).__name__}: {exc}")
        shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
