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
ShardLead, Term, RecordWrite, KeyEvent = checker.ShardLead, checker.Term, checker.RecordWrite, checker.KeyEvent

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
        roles=roles(),
        settled=roles(),
        terms=TERMS,
        writes=WRITES,
    )


# 4 shards, 2 orchestrators: o1 (lease a1) leads 0 and 1, o2 (lease b2) leads 2 and 3
SESSIONS = {"o1": "a1", "o2": "b2"}
LEADERS = {0: ShardLead("a1", "o1"), 1: ShardLead("a1", "o1"), 2: ShardLead("b2", "o2"), 3: ShardLead("b2", "o2")}


def roles(**changes: Any) -> Any:
    """The deployment of ``good()``, settled: every worker registered, 4 shards shared."""
    base = RolesSnapshot(
        live_workers={"eu": 2, "us": 2}, registrations={"eu": 2, "us": 2}, shards=4, leaders=LEADERS,
        live_orchestrators=["o1", "o2"], sessions=SESSIONS, members=2,
    )
    return dataclasses.replace(base, **changes)


# shard 0: term 5 (o1) until its key went at rev 40, then term 41 (o2); shard 1: term 6 (o2)
TERMS = [Term(0, 5, "a1", "o1", ended=40), Term(1, 6, "b2", "o2"), Term(0, 41, "b2", "o2")]
WRITES = [
    RecordWrite("t1", 0, 10, 5), RecordWrite("t2", 1, 11, 6), RecordWrite("t1", 0, 39, 5),
    RecordWrite("t1", 0, 45, 41), RecordWrite("t2", 1, 50, 6),
]


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
    """A live worker without its registration, a membership key too few, a role not
    running, a live role whose only key is its dead predecessor's, a role that exited by
    itself (with its stderr)."""
    h = good()
    h.roles = roles(
        registrations={"eu": 1, "us": 2}, members=1, not_running=["ap-1"], unregistered=["us-2"],
        exits=[RoleExit("o2", 123, 1, 0.0, ("Traceback ...", "RuntimeError: boom"))],
    )
    messages = [str(v) for v in checker.check(h)]
    assert "[roles] region eu: 1 registration key(s) for 2 live worker(s)" in messages
    assert "[roles] 1 membership key(s) for 2 live orchestrator(s)" in messages
    assert "[roles] role process(es) not running: ap-1" in messages
    assert "[roles] live role(s) with no key of their own (not registered / not a member): us-2" in messages
    assert any(m.startswith("[crash] o2 (pid 123) exited by itself with status 1") and "RuntimeError: boom" in m for m in messages)


def test_stale_registrations_beyond_the_live_workers_are_caught() -> None:
    """More registration keys than live workers (a dead worker still counted)."""
    snap = RolesSnapshot(live_workers={"eu": 1}, registrations={"eu": 2})
    assert [v.invariant for v in checker.check_roles(snap)] == ["roles"]


def test_a_shard_without_a_leader_after_the_heal_is_caught() -> None:
    """Every shard of the namespace must be led again: one with no key is named."""
    leaders = {k: lead for k, lead in LEADERS.items() if k != 2}
    assert [str(v) for v in checker.check_roles(roles(leaders=leaders))] == [
        "[roles] shard(s) with no leader (no key in their election): 2"
    ]


def test_a_shard_led_by_a_dead_or_previous_process_is_caught() -> None:
    """A leader key on a lease no live orchestrator's current process holds (a killed
    incarnation's, not yet expired) does not count as led."""
    leaders = {**LEADERS, 3: ShardLead("dead", "o2")}
    assert [str(v) for v in checker.check_roles(roles(leaders=leaders))] == [
        "[roles] shard(s) led by no live orchestrator's current session: 3 (o2, lease dead)"
    ]
    sessions = {"o1": "a1"}  # o2 has no membership key of its current process
    found = [str(v) for v in checker.check_roles(roles(sessions=sessions, unregistered=["o2"]))]
    assert "[roles] shard(s) led by no live orchestrator's current session: 2 (o2, lease b2), 3 (o2, lease b2)" in found
    assert "[roles] live role(s) with no key of their own (not registered / not a member): o2" in found


def test_even_shares_pass_and_uneven_ones_are_caught_once_settled() -> None:
    """8 shards over 3 orchestrators settle at 3, 3 and 2; 4, 2, 2 is uneven, and a
    live orchestrator leading nothing is named with 0."""
    sessions = {"o1": "a1", "o2": "b2", "o3": "c3"}
    live = ["o1", "o2", "o3"]
    even = dict(zip(range(8), [ShardLead(lease, node) for node, lease in
                               [("o1", "a1")] * 3 + [("o2", "b2")] * 3 + [("o3", "c3")] * 2], strict=True))
    assert checker.check_shares(roles(shards=8, leaders=even, sessions=sessions, live_orchestrators=live)) == []
    uneven = {**even, 3: ShardLead("a1", "o1")}
    assert [str(v) for v in checker.check_shares(roles(shards=8, leaders=uneven, sessions=sessions, live_orchestrators=live))] == [
        "[roles] once settled, uneven shares of the 8 shards: o1 4, o2 2, o3 2 (each of 3 live orchestrator(s) "
        "should lead 2 or 3)"
    ]
    idle = {k: ShardLead("a1", "o1") if k < 4 else ShardLead("b2", "o2") for k in range(8)}
    found = checker.check_shares(roles(shards=8, leaders=idle, sessions=sessions, live_orchestrators=live))
    assert len(found) == 1 and "o3 0" in found[0].message


def test_candidates_queued_behind_a_settled_leader_are_caught() -> None:
    """Once settled only the shard's assigned orchestrator campaigns: a second key in
    its election is named; right after the heal (check_roles) it is allowed."""
    leaders = {**LEADERS, 1: ShardLead("a1", "o1", keys=2)}
    assert [str(v) for v in checker.check_shares(roles(leaders=leaders))] == [
        "[roles] once settled, shard(s) with candidates queued behind their leader: 1 (2 keys)"
    ]
    assert checker.check_roles(roles(leaders=leaders)) == []
    h = good()
    h.settled = roles(leaders=leaders)
    assert [inv for inv, _ in found(h)] == ["roles"]


def test_a_record_write_after_its_terms_key_was_deleted_is_caught() -> None:
    """Term 5's key went at rev 40: a write carrying term 5 at rev 42 is outside it."""
    h = good()
    h.writes = [*WRITES, RecordWrite("t3", 0, 42, 5)]
    violations = checker.check(h)
    assert [(v.invariant, v.saga_ids) for v in violations] == [("terms", ("t3",))]
    assert "outside their term" in violations[0].message and "deleted at rev 40" in violations[0].message


def test_a_record_write_by_another_shards_leader_is_caught() -> None:
    """Term 6 leads shard 1: its write to a saga of shard 0 is another shard's leader's."""
    h = good()
    h.writes = [*WRITES, RecordWrite("t1", 0, 20, 6)]
    violations = checker.check(h)
    assert [(v.invariant, v.saga_ids) for v in violations] == [("terms", ("t1",))]
    assert "another shard" in violations[0].message


def test_a_record_write_by_a_queued_candidate_is_caught() -> None:
    """Term 30's key exists from rev 30 but term 5's (lower) still leads shard 0 until
    rev 40: a write by term 30 at rev 35 is two leaders of one shard writing at once."""
    h = good()
    h.terms = [*TERMS, Term(0, 30, "c3", "o3", ended=36)]
    h.writes = [*WRITES, RecordWrite("t3", 0, 35, 30)]
    violations = checker.check(h)
    assert [v.message.split(":")[0] for v in violations] == [
        "1 saga record write(s) by a candidate queued behind the shard's leader (a key with a lower create revision existed)",
        "1 saga record write(s) by an older term after a newer term of the shard had written (overlapping terms)",
    ]
    assert {v.saga_ids for v in violations} == {("t3",), ("t1",)}  # t1's write by term 5 at rev 39 came after term 30's


def test_a_record_write_by_no_known_term_is_caught() -> None:
    """A write whose leader_term is no election key's create revision (or carries none)."""
    h = good()
    h.writes = [*WRITES, RecordWrite("t3", 2, 60, 0), RecordWrite("t2", 1, 61, 99)]
    violations = checker.check(h)
    assert [(v.invariant, v.saga_ids) for v in violations] == [("terms", ("t3", "t2"))]


def test_terms_and_record_writes_parse_from_etcds_history() -> None:
    """Election keys make terms (a proclamation keeps the term, a resign and a new
    campaign on the same key make a new one); record puts carry their term and shard;
    other keys, record deletes and keys that are no shard election are skipped."""
    events = [
        KeyEvent("put", "fault/meta", 3, 3, b"{}"),
        KeyEvent("put", "fault/leader/0/a1", 5, 5, b"o1"),
        KeyEvent("put", "fault/leader/1/b2", 6, 6, b"o2"),
        KeyEvent("put", "fault/leader/0/a1", 7, 5, b"o1-renamed"),
        KeyEvent("put", "fault/leader/x/zz", 8, 8, b"junk"),
        KeyEvent("put", "fault/saga/t1", 10, 10, b'{"id": "t1", "leader_term": 5}'),
        KeyEvent("put", "fault/saga/t2", 11, 11, b"not json"),
        KeyEvent("delete", "fault/leader/0/a1", 20, 5),
        KeyEvent("put", "fault/leader/0/a1", 21, 21, b"o1"),
        KeyEvent("put", "fault/saga/t1", 22, 10, b'{"id": "t1", "leader_term": 21}'),
        KeyEvent("delete", "fault/saga/t1", 30),
    ]
    terms, writes = checker.parse_history(events, "fault", lambda sid: {"t1": 0, "t2": 1}[sid])
    assert terms == [Term(0, 5, "a1", "o1-renamed", ended=20), Term(1, 6, "b2", "o2"), Term(0, 21, "a1", "o1")]
    assert writes == [RecordWrite("t1", 0, 10, 5), RecordWrite("t2", 1, 11, 0), RecordWrite("t1", 0, 22, 21)]
    assert checker.check_terms(terms, writes) == [checker.Violation(
        "terms", "1 saga record write(s) by a term that is no election key's create revision: t2 at rev 11 by term 0", ("t2",),
    )]


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
