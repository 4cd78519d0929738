"""The test harness against real etcd: LocalEtcdCluster, the fixtures, dev.py, eventually."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from whizorch.errors import ClosedError, ConfigError
from whizorch.testing import (
    EtcdMember,
    LocalClusterError,
    LocalEtcdCluster,
    _cluster,
    _process,
    eventually,
    eventually_async,
    find_etcdctl,
)
from whizorch.testing._backends import (
    BackendUnavailableError,
    docker_unavailable_reason,
    start_docker_etcd,
)
from whizorch.testing.pytest_plugin import EtcdSettings

pytest_plugins = ["pytester"]

LINUX = sys.platform.startswith("linux")


# -- helpers -------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state not in ("Z", "X")


def _all_dead(pids: list[int]) -> bool:
    return not any(_alive(pid) for pid in pids)


def _put_get(cluster: LocalEtcdCluster, key: str, value: str, *, via: EtcdMember) -> str:
    cluster.etcdctl("put", key, value, endpoints=[via.endpoint])
    return cluster.etcdctl("get", key, "--print-value-only").stdout.strip()


def _serializable_get(cluster: LocalEtcdCluster, key: str, member: EtcdMember) -> str:
    """Read ``key`` from ``member``'s own copy of the data (no quorum round)."""
    done = cluster.etcdctl(
        "get", key, "--print-value-only", "--consistency=s", endpoints=[member.endpoint]
    )
    return done.stdout.strip()


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address if len(address) == width else "?")
    return found


def _run_script(code: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


_START_AND_REPORT = """
    import json, sys
    from whizorch.testing import LocalEtcdCluster
    cluster = LocalEtcdCluster(3, etcd_bin={etcd_bin!r}).start()
    pids = [m.pid for m in cluster.members]
    print(json.dumps({{"pids": pids, "directory": str(cluster.directory)}}), flush=True)
    {then}
"""


# -- the three-member cluster ----------------------------------------------------------


def test_three_members_start_healthy(etcd_cluster: LocalEtcdCluster) -> None:
    """A 3-member cluster starts with every member healthy, a leader, and distinct endpoints."""
    members = etcd_cluster.members
    assert len(members) == 3
    assert all(member.health() for member in members)
    assert all(member.is_running and not member.is_paused for member in members)
    assert etcd_cluster.wait_leader() in members
    assert len(set(etcd_cluster.endpoints)) == 3
    for endpoint, url in zip(etcd_cluster.endpoints, etcd_cluster.client_urls, strict=True):
        host, _, port = endpoint.partition(":")
        assert host == "127.0.0.1" and port.isdigit()
        assert url == f"http://{endpoint}"
    assert etcd_cluster.version >= (3, 4)


def test_etcdctl_put_and_get_through_the_endpoints(etcd_cluster: LocalEtcdCluster) -> None:
    """A value written through one member's endpoint is read back through another's."""
    first, second, _ = etcd_cluster.members
    assert _put_get(etcd_cluster, "harness/hello", "world", via=first) == "world"
    got = etcd_cluster.etcdctl(
        "get", "harness/hello", "--print-value-only", endpoints=[second.endpoint]
    )
    assert got.stdout.strip() == "world"


def test_killed_member_leaves_a_quorum_and_restarts(etcd_cluster: LocalEtcdCluster) -> None:
    """Killing the leader (SIGKILL) leaves two healthy members that still commit; the
    restarted member comes back on the same ports and catches up."""
    victim = etcd_cluster.wait_leader()
    pid, endpoint = victim.pid, victim.endpoint
    assert pid is not None
    victim.kill()
    assert not victim.is_running and victim.pid is None
    assert not _alive(pid)
    etcd_cluster.wait_healthy(timeout=15)
    survivors = [m for m in etcd_cluster.members if m is not victim]
    assert all(m.health() for m in survivors)
    assert _put_get(etcd_cluster, "harness/quorum", "kept", via=survivors[0]) == "kept"
    assert etcd_cluster.wait_leader() in survivors

    victim.restart()
    assert victim.is_running and victim.pid != pid
    assert victim.endpoint == endpoint
    etcd_cluster.wait_healthy(timeout=15)
    eventually(lambda: _serializable_get(etcd_cluster, "harness/quorum", victim) == "kept")


def test_paused_member_is_frozen_then_resumes(etcd_cluster: LocalEtcdCluster) -> None:
    """A SIGSTOPped member answers nothing while the others keep committing; SIGCONT brings
    it back and it catches up."""
    paused = etcd_cluster.members[1]
    others = [m for m in etcd_cluster.members if m is not paused]
    paused.pause()
    assert paused.is_paused and paused.is_running
    assert not paused.health(timeout=0.3)
    etcd_cluster.wait_healthy(timeout=15)  # waits on the members not paused
    assert _put_get(etcd_cluster, "harness/paused", "yes", via=others[0]) == "yes"
    paused.resume()
    assert not paused.is_paused
    etcd_cluster.wait_healthy(timeout=15)
    eventually(lambda: _serializable_get(etcd_cluster, "harness/paused", paused) == "yes")


def test_stop_is_graceful_and_start_brings_it_back(etcd_cluster: LocalEtcdCluster) -> None:
    """stop() ends a member with SIGTERM (not SIGKILL); start() runs it again."""
    member = etcd_cluster.members[2]
    status = member.stop()
    assert status in (0, -signal.SIGTERM)
    assert not member.is_running
    etcd_cluster.wait_healthy(timeout=15)
    member.start()
    assert member.health()


def test_member_dying_on_its_own_is_reported_with_its_log(
    etcd_cluster: LocalEtcdCluster,
) -> None:
    """A member killed behind the cluster's back makes wait_healthy fail naming it and
    quoting its log."""
    member = etcd_cluster.members[0]
    assert member.pid is not None
    os.kill(member.pid, signal.SIGKILL)
    eventually(lambda: not member.is_running)
    assert member.crashed
    with pytest.raises(LocalClusterError, match="etcd member etcd0 exited") as caught:
        etcd_cluster.wait_healthy(timeout=10)
    assert "last log lines of etcd0" in str(caught.value)


def test_leader_changes_when_the_leader_is_killed(etcd_cluster: LocalEtcdCluster) -> None:
    """leader()/wait_leader() follow the Raft leader through a failover."""
    old = etcd_cluster.wait_leader()
    assert old.is_leader()
    old.kill()
    new = etcd_cluster.wait_leader(timeout=15)
    assert new is not old and new.is_running


# -- start failures, ports, cleanup -----------------------------------------------------


def test_failed_start_quotes_the_members_log(etcd_bin: str) -> None:
    """When etcd refuses to start, the error carries its last log lines, and nothing is left."""
    cluster = LocalEtcdCluster(1, etcd_bin=etcd_bin, extra_args=["--no-such-flag"])
    with pytest.raises(LocalClusterError, match="flag provided but not defined"):
        cluster.start()
    assert not cluster.directory.exists()
    assert all(m.pid is None for m in cluster.members)
    with pytest.raises(ClosedError):
        cluster.start()


def test_port_taken_before_etcd_binds_it_is_retried(
    etcd_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chosen port grabbed by someone else ("address already in use") means new ports."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real = _process.free_ports
    calls: list[list[int]] = []

    def first_call_hands_out_a_taken_port(count: int) -> list[int]:
        ports = real(count)
        if not calls:
            ports[0] = taken
        calls.append(ports)
        return ports

    monkeypatch.setattr(_cluster, "free_ports", first_call_hands_out_a_taken_port)
    try:
        with LocalEtcdCluster(1, etcd_bin=etcd_bin) as cluster:
            assert len(calls) == 2
            assert cluster.members[0].client_port != taken
            assert cluster.members[0].health()
    finally:
        blocker.close()


def test_close_leaves_no_process_and_no_directory(etcd_bin: str) -> None:
    """close() kills every member (a paused one too) and deletes the data directory;
    closing twice is fine and a closed cluster cannot start again."""
    with LocalEtcdCluster(3, etcd_bin=etcd_bin) as cluster:
        pids = [m.pid for m in cluster.members]
        assert all(pid is not None and _alive(pid) for pid in pids)
        cluster.members[1].pause()
        assert all(m.data_dir.is_dir() for m in cluster.members)
        cluster.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not cluster.directory.exists()
    cluster.close()
    with pytest.raises(ClosedError):
        cluster.start()
    with pytest.raises(ClosedError):
        cluster.wait_healthy()


@pytest.mark.skipif(not LINUX, reason="reads /proc/net/tcp")
def test_members_listen_on_loopback_only(etcd_cluster: LocalEtcdCluster) -> None:
    """Client, peer and metrics ports are bound to 127.0.0.1 and nothing else."""
    for member in etcd_cluster.members:
        for port in (member.client_port, member.peer_port, member.metrics_port):
            assert _listening(port) == {"0100007F"}, port
        assert not any("0.0.0.0" in arg or "localhost" in arg for arg in member.args)


def test_tls_with_client_cert_auth_starts_healthy(
    etcd_cluster_factory: Callable[..., LocalEtcdCluster],
) -> None:
    """With tls=True and client_cert_auth, members serve https, accept the generated client
    certificate, and refuse a client without one."""
    cluster = etcd_cluster_factory(3, tls=True, client_cert_auth=True)
    assert all(m.health() for m in cluster.members)
    assert all(url.startswith("https://127.0.0.1:") for url in cluster.client_urls)
    tls = cluster.tls
    assert tls is not None and tls.client_user == "root"
    assert "--client-cert-auth" in cluster.members[0].args
    assert _put_get(cluster, "harness/tls", "secret", via=cluster.members[0]) == "secret"
    no_client_cert = subprocess.run(
        [
            str(cluster.etcdctl_bin),
            f"--endpoints={cluster.client_urls[0]}",
            f"--cacert={tls.ca_cert}",
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "get",
            "harness/tls",
        ],
        env=cluster.etcdctl_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert no_client_cert.returncode != 0


def test_extra_flags_reach_etcd(etcd_cluster_factory: Callable[..., LocalEtcdCluster]) -> None:
    """extra_args are passed to etcd: a tiny --max-request-bytes rejects a larger put."""
    cluster = etcd_cluster_factory(1, extra_args=["--max-request-bytes=1024"])
    refused = cluster.etcdctl("put", "harness/big", "x" * 4096, check=False)
    assert refused.returncode != 0
    assert "too large" in refused.stderr
    assert cluster.etcdctl("put", "harness/small", "x").returncode == 0


def test_bad_timings_are_refused_before_anything_runs(etcd_bin: str) -> None:
    """etcd needs election >= 5 x heartbeat; the cluster says so as a ConfigError."""
    with pytest.raises(ConfigError, match="election_ms >= 5"):
        LocalEtcdCluster(1, etcd_bin=etcd_bin, heartbeat_ms=100, election_ms=200)


# -- async use --------------------------------------------------------------------------


async def test_async_context_manager_keeps_the_loop_free(etcd_bin: str) -> None:
    """`async with` starts and closes the cluster in a thread: the loop keeps running."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)  # ok: a ticker showing the loop runs, not a wait

    tick_task = asyncio.create_task(ticker())
    try:
        async with LocalEtcdCluster(1, etcd_bin=etcd_bin) as cluster:
            assert ticks >= 3  # the loop ran while etcd started
            await cluster.await_healthy(timeout=10)
            member = cluster.members[0]
            await member.arestart()
            assert member.health()
        assert not cluster.directory.exists()
    finally:
        tick_task.cancel()


async def test_cancelled_start_leaves_nothing(tmp_path: Path, etcd_bin: str) -> None:
    """Cancelling astart() midway kills the members it had started and removes the directory."""
    cluster = LocalEtcdCluster(3, etcd_bin=etcd_bin, start_timeout=60)
    starting = asyncio.create_task(cluster.astart())

    def all_spawned() -> list[int]:
        pids = [m.pid for m in cluster.members if m.pid is not None]
        return pids if len(pids) == 3 else []

    # cancelled while it waits for the members to become healthy
    spawned = await eventually_async(
        all_spawned,
        timeout=20,
        retry_on=(ClosedError,),  # members appear once the start has laid them out
    )
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert _all_dead(spawned)
    assert not cluster.directory.exists()


# -- nothing outlives the test runner ----------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_sigkilled_runner_takes_its_etcd_members_along(tmp_path: Path, etcd_bin: str) -> None:
    """A process SIGKILLed while it runs a cluster leaves no etcd behind (PR_SET_PDEATHSIG)."""
    script = _START_AND_REPORT.format(etcd_bin=etcd_bin, then="sys.stdin.read()")
    with _run_script(script, tmp_path) as runner:
        try:
            assert runner.stdout is not None
            report = json.loads(runner.stdout.readline())
            assert all(_alive(pid) for pid in report["pids"])
        finally:
            runner.kill()
    eventually(lambda: _all_dead(report["pids"]), timeout=10)


def test_cluster_left_open_is_cleaned_up_at_exit(tmp_path: Path, etcd_bin: str) -> None:
    """A script that exits without closing its cluster leaves no process and no directory."""
    script = _START_AND_REPORT.format(etcd_bin=etcd_bin, then="pass")
    with _run_script(script, tmp_path) as runner:
        out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0
    report = json.loads(out.splitlines()[0])
    assert _all_dead(report["pids"])
    assert not Path(report["directory"]).exists()


def test_dev_command_runs_a_cluster_until_interrupted(tmp_path: Path, etcd_bin: str) -> None:
    """`python -m whizorch.dev` prints an export line whose endpoints work, and stops its
    members cleanly on Ctrl-C (SIGINT)."""
    dev = subprocess.Popen(
        [sys.executable, "-m", "whizorch.dev", "--members", "1", "--etcd-bin", etcd_bin],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1"),
    )
    try:
        assert dev.stdout is not None
        lines = []
        for line in dev.stdout:
            lines.append(line)
            if line.startswith("export WHIZORCH_ETCD_ENDPOINTS="):
                break
        endpoints = lines[-1].strip().partition("=")[2]
        pid_line = next(line for line in lines if " pid " in line)
        etcd_pid = int(pid_line.split(" pid ")[1].split()[0])
        put = subprocess.run(
            [str(find_etcdctl(etcd_bin)), f"--endpoints={endpoints}", "put", "harness/dev", "up"],
            env=LocalEtcdCluster.etcdctl_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert put.returncode == 0, put.stderr
        dev.send_signal(signal.SIGINT)
        out, err = dev.communicate(timeout=30)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert dev.returncode == 0, err
    assert "etcd stopped." in out
    assert not _alive(etcd_pid)


def test_dev_command_takes_raft_timings_from_the_config(tmp_path: Path, etcd_bin: str) -> None:
    """`whizorch dev --config F` runs etcd with F's heartbeat and election timeouts; a bad one exits 2 naming it."""
    config = tmp_path / "whizorch.toml"
    config.write_text("[consensus]\netcd_heartbeat_ms = 60\netcd_election_ms = 700\n")
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    dev = subprocess.Popen(
        [sys.executable, "-m", "whizorch.dev", "--members", "1", "--etcd-bin", etcd_bin, "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert dev.stdout is not None
        pid_line = next(line for line in dev.stdout if " pid " in line)
        etcd_pid = int(pid_line.split(" pid ")[1].split()[0])
        argv = Path(f"/proc/{etcd_pid}/cmdline").read_bytes().split(b"\0")
        assert b"--heartbeat-interval=60" in argv and b"--election-timeout=700" in argv, argv
        dev.send_signal(signal.SIGINT)
        dev.communicate(timeout=30)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert dev.returncode == 0
    config.write_text("[consensus]\netcd_heartbeat_ms = 300\netcd_election_ms = 700\n")
    bad = subprocess.run(
        [sys.executable, "-m", "whizorch.dev", "--members", "1", "--etcd-bin", etcd_bin, "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert bad.returncode == 2
    assert "consensus.etcd_election_ms = 700" in bad.stderr and ">= 5 * etcd_heartbeat_ms" in bad.stderr


# -- fixtures and backends ---------------------------------------------------------------


def test_shared_fixtures_point_at_one_working_etcd(
    etcd_cluster_shared: LocalEtcdCluster, etcd_endpoints: list[str]
) -> None:
    """etcd_endpoints lists the shared cluster's endpoints, and they serve requests."""
    assert etcd_endpoints == etcd_cluster_shared.endpoints
    if isinstance(etcd_cluster_shared, LocalEtcdCluster):
        got = _put_get(
            etcd_cluster_shared, "harness/shared", "1", via=etcd_cluster_shared.members[0]
        )
        assert got == "1"
        etcd_cluster_shared.etcdctl("del", "harness/shared")


def test_single_fixture_is_one_fresh_member(etcd_single: LocalEtcdCluster) -> None:
    """etcd_single is a one-member etcd with no keys yet."""
    assert len(etcd_single.endpoints) == 1
    if isinstance(etcd_single, LocalEtcdCluster):
        assert etcd_single.etcdctl("get", "", "--prefix", "--keys-only").stdout.strip() == ""


def test_docker_backend_skips_without_a_docker_engine(pytester: pytest.Pytester) -> None:
    """With --etcd-backend=docker and no Docker engine, tests skip saying where Docker was
    looked for and why it did not answer."""
    if docker_unavailable_reason() is None:
        pytest.skip("a Docker engine answers here")
    with pytest.raises(BackendUnavailableError, match="no Docker engine answered at"):
        start_docker_etcd()
    pytester.makepyfile(
        """
        import pytest

        def test_uses_endpoints(etcd_endpoints):
            pass

        def test_uses_cluster(etcd_cluster):
            pass

        @pytest.mark.docker
        def test_marked_docker():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--etcd-backend=docker", "-rs", "-p", "no:randomly")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*no Docker engine answered at *"])


@pytest.mark.docker
def test_docker_session_removes_the_containers_it_left(
    pytester: pytest.Pytester, etcd_settings: EtcdSettings
) -> None:
    """A container cluster a test never closes is removed when its pytest session ends
    (no Ryuk: the plugin removes what carries its session's label)."""
    image = etcd_settings.image
    pytester.makepyfile(
        f"""
        from whizorch.testing._docker import SESSION_ID, DockerEtcdCluster

        def test_leaks():
            cluster = DockerEtcdCluster(1, image={image!r}).start()
            print("SESSION", SESSION_ID, cluster.members[0].container_name)
        """
    )
    result = pytester.runpytest_subprocess(
        "--etcd-backend=docker", "--etcd-docker-network=host", "-s", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1)
    (line,) = [x for x in result.outlines if "SESSION " in x]
    name = line.split("SESSION ")[1].split()[1]
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    )
    assert listed.stdout.strip() == "", f"left behind: {listed.stdout}"


def test_external_backend_uses_given_endpoints(
    pytester: pytest.Pytester, etcd_cluster_shared: LocalEtcdCluster
) -> None:
    """--etcd-backend=external hands the given endpoints to tests and skips the ones that
    must control etcd processes."""
    given = ",".join(etcd_cluster_shared.endpoints)
    pytester.makepyfile(
        f"""
        import pytest

        def test_endpoints(etcd_endpoints):
            assert etcd_endpoints == {etcd_cluster_shared.endpoints!r}

        def test_cluster(etcd_cluster):
            pass

        @pytest.mark.etcd_control
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "--etcd-backend=external", f"--etcd-endpoints={given}", "-rs", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*'external' etcd backend cannot*"])


def test_external_backend_without_endpoints_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """Choosing the external backend without endpoints stops pytest with a clear message."""
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--etcd-backend=external", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--etcd-backend=external needs --etcd-endpoints*"])


# -- eventually ---------------------------------------------------------------------------


def test_eventually_returns_the_first_truthy_result() -> None:
    """eventually() polls until the predicate is truthy and returns that value."""
    calls = iter([0, [], "ready"])
    assert eventually(lambda: next(calls), interval=0.001) == "ready"


def test_eventually_retries_assertions_and_times_out_with_the_last_one() -> None:
    """An assert-style check is retried; at the deadline an AssertionError names it and
    chains the last failure."""

    def never() -> None:
        raise AssertionError("still wrong")

    with pytest.raises(AssertionError, match="not true within") as caught:
        eventually(never, timeout=0.05, interval=0.01, message="the thing")
    assert "the thing" in str(caught.value)
    assert isinstance(caught.value.__cause__, AssertionError)


def test_eventually_lets_unexpected_errors_through() -> None:
    """Exceptions outside retry_on propagate at once instead of being polled away."""
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        eventually(lambda: empty["missing"], timeout=5)


async def test_eventually_async_awaits_async_predicates() -> None:
    """eventually_async() awaits async predicates and bounds each attempt by the deadline."""
    state = {"n": 0}

    async def bump() -> bool:
        state["n"] += 1
        return state["n"] >= 3

    assert await eventually_async(bump, interval=0.001) is True

    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    with pytest.raises(AssertionError, match="not true within"):
        await eventually_async(hangs, timeout=0.05)

    async def wrong_then_hangs() -> None:
        state["n"] += 1
        if state["n"] > 10:
            await asyncio.Event().wait()  # the last attempt is cut off by the deadline
        raise AssertionError(f"still wrong: {state['n']}")

    state["n"] = 0
    with pytest.raises(AssertionError, match="not true within") as caught:
        await eventually_async(wrong_then_hangs, timeout=1.0, interval=0.001)
    assert str(caught.value.__cause__) == "still wrong: 10"  # the last real failure, not the cut-off
