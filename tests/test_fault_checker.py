"""The fault suite's checker (``integration/fault/checker.py``) on hand-made histories:
a correct one passes, and one breaking each invariant is caught, naming the sagas."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

# the checker lives with the suite (integration/fault, imported there as `fault`); it is
# pure, so these unit tests import it from here without etcd
_INTEGRATION = str(Path(__file__).resolve().parents[1] / "integration")
if _INTEGRATION not in sys.path:
    sys.path.append(_INTEGRATION)
checker: Any = importlib.import_module("fault.checker")

Transfer, Effect, Attempt = checker.Transfer, checker.Effect, checker.Attempt
RunResult, RolesSnapshot, RoleExit = checker.RunResult, checker.RolesSnapshot, checker.RoleExit

DONE = Transfer("t1", "transfer-eu-us", "a", "b", 10, "completed")
UNDONE = Transfer("t2", "transfer-us-ap", "a", "c", 5, "compensated")


def good() -> Any:
    """t1 completed (debit, credit); t2 compensated (debit, credit frozen, refund)."""
    effects = [
        Effect("t1", "debit", "a", -10, token=10, revision=12),
        Effect("t1", "credit", "b", 10, token=20, revision=22),
        Effect("t2", "debit", "a", -5, token=30, revision=31),
        Effect("t2", "refund", "a", 5, token=50, revision=52),
    ]
    attempts = [
        Attempt("t1", "debit", "start", 10), Attempt("t1", "debit", "committed", 10, revision=12),
        Attempt("t1", "credit", "start", 20), Attempt("t1", "credit", "committed", 20, revision=22),
        Attempt("t2", "debit", "start", 30), Attempt("t2", "debit", "committed", 30, revision=31),
        Attempt("t2", "credit", "start", 40), Attempt("t2", "credit", "frozen", 40),
        Attempt("t2", "refund", "start", 50), Attempt("t2", "refund", "committed", 50, revision=52),
    ]
    results = [
        RunResult("t1", 0, "run", 1, 10, True), RunResult("t1", 1, "run", 1, 20, True),
        RunResult("t2", 0, "run", 1, 30, True), RunResult("t2", 1, "run", 1, 40, False),
        RunResult("t2", 0, "compensate", 1, 50, True),
    ]
    return checker.History(
        transfers=[DONE, UNDONE],
        initial={"a": 100, "b": 100, "c": 100},
        balances={"a": 90, "b": 110, "c": 100},
        statuses={"t1": "completed", "t2": "compensated"},
        effects=effects,
        attempts=attempts,
        results=results,
        roles=RolesSnapshot(
            live_workers={"eu": 2, "us": 2}, registrations={"eu": 2, "us": 2}, leader="o1",
            candidates=2, live_orchestrators=2,
        ),
    )


def found(history: Any) -> list[tuple[str, tuple[str, ...]]]:
    return [(v.invariant, v.saga_ids) for v in checker.check(history)]


def test_a_correct_history_passes() -> None:
    """Completed and compensated sagas whose effects, balances and fences agree."""
    assert checker.check(good()) == []


def test_a_compensated_saga_may_have_no_effect_at_all() -> None:
    """A compensated saga whose debit never happened (nothing to refund) is correct."""
    h = good()
    h.effects = [e for e in h.effects if e.saga_id != "t2"]
    h.attempts = [a for a in h.attempts if a.saga_id != "t2"]
    h.balances = {"a": 90, "b": 110, "c": 100}
    assert checker.check(h) == []


def test_lost_stuck_and_wrong_outcomes_are_caught() -> None:
    """No record at all (lost), not final (stuck), final but not as designed."""
    h = good()
    h.statuses = {"t1": "running"}
    assert ("outcome", ("t1",)) in found(h) and ("outcome", ("t2",)) in found(h)
    h.statuses = {"t1": "compensated", "t2": "compensated"}
    assert ("outcome", ("t1",)) in found(h)
    h.statuses = {"t1": "completed", "t2": "pending"}
    assert [v.message for v in checker.check_outcomes(h.transfers, h.statuses)] == ["1 saga(s) stuck: t2 (pending)"]


def test_money_created_or_destroyed_breaks_conservation() -> None:
    """The balances no longer sum to the initial total, or an account vanished."""
    h = good()
    h.balances = {**h.balances, "c": 101}
    assert ("conservation", ()) in found(h)
    h.balances = {"a": 90, "b": 110}
    assert {inv for inv, _ in found(h)} >= {"conservation", "ledger"}


def test_balances_that_disagree_with_the_effects_break_the_ledger() -> None:
    """Money moved without an effect key (the sum still holds): caught per account."""
    h = good()
    h.balances = {"a": 91, "b": 109, "c": 100}
    assert found(h) == [("ledger", ())]


def test_a_completed_saga_needs_debit_and_credit_exactly() -> None:
    """Completed without its credit, or with a refund too."""
    h = good()
    h.effects = [e for e in h.effects if (e.saga_id, e.name) != ("t1", "credit")]
    h.balances = {"a": 90, "b": 100, "c": 100}
    h.initial = {"a": 100, "b": 90, "c": 100}
    assert ("exactly-once", ("t1",)) in found(h)
    h = good()
    h.effects.append(Effect("t1", "refund", "a", 10, token=60, revision=61))
    h.balances = {"a": 100, "b": 110, "c": 90}
    h.initial = {"a": 100, "b": 100, "c": 100}
    assert ("exactly-once", ("t1",)) in found(h)


def test_a_compensated_saga_must_not_keep_a_credit_or_lose_its_refund() -> None:
    """Compensated with the credit applied, or with the debit but no refund."""
    h = good()
    h.effects.append(Effect("t2", "credit", "c", 5, token=40, revision=41))
    h.balances = {"a": 90, "b": 110, "c": 105}  # the ledger agrees; the money is not conserved
    assert ("exactly-once", ("t2",)) in found(h)
    h = good()
    h.effects = [e for e in h.effects if (e.saga_id, e.name) != ("t2", "refund")]
    h.attempts = [a for a in h.attempts if (a.saga_id, a.name) != ("t2", "refund")]
    h.balances = {"a": 85, "b": 110, "c": 100}
    assert ("exactly-once", ("t2",)) in found(h)


def test_an_effect_on_the_wrong_account_or_amount_is_caught() -> None:
    """The debit took another amount than the transfer's."""
    h = good()
    h.effects[0] = dataclasses.replace(h.effects[0], delta=-11)
    h.balances = {"a": 89, "b": 110, "c": 100}
    assert ("exactly-once", ("t1",)) in found(h)


def test_an_effect_reported_committed_twice_is_caught() -> None:
    """Two runs both report committing the same effect, or one commits without a key."""
    h = good()
    h.attempts.append(Attempt("t1", "debit", "committed", 15, revision=17))
    h.results.append(RunResult("t1", 0, "run", 2, 15, True))
    assert ("twice", ("t1",)) in found(h)
    h = good()
    h.effects = [e for e in h.effects if (e.saga_id, e.name) != ("t2", "refund")]
    h.balances = {"a": 85, "b": 110, "c": 100}
    h.initial = {"a": 95, "b": 100, "c": 100}
    assert ("twice", ("t2",)) in found(h)


def test_an_effect_committed_after_a_later_run_claimed_the_step_is_stale() -> None:
    """Token 10's debit lands at revision 45, after run 2 (token 40) claimed the step."""
    h = good()
    h.effects[0] = dataclasses.replace(h.effects[0], revision=45)
    h.attempts[1] = dataclasses.replace(h.attempts[1], revision=45)
    h.attempts.append(Attempt("t1", "debit", "start", 40, attempt=2))
    h.attempts.append(Attempt("t1", "debit", "duplicate", 40, attempt=2))
    stale = [v for v in checker.check(h) if v.invariant == "stale"]
    assert stale and all(v.saga_ids == ("t1",) for v in stale)
    assert "tokens [40]" in stale[0].message


def test_a_later_run_known_only_from_its_result_counts() -> None:
    """The later run's token comes from its result in etcd (its handler wrote no line)."""
    h = good()
    h.effects[0] = dataclasses.replace(h.effects[0], revision=45)
    h.attempts[1] = dataclasses.replace(h.attempts[1], revision=45)
    h.results.append(RunResult("t1", 0, "run", 2, 41, True))
    assert ("stale", ("t1",)) in found(h)


def test_a_debit_landing_after_the_refund_claimed_the_step_is_stale() -> None:
    """The run and the compensation share the step's claim: a debit after the refund's
    claim (token 50) is stale even though no later debit ran."""
    h = good()
    h.effects[2] = dataclasses.replace(h.effects[2], revision=55)
    h.attempts[5] = dataclasses.replace(h.attempts[5], revision=55)
    assert ("stale", ("t2",)) in found(h)


def test_a_later_run_that_claimed_after_the_commit_is_fine() -> None:
    """Run 2 (token 60) claimed after run 1's effect committed (rev 12): not stale."""
    h = good()
    h.attempts += [Attempt("t1", "debit", "start", 60, attempt=2), Attempt("t1", "debit", "duplicate", 60, attempt=2)]
    assert checker.check(h) == []


def test_an_effect_by_a_token_no_run_reports_is_caught() -> None:
    """An effect key holding a token that no handler line or result knows."""
    h = good()
    h.effects[1] = dataclasses.replace(h.effects[1], token=21)
    del h.attempts[3]  # its committed line
    assert found(h) == [("stale", ("t1",))]


def test_two_successful_results_for_one_step_are_caught() -> None:
    """A step with two successful results recorded (a failed run and a retry are fine)."""
    h = good()
    h.results.append(RunResult("t1", 1, "run", 2, 25, False))
    assert checker.check(h) == []
    h.results.append(RunResult("t1", 1, "run", 3, 26, True))
    assert found(h) == [("recorded", ("t1",))]


def test_roles_missing_from_the_deployment_are_caught() -> None:
    """A live worker without its registration, no leader, a candidate not campaigning,
    a role not running, a live role whose only key is its dead predecessor's, a role
    that exited by itself (with its stderr)."""
    h = good()
    h.roles = RolesSnapshot(
        live_workers={"eu": 2, "us": 2}, registrations={"eu": 1, "us": 2}, leader=None, candidates=1,
        live_orchestrators=2, not_running=["ap-1"], unregistered=["us-2"],
        exits=[RoleExit("o2", 123, 1, 0.0, ("Traceback ...", "RuntimeError: boom"))],
    )
    messages = [str(v) for v in checker.check(h)]
    assert "[roles] region eu: 1 registration key(s) for 2 live worker(s)" in messages
    assert "[roles] no orchestrator leads (no leader key)" in messages
    assert "[roles] 1 election key(s) for 2 live orchestrator(s) (each campaigns or leads)" in messages
    assert "[roles] role process(es) not running: ap-1" in messages
    assert "[roles] live role(s) with no key of their own (not registered / not campaigning): us-2" in messages
    assert any(m.startswith("[crash] o2 (pid 123) exited by itself with status 1") and "RuntimeError: boom" in m for m in messages)


def test_stale_registrations_beyond_the_live_workers_are_caught() -> None:
    """More registration keys than live workers (a dead worker still counted)."""
    snap = RolesSnapshot(live_workers={"eu": 1}, registrations={"eu": 2}, leader="o1")
    assert [v.invariant for v in checker.check_roles(snap)] == ["roles"]


def test_handler_lines_parse_and_a_torn_line_is_skipped() -> None:
    """A writer SIGKILLed mid-line leaves a torn last line: skipped, the rest parsed."""
    lines = [
        '{"saga_id": "t1", "name": "debit", "event": "committed", "token": 10, "attempt": 1, "pid": 7, "revision": 12, "t": 1.5}',
        '{"saga_id": "t1", "name": "credit", "event": "start", "token": 20',
        "",
    ]
    assert checker.parse_attempts(lines) == [
        Attempt("t1", "debit", "committed", 10, attempt=1, pid=7, t=1.5, revision=12)
    ]
