"""The public face of whizorch: what is exported, and that lower layers never import higher ones."""

from __future__ import annotations

import ast
import pathlib

import whizorch
import whizorch.coord
import whizorch.etcd

PKG = pathlib.Path(whizorch.__file__).parent


def test_top_level_all_is_pinned_and_sorted() -> None:
    """whizorch.__all__ is sorted, complete and every name resolves."""
    expected = [
        "AuthConfig", "AuthError", "ClosedError", "CompactedError", "Compare", "ConfigError",
        "ConflictError", "CoordinationError", "DecodeError", "Election", "EtcdClient", "EtcdConfig",
        "EtcdError", "EtcdUnavailableError", "EventType", "Fence", "FencedError", "GlobalIds",
        "KeyValue", "LeaderInfo", "LeaseNotFoundError", "Lock", "LockTimeoutError",
        "NoSpaceError", "NotOwnerError", "Op", "OutcomeUnknownError", "QuorumError",
        "RequestTooLargeError", "Session", "SessionLostError", "TLSConfig", "Versioned",
        "VersionedStore", "WatchEvent", "WhizorchError", "has_quorum", "propose_value",
    ]
    assert whizorch.__all__ == expected
    assert sorted(whizorch.__all__) == whizorch.__all__
    for name in whizorch.__all__:
        assert getattr(whizorch, name) is not None


def test_layer_all_lists_are_sorted() -> None:
    """Each layer's __all__ is sorted and resolves."""
    import whizorch.observe
    import whizorch.saga

    for mod in (whizorch.etcd, whizorch.coord, whizorch.saga, whizorch.observe):
        assert sorted(mod.__all__) == mod.__all__
        for name in mod.__all__:
            getattr(mod, name)


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_layers_import_one_way() -> None:
    """etcd <- coord <- saga <- config <- observe <- cli, demo: no layer imports a higher one; testing/ uses the adapter only."""
    upper = ("whizorch.cli", "whizorch.demo", "whizorch.testing")
    forbidden = {
        "etcd": ("whizorch.coord", "whizorch.saga", "whizorch.observe", "whizorch.config", *upper),
        "coord": ("whizorch.saga", "whizorch.observe", "whizorch.config", *upper),
        "saga": ("whizorch.observe", "whizorch.config", *upper),
        "observe": upper,
        "config": ("whizorch.observe", *upper),
        "testing": ("whizorch.coord", "whizorch.saga", "whizorch.observe", "whizorch.config", "whizorch.cli"),
    }
    for layer, banned in forbidden.items():
        for path in (PKG / layer).rglob("*.py"):
            if "_proto" in path.parts:
                continue
            bad = [m for m in _imports(path) if m.startswith(banned)]
            assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_package_is_typed() -> None:
    """The package ships py.typed."""
    assert (PKG / "py.typed").exists()
