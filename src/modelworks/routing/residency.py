"""Data residency: which backends a deployment may ever use, decided by its type.

- Global types (GlobalStandard, GlobalProvisioned, GlobalBatch): any backend.
- Data zone types (DataZoneStandard, DataZoneProvisioned, DataZoneBatch): only backends tagged with the
  deployment's data zone (EU or US). A backend without a zone is not in any zone.
- Regional types (Standard, ProvisionedManaged): only backends tagged with the deployment's region.

This is a hard rule, applied when a deployment is configured (a deployment naming a backend outside its scope is
refused) and again whenever a backend is picked, retries and failover included.
"""

from __future__ import annotations

from dataclasses import dataclass

GLOBAL_TYPES = frozenset({"GlobalStandard", "GlobalProvisioned", "GlobalBatch"})
DATA_ZONE_TYPES = frozenset({"DataZoneStandard", "DataZoneProvisioned", "DataZoneBatch"})
REGIONAL_TYPES = frozenset({"Standard", "ProvisionedManaged"})
PROVISIONED_TYPES = frozenset({"GlobalProvisioned", "DataZoneProvisioned", "ProvisionedManaged"})


@dataclass(frozen=True, slots=True)
class Place:
    """Where a backend runs: its provider, region and data zone, as configured."""

    provider: str
    region: str | None
    data_zone: str | None


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a deployment's requests may go."""

    deployment_type: str
    region: str | None = None
    data_zone: str | None = None

    def problem(self) -> str | None:
        """Why this scope is incomplete (a data zone type without a zone, say), or None."""
        if self.deployment_type in DATA_ZONE_TYPES and not self.data_zone:
            return f"a {self.deployment_type} deployment needs a data_zone (EU or US)"
        if self.deployment_type in REGIONAL_TYPES and not self.region:
            return f"a {self.deployment_type} deployment needs a region"
        return None

    def allows(self, place: Place) -> bool:
        if self.deployment_type in DATA_ZONE_TYPES:
            return place.data_zone is not None and place.data_zone == self.data_zone
        if self.deployment_type in REGIONAL_TYPES:
            return place.region is not None and place.region == self.region
        return True

    def refusal(self, backend: str, place: Place) -> str:
        """Why `backend` at `place` may not serve this scope (for configuration errors)."""
        if self.deployment_type in DATA_ZONE_TYPES:
            return (f"backend '{backend}' is in data zone {place.data_zone or '(none)'}; a {self.deployment_type} "
                    f"deployment in {self.data_zone} may use only backends in data zone {self.data_zone}")
        return (f"backend '{backend}' is in region {place.region or '(none)'}; a {self.deployment_type} deployment "
                f"in {self.region} may use only backends in that region")

    def describe(self) -> str:
        if self.deployment_type in DATA_ZONE_TYPES:
            return f"in data zone {self.data_zone}"
        if self.deployment_type in REGIONAL_TYPES:
            return f"in region {self.region}"
        return "in any region"

    def within(self, other: "Scope") -> bool:
        """True when every backend this scope allows is also allowed by `other` (spillover must not widen)."""
        if other.deployment_type in GLOBAL_TYPES:
            return True
        if other.deployment_type in DATA_ZONE_TYPES:
            return self.deployment_type in DATA_ZONE_TYPES and self.data_zone == other.data_zone
        return self.deployment_type in REGIONAL_TYPES and self.region == other.region


def check_backends(scope: Scope, backends: list[str], places: dict[str, Place]) -> tuple[str, str] | None:
    """The first reason `backends` cannot serve `scope`, as (the field at fault, the reason), or None."""
    problem = scope.problem()
    if problem:
        return ("data_zone" if scope.deployment_type in DATA_ZONE_TYPES else "region"), problem
    for name in backends:
        place = places.get(name)
        if place is not None and not scope.allows(place):
            return "backends", scope.refusal(name, place)
    return None
