"""The pool's choice and a backend's state, without a server: strategies, residency inside the pool, the circuit."""

from __future__ import annotations

from collections import Counter

from modelworks.backends.fake import FakeBackend
from modelworks.routing.pool import CLOSED, HALF_OPEN, OPEN, Member, Pool
from modelworks.routing.residency import Place, Scope


def member(name: str, zone: str | None = "EU", region: str = "westeurope", weight: float = 1.0) -> Member:
    return Member(name, FakeBackend(name), Place("fake", region, zone), weight, "m")


def test_the_pool_drops_backends_outside_its_scope_whatever_it_was_given():
    eu, us = member("eu"), member("us", zone="US", region="eastus")
    pool = Pool("d", Scope("DataZoneStandard", data_zone="EU"), [eu, us])
    assert pool.members == [eu]
    assert {pool.pick(set()).name for _ in range(50)} == {"eu"}
    regional = Pool("r", Scope("Standard", region="eastus"), [eu, us])
    assert regional.members == [us]
    assert Pool("g", Scope("GlobalStandard"), [eu, us]).members == [eu, us]


def test_least_busy_goes_to_the_less_loaded_and_idle_pools_split_by_weight():
    a, b = member("a", weight=3), member("b", weight=1)
    pool = Pool("d", Scope("GlobalStandard"), [a, b])
    counts = Counter(pool.pick(set()).name for _ in range(4000))
    assert 0.70 < counts["a"] / 4000 < 0.80  # 3 : 1
    a.in_flight = 9  # 3 per unit of weight against b's 0
    assert {pool.pick(set()).name for _ in range(50)} == {"b"}


def test_latency_aware_prefers_the_faster_backend():
    fast, slow = member("fast"), member("slow")
    fast.succeeded(0.05)
    slow.succeeded(0.50)
    pool = Pool("d", Scope("GlobalStandard"), [fast, slow], latency_aware=True)
    assert {pool.pick(set()).name for _ in range(50)} == {"fast"}
    fast.in_flight = 20  # 21 x 0.05 > 1 x 0.5: load wins over speed
    assert {pool.pick(set()).name for _ in range(50)} == {"slow"}


def test_the_circuit_opens_lets_one_probe_through_and_closes_on_success():
    m = member("m")
    for _ in range(3):
        m.failed(now=100.0, threshold=3, cooldown_s=10.0)
    assert m.state == OPEN and not m.available(105.0)
    assert m.available(110.0)
    m.taken(110.0)  # the probe
    assert m.state == HALF_OPEN and not m.available(110.1)  # only one probe at a time
    m.released()
    m.succeeded(0.1)
    assert m.state == CLOSED and m.available(110.2)


def test_a_failed_probe_opens_the_circuit_again():
    m = member("m")
    m.failed(now=0.0, threshold=1, cooldown_s=5.0)
    m.taken(5.0)
    m.released()
    m.failed(now=5.0, threshold=1, cooldown_s=5.0)
    assert m.state == OPEN and not m.available(9.9) and m.available(10.0)


def test_cooling_is_not_a_failure_and_the_pool_reports_the_wait():
    a = member("a")
    pool = Pool("d", Scope("GlobalStandard"), [a])
    a.cool(now=0.0, seconds=2.0)
    assert a.state == CLOSED and a.failures == 0
    assert pool.pick(set(), now=1.0) is None and pool.cooling_wait(now=1.0) == 1.0
    assert pool.pick(set(), now=2.0) is a
