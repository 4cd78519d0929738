"""The rebuild's fast summary of a final record agrees with decoding it in full."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from whizorch.saga._model import SagaRecord, StepState
from whizorch.saga._rebuild import _finished, _summary

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
NAMES = st.text(alphabet=st.sampled_from('ab"\\]:,{} é'), min_size=1, max_size=6)


@st.composite
def records(draw: st.DrawFn) -> SagaRecord:
    regions = draw(st.lists(st.lists(NAMES, max_size=3), min_size=1, max_size=4))
    steps = [
        StepState(name=draw(TEXT), state=draw(st.sampled_from(["done", "failed", "compensated"])), regions=rs,
                  region=rs[-1] if rs else None, error=draw(st.none() | TEXT))
        for rs in regions
    ]  # fmt: skip
    rec = SagaRecord(
        id=draw(st.from_regex(r"[A-Za-z0-9_.:\-]{1,20}", fullmatch=True)), saga=draw(TEXT), txid=draw(st.integers(0, 2**40)),
        status=draw(st.sampled_from(["running", "compensating", "completed", "compensated", "failed"])), steps=steps,
        created=draw(st.floats(0, 2e9)), updated=draw(st.floats(0, 2e9)), finished=draw(st.none() | st.floats(0, 2e9)),
        error=draw(st.none() | TEXT), trace={"traceparent": draw(TEXT)},
    )  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        rec.note(1.0, draw(TEXT), error=draw(TEXT), regions=draw(st.lists(NAMES)))
    return rec


@settings(max_examples=300, deadline=None)
@given(records())
def test_summary_agrees_with_the_full_decode(rec: SagaRecord) -> None:
    """Whatever the strings in it (quotes, brackets, the field names themselves), a
    fast summary is the full decode's (status, end time, regions in order of first
    use) or None (a region name with a bracket: decoded in full); and there is none
    for a record that is not final."""
    data = rec.to_json()
    full = _finished(json.loads(data), 7)
    fast = _summary(data, 7)
    if rec.is_final:
        assert full is not None and list(full.regions) == rec.regions
        assert fast == full or (fast is None and any("]" in r for r in rec.regions))
    else:
        assert fast is None and full is None


def test_an_ordinary_final_record_takes_the_fast_path() -> None:
    """The common case never decodes: summary straight from the bytes."""
    rec = SagaRecord(
        id="t-1", saga="trip", txid=9, status="compensated", created=1.0, updated=2.0, finished=2.5,
        steps=[StepState(name="a", state="compensated", regions=["eu", "us"]), StepState(name="b", regions=["us", "ap"])],
    )
    rec.note(2.0, "failover", step=0, reason='region "eu" down ],"created":')
    assert _summary(rec.to_json(), 3) == _finished(json.loads(rec.to_json()), 3)
    assert _summary(rec.to_json(), 3) is not None and _summary(rec.to_json(), 3).regions == ("eu", "us", "ap")  # type: ignore[union-attr]


def test_other_formatting_is_decoded_in_full() -> None:
    """A record not in the writer's exact format (spaces, another schema) gets no fast summary."""
    rec = SagaRecord(id="x", saga="s", txid=1, status="completed", steps=[], created=1.0, updated=2.0, finished=2.0)
    spaced = json.dumps(rec.to_dict()).encode()
    assert _summary(spaced, 1) is None and _finished(json.loads(spaced), 1) is not None
    newer = rec.to_json().replace(b'"v":3}', b'"v":4}')
    assert _summary(newer, 1) is None and _finished(json.loads(newer), 1) is None
