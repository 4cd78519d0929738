"""The global router: default score, compliance, custom scorers, failover policies, latency matrix."""

from __future__ import annotations

from typing import Any

import pytest

from whizorch import ConfigError
from whizorch.saga._definition import Saga
from whizorch.saga._router import RegionInfo, Router, Weights
from whizorch.saga._spec import StepSpec


def make_step(*, region: str | None = None, compliance: tuple[str, ...] = ()) -> StepSpec:
    saga = Saga("s")

    async def work(ctx: Any, value: Any) -> None:
        return None

    saga.step(work, region=region, compliance=compliance)
    return saga.spec.steps[0]


def router(*infos: RegionInfo, **kw: Any) -> Router:
    r = Router(**kw)
    r.update({i.name: i for i in infos})
    return r


def test_default_score_formula_exact() -> None:
    """score = +50 (data's home) - latency_ms/10 (from the home) - cost*10 - load*20."""
    r = router(
        RegionInfo(name="eu", cost=1.0, load=0.5),
        RegionInfo(name="us", cost=0.2, load=0.1),
        latency_ms={"eu": {"us": 120}},
    )
    step = make_step(region="eu")
    assert r.score(step, r.regions["eu"]) == pytest.approx(50 - 0 - 10 - 10)
    assert r.score(step, r.regions["us"]) == pytest.approx(-12 - 2 - 2)
    assert r.ranked(step) == [(pytest.approx(30.0), "eu"), (pytest.approx(-16.0), "us")]
    assert r.pick(step) == "eu"


def test_latency_counts_from_home_region_when_step_has_no_region() -> None:
    """Without a data region, latency is measured from the orchestrator's home and no locality bonus applies."""
    r = router(RegionInfo(name="eu"), RegionInfo(name="us"), latency_ms={("eu", "us"): 100}, home_region="us")
    step = make_step()
    assert r.score(step, r.regions["eu"]) == pytest.approx(-10.0)
    assert r.score(step, r.regions["us"]) == 0.0
    assert r.pick(step) == "us"


def test_custom_weights() -> None:
    """Weights replace the spec's constants."""
    r = router(
        RegionInfo(name="eu", cost=2.0, load=0.5),
        latency_ms={"us": {"eu": 10}},
        weights=Weights(locality=5.0, latency_per_ms=1.0, cost=1.0, load=2.0),
        home_region="us",
    )
    assert r.score(make_step(region="eu"), r.regions["eu"]) == pytest.approx(5 - 0 - 2 - 1)
    assert r.score(make_step(), r.regions["eu"]) == pytest.approx(-10 - 2 - 1)


def test_non_compliant_regions_are_disqualified() -> None:
    """A region lacking a tag the step requires gets no score and is never picked."""
    r = router(
        RegionInfo(name="eu", compliance=frozenset({"gdpr", "pci"})),
        RegionInfo(name="us", compliance=frozenset({"pci"})),
    )
    step = make_step(compliance=("gdpr",))
    assert r.score(step, r.regions["us"]) is None
    assert r.ranked(step) == [(0.0, "eu")]
    assert r.pick(step) == "eu"
    assert r.pick(make_step(compliance=("gdpr", "hipaa"))) is None


def test_ties_broken_by_name() -> None:
    """Equal scores rank by region name, so the choice is deterministic."""
    r = router(RegionInfo(name="zz"), RegionInfo(name="aa"), RegionInfo(name="mm"))
    assert [name for _, name in r.ranked(make_step())] == ["aa", "mm", "zz"]
    assert r.pick(make_step()) == "aa"


def test_pick_exclude_and_empty() -> None:
    """pick() skips excluded regions and returns None with no healthy region."""
    r = router(RegionInfo(name="aa"), RegionInfo(name="bb"))
    assert r.pick(make_step(), exclude=frozenset({"aa"})) == "bb"
    assert Router().pick(make_step()) is None


def test_custom_scorer_replaces_formula() -> None:
    """A scorer gets (step, region, router); None disqualifies; compliance is still checked first."""
    seen: list[tuple[str, str]] = []

    def scorer(step: StepSpec, region: RegionInfo, r: Router) -> float | None:
        seen.append((step.name, region.name))
        return None if region.name == "bad" else region.workers

    r = router(
        RegionInfo(name="few", workers=1),
        RegionInfo(name="many", workers=9),
        RegionInfo(name="bad", workers=99),
        RegionInfo(name="nogdpr", workers=50),
        scorer=scorer,
    )
    for name in ("few", "many", "bad"):
        r.regions[name] = RegionInfo(name=name, workers=r.regions[name].workers, compliance=frozenset({"gdpr"}))
    step = make_step(compliance=("gdpr",))
    assert r.ranked(step) == [(9, "many"), (1, "few")]
    assert ("work", "nogdpr") not in seen


def test_healthy_and_update() -> None:
    """healthy() reflects the latest update(), which replaces the whole view."""
    r = router(RegionInfo(name="eu"))
    assert r.healthy("eu") and not r.healthy("us")
    r.update({"us": RegionInfo(name="us")})
    assert r.healthy("us") and not r.healthy("eu")


# -- failover ----------------------------------------------------------------------------


LATENCY = {"eu": {"us": 80, "ap": 200, "sa": 150}}


def test_failover_closest_by_latency() -> None:
    """`closest` moves to the healthy region with the lowest latency from the failed one."""
    r = router(RegionInfo(name="ap"), RegionInfo(name="us"), RegionInfo(name="sa"), latency_ms=LATENCY)
    assert r.failover(make_step(), failed="eu") == "us"


def test_failover_closest_ignores_score() -> None:
    """`closest` ignores cost/load: a busy neighbour beats an idle far region."""
    r = router(RegionInfo(name="ap"), RegionInfo(name="us", cost=9, load=1.0), latency_ms=LATENCY)
    assert r.pick(make_step()) == "ap"
    assert r.failover(make_step(), failed="eu") == "us"


def test_failover_honours_compliance() -> None:
    """Failover only considers regions carrying the step's tags; none -> None."""
    r = router(
        RegionInfo(name="us"),
        RegionInfo(name="ap", compliance=frozenset({"gdpr"})),
        latency_ms=LATENCY,
    )
    assert r.failover(make_step(compliance=("gdpr",)), failed="eu") == "ap"
    assert r.failover(make_step(compliance=("hipaa",)), failed="eu") is None


def test_failover_never_returns_the_failed_region() -> None:
    """The failed region is excluded even if it is (still) in the healthy view."""
    r = router(RegionInfo(name="eu"), latency_ms=LATENCY)
    assert r.failover(make_step(), failed="eu") is None


def test_failover_ranks_unknown_latency_last() -> None:
    """A region with no configured latency from the failed one is not 'closest'; ties among those go by name."""
    r = router(RegionInfo(name="aa"), RegionInfo(name="ap"), RegionInfo(name="zz"), latency_ms=LATENCY)
    assert r.failover(make_step(), failed="eu") == "ap"
    r.update({"zz": RegionInfo(name="zz"), "bb": RegionInfo(name="bb")})
    assert r.failover(make_step(), failed="eu") == "bb"


def test_failover_policy_score() -> None:
    """`score` re-routes by the score, excluding the failed region."""
    r = router(
        RegionInfo(name="eu"),
        RegionInfo(name="us", cost=5.0),
        RegionInfo(name="ap"),
        latency_ms=LATENCY,
        failover_policy="score",
    )
    assert r.failover(make_step(), failed="eu") == "ap"
    assert r.failover(make_step(), failed="ap") == "eu"


def test_bad_failover_policy() -> None:
    """An unknown failover policy is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        Router(failover_policy="nearest")
    assert info.value.field == "failover_policy"


# -- latency matrix ----------------------------------------------------------------------


def test_latency_matrix_symmetric_fill() -> None:
    """One direction given fills the other; same or unknown pairs are 0."""
    r = Router(latency_ms={"eu": {"us": 80}, ("us", "ap"): 150})
    assert r.latency_ms("eu", "us") == r.latency_ms("us", "eu") == 80.0
    assert r.latency_ms("ap", "us") == 150.0
    assert r.latency_ms("eu", "eu") == 0.0
    assert r.latency_ms(None, "eu") == 0.0
    assert r.latency_ms("eu", "ap") == 0.0


@pytest.mark.parametrize(
    "matrix",
    [
        {"eu": {"us": 80}, "us": {"eu": 95}},
        {"us": {"eu": 95}, "eu": {"us": 80}},
    ],
)
def test_latency_explicit_direction_wins(matrix: dict[str, dict[str, int]]) -> None:
    """An explicitly given direction is never overwritten by the other's symmetric fill, in either order."""
    r = Router(latency_ms=matrix)
    assert (r.latency_ms("eu", "us"), r.latency_ms("us", "eu")) == (80.0, 95.0)


@pytest.mark.parametrize("bad", [-1, "10", True, None, float("nan")])
def test_bad_latency_value_names_the_cell(bad: Any) -> None:
    """A negative, non-numeric, bool or NaN latency is a ConfigError naming latency_ms[src][dst]."""
    with pytest.raises(ConfigError) as info:
        Router(latency_ms={"eu": {"us": 80, "ap": bad}})
    assert info.value.field == "latency_ms[eu][ap]"
    assert "latency_ms[eu][ap]" in str(info.value)


@pytest.mark.parametrize("bad", [{"eu": 5}, {("eu", "us", "ap"): 5}, {3: {"us": 1}}])
def test_bad_latency_shape(bad: Any) -> None:
    """A matrix that is neither (src, dst) -> ms nor src -> {dst: ms} is a ConfigError on latency_ms."""
    with pytest.raises(ConfigError) as info:
        Router(latency_ms=bad)
    assert info.value.field == "latency_ms"
