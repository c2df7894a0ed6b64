"""Deployments in the store: synced from the config file at start, created and changed through the admin API.

A deployment names its backends (from the config file), its type, region or data zone, a TPM quota with RPM
derived as Azure does (6 requests per minute per 1,000 tokens per minute) unless given, a content-filter policy,
and prices per 1,000 input and output tokens.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Callable

from sqlalchemy import delete, func, select

from modelworks.control.keys import _iso, now
from modelworks.errors import InvalidRequest, NotFound
from modelworks.routing.residency import PROVISIONED_TYPES, Place, Scope, check_backends
from modelworks.settings import Deployment as ConfigDeployment
from modelworks.store.db import Database
from modelworks.store.schema import DeploymentRow

FIELDS = ("model", "backends", "deployment_type", "region", "data_zone", "tpm", "rpm", "content_filter_policy",
          "price_input_per_1k", "price_output_per_1k", "enabled", "owned_by", "spillover")


def derived_rpm(tpm: int | None, rpm: int | None) -> int | None:
    if rpm is not None:
        return rpm
    if tpm is None:
        return None
    return max(1, math.floor(tpm * 6 / 1000))


def deployment_view(row: DeploymentRow) -> dict:
    # provisioned capacity is in tokens alone: no requests-per-minute limit is derived from it
    rpm = row.rpm if row.deployment_type in PROVISIONED_TYPES else derived_rpm(row.tpm, row.rpm)
    return {"name": row.name, **{f: getattr(row, f) for f in FIELDS}, "rpm_effective": rpm,
            "source": row.source, "updated_at": _iso(row.updated_at)}


def from_config(name: str, dep: ConfigDeployment, default_tpm=lambda backends: None) -> dict:
    tpm = dep.tpm if dep.tpm is not None else default_tpm(dep.backend_names)
    return {"model": dep.model, "backends": dep.backend_names, "deployment_type": dep.type, "region": dep.region,
            "data_zone": dep.data_zone, "tpm": tpm, "rpm": dep.rpm, "content_filter_policy": dep.content_filter,
            "price_input_per_1k": dep.price_input_per_1k, "price_output_per_1k": dep.price_output_per_1k,
            "enabled": dep.enabled, "owned_by": dep.owned_by, "spillover": dep.spillover}


class DeploymentService:
    def __init__(self, db: Database, places: dict[str, Place], policy_names: set[str] = frozenset({"default"}),
                 default_tpm: Callable[[list[str]], int | None] = lambda backends: None) -> None:
        self.db = db
        self.default_tpm = default_tpm  # the TPM of a deployment that sets none (see Settings.default_tpm)
        self.places = places
        self.backend_names = set(places)
        self.policy_names = policy_names

    def sync_config(self, deployments: dict[str, ConfigDeployment]) -> None:
        """Make the config file's deployments the store's `source: config` rows (added, changed, removed)."""
        with self.db.session() as s:
            s.execute(delete(DeploymentRow).where(DeploymentRow.source == "config",
                                                  DeploymentRow.name.not_in(list(deployments) or [""])))
            for name, dep in deployments.items():
                values = from_config(name, dep, self.default_tpm)
                row = s.get(DeploymentRow, name)
                if row is None:
                    s.add(DeploymentRow(name=name, source="config", updated_at=now(), **values))
                elif row.source != "config" or any(getattr(row, f) != v for f, v in values.items()):
                    for f, v in values.items():
                        setattr(row, f, v)
                    row.source, row.updated_at = "config", now()

    def all(self) -> list[dict]:
        with self.db.session() as s:
            return [deployment_view(r) for r in s.scalars(select(DeploymentRow).order_by(DeploymentRow.name))]

    def version(self) -> tuple[int, datetime | None]:
        with self.db.session() as s:
            return s.execute(select(func.count(), func.max(DeploymentRow.updated_at))).one()

    def get(self, name: str) -> dict:
        with self.db.session() as s:
            row = s.get(DeploymentRow, name)
            if row is None:
                raise NotFound(f"No deployment '{name}'.", param="name")
            return deployment_view(row)

    def create(self, name: str, values: dict) -> dict:
        self._check(values)
        with self.db.session() as s:
            if s.get(DeploymentRow, name) is not None:
                raise InvalidRequest(f"A deployment named '{name}' already exists.", param="name",
                                     code="already_exists")
            self._check_placement(s, name, {"deployment_type": "GlobalStandard", **values})
            if values.get("tpm") is None:
                values = {**values, "tpm": self.default_tpm(values.get("backends") or [])}
            row = DeploymentRow(name=name, source="api", updated_at=now(), **values)
            s.add(row)
            s.flush()
            return deployment_view(row)

    def update(self, name: str, changes: dict) -> dict:
        self._check(changes)
        with self.db.session() as s:
            row = self._editable(s, name)
            self._check_placement(s, name, {**{f: getattr(row, f) for f in FIELDS}, **changes})
            for f, v in changes.items():
                setattr(row, f, v)
            row.updated_at = now()
            return deployment_view(row)

    def delete(self, name: str) -> dict:
        with self.db.session() as s:
            row = self._editable(s, name)
            view = deployment_view(row)
            s.delete(row)
            return view

    def _editable(self, s, name: str) -> DeploymentRow:
        row = s.get(DeploymentRow, name)
        if row is None:
            raise NotFound(f"No deployment '{name}'.", param="name")
        if row.source == "config":
            raise InvalidRequest(f"The deployment '{name}' is defined in the config file; change it there.",
                                 param="name", code="managed_by_config")
        return row

    def _check(self, values: dict) -> None:
        policy = values.get("content_filter_policy")
        if policy is not None and policy not in self.policy_names:
            raise InvalidRequest(f"No content filter policy named '{policy}'; defined: "
                                 f"{', '.join(sorted(self.policy_names))}.", param="content_filter_policy")
        backends = values.get("backends")
        if backends is not None:
            unknown = [b for b in backends if b not in self.backend_names]
            if unknown or not backends:
                raise InvalidRequest(f"Unknown backend(s): {', '.join(unknown) or '(none given)'}; configured: "
                                     f"{', '.join(sorted(self.backend_names))}.", param="backends")

    def _check_placement(self, s, name: str, values: dict) -> None:
        """Residency: every backend inside the deployment's scope; a spillover never wider than it."""
        scope = Scope(values["deployment_type"], values.get("region"), values.get("data_zone"))
        fault = check_backends(scope, values.get("backends") or [], self.places)
        if fault:
            param, problem = fault
            raise InvalidRequest(f"Deployment '{name}': {problem}.", param=param)
        spill = values.get("spillover")
        if spill is None:
            return
        other = s.get(DeploymentRow, spill)
        if values["deployment_type"] not in PROVISIONED_TYPES:
            raise InvalidRequest("Only provisioned deployments spill over.", param="spillover")
        if other is None or other.deployment_type in PROVISIONED_TYPES or spill == name:
            raise InvalidRequest(f"'{spill}' is not a standard deployment.", param="spillover")
        if not Scope(other.deployment_type, other.region, other.data_zone).within(scope):
            raise InvalidRequest(f"'{spill}' may use backends outside {scope.describe()[3:]}; a spillover must stay "
                                 f"within its deployment's residency.", param="spillover")
