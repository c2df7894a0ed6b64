"""Quotas with Azure's semantics (`../shared/reference/azure-openai-wire.md`).

Per deployment: tokens per minute (TPM), requests per minute (RPM, derived from TPM unless set) and the same
RPM over 10-second windows, so that bursts are refused even under the per-minute figure. Optional per-key and
per-project limits join the same all-or-nothing check. A request is charged at arrival with its prompt tokens
(the model's own tokenizer where the backend has one) plus `max_tokens` x `n`; when it ends, the charge is
corrected to the tokens actually used (or delivered, when the client left).
"""

from __future__ import annotations

import math

from modelworks.backends.base import Usage
from modelworks.errors import RateLimited
from modelworks.policies.chain import Call
from modelworks.quota.limiter import Check, Limiter

OPERATIONS = {"chat.completions": "ChatCompletions_Create", "completions": "Completions_Create",
              "embeddings": "Embeddings_Create"}


class QuotaPolicy:
    stage = "admit"

    def __init__(self, limiter: Limiter, default_max_tokens: int) -> None:
        self.limiter = limiter
        self.default_max_tokens = default_max_tokens

    async def admit(self, call: Call) -> None:
        info = call.route.info
        who = call.principal
        plan = [("deployment", f"dep:{call.route.deployment}", info.get("tpm"), info.get("rpm_effective"))]
        if who is not None:
            plan.append(("key", f"key:{who.key_id}", who.tpm_limit, who.rpm_limit))
            plan.append(("project", f"proj:{who.project_id}", who.project_tpm_limit, who.project_rpm_limit))
        if not any(tpm or rpm for _, _, tpm, rpm in plan):
            return
        tokens = self.estimate(call)
        checks, labels = [], []
        for scope, key, tpm, rpm in plan:
            if tpm:
                checks.append(Check(f"{key}:tok", 60, tpm, tokens))
                labels.append((scope, "tokens", tpm))
            if rpm:
                checks.append(Check(f"{key}:req", 60, rpm, 1))
                labels.append((scope, "requests", rpm))
                checks.append(Check(f"{key}:req10", 10, max(1, rpm // 6), 1))
                labels.append((scope, "requests", rpm))
        decision = await self.limiter.acquire(checks)
        if not decision.admitted:
            scope, kind, limit = labels[decision.refused]
            retry = max(1, math.ceil(decision.retry_after_s))
            raise RateLimited(self._message(call, scope, kind, limit, retry), retry_after_s=retry,
                              code="rate_limit_exceeded", headers=self._limit_headers(checks, labels, None))
        call.facts["quota"] = (decision.second, tokens, [c for c in checks if c.key.endswith(":tok")])
        call.response_headers.update(self._limit_headers(checks, labels, decision.remaining))

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        charged = call.facts.get("quota")
        if charged is None:
            return
        second, estimate, token_checks = charged
        actual = usage.total_tokens if usage is not None else 0
        if status >= 400 and usage is None:
            actual = 0  # refused or failed before any token: give the charge back
        delta = actual - estimate
        if delta:
            for check in token_checks:
                await self.limiter.adjust(check.key, check.window, second, delta)

    def estimate(self, call: Call) -> int:
        if "embedding_input" in call.facts:  # embeddings: their input is all they cost
            tokens = _approximate_input_tokens(call.facts["embedding_input"])
            call.facts["prompt_tokens"] = tokens
            return tokens
        task = call.task
        req = task.request
        prompt = call.route.backend.count_prompt_tokens(task)
        if prompt is None:
            prompt = _approximate_prompt_tokens(task)
        call.facts["prompt_tokens"] = prompt
        limit = req.token_limit if req.token_limit is not None else self.default_max_tokens
        return prompt + limit * req.n

    def _limit_headers(self, checks: list[Check], labels: list, remaining) -> dict[str, str]:
        """x-ratelimit-* for the deployment's per-minute limits, as Azure sends them."""
        headers = {}
        for i, (check, (scope, kind, limit)) in enumerate(zip(checks, labels)):
            if scope != "deployment" or check.window != 60:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            if remaining is not None:
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining[i]))
        return headers

    @staticmethod
    def _message(call: Call, scope: str, kind: str, limit: int, retry: int) -> str:
        operation = OPERATIONS.get(call.operation, call.operation)
        what = "token rate limit" if kind == "tokens" else "call rate limit"
        return (f"Requests to the {operation} Operation under the deployment '{call.route.deployment}' have exceeded "
                f"the {scope} {what} of {limit} {kind} per minute. Please retry after {retry} seconds.")


def _approximate_input_tokens(value) -> int:
    if isinstance(value, str):
        return math.ceil(len(value) / 4)
    if value and isinstance(value[0], int):
        return len(value)
    return sum(_approximate_input_tokens(v) for v in value)


def _approximate_prompt_tokens(task) -> int:
    """About 4 characters a token (English text), plus the per-message framing chat models add."""
    req = task.request
    if task.is_chat:
        chars = sum(len(m.text()) for m in req.messages)
        return math.ceil(chars / 4) + 4 * len(req.messages) + 3
    return _approximate_input_tokens(req.prompt)
