"""compose/: the Compose file, its config file, its Dockerfile, the CLI and the demo app agree.

Nothing here starts a container (no Docker needed): the Compose file is read as YAML,
the mounted whizorch.toml is loaded with `whizorch.config.load_config` in each role's
environment, the role commands are parsed by the real click CLI without being run, and
the files the build and the mounts name are looked up in the repository.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import click
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from whizorch.cli import main
from whizorch.cli._main import load_settings
from whizorch.config import WhizorchConfig, load_config
from whizorch.config._load import CONFIG_ENV, env_vars
from whizorch.errors import ConfigError
from whizorch.saga import App
from whizorch.testing._backends import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
CONFIG_FILE = COMPOSE_DIR / "whizorch.toml"
DEMO_MODULE = "whizorch.demo.apps"
MIN_ETCD = (3, 5, 3)  # 3.5.0-3.5.2: data inconsistency after a crash under load

# compose/README.md tells users to stop these by name
WORKERS = ("worker-eu", "worker-us", "worker-ap")
ORCHESTRATORS = ("orchestrator-1", "orchestrator-2")
ROLES = WORKERS + ORCHESTRATORS


def _load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


COMPOSE = _load()
SERVICES: dict[str, dict[str, Any]] = COMPOSE.get("services") or {}


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _is_etcd(service: dict[str, Any]) -> bool:
    image = str(service.get("image", ""))
    return "build" not in service and image.rpartition(":")[0].rpartition("/")[2] == "etcd"


ETCD = {name: svc for name, svc in SERVICES.items() if _is_etcd(svc)}


def _flags(argv: list[str]) -> dict[str, str]:
    """``--k=v`` and ``--k v`` flags of an etcd command line (a repeated flag fails)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            continue
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            else:
                value = "true"
        assert key not in out, f"--{key} given twice"
        out[key] = value
    return out


def _etcd_flags(name: str) -> dict[str, str]:
    return _flags(_argv(ETCD[name]))


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


class Mount(NamedTuple):
    """One entry of a service's ``volumes``."""

    kind: str  # "bind" or "volume"
    source: str
    target: str
    read_only: bool


def _mounts(service: dict[str, Any]) -> Iterator[Mount]:
    """Each volume entry of a service, short (``src:dst[:ro]``) or long syntax."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield Mount(
                str(entry.get("type", "volume")), str(entry.get("source", "")), str(entry["target"]),
                entry.get("read_only") is True,
            )
            continue
        source, _, rest = str(entry).partition(":")
        target, _, options = rest.partition(":")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield Mount(kind, source, target, "ro" in options.split(","))


def _host_path(source: str) -> Path:
    # Compose resolves relative paths against the directory of the compose file
    return (COMPOSE_DIR / Path(source).expanduser()).resolve()


def _host_value(service: dict[str, Any], value: str) -> str:
    """``value`` with a container path under a bind mount rewritten to the host path."""
    for kind, source, target, _ in _mounts(service):
        if kind == "bind" and (value == target or value.startswith(target.rstrip("/") + "/")):
            return str(_host_path(source)) + value[len(target.rstrip("/")) :]
    return value


def _to_host(service: dict[str, Any], arg: str) -> str:
    """Rewrite a container path inside a command-line ``arg`` to the host file mounted there."""
    prefix, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    return f"{prefix}{sep}{_host_value(service, value)}"


def _config_target(name: str) -> str:
    """The container path ``WHIZORCH_CONFIG`` names in a role's environment."""
    target = _environment(SERVICES[name]).get(CONFIG_ENV)
    assert target, f"{name}: {CONFIG_ENV} is not set"
    return target


def _config_file(name: str) -> Path:
    """The host file mounted where the role's ``WHIZORCH_CONFIG`` points."""
    target = _config_target(name)
    host = _host_value(SERVICES[name], target)
    assert host != target, f"{name}: {CONFIG_ENV}={target} is not a bind-mounted path"
    return Path(host)


def _role_config(name: str) -> WhizorchConfig:
    """``load_config`` of the role's mounted file, in the role's environment."""
    path = _config_file(name)
    try:
        return load_config(path, env=_environment(SERVICES[name]))
    except ConfigError as exc:
        error = exc  # failed outside the except block: the message alone, not the chain
    pytest.fail(f"{name}: {path.name} does not load: {error}")


def _members() -> list[str]:
    """The members' advertised client URLs as ``host:port`` (what load_config keeps)."""
    return sorted(_etcd_flags(m)["advertise-client-urls"].partition("://")[2] for m in ETCD)


def _parse_role(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """Parse a role's command with the real CLI, in the service's environment; nothing runs.

    The process's own ``WHIZORCH_*`` variables are removed first (a container has only
    the service's), and container paths in the environment become the host files
    mounted there, so ``--config``'s ``WHIZORCH_CONFIG`` default names compose/'s file.
    """
    service = SERVICES[name]
    argv = [_to_host(service, arg) for arg in _argv(service)]
    assert argv[:1] == ["whizorch"], f"{name}: the command must start with whizorch: {argv}"
    args = argv[1:]
    for var in [v for v in os.environ if v.startswith("WHIZORCH_")]:
        monkeypatch.delenv(var)
    for key, value in _environment(service).items():
        monkeypatch.setenv(key, _host_value(service, value))
    try:
        ctx = main.make_context("whizorch", list(args))
        # a group leaves the subcommand's own arguments in ctx.args; its name precedes them
        sub_name = args[len(args) - len(ctx.args) - 1]
        sub = main.get_command(ctx, sub_name)
        assert sub is not None, f"{name}: no such command {sub_name!r}"
        sub_ctx = sub.make_context(sub_name, list(ctx.args), parent=ctx)
    except click.ClickException as exc:
        pytest.fail(f"{name}: the CLI refuses {argv}: {exc.format_message()}")
    return sub_name, dict(sub_ctx.params)


def _role_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], WhizorchConfig]:
    """The role's parsed parameters and the configuration its command resolves, as the CLI does."""
    params = _parse_role(name, monkeypatch)[1]
    try:
        return params, load_settings(params["config_path"], endpoints=params["endpoints"], namespace=params["namespace"])
    except ConfigError as exc:
        error = exc  # failed outside the except block: the message alone, not the chain
    pytest.fail(f"{name}: the CLI's configuration does not load: {error}")


def _app_specs() -> set[str]:
    specs = set()
    for name in ROLES:
        flags = _flags(_argv(SERVICES[name]))
        assert "app" in flags, f"{name} names no --app"
        specs.add(flags["app"])
    return specs


def _load_app(spec: str) -> App:
    module_name, _, attr = spec.partition(":")
    if module_name == DEMO_MODULE and importlib.util.find_spec(DEMO_MODULE) is None:
        pytest.skip(f"{DEMO_MODULE} does not exist yet, so the roles' --app cannot be loaded")
    app = getattr(importlib.import_module(module_name), attr)
    assert isinstance(app, App), f"--app {spec} is a {type(app).__name__}, not a whizorch App"
    return app


def _version(image: str) -> tuple[int, ...]:
    tag = image.rpartition(":")[2]
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"etcd image {image!r} is not pinned to a version tag"
    return tuple(int(part) for part in match.groups())


def _dockerfile_instructions(path: Path) -> list[tuple[str, list[str]]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        out.append((keyword.upper(), words))
    return out


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for keyword, words in _dockerfile_instructions(path):
        if keyword not in ("COPY", "ADD"):
            continue
        if any(w.startswith("--from=") for w in words):
            continue  # from another stage, not from the build context
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def test_compose_file_parses_into_etcd_members_and_whizorch_roles() -> None:
    """The file is YAML with services, each one an etcd member or a whizorch role."""
    assert SERVICES, "no services"
    assert "version" not in COMPOSE, "the top-level version key is obsolete (Compose v2 warns)"
    roles = {name for name, svc in SERVICES.items() if "build" in svc}
    assert roles == set(ROLES), f"whizorch roles {sorted(roles)}, README names {sorted(ROLES)}"
    others = set(SERVICES) - roles - set(ETCD)
    assert not others, f"services that are neither etcd nor whizorch: {sorted(others)}"


def test_exactly_three_etcd_members() -> None:
    """The cluster has three members, so it keeps a quorum with one member down."""
    assert sorted(ETCD) == ["etcd1", "etcd2", "etcd3"]


@pytest.mark.parametrize("name", sorted(ETCD))
def test_member_name_and_advertised_urls_are_its_own(name: str) -> None:
    """--name is the service name and the advertised URLs use that name (the DNS name peers and clients resolve)."""
    argv = _argv(ETCD[name])
    assert argv[:1] == ["/usr/local/bin/etcd"], "the image is distroless: the command starts with the binary"
    flags = _etcd_flags(name)
    assert flags["name"] == name
    assert flags["initial-advertise-peer-urls"] == f"http://{name}:2380"
    assert flags["advertise-client-urls"] == f"http://{name}:2379"
    assert flags["listen-peer-urls"] == "http://0.0.0.0:2380"
    assert flags["listen-client-urls"] == "http://0.0.0.0:2379"
    assert flags["initial-cluster-state"] == "new"


def test_initial_cluster_is_identical_and_lists_every_member() -> None:
    """--initial-cluster is the same on all members and maps each member to its peer URL."""
    values = {_etcd_flags(name)["initial-cluster"] for name in ETCD}
    assert len(values) == 1, f"members disagree on --initial-cluster: {values}"
    pairs = [item.partition("=")[::2] for item in values.pop().split(",")]
    assert len(pairs) == len(dict(pairs)), f"a member is listed twice: {pairs}"
    assert dict(pairs) == {name: _etcd_flags(name)["initial-advertise-peer-urls"] for name in ETCD}


def test_cluster_tokens_agree() -> None:
    """Every member bootstraps with the same --initial-cluster-token."""
    tokens = {_etcd_flags(name).get("initial-cluster-token") for name in ETCD}
    assert len(tokens) == 1 and None not in tokens, f"tokens: {tokens}"


def test_each_member_keeps_its_data_in_its_own_named_volume() -> None:
    """--data-dir lies in a named volume declared at the top level, one volume per member."""
    declared = COMPOSE.get("volumes") or {}
    used = []
    for name in ETCD:
        data_dir = _etcd_flags(name)["data-dir"]
        holders = [
            source for kind, source, target, _ in _mounts(ETCD[name])
            if kind == "volume" and (data_dir == target or data_dir.startswith(target.rstrip("/") + "/"))
        ]
        assert len(holders) == 1, f"{name}: --data-dir {data_dir} is not in one named volume"
        assert holders[0] in declared, f"{name}: volume {holders[0]!r} is not declared"
        used.append(holders[0])
    assert len(set(used)) == len(used), f"members share a data volume: {used}"


def test_referenced_volumes_are_declared() -> None:
    """Every named volume a service mounts is declared under the top-level volumes."""
    declared = COMPOSE.get("volumes") or {}
    for name, service in SERVICES.items():
        for kind, source, _, _ in _mounts(service):
            if kind == "volume":
                assert source in declared, f"{name}: volume {source!r} is not declared"


def test_bind_mounted_files_exist() -> None:
    """Every host path a service mounts exists in the repository."""
    for name, service in SERVICES.items():
        for kind, source, target, _ in _mounts(service):
            if kind == "bind":
                assert _host_path(source).exists(), f"{name}: {source} (mounted at {target}) is missing"


def test_depends_on_targets_exist() -> None:
    """Every depends_on names a service of this file."""
    for name, service in SERVICES.items():
        for target in service.get("depends_on") or []:
            assert target in SERVICES, f"{name} depends on unknown service {target!r}"


def test_roles_wait_for_every_member_to_be_healthy() -> None:
    """Each role starts once all members pass a healthcheck that etcdctl runs in exec form."""
    for name in ETCD:
        test = ETCD[name].get("healthcheck", {}).get("test")
        # distroless image: no shell, so no CMD-SHELL and no string form
        assert isinstance(test, list) and test[0] == "CMD", f"{name}: healthcheck {test!r}"
        assert Path(test[1]).name == "etcdctl" and test[-2:] == ["endpoint", "health"], test
    for name in ROLES:
        depends = SERVICES[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for member in ETCD:
            assert (depends.get(member) or {}).get("condition") == "service_healthy", (name, member)
        assert SERVICES[name].get("restart") == "unless-stopped", name


def test_etcd_image_is_pinned_and_not_older_than_3_5_3() -> None:
    """All members run one pinned etcd 3.5 image, 3.5.3 or newer."""
    images = {str(ETCD[name]["image"]) for name in ETCD}
    assert len(images) == 1, f"members run different images: {images}"
    version = _version(images.pop())
    assert version >= MIN_ETCD, f"etcd {version} is older than 3.5.3"
    assert version[:2] == (3, 5), f"etcd {version}: the README supports 3.4 and 3.5"


def test_etcd_image_is_the_one_the_docker_test_backend_uses() -> None:
    """Compose runs the etcd image that pytest --etcd-backend=docker tests against."""
    assert {ETCD[name]["image"] for name in ETCD} == {DEFAULT_IMAGE}


def test_only_etcd1_client_port_is_published_on_loopback() -> None:
    """The one port on the host is etcd1's client port, bound to 127.0.0.1."""
    published = {name: svc["ports"] for name, svc in SERVICES.items() if svc.get("ports")}
    assert list(published) == ["etcd1"], f"services publishing ports: {sorted(published)}"
    (port,) = published["etcd1"]
    if isinstance(port, dict):
        host_ip, target = port.get("host_ip"), int(port["target"])
    else:
        parts = str(port).split("/")[0].split(":")
        assert len(parts) == 3, f"{port!r} does not name the host address"
        host_ip, target = parts[0], int(parts[2])
    assert (host_ip, target) == ("127.0.0.1", 2379)


def test_roles_build_one_image_from_compose_dockerfile() -> None:
    """Every role builds from compose/Dockerfile with the repository root as context, into one image."""
    images = set()
    for name in ROLES:
        build = SERVICES[name]["build"]
        assert isinstance(build, dict), f"{name}: build must name the Dockerfile"
        context = (COMPOSE_DIR / build.get("context", ".")).resolve()
        assert context == ROOT, f"{name}: build context {context}, not the repository root"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile == COMPOSE_DIR / "Dockerfile" and dockerfile.is_file(), dockerfile
        images.add(SERVICES[name].get("image"))
    assert len(images) == 1 and None not in images, f"roles tag different images: {images}"


def test_dockerfile_copies_what_pip_install_needs_and_it_exists() -> None:
    """COPY sources exist in the repository and include the metadata, the readme and the package."""
    sources = _copy_sources(COMPOSE_DIR / "Dockerfile")
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert list(ROOT.glob(source)), f"COPY source {source!r} is not in the repository"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {"pyproject.toml", project["readme"], "whizorch"}
    assert needed <= {s.rstrip("/") for s in sources}, f"missing from COPY: {needed - set(sources)}"


def test_dockerfile_python_satisfies_requires_python() -> None:
    """The base image's Python is one the package supports."""
    instructions = _dockerfile_instructions(COMPOSE_DIR / "Dockerfile")
    froms = [words for keyword, words in instructions if keyword == "FROM"]
    assert froms, "no FROM"
    image = froms[-1][0]
    # FROM ${BASE_IMAGE}: the ARG's default before the first FROM is what users build on
    defaults = dict(w.partition("=")[::2] for keyword, words in instructions[: instructions.index(("FROM", froms[0]))] if keyword == "ARG" for w in words)
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image)
    match = re.fullmatch(r"python:(\d+\.\d+)(?:[.-].*)?", image)
    assert match, f"the final stage is not an official python image: {image}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(match.group(1)), (image, requires)


def test_every_role_mounts_the_config_file_read_only_where_whizorch_config_points() -> None:
    """WHIZORCH_CONFIG names a read-only bind mount of compose/whizorch.toml in every role."""
    for name in ROLES:
        target = _config_target(name)
        mounts = [m for m in _mounts(SERVICES[name]) if m.target == target]
        assert len(mounts) == 1, f"{name}: {CONFIG_ENV}={target}, mounted {len(mounts)} times"
        (mount,) = mounts
        assert mount.kind == "bind", f"{name}: {target} is a {mount.kind}, not the repository's file"
        assert _host_path(mount.source) == CONFIG_FILE, f"{name}: {target} is {mount.source}, not whizorch.toml"
        assert mount.read_only, f"{name}: {target} is mounted writable"
        assert CONFIG_FILE.is_file(), CONFIG_FILE


def test_no_role_overrides_the_config_file_with_whizorch_variables() -> None:
    """No service sets a WHIZORCH_* variable load_config reads: it would silently win over whizorch.toml."""
    overrides = env_vars()
    for name in ROLES:
        shadowed = {var: ".".join(filter(None, overrides[var])) for var in _environment(SERVICES[name]) if var in overrides}
        assert not shadowed, f"{name}: environment overrides {shadowed} of whizorch.toml"


def test_config_file_loads_in_every_role_environment() -> None:
    """load_config reads the mounted file without error, and every role gets the same configuration."""
    configs = {name: _role_config(name) for name in ROLES}
    first = configs[ROLES[0]]
    for name, cfg in configs.items():
        assert cfg == first, f"{name} and {ROLES[0]} load different configurations"


def test_config_etcd_endpoints_are_the_members_client_urls() -> None:
    """[etcd] endpoints name each member's advertised client URL once (load_config drops the scheme)."""
    cfg = _role_config(ROLES[0])
    assert len(set(cfg.etcd.endpoints)) == len(cfg.etcd.endpoints), f"an endpoint is listed twice: {cfg.etcd.endpoints}"
    assert sorted(cfg.etcd.endpoints) == _members()


def test_config_regions_are_exactly_the_workers_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker per region, and [regions.*] lists exactly the workers' regions."""
    regions = [_parse_role(name, monkeypatch)[1]["region"] for name in WORKERS]
    assert len(set(regions)) == len(regions), f"two workers share a region: {regions}"
    configured = [r.name for r in _role_config(ROLES[0]).regions]
    assert sorted(configured) == sorted(regions), f"whizorch.toml regions {configured}, workers {regions}"


def test_config_gives_a_latency_both_ways_between_every_two_regions() -> None:
    """The router built from the config knows a positive latency for every ordered pair of regions."""
    cfg = _role_config(ROLES[0])
    latency = cfg.router().latency
    names = [r.name for r in cfg.regions]
    for src in names:
        for dst in names:
            if src != dst:
                assert (src, dst) in latency, f"no latency from {src} to {dst}: set regions.{src}.latency_ms.{dst}"
                assert latency[(src, dst)] > 0, f"latency {src} -> {dst} is {latency[(src, dst)]}"


def test_each_region_prefers_etcd_members() -> None:
    """Each region names at least one preferred endpoint, every one a member, tried first by its workers."""
    cfg = _role_config(ROLES[0])
    members = _members()
    for region in cfg.regions:
        assert region.endpoints, f"regions.{region.name}.endpoints is empty"
        strangers = set(region.endpoints) - set(members)
        assert not strangers, f"regions.{region.name}.endpoints {sorted(strangers)} are not members {members}"
        endpoints = cfg.etcd_config(region.name).endpoints
        assert endpoints[: len(region.endpoints)] == region.endpoints, endpoints
        assert sorted(endpoints) == members, endpoints


def test_metrics_are_served_on_the_port_each_role_exposes() -> None:
    """[monitoring] turns /metrics on, bound to every interface on a port each role exposes to the network."""
    cfg = _role_config(ROLES[0])
    assert cfg.monitoring.metrics, "[monitoring] metrics is off: compose/README.md shows how to scrape it"
    host, port = cfg.monitoring.metrics_address
    # on 127.0.0.1 other containers (a Prometheus on the Compose network) could not reach it
    assert host in ("0.0.0.0", "::"), f"metrics_bind {cfg.monitoring.metrics_bind} is not reachable from the network"
    for name in ROLES:
        exposed = {str(p).split("/")[0] for p in SERVICES[name].get("expose") or []}
        assert str(port) in exposed, f"{name} exposes {sorted(exposed)}, not the metrics port {port}"


def test_lease_ttl_and_failover_policy_are_the_ones_compose_readme_describes() -> None:
    """compose/README.md's walk-through counts on 5 s leases and on failover to the closest region."""
    cfg = _role_config(ROLES[0])
    assert cfg.consensus.lease_ttl_s == 5, cfg.consensus
    assert cfg.failover.policy == "closest", cfg.failover


@pytest.mark.parametrize("name", ROLES)
def test_role_command_parses_with_the_cli(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The role's command line is accepted by the real click CLI and resolves the mounted file's configuration."""
    command, params = _parse_role(name, monkeypatch)
    assert command == ("worker" if name in WORKERS else "orchestrator")
    # what the command does first, in the environment _parse_role left
    cfg = load_settings(params["config_path"], endpoints=params["endpoints"], namespace=params["namespace"])
    # --config is unset: click takes it from WHIZORCH_CONFIG, the mounted file
    assert params["config_path"] is not None and Path(params["config_path"]) == CONFIG_FILE, params["config_path"]
    assert sorted(cfg.etcd.endpoints) == _members(), f"{name}: {cfg.etcd.endpoints}"
    expected = tomllib.loads(CONFIG_FILE.read_text())["namespace"]
    assert cfg.namespace == expected, f"{name}: namespace {cfg.namespace!r}, whizorch.toml says {expected!r}"
    assert cfg == _role_config(name), f"{name}: the command's configuration differs from whizorch.toml's"


def test_no_role_flag_shadows_the_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """No role passes a flag that overrides whizorch.toml (--etcd, --namespace, --compliance, --latency ...)."""
    shadowing = (
        "endpoints", "namespace", "compliance", "cost", "lease_ttl", "latency_file", "failover_policy",
        "metrics_bind", "tracing",
    )
    for name in ROLES:
        params = _parse_role(name, monkeypatch)[1]
        given = {key: params[key] for key in shadowing if params.get(key) is not None}
        assert not given, f"{name} overrides whizorch.toml with {given}"


def test_each_worker_region_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker's --region has a [regions.*] table: its compliance tags and nearby endpoints come from there."""
    for name in WORKERS:
        params, cfg = _role_settings(name, monkeypatch)
        configured = [r.name for r in cfg.regions]
        assert cfg.region(params["region"]) is not None, f"{name}: region {params['region']!r} not in {configured}"


def test_orchestrators_route_with_the_config_and_print_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each orchestrator takes its latencies from whizorch.toml (no --latency file) and has --events on."""
    for name in ORCHESTRATORS:
        params, cfg = _role_settings(name, monkeypatch)
        assert params["latency_file"] is None, f"{name}: --latency {params['latency_file']} replaces the config's"
        assert cfg.router().latency, f"{name}: the configuration gives the router no latencies"
        assert params["events"] is True, f"{name}: --events is off"


def test_roles_share_one_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and orchestrators use the same key namespace, so they see each other."""
    namespaces = {name: _role_settings(name, monkeypatch)[1].namespace for name in ROLES}
    assert len(set(namespaces.values())) == 1, namespaces


def test_app_named_by_the_roles_is_a_whizorch_app() -> None:
    """Every --app module:object the roles name imports and is a whizorch App."""
    specs = _app_specs()
    assert len(specs) == 1, f"roles load different apps: {specs}"
    _load_app(specs.pop())


def test_every_demo_step_survives_the_loss_of_region_us() -> None:
    """Each step's region is configured, and a region other than us (the one the README stops) covers its tags.

    (gdpr steps have only eu, by design: that data stays in the EU.)"""
    app = _load_app(_app_specs().pop())
    regions = {r.name: set(r.compliance) for r in _role_config(ROLES[0]).regions}
    for saga in app.sagas.values():
        for step in saga.steps:
            where = f"saga {saga.name!r} step {step.name!r}"
            if step.region is not None:
                assert step.region in regions, f"{where} runs in {step.region!r}; regions: {sorted(regions)}"
            able = [name for name, tags in regions.items() if step.compliance <= tags and name != "us"]
            assert able, f"{where} needs {sorted(step.compliance)}; without us nobody offers it: {regions}"
