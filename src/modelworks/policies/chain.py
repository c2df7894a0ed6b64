"""Compose policies into one chain. Each policy sees the call; none knows the others."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Call:
    """What the policies see of one API call."""

    operation: str
    headers: dict[str, str]  # lower-case names
    deployment: str | None = None
    principal: Any = None
    facts: dict[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    async def admit(self, call: Call) -> None:
        """Raise a ModelworksError to refuse the call."""


class PolicyChain:
    def __init__(self, policies: list[Policy]) -> None:
        self.policies = policies

    async def admit(self, call: Call) -> None:
        for policy in self.policies:
            await policy.admit(call)
