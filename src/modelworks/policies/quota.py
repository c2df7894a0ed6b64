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
from modelworks.offload import run_sized
from modelworks.policies.chain import Call
from modelworks.quota.limiter import Check, Limiter

INLINE_BELOW = 32 * 1024  # request bodies up to this size are counted on the event loop

OPERATIONS = {"chat.completions": "ChatCompletions_Create", "completions": "Completions_Create",
              "embeddings": "Embeddings_Create"}


class _Plan:
    """What one (deployment, key) pair is checked against: worked out once, used for every request."""

    __slots__ = ("specs", "labels", "token_keys", "headers")

    def __init__(self, scopes: list) -> None:
        specs, labels = [], []
        for scope, key, tpm, rpm in scopes:
            if tpm:
                specs.append((f"{key}:tok", 60, tpm, True))
                labels.append((scope, "tokens", tpm))
            if rpm:
                specs.append((f"{key}:req", 60, rpm, False))
                labels.append((scope, "requests", rpm))
                specs.append((f"{key}:req10", 10, max(1, rpm // 6), False))
                labels.append((scope, "requests", rpm))
        self.specs = tuple(specs)
        self.labels = tuple(labels)
        self.token_keys = tuple((key, window) for key, window, _, tokens in specs if tokens)
        # x-ratelimit-* for the deployment's per-minute limits, as Azure sends them
        self.headers = tuple((i, f"x-ratelimit-limit-{kind}", str(limit), f"x-ratelimit-remaining-{kind}")
                             for i, ((_, window, _, _), (scope, kind, limit)) in enumerate(zip(specs, labels))
                             if scope == "deployment" and window == 60)


class QuotaPolicy:
    stage = "admit"

    def __init__(self, limiter: Limiter, default_max_tokens: int, resolve=None) -> None:
        self.limiter = limiter
        self.resolve = resolve  # deployment name -> its route (for provisioned deployments' spillover)
        self.default_max_tokens = default_max_tokens
        self._plans: dict[tuple, _Plan | None] = {}

    async def admit(self, call: Call) -> None:
        plan = self._plan(call)
        if plan is None:
            return
        tokens = await self.estimate(call)
        checks = [Check(key, window, limit, tokens if is_tokens else 1) for key, window, limit, is_tokens in plan.specs]
        decision = await self.limiter.acquire(checks)
        if not decision.admitted:
            scope, kind, limit = plan.labels[decision.refused]
            spill = self._spillover(call, scope)
            if spill is not None:
                call.response_headers["x-modelworks-spillover-from"] = call.route.deployment
                call.facts["spilled_from"] = call.route.deployment
                call.route = spill
                if call.task is not None:
                    call.task.model = spill.model
                return await self.admit(call)  # the spillover deployment's own quota applies
            call.facts["limit"] = f"{scope}_{kind}"
            retry = max(1, math.ceil(decision.retry_after_s))
            raise RateLimited(self._message(call, scope, kind, limit, retry), retry_after_s=retry,
                              code="rate_limit_exceeded", headers={h[1]: h[2] for h in plan.headers})
        call.facts["quota"] = (decision.second, tokens, plan.token_keys)
        headers = call.response_headers
        remaining = decision.remaining
        for i, limit_name, limit, remaining_name in plan.headers:
            headers[limit_name] = limit
            headers[remaining_name] = str(max(0, remaining[i]))

    def _plan(self, call: Call) -> _Plan | None:
        info = call.route.info
        who = call.principal
        if who is None:
            cache_key = (call.route.deployment, info.get("tpm"), info.get("rpm_effective"))
        else:
            cache_key = (call.route.deployment, info.get("tpm"), info.get("rpm_effective"), who.key_id,
                         who.tpm_limit, who.rpm_limit, who.project_id, who.project_tpm_limit, who.project_rpm_limit)
        try:
            return self._plans[cache_key]
        except KeyError:
            pass
        scopes = [("deployment", f"dep:{call.route.deployment}", info.get("tpm"), info.get("rpm_effective"))]
        if who is not None:
            scopes.append(("key", f"key:{who.key_id}", who.tpm_limit, who.rpm_limit))
            scopes.append(("project", f"proj:{who.project_id}", who.project_tpm_limit, who.project_rpm_limit))
        plan = _Plan(scopes) if any(tpm or rpm for _, _, tpm, rpm in scopes) else None
        if len(self._plans) >= 10_000:  # keys come and go: start afresh rather than grow without bound
            self._plans.clear()
        self._plans[cache_key] = plan
        return plan

    def _spillover(self, call: Call, scope: str):
        """A provisioned deployment over its capacity hands the call to its spillover deployment, if it has one
        and that one stays inside the same residency scope (the config and the admin API refuse others)."""
        name = call.route.info.get("spillover")
        if scope != "deployment" or not name or self.resolve is None or "spilled_from" in call.facts:
            return None
        spill = self.resolve(name)
        if spill is None or not spill.pool.scope.within(call.route.pool.scope):
            return None
        return spill

    async def complete(self, call: Call, usage: Usage | None, status: int) -> None:
        charged = call.facts.get("quota")
        if charged is None:
            return
        second, estimate, token_keys = charged
        actual = usage.total_tokens if usage is not None else 0
        if status >= 400 and usage is None:
            actual = 0  # refused or failed before any token: give the charge back
        delta = actual - estimate
        if delta:
            for key, window in token_keys:
                await self.limiter.adjust(key, window, second, delta)

    async def estimate(self, call: Call) -> int:
        if "embedding_input" in call.facts:  # embeddings: their input is all they cost (at most 2048 items)
            tokens = _approximate_input_tokens(call.facts["embedding_input"])
            call.facts["prompt_tokens"] = tokens
            return tokens
        task = call.task
        req = task.request
        backend = call.route.backend
        check = getattr(backend, "check_prompt", None)  # a request that cannot fit is bad input (400), not over quota
        # the backend's tokenizer, off the loop
        prompt = await (check(task) if check is not None else backend.count_prompt_tokens(task))
        if prompt is None:  # a sum over the messages: off the event loop for a large body
            prompt = await run_sized(len(task.body), INLINE_BELOW, _approximate_prompt_tokens, task)
        call.facts["prompt_tokens"] = prompt
        limit = req.token_limit if req.token_limit is not None else self.default_max_tokens
        return prompt + limit * req.n

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
