"""Content filtering in the chain: the prompt is screened at admission, the completion before it is returned.

A deployment without a `content_filter` policy is not screened and carries no annotations. With one, the
prompt's parts (chat messages, completion prompts) are screened after the quota admitted the call: a blocked
prompt is Azure's 400 `content_filter` (its quota charge goes back, as for any refused call), redacted PII is
replaced in the request before any backend sees it, and `prompt_filter_results` goes on the answer. Each
choice of a completion is screened in turn: blocked, it ends with `finish_reason: "content_filter"` and no
content; redacted, its text is replaced; either way it carries `content_filter_results`.
Decisions (detector, score, threshold, span) are kept in `call.facts["safety"]` for the request log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import orjson

from modelworks.backends.base import Delta, Generation
from modelworks.errors import ContentFiltered, ModelworksError, Unavailable
from modelworks.offload import offload, run_sized
from modelworks.policies.chain import Call
from modelworks.safety.blocklist import Blocklist, profanity
from modelworks.safety.judge import JudgeError, LlmJudge
from modelworks.safety.policy import HARM_CATEGORIES, ContentFilterPolicy
from modelworks.safety.screen import Outcome, Screen, redact_parts
from modelworks.safety.stream import StreamScreen

log = logging.getLogger("modelworks.safety")
RETRY_LOAD_S = 60.0  # after classifiers failed to load, requests fail their checks this long before a new try


INLINE_BELOW = 256  # characters (or body bytes) screened on the event loop; more go to the CPU pool

_SEVERITY_OF_OUTCOME = ("passed", "annotated", "redacted", "error", "blocked")  # a call keeps its worst


class ProjectBlocklists:
    """Each project's blocklists, compiled, read again when they changed (checked at most every `refresh_s`)."""

    def __init__(self, service, refresh_s: float = 5.0) -> None:
        self.service = service
        self.refresh_s = refresh_s
        self._cache: dict[str, tuple[float, object, dict[str, Blocklist]]] = {}
        self._loading: dict[str, asyncio.Future] = {}

    async def get(self, project_id: str) -> dict[str, Blocklist]:
        entry = self._cache.get(project_id)
        if entry is not None and time.monotonic() - entry[0] < self.refresh_s:
            return entry[2]
        pending = self._loading.get(project_id)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._load, project_id, entry))
            self._loading[project_id] = pending
            pending.add_done_callback(lambda _: self._loading.pop(project_id, None))
        return await asyncio.shield(pending)

    def _load(self, project_id: str, entry) -> dict[str, Blocklist]:
        version = self.service.version(project_id)
        if entry is not None and entry[1] == version:
            lists = entry[2]
        else:
            lists = {name: Blocklist(name, terms, patterns, ids)
                     for name, (terms, patterns, ids) in self.service.with_ids(project_id).items()}
        self._cache[project_id] = (time.monotonic(), version, lists)
        return lists

    def forget(self, project_id: str) -> None:
        self._cache.pop(project_id, None)


class SafetyPolicy:
    stage = "admit"

    def __init__(self, policies: dict[str, ContentFilterPolicy], blocklists: ProjectBlocklists | None = None,
                 content_log=None, gateway=None, model_loader=None) -> None:
        self.policies = policies
        self.model_loader = model_loader or _default_loader
        self.gateway = gateway  # for the policies that ask an LLM judge (a deployment)
        self.blocklists = blocklists
        self.content_log = content_log  # control.content_log.ContentLog: text of the deployments that opt in
        self.profanity = profanity()
        self.model = None  # the classifiers: loaded when the first policy that classifies is used
        self._retry_load_at = 0.0
        self._screens: dict[str, Screen] = {}
        self.errors = 0  # checks that failed (their requests were served, annotated, unless fail-closed)

    async def warm(self) -> None:
        """Load the classifiers now, off the event loop, if any policy uses them. A failure does not stop the
        server: the first request that needs them tries again (and fails as its policy says, below)."""
        if self.model is None and any(_classifies(p) for p in self.policies.values()):
            try:
                self.model = await offload(lambda: self.model_loader().load())
            except Exception:  # noqa: BLE001 - logged; the deployments without filters serve regardless
                log.exception("the content-safety classifiers could not be loaded")

    async def screen_for(self, call: Call) -> Screen | None:
        route = call.route
        name = route.info.get("content_filter_policy") if route is not None else None
        if not name or call.task is None:
            return None
        screen = self._screens.get(name)
        if screen is None:
            policy = self.policies.get(name)
            if policy is None:  # deployments are checked against the policies when made; a removed one is default
                log.warning("deployment %s names an unknown content filter policy %r: using default",
                            route.deployment, name)
                policy = self.policies["default"]
            if self.model is None and _classifies(policy):
                if time.monotonic() < self._retry_load_at:
                    return _unloaded(policy, self.profanity)
                try:
                    self.model = await offload(lambda: self.model_loader().load())  # seconds the first time
                except Exception:  # noqa: BLE001 - as a failed check: annotated, or refused when fail-closed
                    log.exception("the content-safety classifiers could not be loaded; trying again in %s s",
                                  RETRY_LOAD_S)
                    self._retry_load_at = time.monotonic() + RETRY_LOAD_S
                    return _unloaded(policy, self.profanity)
            screen = self._screens[name] = Screen(policy, profanity=self.profanity, model=self.model,
                                                  judged=policy.judge is not None)
        if screen.policy.blocklists and self.blocklists is not None and call.principal is not None:
            lists = await self.blocklists.get(call.principal.project_id)
            chosen = [lists[n] for n in screen.policy.blocklists if n in lists]
            if chosen:
                screen = Screen(screen.policy, blocklists=chosen, profanity=self.profanity, model=self.model,
                                judged=screen.judged)
        return screen

    async def admit(self, call: Call) -> None:
        screen = await self.screen_for(call)
        if screen is None:
            return
        call.facts["screen"] = screen
        # screening grows with the prompt (milliseconds per few thousand characters): off the event loop
        inline = INLINE_BELOW if screen.model is None else 0  # a classifier call can take milliseconds at any size
        parts, roles, outcome = await run_sized(len(call.task.body), inline, _screen_prompt, screen, call.task)
        if screen.judged:
            await self._judge(screen, outcome, "prompt", _asked(parts, roles))
        self._record(call, outcome, screen)
        if outcome.blocked:
            if screen.policy.log_content:  # refused prompts are what reviewers most want to see
                call.facts["logged_prompt"] = parts
                self._log(call, screen, [])
            raise ContentFiltered(outcome.results)
        if outcome.redactions:
            parts = await run_sized(len(call.task.body), INLINE_BELOW, _redact_prompt, call.task, parts,
                                    outcome.redactions)
        if screen.policy.log_content:
            call.facts["logged_prompt"] = parts
        call.facts["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": outcome.results}]
        call.facts["annotation_frame"] = screen.policy.annotation_frame

    async def review(self, call: Call, result: Generation) -> None:
        """Screen each choice of a finished completion, in place."""
        screen = call.facts.get("screen")
        if screen is None:
            return
        asked = None
        for choice in result.choices:
            message = choice.get("message")
            text = (message.get("content") or "") if message is not None else (choice.get("text") or "")
            inline = INLINE_BELOW if screen.model is None else 0
            outcome = await run_sized(len(text), inline, screen.completion, text, index=choice.get("index", 0))
            if screen.judged and text:
                if asked is None:
                    asked = _asked(*_prompt_parts(call.task))
                await self._judge(screen, outcome, "completion", text, answering=asked,
                                  index=choice.get("index", 0))
            self._record(call, outcome, screen)
            if outcome.blocked:
                choice["finish_reason"] = "content_filter"
                text = ""
            elif outcome.redactions:
                text = redact_parts([text], outcome.redactions, first=choice.get("index", 0))[0]
            if message is not None:
                message["content"] = text if (text or outcome.blocked) else message.get("content")
            else:
                choice["text"] = text
            choice["content_filter_results"] = outcome.results
        self._log(call, screen, [(c.get("message") or {}).get("content") or c.get("text") or "" for c in result.choices])

    def review_stream(self, call: Call, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        """Screen a streamed completion as it goes (the policy's `stream_mode`)."""
        screen = call.facts.get("screen")
        if screen is None:
            return deltas
        if screen.judged:  # the judge answers about whole texts: streams keep the classifiers
            screen = screen.unjudged()
        watcher = StreamScreen(screen, lambda outcome: self._record(call, outcome, screen))
        return self._log_stream(call, screen, watcher, watcher.wrap(deltas))

    async def _log_stream(self, call: Call, screen: Screen, watcher: StreamScreen, deltas: AsyncIterator[Delta]):
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()
            # what the client was sent of each choice (released text; all of it in async mode)
            self._log(call, screen, [c.text[:c.released] for _, c in sorted(watcher.choices.items())])

    async def _judge(self, screen: Screen, outcome: Outcome, direction: str, text: str, answering: str | None = None,
                     index: int = 0) -> None:
        try:
            if self.gateway is None:
                raise JudgeError("no gateway to reach the judge deployment")
            severities, codes = await LlmJudge(self.gateway, screen.policy.judge.deployment).assess(text, answering)
        except (JudgeError, ModelworksError) as exc:
            log.warning("content filter judge failed: %s", exc)
            screen.judge_failed(outcome)
            return
        screen.apply_judgement(direction, severities, codes, outcome, index)

    def _log(self, call: Call, screen: Screen, completions: list[str]) -> None:
        if not screen.policy.log_content or self.content_log is None or "logged_prompt" not in call.facts:
            return
        who = call.principal
        self.content_log.record(project_id=who.project_id if who else None, key_id=who.key_id if who else None,
                                deployment=call.route.deployment, outcome=call.facts.get("filter_outcome"),
                                prompt=call.facts.pop("logged_prompt"), completion=completions,
                                retention_days=screen.policy.content_retention_days)

    def _record(self, call: Call, outcome: Outcome, screen: Screen) -> None:
        if outcome.failed:
            self.errors += 1
            if screen.policy.fail_closed:
                raise Unavailable("The content filter could not check this request, and the deployment's policy "
                                  "refuses what it cannot check. Retry shortly.")
        decisions = call.facts.setdefault("safety", [])
        decisions.extend(d.as_dict() for d in outcome.decisions)
        call.facts["filter_outcome"] = max(call.facts.get("filter_outcome") or "passed", outcome.outcome,
                                           key=_SEVERITY_OF_OUTCOME.index)


class _Unloaded:
    """Stands in for classifiers that failed to load: every check fails, so `fail_closed` decides."""

    heads = ("hate", "sexual", "violence", "self_harm", "flagged", "jailbreak", "harmful_request")
    thresholds = {h: 0.5 for h in heads}

    def score(self, text: str):
        raise RuntimeError("the content-safety classifiers are not loaded")


def _unloaded(policy: ContentFilterPolicy, profanity) -> Screen:
    return Screen(policy, profanity=profanity, model=_Unloaded(), judged=policy.judge is not None)


def _default_loader():
    from modelworks.safety.classifier import default_model  # NumPy and ONNX Runtime: only when needed

    return default_model()


def _classifies(policy: ContentFilterPolicy) -> bool:
    sides = (policy.prompt, policy.completion)
    return (policy.jailbreak != "off" or policy.indirect_attack != "off" or policy.harmful_request != "off"
            or any(side.harm(c).min_severity is not None for side in sides for c in HARM_CATEGORIES))


def _screen_prompt(screen: Screen, task) -> tuple[list[str], list[str], Outcome]:
    parts, roles = _prompt_parts(task)
    return parts, roles, screen.prompt(parts, roles)


def _asked(parts: list[str], roles: list[str]) -> str:
    """What the user asked, for the judge: the prompt's non-assistant parts, in order."""
    return "\n\n".join(t for t, r in zip(parts, roles) if r != "assistant" and t)


def _prompt_parts(task) -> tuple[list[str], list[str]]:
    """The prompt's texts and their roles (chat messages; a completion prompt is the user's)."""
    req = task.request
    if task.is_chat:
        return [m.text() for m in req.messages], [m.role for m in req.messages]
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt], ["user"]
    if prompt and isinstance(prompt[0], str):
        return list(prompt), ["user"] * len(prompt)
    return [], []  # token ids: nothing to read


def _redact_prompt(task, parts: list[str], redactions) -> list[str]:
    parts = redact_parts(parts, redactions)
    _rewrite_prompt(task, parts)
    return parts


def _rewrite_prompt(task, parts: list[str]) -> None:
    """Put redacted text into the request the backend will see (its JSON body and its parsed form)."""
    raw = orjson.loads(task.body) if task.body else task.request.model_dump(exclude_none=True, by_alias=True)
    if task.is_chat:
        for message, text in zip(raw["messages"], parts):
            content = message.get("content")
            if isinstance(content, list):
                others = [p for p in content if p.get("type") not in ("text", "refusal")]
                message["content"] = [{"type": "text", "text": text}, *others]
            elif content is not None:
                message["content"] = text
    else:
        raw["prompt"] = parts[0] if isinstance(raw.get("prompt"), str) else parts
    task.request = type(task.request).model_validate(raw)
    task.body = orjson.dumps(raw)
    task.prompt_ids = None
