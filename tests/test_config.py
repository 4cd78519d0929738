"""EtcdConfig / TLSConfig / AuthConfig validation (no etcd needed)."""

from __future__ import annotations

import pytest

from whizorch import AuthConfig, ConfigError, EtcdConfig, TLSConfig


def test_endpoints_parse_strings_and_schemes() -> None:
    """Comma-separated endpoints with or without schemes normalise to host:port."""
    cfg = EtcdConfig(endpoints="http://127.0.0.1:2379, https://h:2380/")
    assert cfg.endpoints == ("127.0.0.1:2379", "h:2380")


@pytest.mark.parametrize("bad", ["", "nohost", "h:notaport", "h:0", ["127.0.0.1:1", 5]])
def test_bad_endpoints_name_the_field(bad) -> None:  # type: ignore[no-untyped-def]
    """Malformed endpoints raise ConfigError naming 'endpoints' and the bad value."""
    with pytest.raises(ConfigError, match="endpoints") as info:
        EtcdConfig(endpoints=bad)
    assert info.value.field == "endpoints"


@pytest.mark.parametrize("field", ["timeout_s", "connect_timeout_s", "retry_deadline_s"])
@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_durations_must_be_positive(field, value) -> None:  # type: ignore[no-untyped-def]
    """Durations must be positive numbers; the error names the field."""
    with pytest.raises(ConfigError, match=field):
        EtcdConfig(endpoints="127.0.0.1:2379", **{field: value})


def test_config_is_frozen() -> None:
    """Config objects are immutable."""
    cfg = EtcdConfig(endpoints="127.0.0.1:2379")
    with pytest.raises(AttributeError):
        cfg.timeout_s = 1  # type: ignore[misc]


def test_tls_needs_cert_and_key_together() -> None:
    """mTLS needs both cert_file and key_file."""
    with pytest.raises(ConfigError, match="key_file"):
        TLSConfig(cert_file="c.pem")


def test_tls_missing_file_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An unreadable CA file is a ConfigError naming tls.ca_file."""
    with pytest.raises(ConfigError, match="tls.ca_file"):
        TLSConfig(ca_file=str(tmp_path / "missing.pem")).credentials_bytes()


def test_password_is_not_in_repr() -> None:
    """AuthConfig never shows the password."""
    assert "s3cret" not in repr(AuthConfig(username="u", password="s3cret"))
    with pytest.raises(ConfigError, match="auth.username"):
        AuthConfig(username="", password="x")


def test_from_env(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """WHIZORCH_ETCD_ENDPOINTS feeds EtcdConfig.from_env."""
    monkeypatch.setenv("WHIZORCH_ETCD_ENDPOINTS", "127.0.0.1:1,127.0.0.1:2")
    assert EtcdConfig.from_env().endpoints == ("127.0.0.1:1", "127.0.0.1:2")
