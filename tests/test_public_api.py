"""The public face of whizorch: what is exported, and that lower layers never import higher ones."""

from __future__ import annotations

import ast
import pathlib

import whizorch
import whizorch.coord
import whizorch.etcd

PKG = pathlib.Path(whizorch.__file__).parent


def _sorted_like_ruff(names: list[str]) -> list[str]:
    """The order ruff keeps ``__all__`` in (RUF022): CONSTANTS, then Classes, then
    functions, each alphabetical."""
    return sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))


def test_top_level_all_is_pinned_and_sorted() -> None:
    """whizorch.__all__ is sorted, complete and every name resolves: the primitives,
    the errors (SagaFailedError too) and the saga names users reach for first."""
    expected = [
        "App", "AuthConfig", "AuthError", "ClosedError", "CompactedError", "Compare", "ConfigError",
        "ConflictError", "CoordinationError", "DecodeError", "Election", "EtcdClient", "EtcdConfig",
        "EtcdError", "EtcdUnavailableError", "EventType", "Fence", "FencedError", "GlobalIds",
        "KeyValue", "LeaderInfo", "LeaseNotFoundError", "LeaseTiming", "Lock", "LockTimeoutError",
        "NoSpaceError", "NotOwnerError", "Op", "Orchestrator", "OutcomeUnknownError", "QuorumError",
        "RequestTooLargeError", "Retry", "Saga", "SagaClient", "SagaFailedError", "SagaHandle",
        "SagaResult", "Session", "SessionLostError", "StepContext", "TLSConfig", "Versioned",
        "VersionedStore", "WatchEvent", "WhizorchError", "Worker", "fenced_txn", "has_quorum",
        "propose_value",
    ]
    assert whizorch.__all__ == expected
    assert sorted(whizorch.__all__) == whizorch.__all__
    for name in whizorch.__all__:
        assert getattr(whizorch, name) is not None


def test_saga_and_etcd_exports_are_pinned() -> None:
    """whizorch.saga and whizorch.etcd export what crosses packages (the key layout,
    the listing, the batcher, the events and hooks), so no package imports another's
    underscore modules."""
    import whizorch.saga

    assert whizorch.saga.__all__ == [
        "FINAL_STATUSES", "SAGA_ID", "STATUSES", "App", "CallNext", "ContactRestored", "EventKind",
        "InputQuarantined", "Keys", "LeadershipChanged", "LeadershipObserver", "Listing", "Middleware",
        "MiddlewareContext", "Orchestrator", "OrchestratorEvent", "RaftLeaderMoved", "RegionInfo",
        "RegionPreferenceUnmet", "RegionsHealthy", "Retry", "RoleObserver", "Router", "SafeModeEntered",
        "Saga", "SagaAdopted", "SagaClient", "SagaEvent", "SagaFinished", "SagaHandle", "SagaPage",
        "SagaPurged", "SagaRecord", "SagaResult", "SagaSummary", "Settings", "Step", "StepContext",
        "StepFailedOver", "StepKind", "StepState", "Submission", "SubmissionPayload", "Submitted",
        "Weights", "Worker", "capabilities", "fenced_txn", "is_transient", "latency_doc", "leader_summary", "leaders_of",
        "live_definitions", "quarantine_notes", "read_many", "scan_sagas", "shard_of", "summarize_cluster",
        "summarize_definitions", "summarize_regions", "summarize_shards", "tasks_by_region",
        "workers_by_region",
    ]
    assert whizorch.etcd.__all__ == [
        "AuthConfig", "BatchRefused", "CallObserver", "CallTiming", "Compare", "DeleteResult",
        "EtcdClient", "EtcdConfig", "EventType", "Header", "KeyLike", "KeyValue", "LeaseInfo", "Member",
        "Op", "Page", "PermType", "Permission", "PutResult", "RangeResult", "Status", "TLSConfig",
        "TxnBatcher", "TxnResult", "Watch", "WatchEvent", "key_bytes", "parse_endpoints", "prefix_end",
        "to_bytes", "version_warning",
    ]


def test_layer_all_lists_are_sorted() -> None:
    """Each layer's __all__ is sorted (as ruff keeps it) and resolves."""
    import whizorch.observe
    import whizorch.saga

    for mod in (whizorch.etcd, whizorch.coord, whizorch.saga, whizorch.observe):
        assert _sorted_like_ruff(mod.__all__) == mod.__all__
        for name in mod.__all__:
            getattr(mod, name)


def test_no_package_imports_another_packages_private_modules() -> None:
    """What crosses packages goes through a package's exports (or a public module such
    as whizorch.etcd.auth): no module imports an underscore module of another package."""
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        if "_proto" in rel:
            continue
        own = rel[0] if len(rel) > 1 else None
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "whizorch" and len(parts) >= 3 and parts[2].startswith("_") and parts[1] != own:
                bad.append(f"{path.relative_to(PKG)} -> {module}")
    # the demo and the CLI are one top layer: the demo command and the console the demo starts
    assert sorted(bad) == ["cli/_demo.py -> whizorch.demo._saga_demo", "demo/_console.py -> whizorch.cli._console_cmd"]


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
    """etcd <- coord <- saga <- config <- observe <- cli, console, demo: no layer imports a higher one; testing/ uses the adapter only."""
    upper = ("whizorch.cli", "whizorch.console", "whizorch.demo", "whizorch.testing")
    forbidden = {
        "etcd": ("whizorch.coord", "whizorch.saga", "whizorch.observe", "whizorch.config", *upper),
        "coord": ("whizorch.saga", "whizorch.observe", "whizorch.config", *upper),
        "saga": ("whizorch.observe", "whizorch.config", *upper),
        "observe": upper,
        "config": ("whizorch.observe", *upper),
        "testing": ("whizorch.coord", "whizorch.saga", "whizorch.observe", "whizorch.config", "whizorch.cli"),
        "console": ("whizorch.cli", "whizorch.demo", "whizorch.testing"),
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
