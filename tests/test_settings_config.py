"""whizorch.config: the schema, load_config's precedence and its errors (no etcd needed)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import attrs
import pytest

import whizorch.config
from whizorch.config import (
    ConsensusConfig,
    EtcdSection,
    FailoverConfig,
    MonitoringConfig,
    RegionConfig,
    WhizorchConfig,
    load_config,
)
from whizorch.config._load import env_vars
from whizorch.coord import LeaseTiming, Session
from whizorch.errors import ConfigError
from whizorch.etcd import EtcdClient, EtcdConfig
from whizorch.saga import RegionInfo, Router, Saga, Settings

DOC = pathlib.Path(__file__).parent.parent / "docs" / "configuration.md"
FULL_TOML = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)  # type: ignore[union-attr]


def write(tmp_path: pathlib.Path, text: str, name: str = "whizorch.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: pathlib.Path | None = None, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return info.value


# -- defaults and the full example ------------------------------------------------------


def test_defaults() -> None:
    """With no file and no variables, load_config gives every documented default."""
    cfg = load_config(env={})
    assert cfg == WhizorchConfig()
    assert cfg.namespace == "whizorch"
    assert cfg.etcd.endpoints == ("127.0.0.1:2379",)
    assert cfg.etcd.timeout_s == 5.0
    assert cfg.regions == ()
    assert cfg.consensus == ConsensusConfig(lease_ttl_s=5, etcd_heartbeat_ms=100, etcd_election_ms=1000)
    assert cfg.consensus.keepalive_interval_s is None and cfg.consensus.step_down_margin_s is None
    assert cfg.failover == FailoverConfig(policy="closest", max_retries=None, no_region_timeout_s=30.0)
    assert cfg.monitoring == MonitoringConfig(metrics=False, metrics_bind="127.0.0.1:9464", tracing=False)


def test_full_example_round_trips(tmp_path: pathlib.Path) -> None:
    """The example TOML in docs/configuration.md loads into exactly the objects it describes."""
    cfg = load_config(write(tmp_path, FULL_TOML), env={})
    assert cfg == WhizorchConfig(
        namespace="payments",
        etcd=EtcdSection(
            endpoints=("10.0.1.10:2379", "10.0.2.10:2379", "10.0.3.10:2379"),
            timeout_s=5.0,
            ca_file="/etc/whizorch/ca.pem",
            cert_file="/etc/whizorch/client.pem",
            key_file="/etc/whizorch/client-key.pem",
            username="whizorch",
            password="change-me",
        ),
        regions=(
            RegionConfig(
                name="eu", endpoints=("10.0.1.10:2379",), latency_ms={"us": 85, "ap": 160},
                cost=1.0, compliance=("gdpr",),
            ),
            RegionConfig(
                name="us", endpoints=("10.0.2.10:2379",), latency_ms={"ap": 110}, cost=0.8,
                compliance=("pci",),
            ),
            RegionConfig(name="ap", endpoints=("10.0.3.10:2379",), cost=0.6),
        ),
        consensus=ConsensusConfig(lease_ttl_s=6, keepalive_interval_s=2.0, step_down_margin_s=1.0),
        failover=FailoverConfig(policy="closest", max_retries=2),
        monitoring=MonitoringConfig(
            metrics=True, metrics_bind="0.0.0.0:9464", tracing=True
        ),
    )
    assert [r.name for r in cfg.regions] == ["eu", "us", "ap"]
    assert cfg.region("us") is cfg.regions[1] and cfg.region("xx") is None
    assert cfg.monitoring.metrics_address == ("0.0.0.0", 9464)


def test_docs_list_every_field_and_variable() -> None:
    """docs/configuration.md names every section field and every environment variable."""
    text = DOC.read_text()
    for var, (section, name) in env_vars().items():
        assert f"`{var}`" in text
        assert f"| `{name}` |" in text, (section, name)
    for field in attrs.fields(RegionConfig):
        assert field.name == "name" or f"| `{field.name}` |" in text


def test_env_vars_cover_every_section_field() -> None:
    """Each scalar field of [etcd], [consensus], [failover], [monitoring] has WHIZORCH_<SECTION>_<FIELD>."""
    names = set(env_vars())
    assert {"WHIZORCH_NAMESPACE", "WHIZORCH_ETCD_ENDPOINTS", "WHIZORCH_ETCD_TIMEOUT_S",
            "WHIZORCH_ETCD_PASSWORD", "WHIZORCH_CONSENSUS_LEASE_TTL_S", "WHIZORCH_FAILOVER_POLICY",
            "WHIZORCH_MONITORING_METRICS", "WHIZORCH_MONITORING_METRICS_BIND"} <= names
    for section, cls in (("ETCD", EtcdSection), ("CONSENSUS", ConsensusConfig),
                         ("FAILOVER", FailoverConfig), ("MONITORING", MonitoringConfig)):
        for field in attrs.fields(cls):
            assert not field.init or f"WHIZORCH_{section}_{field.name.upper()}" in names


# -- precedence -------------------------------------------------------------------------


def test_file_overrides_defaults(tmp_path: pathlib.Path) -> None:
    """A field set in the file replaces its default; fields not set keep theirs."""
    path = write(tmp_path, '[consensus]\nlease_ttl_s = 9\n[failover]\npolicy = "score"\n')
    cfg = load_config(path, env={})
    assert cfg.consensus.lease_ttl_s == 9
    assert cfg.failover.policy == "score"
    assert cfg.consensus.etcd_heartbeat_ms == 100
    assert cfg.etcd == EtcdSection()


def test_endpoints_may_be_one_comma_separated_string(tmp_path: pathlib.Path) -> None:
    """In the file, endpoints = "a,b" (etcd and regions) means the list ["a", "b"], schemes dropped."""
    path = write(tmp_path, '[etcd]\nendpoints = "a:1, https://b:2"\n[regions.eu]\nendpoints = "c:3,a:1"\n')
    cfg = load_config(path, env={})
    assert cfg.etcd.endpoints == ("a:1", "b:2")
    assert cfg.regions[0].endpoints == ("c:3", "a:1")
    assert cfg.etcd_config("eu").endpoints == ("c:3", "a:1", "b:2")


def test_evolve_revalidates() -> None:
    """attrs.evolve (how the CLI applies its flags) normalises and validates like the constructor."""
    cfg = WhizorchConfig()
    evolved = attrs.evolve(cfg, etcd=attrs.evolve(cfg.etcd, endpoints="x:1,y:2"))
    assert evolved.etcd.endpoints == ("x:1", "y:2")
    with pytest.raises(ConfigError, match=r"^failover.policy = 'nearest': must be 'closest' or 'score'$"):
        attrs.evolve(cfg.failover, policy="nearest")


def test_env_overrides_file(tmp_path: pathlib.Path) -> None:
    """WHIZORCH_<SECTION>_<FIELD> beats the file, field by field."""
    path = write(tmp_path, 'namespace = "file"\n[consensus]\nlease_ttl_s = 9\netcd_heartbeat_ms = 200\n')
    cfg = load_config(path, env={"WHIZORCH_CONSENSUS_LEASE_TTL_S": "12", "WHIZORCH_NAMESPACE": "env"})
    assert cfg.consensus.lease_ttl_s == 12
    assert cfg.consensus.etcd_heartbeat_ms == 200
    assert cfg.namespace == "env"


def test_whizorch_config_picks_the_file(tmp_path: pathlib.Path) -> None:
    """Without a path, WHIZORCH_CONFIG names the file; an explicit path wins over it."""
    from_env = write(tmp_path, 'namespace = "from-env"\n', "a.toml")
    given = write(tmp_path, 'namespace = "given"\n', "b.toml")
    assert load_config(env={"WHIZORCH_CONFIG": str(from_env)}).namespace == "from-env"
    assert load_config(given, env={"WHIZORCH_CONFIG": str(from_env)}).namespace == "given"
    assert load_config(env={"WHIZORCH_CONFIG": ""}).namespace == "whizorch"


def test_os_environ_is_the_default_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """With env=None, load_config reads os.environ."""
    monkeypatch.setenv("WHIZORCH_FAILOVER_NO_REGION_TIMEOUT_S", "7.5")
    monkeypatch.delenv("WHIZORCH_CONFIG", raising=False)
    assert load_config().failover.no_region_timeout_s == 7.5


def test_unknown_whizorch_variables_are_ignored() -> None:
    """Other tools' WHIZORCH_* variables (and typos) do not break loading."""
    env = {"WHIZORCH_ETCD_BIN": "/nope/etcd", "WHIZORCH_ETCD_BACKEND": "docker", "WHIZORCH_BOGUS": "x"}
    assert load_config(env=env) == WhizorchConfig()


@pytest.mark.parametrize(
    ("var", "text", "attr", "expected"),
    [
        ("WHIZORCH_ETCD_ENDPOINTS", "a:1, http://b:2,,", ("etcd", "endpoints"), ("a:1", "b:2")),
        ("WHIZORCH_ETCD_TIMEOUT_S", "2", ("etcd", "timeout_s"), 2.0),
        ("WHIZORCH_ETCD_TLS", "YES", ("etcd", "tls"), True),
        ("WHIZORCH_ETCD_CA_FILE", "", ("etcd", "ca_file"), None),
        ("WHIZORCH_CONSENSUS_KEEPALIVE_INTERVAL_S", " 1.5 ", ("consensus", "keepalive_interval_s"), 1.5),
        ("WHIZORCH_CONSENSUS_STEP_DOWN_MARGIN_S", "", ("consensus", "step_down_margin_s"), None),
        ("WHIZORCH_CONSENSUS_CONTACT_DEADLINE_S", "0", ("consensus", "contact_deadline_s"), 0.0),
        ("WHIZORCH_CONSENSUS_CONTACT_DEADLINE_S", "0.75", ("consensus", "contact_deadline_s"), 0.75),
        ("WHIZORCH_FAILOVER_MAX_RETRIES", "0", ("failover", "max_retries"), 0),
        ("WHIZORCH_FAILOVER_MAX_RETRIES", "", ("failover", "max_retries"), None),
        ("WHIZORCH_MONITORING_METRICS", "1", ("monitoring", "metrics"), True),
        ("WHIZORCH_MONITORING_METRICS", "On", ("monitoring", "metrics"), True),
        ("WHIZORCH_MONITORING_METRICS", "true", ("monitoring", "metrics"), True),
        ("WHIZORCH_MONITORING_TRACING", "off", ("monitoring", "tracing"), False),
        ("WHIZORCH_MONITORING_TRACING", "No", ("monitoring", "tracing"), False),
        ("WHIZORCH_MONITORING_TRACING", "FALSE", ("monitoring", "tracing"), False),
        ("WHIZORCH_MONITORING_METRICS_BIND", "[::1]:0", ("monitoring", "metrics_bind"), "[::1]:0"),
    ],
)
def test_env_strings_are_coerced(var: str, text: str, attr: tuple[str, str], expected: Any) -> None:
    """Environment strings become ints, floats, bools, lists, or None (empty) for optional fields."""
    cfg = load_config(env={var: text})
    assert getattr(getattr(cfg, attr[0]), attr[1]) == expected


def test_empty_env_value_clears_a_file_value(tmp_path: pathlib.Path) -> None:
    """An empty variable for an optional field overrides the file's value with None."""
    path = write(tmp_path, "[failover]\nmax_retries = 3\n")
    assert load_config(path, env={"WHIZORCH_FAILOVER_MAX_RETRIES": ""}).failover.max_retries is None


# -- errors: field, value and source ------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "text", "field", "value", "reason"),
    [
        ("WHIZORCH_CONSENSUS_LEASE_TTL_S", "0", "consensus.lease_ttl_s", 0, "whole number of seconds >= 1"),
        ("WHIZORCH_CONSENSUS_LEASE_TTL_S", "five", "consensus.lease_ttl_s", "five", "whole number"),
        ("WHIZORCH_CONSENSUS_LEASE_TTL_S", "5.5", "consensus.lease_ttl_s", "5.5", "whole number"),
        ("WHIZORCH_ETCD_TIMEOUT_S", "soon", "etcd.timeout_s", "soon", "must be a number"),
        ("WHIZORCH_ETCD_TIMEOUT_S", "-1", "etcd.timeout_s", -1.0, "> 0"),
        ("WHIZORCH_ETCD_TIMEOUT_S", "nan", "etcd.timeout_s", pytest.approx(float("nan"), nan_ok=True), "> 0"),
        ("WHIZORCH_ETCD_ENDPOINTS", "", "etcd.endpoints", (), "at least one"),
        ("WHIZORCH_ETCD_ENDPOINTS", "a:1,nohost", "etcd.endpoints", ("a:1", "nohost"), "host:port"),
        ("WHIZORCH_MONITORING_METRICS", "maybe", "monitoring.metrics", "maybe", "1/true/yes/on/0/false/no/off"),
        ("WHIZORCH_FAILOVER_POLICY", "nearest", "failover.policy", "nearest", "'closest' or 'score'"),
        ("WHIZORCH_FAILOVER_MAX_RETRIES", "-1", "failover.max_retries", -1, ">= 0"),
        ("WHIZORCH_FAILOVER_NO_REGION_TIMEOUT_S", "0", "failover.no_region_timeout_s", 0.0, "> 0"),
        ("WHIZORCH_MONITORING_METRICS_BIND", "9464", "monitoring.metrics_bind", "9464", "host:port"),
        ("WHIZORCH_MONITORING_METRICS_BIND", ":9464", "monitoring.metrics_bind", ":9464", "host:port"),
        ("WHIZORCH_MONITORING_METRICS_BIND", "h:65536", "monitoring.metrics_bind", "h:65536", "0-65535"),
        ("WHIZORCH_NAMESPACE", "ns/", "namespace", "ns/", "trailing '/'"),
        ("WHIZORCH_CONSENSUS_STEP_DOWN_MARGIN_S", "5", "consensus.step_down_margin_s", 5.0, "[0, TTL) = [0, 5)"),
        ("WHIZORCH_CONSENSUS_STEP_DOWN_MARGIN_S", "-0.1", "consensus.step_down_margin_s", -0.1, ">= 0"),
        ("WHIZORCH_CONSENSUS_STEP_DOWN_MARGIN_S", "4", "consensus.step_down_margin_s", 4.0, "keepalive_interval_s"),
        ("WHIZORCH_CONSENSUS_KEEPALIVE_INTERVAL_S", "0", "consensus.keepalive_interval_s", 0.0, "> 0"),
        ("WHIZORCH_CONSENSUS_KEEPALIVE_INTERVAL_S", "4", "consensus.keepalive_interval_s", 4.0,
         "shorter than TTL - step_down_margin_s = 4"),
        ("WHIZORCH_CONSENSUS_ETCD_HEARTBEAT_MS", "0", "consensus.etcd_heartbeat_ms", 0, ">= 1"),
        ("WHIZORCH_CONSENSUS_ETCD_ELECTION_MS", "499", "consensus.etcd_election_ms", 499, "5 * etcd_heartbeat_ms = 500"),
        ("WHIZORCH_CONSENSUS_ETCD_ELECTION_MS", "60000", "consensus.etcd_election_ms", 60000, "at most 50000"),
        ("WHIZORCH_CONSENSUS_CONTACT_DEADLINE_S", "0.01", "consensus.contact_deadline_s", 0.01, "0 (off) or at least 0.05"),
        ("WHIZORCH_CONSENSUS_CONTACT_DEADLINE_S", "-1", "consensus.contact_deadline_s", -1.0, ">= 0"),
    ],
)
def test_env_errors_name_field_value_and_variable(var: str, text: str, field: str, value: Any, reason: str) -> None:
    """A bad environment value is a ConfigError naming the field, the value and the variable."""
    err = error_of(**{var: text})
    assert err.field == field
    assert err.value == value
    assert err.source == var
    assert str(err).startswith(f"{field} = {err.value!r} (from {var}): ")
    assert reason in str(err)


@pytest.mark.parametrize(
    ("toml", "field", "value", "reason"),
    [
        ("[consensus]\nlease_ttl = 5\n", "consensus.lease_ttl", 5, "did you mean consensus.lease_ttl_s?"),
        ("[etcd]\nendpoint = 'a:1'\n", "etcd.endpoint", "a:1", "did you mean etcd.endpoints?"),
        ("[monitor]\nmetrics = true\n", "monitor", {"metrics": True}, "did you mean monitoring?"),
        ("[regions.eu]\nlatency = {}\n", "regions.eu.latency", {}, "did you mean regions.eu.latency_ms?"),
        ("[regions.eu]\nname = 'eu'\n", "regions.eu.name", "eu", "its table key"),
        ("[failover]\nzzz = 1\n", "failover.zzz", 1, "expected one of: policy, max_retries"),
        ("consensus = 5\n", "consensus", 5, "must be a table"),
        ("regions = ['eu']\n", "regions", ["eu"], "must be a table"),
        ("[regions]\neu = 5\n", "regions.eu", 5, "must be a table"),
        ("[consensus]\nlease_ttl_s = 5.0\n", "consensus.lease_ttl_s", 5.0, "whole number of seconds"),
        ("[consensus]\nlease_ttl_s = true\n", "consensus.lease_ttl_s", True, "whole number of seconds"),
        ("[consensus]\nlease_ttl_s = '5'\n", "consensus.lease_ttl_s", "5", "whole number of seconds"),
        ("[etcd]\ntimeout_s = '5'\n", "etcd.timeout_s", "5", "must be a number"),
        ("[etcd]\nendpoints = 2379\n", "etcd.endpoints", 2379, "host:port"),
        ("[etcd]\ncert_file = 'c.pem'\n", "etcd.cert_file", "c.pem", "needs etcd.key_file too"),
        ("[etcd]\nkey_file = 'k.pem'\n", "etcd.key_file", "k.pem", "needs etcd.cert_file too"),
        ("[etcd]\nusername = 'u'\n", "etcd.username", "u", "needs etcd.password too"),
        ("[etcd]\npassword = 'p'\n", "etcd.password", "<redacted>", "needs etcd.username too"),
        ("[etcd]\nusername = ''\npassword = 'p'\n", "etcd.username", "", "non-empty"),
        ("[monitoring]\nmetrics = 'yes'\n", "monitoring.metrics", "yes", "true or false"),
        ("[failover]\npolicy = 'random'\n", "failover.policy", "random", "'closest' or 'score'"),
        ("[failover]\nmax_retries = 1.5\n", "failover.max_retries", 1.5, ">= 0"),
        ("namespace = ''\n", "namespace", "", "non-empty"),
        ("[regions.eu]\nlatency_ms = { xx = 30 }\n", "regions.eu.latency_ms.xx", 30.0,
         "'xx' is not a configured region (configured: eu)"),
        ("[regions.eu]\nlatency_ms = { eu = -1 }\n", "regions.eu.latency_ms.eu", -1, ">= 0"),
        ("[regions.eu]\nlatency_ms = 5\n", "regions.eu.latency_ms", 5, "must be a table"),
        ("[regions.eu]\ncost = -1\n", "regions.eu.cost", -1, ">= 0"),
        ("[regions.eu]\ncompliance = 'gdpr'\n", "regions.eu.compliance", "gdpr", "list of non-empty strings"),
        ("[regions.eu]\nendpoints = ['eu-etcd']\n", "regions.eu.endpoints", ["eu-etcd"], "host:port"),
        ("[regions.'e/u']\ncost = 1\n", "regions", "e/u", "without '/'"),
        ("[consensus]\nlease_ttl_s = 3\nkeepalive_interval_s = 2.5\n", "consensus.keepalive_interval_s", 2.5,
         "shorter than TTL - step_down_margin_s = 2.4"),
    ],
)
def test_file_errors_name_field_value_and_file(
    tmp_path: pathlib.Path, toml: str, field: str, value: Any, reason: str
) -> None:
    """A bad file value (type, range, unknown key with a suggestion, cross-field) names field, value and file."""
    path = write(tmp_path, toml)
    err = error_of(path)
    assert err.field == field
    assert err.value == value
    assert err.source == str(path)
    assert str(err).startswith(f"{field} = {value!r} (from {path}): ")
    assert reason in str(err)


def test_cross_field_error_on_a_default_says_default() -> None:
    """A default made invalid by another field's value is reported as '(default)' with the rule."""
    err = error_of(WHIZORCH_CONSENSUS_ETCD_HEARTBEAT_MS="300")
    assert err.field == "consensus.etcd_election_ms" and err.source == "default"
    assert str(err) == "consensus.etcd_election_ms = 1000 (default): etcd needs >= 5 * etcd_heartbeat_ms = 1500"


def test_toml_syntax_error_names_file_and_line(tmp_path: pathlib.Path) -> None:
    """A TOML syntax error is a ConfigError naming the file and the line."""
    path = write(tmp_path, '[etcd]\ntimeout_s = 5\nendpoints = [\n"a:1" "b:2"]\n')
    err = error_of(path)
    assert err.field == "path" and err.value == str(path)
    assert "not valid TOML" in str(err) and str(path) in str(err)
    assert err.line == 4 and "line 4" in str(err)


def test_undecodable_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """A file that is not UTF-8 is a ConfigError naming it, not a UnicodeDecodeError."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b"namespace = '\xff'\n")
    err = error_of(path)
    assert err.value == str(path) and "not valid TOML" in str(err)


def test_missing_file_names_the_path_and_where_it_came_from(tmp_path: pathlib.Path) -> None:
    """A missing file names its path, and WHIZORCH_CONFIG when that variable named it."""
    missing = tmp_path / "nope.toml"
    err = error_of(missing)
    assert err.field == "path" and err.value == str(missing) and str(missing) in str(err)
    err = error_of(WHIZORCH_CONFIG=str(missing))
    assert err.field == "WHIZORCH_CONFIG" and str(err).startswith(f"WHIZORCH_CONFIG = {str(missing)!r}")
    assert isinstance(err, ValueError)


def test_password_is_never_shown(tmp_path: pathlib.Path) -> None:
    """The etcd password appears neither in repr nor in an error message."""
    cfg = load_config(env={"WHIZORCH_ETCD_USERNAME": "u", "WHIZORCH_ETCD_PASSWORD": "s3cret"})
    assert cfg.etcd.password == "s3cret"
    assert "s3cret" not in repr(cfg)
    path = write(tmp_path, "[etcd]\nusername = 'u'\npassword = 12345\n")
    err = error_of(path)
    assert err.field == "etcd.password" and "12345" not in str(err) and err.value == "<redacted>"


def test_direct_construction_validates_without_a_source() -> None:
    """Built in code, the objects validate the same way; the message has no source."""
    with pytest.raises(ConfigError) as info:
        ConsensusConfig(lease_ttl_s=0)
    assert str(info.value) == "consensus.lease_ttl_s = 0: must be a whole number of seconds >= 1"
    assert info.value.source is None
    with pytest.raises(ConfigError, match=r"regions\.eu = 'eu': is configured twice"):
        WhizorchConfig(regions=(RegionConfig(name="eu"), RegionConfig(name="eu")))
    with pytest.raises(ConfigError, match="must be a ConsensusConfig"):
        WhizorchConfig(consensus=FailoverConfig())  # type: ignore[arg-type]


def test_objects_are_frozen_normalised_and_hashable() -> None:
    """Config objects are immutable, normalise lists/ints, and can be hashed."""
    region = RegionConfig(name="eu", endpoints=["a:1"], latency_ms={"us": 5}, cost=1,  # type: ignore[arg-type]
                          compliance=["gdpr"])  # type: ignore[arg-type]
    assert region.endpoints == ("a:1",) and region.compliance == ("gdpr",) and region.cost == 1.0
    assert region.latency_ms == {"us": 5.0}
    with pytest.raises(TypeError):
        region.latency_ms["us"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        region.cost = 2.0  # type: ignore[misc]
    assert hash(region) == hash(RegionConfig(name="eu", endpoints=("a:1",), cost=1.0, compliance=("gdpr",)))
    assert EtcdSection(endpoints="a:1, b:2").endpoints == ("a:1", "b:2")  # type: ignore[arg-type]


# -- building the other layers' objects ---------------------------------------------------


def test_etcd_config_puts_the_regions_endpoints_first(tmp_path: pathlib.Path) -> None:
    """etcd_config(region) tries that region's endpoints first, then the rest, without duplicates."""
    cfg = load_config(write(tmp_path, FULL_TOML), env={})
    assert cfg.etcd_config().endpoints == ("10.0.1.10:2379", "10.0.2.10:2379", "10.0.3.10:2379")
    assert cfg.etcd_config("us").endpoints == ("10.0.2.10:2379", "10.0.1.10:2379", "10.0.3.10:2379")
    section = EtcdSection(endpoints=("a:1", "b:2"))
    assert section.etcd_config(["c:3", "b:2", "c:3"]).endpoints == ("c:3", "b:2", "a:1")
    with pytest.raises(ConfigError, match=r"region = 'mars': is not a configured region \(configured: eu, us, ap\)") as info:
        cfg.etcd_config("mars")
    assert info.value.field == "region"


def test_etcd_config_carries_tls_auth_and_timeout(tmp_path: pathlib.Path) -> None:
    """etcd_config builds TLSConfig/AuthConfig only when configured, and passes timeout_s."""
    cfg = load_config(write(tmp_path, FULL_TOML), env={})
    built = cfg.etcd_config("eu")
    assert isinstance(built, EtcdConfig) and built.timeout_s == 5.0
    assert built.tls is not None and built.tls.ca_file == "/etc/whizorch/ca.pem"
    assert built.tls.cert_file == "/etc/whizorch/client.pem" and built.tls.key_file == "/etc/whizorch/client-key.pem"
    assert built.auth is not None and (built.auth.username, built.auth.password) == ("whizorch", "change-me")
    plain = EtcdSection(timeout_s=2).etcd_config()
    assert plain.tls is None and plain.auth is None and plain.timeout_s == 2.0
    assert EtcdSection(tls=True).etcd_config().tls is not None


def test_router_gets_the_latency_matrix_and_policy(tmp_path: pathlib.Path) -> None:
    """router() has every region's latencies (both ways) and the failover policy."""
    cfg = load_config(write(tmp_path, FULL_TOML), env={"WHIZORCH_FAILOVER_POLICY": "score"})
    router = cfg.router(home_region="eu")
    assert isinstance(router, Router)
    assert router.failover_policy == "score" and router.home_region == "eu"
    assert router.latency_ms("eu", "us") == 85 and router.latency_ms("us", "eu") == 85
    assert router.latency_ms("us", "ap") == 110 and router.latency_ms("ap", "eu") == 160


def test_closest_failover_uses_the_configured_latencies(tmp_path: pathlib.Path) -> None:
    """With policy 'closest', a step in a dead region moves to the lowest-latency healthy region."""
    async def debit(ctx: Any, value: Any) -> None:
        return None

    saga = Saga("transfer")
    saga.step(debit)
    step = saga.spec.steps[0]
    router = load_config(write(tmp_path, FULL_TOML), env={}).router()
    router.update({name: RegionInfo(name=name) for name in ("us", "ap")})
    assert router.failover(step, failed="eu") == "us"
    router.update({"ap": RegionInfo(name="ap")})
    assert router.failover(step, failed="us") == "ap"


def test_settings_gets_the_timeout_and_failover_cap() -> None:
    """settings() passes no_region_timeout_s and max_retries (as max_failovers) to the saga machine."""
    cfg = load_config(env={"WHIZORCH_FAILOVER_MAX_RETRIES": "2", "WHIZORCH_FAILOVER_NO_REGION_TIMEOUT_S": "12"})
    settings = cfg.settings()
    assert isinstance(settings, Settings)
    assert settings.no_region_timeout_s == 12.0 and settings.max_failovers == 2
    assert load_config(env={}).settings().max_failovers is None


@pytest.mark.parametrize(
    ("consensus", "ttl", "margin", "interval"),
    [
        (ConsensusConfig(), 5, 1.0, 5 / 3),
        (ConsensusConfig(lease_ttl_s=6, keepalive_interval_s=2.0, step_down_margin_s=1.0), 6, 1.0, 2.0),
        (ConsensusConfig(lease_ttl_s=1, step_down_margin_s=0), 1, 0.0, 1 / 3),
    ],
)
def test_lease_builds_a_session(consensus: ConsensusConfig, ttl: int, margin: float, interval: float) -> None:
    """``lease`` is the checked LeaseTiming, taken whole by whizorch.coord.Session."""
    assert isinstance(consensus.lease, LeaseTiming)
    session = Session(EtcdClient(EtcdConfig(endpoints="127.0.0.1:2379")), timing=consensus.lease)
    assert session.ttl_s == ttl
    assert session.step_down_margin_s == pytest.approx(margin)
    assert session.keepalive_interval_s == pytest.approx(interval)


def test_local_cluster_kwargs() -> None:
    """local_cluster_kwargs() gives LocalEtcdCluster's heartbeat_ms and election_ms."""
    cfg = ConsensusConfig(etcd_heartbeat_ms=50, etcd_election_ms=250)
    assert cfg.local_cluster_kwargs() == {"heartbeat_ms": 50, "election_ms": 250}


def test_public_names() -> None:
    """whizorch.config exports a sorted, pinned __all__."""
    assert whizorch.config.__all__ == [
        "ConsensusConfig", "EtcdSection", "FailoverConfig", "MonitoringConfig", "RegionConfig",
        "WhizorchConfig", "load_config",
    ]
