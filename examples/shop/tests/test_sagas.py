"""The shop's order saga against a real etcd (the whizorch pytest plugin starts it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from whizorch import EtcdClient
from whizorch.errors import FencedError
from whizorch.saga import Orchestrator, SagaClient, StepContext, Worker

from shop import ledger
from shop.sagas import app, order

ORDER = {"sku": "book", "qty": 1, "account": "alice", "amount": 30, "country": "fr"}


@pytest.fixture
async def sagas(etcd_endpoints: list[str], tmp_path, monkeypatch) -> AsyncIterator[SagaClient]:
    """A worker per region and an orchestrator in this process, on the plugin's etcd,
    in a namespace of this test's own; a SagaClient to submit with."""
    monkeypatch.setenv("SHOP_DB", str(tmp_path / "shop.db"))
    ns = f"shop-test-{uuid.uuid4().hex[:8]}"
    async with EtcdClient(etcd_endpoints) as etcd:
        async with (
            # workers first: the leader then sees both regions from its start (region= is a
            # preference: a step whose region has no worker yet would run in the other)
            Worker(etcd, app, region="eu", namespace=ns, lease_ttl_s=2),
            Worker(etcd, app, region="us", namespace=ns, lease_ttl_s=2),
            Orchestrator(etcd, app, namespace=ns, lease_ttl_s=2) as leader,
            SagaClient(etcd, namespace=ns) as client,
        ):
            await leader.wait_leader(timeout_s=10)
            yield client
        await etcd.delete(ns + "/", prefix=True)
        await etcd.delete("shop/", prefix=True)


async def test_an_order_completes_across_two_regions(sagas: SagaClient) -> None:
    """reserve and ship run in eu, charge in us; each step's output is kept."""
    result = await sagas.execute(order, ORDER, saga_id="o-1", timeout_s=30)
    assert result.status == "completed"
    assert result.regions == ["eu", "us"]
    assert result.outputs["charge"] == {"charged": 30, "balance": 70}
    assert result.outputs["ship"]["from"] == "shop/reservations/o-1"


async def test_a_transient_failure_is_retried(sagas: SagaClient) -> None:
    """The inventory times out once; Retry runs reserve again and the order completes."""
    result = await sagas.execute(order, {**ORDER, "flaky": True}, saga_id="o-2", timeout_s=30)
    assert result.status == "completed"
    reserve = result.record.steps[0]
    assert (reserve.run, reserve.failures) == (2, 1)


async def test_a_failed_shipment_refunds_and_releases(sagas: SagaClient) -> None:
    """ship fails for good: charge is refunded and reserve released, in reverse order."""
    result = await sagas.execute(order, {**ORDER, "country": "mars"}, saga_id="o-3", timeout_s=30,
                                 raise_on_failure=False)
    assert result.status == "compensated"
    assert "no carrier ships to 'mars'" in result.error
    assert [s.state for s in result.record.steps] == ["compensated", "compensated", "failed"]
    assert ledger.balance("alice") == ledger.OPENING_BALANCE


def test_a_stale_run_of_charge_changes_nothing(tmp_path, monkeypatch) -> None:
    """A run whose token is older than one that already acted is refused (a handler tested alone, no etcd)."""
    monkeypatch.setenv("SHOP_DB", str(tmp_path / "shop.db"))

    def run(token: int) -> StepContext:
        return StepContext(
            saga_id="o-4", transaction_id=1, saga="order", step="charge", step_index=1, attempt=1, region="us",
            compensating=False, idempotency_key="o-4:charge", outputs={}, fence_token=token,
        )

    assert ledger.charge(run(20), "bob", 30) == 70  # the newer run acts
    with pytest.raises(FencedError):
        ledger.charge(run(10), "bob", 30)  # the stale one wakes up later
    assert ledger.charge(run(30), "bob", 30) == 70  # a retry of the step charges once
