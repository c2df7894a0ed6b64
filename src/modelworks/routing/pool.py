"""A deployment's pool of backends and the live state of each backend: health, circuit, cooling, load.

The state belongs to a backend and the model asked of it, not to a deployment: two deployments sending the same
model to the same backend share it (one's failures keep the other away too), while another model on that backend
(an upstream account's other model, with its own rate limit) is apart. Health checks are per backend. Choice among the available members: two members drawn at random by weight, the less loaded
of the two taken (load = requests in flight per unit of weight; the `latency` strategy multiplies by the
backend's recent time to first byte). Idle pools so split traffic by weight; busy ones go to the least busy.

Circuit breaker: `failure_threshold` consecutive failures open it for `cooldown_s`; then one request is let
through as a probe (half-open): success closes it, failure opens it again. An upstream 429 cools the backend
for its `retry-after`. An active health check that fails takes the backend out until one succeeds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from modelworks.backends.base import Backend
from modelworks.routing.residency import Place, Scope

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}


class Member:
    """One backend's live state, shared by every pool it is in."""

    __slots__ = ("name", "model", "backend", "place", "weight", "in_flight", "failures", "state", "open_until",
                 "cooled_until", "healthy", "ttfb", "probing")

    def __init__(self, name: str, backend: Backend, place: Place, weight: float = 1.0, model: str = "") -> None:
        self.name = name
        self.model = model
        self.backend = backend
        self.place = place
        self.weight = weight
        self.in_flight = 0
        self.failures = 0
        self.state = CLOSED
        self.open_until = 0.0
        self.cooled_until = 0.0
        self.healthy = True
        self.ttfb = 0.0  # recent time to first byte (exponential average), seconds
        self.probing = False

    @property
    def region(self) -> str:
        return self.place.region or "local"

    def available(self, now: float) -> bool:
        if not self.healthy or now < self.cooled_until:
            return False
        if self.state == OPEN:
            return now >= self.open_until and not self.probing
        if self.state == HALF_OPEN:
            return not self.probing
        return True

    def taken(self, now: float) -> None:
        """A request goes to this member (call `released` when it is done with it)."""
        self.in_flight += 1
        if self.state == OPEN and now >= self.open_until:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN:
            self.probing = True

    def released(self) -> None:
        self.in_flight -= 1

    def succeeded(self, ttfb: float | None = None) -> None:
        self.failures = 0
        self.state = CLOSED
        self.probing = False
        if ttfb is not None:
            self.ttfb = ttfb if self.ttfb == 0.0 else 0.8 * self.ttfb + 0.2 * ttfb

    def failed(self, now: float, threshold: int, cooldown_s: float) -> None:
        self.failures += 1
        self.probing = False
        if self.state == HALF_OPEN or self.failures >= threshold:
            self.state = OPEN
            self.open_until = now + cooldown_s

    def cool(self, now: float, seconds: float) -> None:
        """The backend said 429: send it nothing for `seconds` (not a failure of the backend)."""
        self.probing = False
        self.cooled_until = max(self.cooled_until, now + seconds)

    def score(self, latency_aware: bool) -> float:
        """Lower is better. Two idle members tie (0) under least_busy, and the one drawn first by weight wins."""
        if latency_aware:
            return (self.in_flight + 1) / self.weight * (self.ttfb or 0.001)
        return self.in_flight / self.weight


@dataclass(slots=True)
class Pool:
    """The members a deployment may use, all inside its scope (checked again here, whatever the config said)."""

    deployment: str
    scope: Scope
    members: list[Member]
    latency_aware: bool = False

    def __post_init__(self) -> None:
        self.members = [m for m in self.members if self.scope.allows(m.place)]

    def pick(self, exclude: set[str], capable=None, now: float | None = None) -> Member | None:
        now = time.monotonic() if now is None else now
        ready = [m for m in self.members if m.name not in exclude and m.available(now)
                 and (capable is None or capable(m))]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        a, b = _two_by_weight(ready)
        return a if a.score(self.latency_aware) <= b.score(self.latency_aware) else b

    def cooling_wait(self, now: float | None = None) -> float | None:
        """When the only members that could serve are cooling after a 429: the seconds until the first is back."""
        now = time.monotonic() if now is None else now
        waits = [m.cooled_until - now for m in self.members
                 if now < m.cooled_until and m.healthy and m.state == CLOSED]
        return min(waits) if waits else None

    def unavailable_reason(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if not self.members:
            return "it has no backend " + self.scope.describe()
        states = []
        for m in self.members:
            if not m.healthy:
                states.append(f"{m.name}: failing health checks")
            elif now < m.cooled_until:
                states.append(f"{m.name}: rate limited for {m.cooled_until - now:.1f}s")
            elif m.state != CLOSED:
                states.append(f"{m.name}: circuit open")
            else:
                states.append(f"{m.name}: failed")
        return "; ".join(states)


def _two_by_weight(members: list[Member]) -> tuple[Member, Member]:
    first = random.choices(members, weights=[m.weight for m in members])[0]
    rest = [m for m in members if m is not first]
    second = random.choices(rest, weights=[m.weight for m in rest])[0]
    return first, second


class Members:
    """The state of every (backend, model) in use, made when a deployment first needs it and kept after."""

    def __init__(self, backends: dict[str, Backend], places: dict[str, Place], weights: dict[str, float]) -> None:
        self.backends = backends
        self.places = places
        self.weights = weights
        self.by_key: dict[tuple[str, str], Member] = {}

    def get(self, name: str, model: str) -> Member:
        member = self.by_key.get((name, model))
        if member is None:
            member = self.by_key[(name, model)] = Member(
                name, self.backends[name], self.places.get(name, Place("custom", None, None)),
                self.weights.get(name, 1.0), model)
        return member

    def all(self) -> list[Member]:
        return list(self.by_key.values())

    def pool(self, deployment: str, scope: Scope, names: list[str], model: str, latency_aware: bool = False) -> Pool:
        return Pool(deployment, scope, [self.get(n, model) for n in names if n in self.backends], latency_aware)
