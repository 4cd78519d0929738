"""The region lab's pure parts: regions, the round-trip matrix, jitter, the delivery
schedule, peer identification and namespace names (no etcd, no root)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whizorch.cli import main as cli_main
from whizorch.errors import ClosedError, ConfigError
from whizorch.lab import main as lab_main
from whizorch.testing import DEFAULT_RTT_MS, RegionLab
from whizorch.testing._lab_model import (
    check_regions,
    default_delay_ms,
    directory_owner,
    directory_prefix,
    find_server_from,
    jitter_matrix,
    namespace_name,
    namespace_owner,
    parse_pairs,
    release_at,
    rtt_matrix,
    sample_delay_s,
    stale_namespaces,
)

REGIONS = ("eu", "us", "ap")


def test_default_matrix_gives_every_direction() -> None:
    """The default matrix covers eu, us, ap both ways with the demo's round trips."""
    rtt = rtt_matrix(REGIONS)
    assert rtt[("eu", "us")] == rtt[("us", "eu")] == 80
    assert rtt[("us", "ap")] == rtt[("ap", "us")] == 150
    assert rtt[("eu", "ap")] == rtt[("ap", "eu")] == 200
    assert len(rtt) == 6
    assert DEFAULT_RTT_MS["eu"]["us"] == 80


def test_a_pair_given_twice_must_agree() -> None:
    """A pair may be given both ways if the values agree; otherwise both entries are named."""
    ok = rtt_matrix(("a", "b"), {"a": {"b": 10}, "b": {"a": 10}})
    assert ok[("b", "a")] == 10
    with pytest.raises(ConfigError, match=r"rtt_ms\['b'\]\['a'\] = 12 disagrees with rtt_ms\['a'\]\['b'\] = 10"):
        rtt_matrix(("a", "b"), {"a": {"b": 10}, "b": {"a": 12}})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"eu": {"us": 80}, "us": {"ap": 150}}, r"no round trip between 'eu' and 'ap'.*rtt_ms\['eu'\]\['ap'\]"),
        ({"eu": {"us": 80, "ap": 200}, "xx": {"us": 1}}, r"rtt_ms\['xx'\]: 'xx' is not a region"),
        ({"eu": {"us": 80, "ap": 200, "mars": 5}}, r"rtt_ms\['eu'\]\['mars'\]: 'mars' is not a region"),
        ({"eu": {"eu": 0, "us": 80, "ap": 200}}, r"rtt_ms\['eu'\]\['eu'\]: a region has no delay to itself"),
        ({"eu": {"us": -1, "ap": 200}, "us": {"ap": 150}}, r"rtt_ms\['eu'\]\['us'\] must be a finite number >= 0"),
        ({"eu": {"us": math.nan, "ap": 200}, "us": {"ap": 150}}, r"rtt_ms\['eu'\]\['us'\] must be a finite"),
        ({"eu": {"us": "80", "ap": 200}, "us": {"ap": 150}}, r"rtt_ms\['eu'\]\['us'\] must be a number"),
        ({"eu": {"us": True, "ap": 200}, "us": {"ap": 150}}, r"rtt_ms\['eu'\]\['us'\] must be a number"),
        ({"eu": 80}, r"rtt_ms\['eu'\] must be a mapping"),
    ],
)
def test_bad_matrix_entries_are_named(table: dict[str, object], message: str) -> None:
    """Every bad or missing entry raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=message):
        rtt_matrix(REGIONS, table)  # type: ignore[arg-type]


def test_default_matrix_needs_the_default_regions() -> None:
    """Other regions without a matrix: the error says the default only covers eu, us, ap."""
    with pytest.raises(ConfigError, match="default matrix covers eu, us and ap only"):
        rtt_matrix(("eu", "sa"))


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ((), "at least one region"),
        (("eu", "eu"), "'eu' is listed twice"),
        (("eu", "EU"), "region name 'EU' must be"),
        (("eu", "us-east"), "region name 'us-east' must be"),
        (("a" * 17,), "must be 1-16 characters"),
        ("eu", "not one string"),
    ],
)
def test_bad_regions_are_named(regions: tuple[str, ...], message: str) -> None:
    """Region names are short, plain and unique (they end up in namespace names)."""
    with pytest.raises(ConfigError, match=message):
        check_regions(regions)


def test_jitter_is_bounded_by_the_one_way_delay() -> None:
    """Jitter may not exceed half the round trip; a table names the bad pair; pairs left
    out get none."""
    rtt = rtt_matrix(REGIONS)
    assert set(jitter_matrix(REGIONS, 5.0, rtt).values()) == {5.0}
    table = jitter_matrix(REGIONS, {"eu": {"us": 10}}, rtt)
    assert table[("us", "eu")] == 10 and table[("eu", "ap")] == 0
    with pytest.raises(ConfigError, match=r"jitter_ms = 41 ms is more than the one-way delay between 'eu' and 'us' \(40 ms"):
        jitter_matrix(REGIONS, 41.0, rtt)
    with pytest.raises(ConfigError, match=r"jitter_ms\['us'\]\['ap'\] = 80 ms is more than"):
        jitter_matrix(REGIONS, {"us": {"ap": 80}}, rtt)


def test_command_line_pairs() -> None:
    """``A:B=MS`` pairs parse; anything else names the bad spec."""
    assert parse_pairs(["eu:us=80", " us : ap = 150.5 "], what="--rtt") == {
        "eu": {"us": 80.0},
        "us": {"ap": 150.5},
    }
    with pytest.raises(ConfigError, match=r"--rtt 'eu-us=80' must look like REGION:REGION=MS"):
        parse_pairs(["eu-us=80"], what="--rtt")
    with pytest.raises(ConfigError, match=r"--rtt 'eu:us=fast': 'fast' is not a number"):
        parse_pairs(["eu:us=fast"], what="--rtt")


def test_region_lab_checks_its_arguments_before_running_anything() -> None:
    """A bad matrix, jitter or mode fails in the constructor; an unstarted lab has no mode."""
    with pytest.raises(ConfigError, match=r"rtt_ms\['eu'\]\['mars'\]"):
        RegionLab(rtt_ms={"eu": {"mars": 1}})
    with pytest.raises(ConfigError, match="jitter_ms = 100 ms is more than"):
        RegionLab(jitter_ms=100)
    with pytest.raises(ConfigError, match="mode must be"):
        RegionLab(mode="docker")  # type: ignore[arg-type]
    lab = RegionLab(["eu", "us"], rtt_ms={"eu": {"us": 30}})
    with pytest.raises(ClosedError):
        _ = lab.mode
    assert lab.election_ms == 1000  # 10 x 30 ms is below etcd's default
    assert RegionLab().election_ms == 2000  # 10 x the largest round trip
    lab.close()
    lab.close()
    with pytest.raises(ClosedError):
        lab.start()


def test_lab_command_line_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`whizorch lab` with a bad --rtt or region exits 2 naming it, starting nothing."""
    assert lab_main(["--rtt", "eu-us=80"]) == 2
    assert "--rtt 'eu-us=80' must look like" in capsys.readouterr().err
    assert lab_main(["--regions", "eu,us", "--rtt", "eu:us=80", "--jitter-ms", "50"]) == 2
    assert "jitter_ms = 50 ms is more than" in capsys.readouterr().err
    assert "lab" in cli_main.commands


@given(
    st.lists(
        st.tuples(st.floats(0, 0.05), st.floats(0, 0.3)),  # gap since the last chunk, delay
        min_size=1,
        max_size=40,
    )
)
def test_release_keeps_order_and_pays_each_delay(chunks: list[tuple[float, float]]) -> None:
    """Chunks go out in the order they came, none before its own delay, with jitter."""
    arrival, previous = 0.0, 0.0
    for gap, delay in chunks:
        arrival += gap
        release = release_at(arrival, delay, previous, 0.0, 0.1)
        assert release >= arrival + delay
        assert release >= previous
        assert release == max(arrival + delay, previous)  # no later than it has to be
        previous = release


def test_release_after_a_heal_pays_the_link_again() -> None:
    """A chunk held by a cut goes a full link delay after the heal; one that arrived
    after the heal only pays its own."""
    assert release_at(arrival=1.0, delay=0.04, previous=0.0, up_since=5.0, link_delay=0.04) == 5.04
    assert release_at(arrival=6.0, delay=0.04, previous=0.0, up_since=5.0, link_delay=0.04) == 6.04
    assert release_at(arrival=1.0, delay=0.04, previous=7.0, up_since=5.0, link_delay=0.04) == 7.0


def test_jitter_draws_stay_in_bounds_and_repeat_with_the_seed() -> None:
    """Delays are drawn from delay +- jitter, never negative, the same for the same seed."""
    draws = [sample_delay_s(random.Random(7), 40, 10) for _ in range(3)]
    assert len(set(draws)) == 1
    rng = random.Random(1)
    many = [sample_delay_s(rng, 40, 10) for _ in range(500)]
    assert 0.030 <= min(many) < 0.032 and 0.048 < max(many) <= 0.050
    assert sample_delay_s(rng, 40, 0) == 0.040
    assert min(sample_delay_s(rng, 5, 10) for _ in range(200)) == 0.0


def test_peer_requests_are_told_apart_by_their_sender() -> None:
    """The approximation reads etcd's X-Server-From header (any case), lowercase hex."""
    request = (
        b"GET /raft/stream/message/8e9e05c52164694d HTTP/1.1\r\nHost: 127.0.0.1:2380\r\n"
        b"X-Server-From: 8E9E05C52164694D\r\nX-Raft-To: 91bc3c398fb3c146\r\n\r\n"
    )
    assert find_server_from(request) == "8e9e05c52164694d"
    assert find_server_from(request.replace(b"X-Server-From", b"x-server-from")) == "8e9e05c52164694d"
    assert find_server_from(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n") is None


def test_default_peer_delay_is_half_the_mean_round_trip() -> None:
    """Unattributed peer bytes to a member pay half its mean round trip to the others."""
    assert default_delay_ms(REGIONS, rtt_matrix(REGIONS)) == {"eu": 70.0, "us": 57.5, "ap": 87.5}
    assert default_delay_ms(("solo",), {}) == {"solo": 0.0}


def test_namespace_names_and_stale_ones() -> None:
    """Namespaces are wz-<pid>-<n>-<region>; only those of dead pids are stale, and
    names the lab does not make are never touched."""
    name = namespace_name(4242, 3, "eu")
    assert name == "wz-4242-3-eu" and namespace_owner(name) == 4242
    names = [name, "wz-17-1-us", "wz-99-2-ap", "wz-abc", "wz-5-eu", "docker0", "wz-5-1-EU"]
    assert stale_namespaces(names, lambda pid: pid == 17) == ["wz-4242-3-eu", "wz-99-2-ap"]
    # a name of this process's pid that no open lab uses was left by an earlier process
    mine = ["wz-7-1-eu", "wz-7-2-eu"]
    assert stale_namespaces(mine, lambda pid: False, in_use={"wz-7-2-eu"}) == ["wz-7-1-eu"]
    assert directory_owner(directory_prefix(4242) + "x1y2") == 4242
    assert directory_owner("whizorch-lab-x1y2") is None
    assert directory_owner("whizorch-etcd-123-ab") is None
