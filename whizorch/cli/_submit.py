"""``whizorch sagas submit`` and ``whizorch sagas cancel``: the two writes an operator needs.

``submit`` needs no App: it writes the submission (idempotent per ``--id``) and the
leader adopts it if its App knows the type; ``--wait`` follows it to its outcome.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from whizorch.cli._inspect import Target, _run, sagas, target_options
from whizorch.config import WhizorchConfig
from whizorch.saga import SagaClient


def _input(text: str) -> Any:
    """``--input``: JSON text, or ``@file`` holding JSON."""
    if text.startswith("@"):
        try:
            with open(text[1:]) as fh:
                text = fh.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]!r}: {exc.strerror}", param_hint="--input") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None


@sagas.command("submit")
@click.argument("saga_type")
@click.option("--input", "input_text", default="null", show_default=True, help="the saga's input: JSON, or @FILE holding JSON")
@click.option(
    "--id", "saga_id", default=None,
    help="saga id (default: generated); the same id with the same input again is the same saga, with another input an error",
)
@click.option("--wait/--no-wait", default=False, help="wait for the outcome (exit 1 unless it completed)")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="with --wait: seconds to wait")
@target_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def submit(
    saga_type: str, input_text: str, saga_id: str | None, wait: bool, timeout_s: float, target: WhizorchConfig,
    as_json: bool,
) -> None:
    """Submit a saga of SAGA_TYPE; print its id and transaction id (and, with --wait, the
    outcome and the completed steps' outputs).

    \b
    --json prints {"saga_id", "saga", "txid"} and, with --wait,
    {"status", "regions", "failovers", "outputs", "error"} too.
    """
    value = _input(input_text)

    async def body(t: Target) -> dict[str, Any]:
        async with SagaClient(t.client, namespace=t.keys.ns) as client:
            handle = await client.submit(saga_type, value, saga_id=saga_id)
            doc: dict[str, Any] = {"saga_id": handle.saga_id, "saga": handle.saga, "txid": handle.txid}
            if wait:
                try:
                    result = await handle.result(timeout_s=timeout_s, raise_on_failure=False)
                except TimeoutError:
                    doc.update(status="unfinished", regions=[], failovers=[], outputs={}, error=(
                        f"not finished within {timeout_s:g}s; it goes on (whizorch sagas show {handle.saga_id})"
                    ))
                    return doc
                doc.update(
                    status=result.status, regions=result.regions, failovers=result.failovers,
                    outputs=result.outputs, error=result.error,
                )
            return doc

    doc = _run(target, body)
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        click.echo(f"submitted {doc['saga']} {doc['saga_id']} (txid {doc['txid']})")
        if wait:
            route = " -> ".join(doc["regions"]) or "-"
            click.echo(f"{doc['status']}: regions {route}, {len(doc['failovers'])} failovers" + (
                f"; {doc['error']}" if doc["error"] else ""
            ))
            if doc["outputs"]:
                click.echo(f"outputs: {json.dumps(doc['outputs'], ensure_ascii=False, default=str)}")
    if wait and doc["status"] != "completed":
        sys.exit(1)


@sagas.command("cancel")
@click.argument("saga_id")
@target_options
def cancel(saga_id: str, target: WhizorchConfig) -> None:
    """Ask the leader to cancel SAGA_ID: its completed steps are compensated. Idempotent."""

    async def body(t: Target) -> bool:
        async with SagaClient(t.client, namespace=t.keys.ns) as client:
            rec = await client.get(saga_id)
            if rec is not None and rec.is_final:
                return False
            await client.cancel(saga_id)
            return True

    if _run(target, body):
        click.echo(f"cancel requested for {saga_id}")
    else:
        click.echo(f"whizorch: saga {saga_id!r} has already finished; nothing to cancel", err=True)
        sys.exit(1)
