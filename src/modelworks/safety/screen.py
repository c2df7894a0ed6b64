"""Screening text against a content-filter policy: findings, what they decide, and Azure's annotations.

A `Screen` runs the policy's detectors over the prompt's parts or over a completion and returns an `Outcome`:
the `content_filter_results` object Azure clients read, whether to block, what to redact, and one explained
`Decision` per finding (detector, category, score, threshold, action, span), kept as request metadata.
Annotations name only the checks that ran: a category never reads "safe" unless it was checked.
A detector that fails leaves Azure's `content_filter_error` annotation; the caller decides (policy
`fail_closed`) whether that refuses the request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from modelworks.safety import pii
from modelworks.safety.blocklist import Blocklist, normalize
from modelworks.safety.policy import HARM_CATEGORIES, ContentFilterPolicy, Direction, severity_level

log = logging.getLogger("modelworks.safety")

FILTER_ERROR = {"code": "content_filter_error", "message": "The contents are not filtered"}


@dataclass(slots=True)
class Decision:
    direction: str             # prompt or completion
    index: int                 # which prompt part (message) or choice
    detector: str              # pii, blocklist, profanity, harm, jailbreak, indirect_attack, harmful_request
    category: str              # e.g. email, a blocklist's name, hate
    score: float               # 1.0 for exact matches; a classifier's probability otherwise
    threshold: float | None    # the score (or severity) from which it filters; None for exact matches
    action: str                # block, redact or annotate
    span: tuple[int, int] | None = None
    stage: str | None = None   # a classifier's: which stage of the cascade scored it (ngram or minilm)

    def as_dict(self) -> dict:
        out = {"direction": self.direction, "index": self.index, "detector": self.detector,
               "category": self.category, "score": round(self.score, 4), "threshold": self.threshold,
               "action": self.action}
        if self.span is not None:
            out["span"] = list(self.span)
        if self.stage is not None:
            out["stage"] = self.stage
        return out


@dataclass(slots=True)
class Outcome:
    results: dict = field(default_factory=dict)             # Azure's content_filter_results
    blocked: bool = False
    redactions: dict[int, list[pii.Match]] = field(default_factory=dict)  # part index -> spans to redact
    decisions: list[Decision] = field(default_factory=list)
    failed: bool = False

    @property
    def outcome(self) -> str:
        """One word for the usage record."""
        if self.blocked:
            return "blocked"
        if self.failed:
            return "error"
        if self.redactions:
            return "redacted"
        return "annotated" if self.decisions else "passed"


class Screen:
    def __init__(self, policy: ContentFilterPolicy, blocklists: list[Blocklist] = (),
                 profanity: Blocklist | None = None, model=None, judged: bool = False) -> None:
        self.policy = policy
        self.blocklists = list(blocklists)
        self.profanity = profanity
        self.model = model  # the harm and attack classifiers (classifier.TextSafetyModel), if any
        self.judged = judged  # harm categories come from the policy's LLM judge, not the classifiers

    def unjudged(self) -> "Screen":
        """The same screen with the classifiers for harm (where the judge cannot follow: streams)."""
        return Screen(self.policy, self.blocklists, self.profanity, self.model, judged=False)

    def prompt(self, parts: list[str], roles: list[str] | None = None) -> Outcome:
        """`roles`: each part's chat role; `tool` parts are documents, checked for indirect attacks."""
        return self._screen("prompt", self.policy.prompt, parts, roles=roles)

    def completion(self, text: str, index: int = 0) -> Outcome:
        return self._screen("completion", self.policy.completion, [text], first_index=index)

    def _screen(self, direction: str, rules: Direction, parts: list[str], first_index: int = 0,
                roles: list[str] | None = None) -> Outcome:
        out = Outcome()
        try:
            if self.model is not None:
                self._classify(direction, rules, parts, out, first_index, roles)
            self._pii(direction, rules, parts, out, first_index)
            self._lists(direction, rules, parts, out, first_index)
        except Exception:  # noqa: BLE001 - a detector's failure is an annotation, not a failed request
            log.warning("a content filter check failed", exc_info=True)
            out.failed = True
            out.results["error"] = dict(FILTER_ERROR)
        return out

    def _classify(self, direction: str, rules: Direction, parts: list[str], out: Outcome, first: int,
                  roles: list[str] | None) -> None:
        categories = [] if self.judged else [c for c in HARM_CATEGORIES if rules.harm(c).min_severity is not None]
        checks = []  # (detector, action, head, which roles)
        if direction == "prompt":
            if self.policy.jailbreak != "off":
                checks.append(("jailbreak", self.policy.jailbreak, "jailbreak", lambda role: role != "tool"))
            if self.policy.indirect_attack != "off":
                checks.append(("indirect_attack", self.policy.indirect_attack, "jailbreak", lambda role: role == "tool"))
            if self.policy.harmful_request != "off" and "harmful_request" in self.model.heads:
                checks.append(("harmful_request", self.policy.harmful_request, "harmful_request",
                               lambda role: role not in ("tool", "system", "developer", "assistant")))
        if not categories and not checks:
            return
        worst = {c: (0, 0.0, None, None, None) for c in categories}           # severity, score, part, span, stage
        found = {name: (0.0, None, None, None) for name, _, _, _ in checks}   # score, part, span, stage
        for i, text in enumerate(parts):
            if not text:
                continue
            scores = self.model.score(text)
            for c in categories:
                severity = scores.severity(c)
                if severity > worst[c][0] or worst[c][2] is None:
                    worst[c] = (severity, scores.values[c], i, scores.window.get(c), scores.stage.get(c))
            role = roles[i] if roles else "user"
            for name, _, head, applies in checks:
                if applies(role) and scores.values[head] > found[name][0]:
                    found[name] = (scores.values[head], i, scores.window.get(head), scores.stage.get(head))
        for c in categories:
            rule = rules.harm(c)
            severity, score, part, span, stage = worst[c]
            hit = severity >= rule.min_severity
            filtered = hit and rule.action == "block"
            out.blocked |= filtered
            out.results[c] = {"filtered": filtered, "severity": severity_level(severity)}
            if hit:
                out.decisions.append(Decision(direction, first + (part or 0), "harm", c, score,
                                              rule.min_severity / 8, rule.action, span, stage))
        for name, action, head, _ in checks:
            score, part, span, stage = found[name]
            threshold = self.model.thresholds.get(head, 0.5)
            detected = score >= threshold
            filtered = detected and action == "block"
            out.blocked |= filtered
            out.results[name] = {"filtered": filtered, "detected": detected}
            if detected:
                out.decisions.append(Decision(direction, first + (part or 0), name, name, score, threshold, action,
                                              span, stage))

    def apply_judgement(self, direction: str, severities: dict[str, int], codes: list[str], out: Outcome,
                        index: int = 0) -> None:
        """Merge an LLM judge's verdict (severity per category, hazard codes) into an outcome."""
        rules = self.policy.prompt if direction == "prompt" else self.policy.completion
        for c in HARM_CATEGORIES:
            rule = rules.harm(c)
            if rule.min_severity is None:
                continue
            severity = severities.get(c, 0)
            hit = severity >= rule.min_severity
            filtered = hit and rule.action == "block"
            out.blocked |= filtered
            out.results[c] = {"filtered": filtered, "severity": severity_level(severity)}
            if hit:
                out.decisions.append(Decision(direction, index, "judge", c, 1.0, rule.min_severity / 8, rule.action))
        out.results["judge"] = {"filtered": False, "detected": bool(codes), "categories": codes}

    def judge_failed(self, out: Outcome) -> None:
        out.failed = True
        out.results["error"] = dict(FILTER_ERROR)

    def _pii(self, direction: str, rules: Direction, parts: list[str], out: Outcome, first: int) -> None:
        rule = rules.pii
        if rule.action == "off":
            return
        kinds = frozenset(rule.kinds)
        details = []
        for i, text in enumerate(parts):
            matches = pii.find(text, kinds)
            for m in matches:
                out.decisions.append(Decision(direction, first + i, "pii", m.kind, 1.0, None, rule.action,
                                              (m.start, m.end)))
                details.append({"type": m.kind, "index": first + i, "offset": m.start, "length": m.end - m.start})
            if matches and rule.action == "redact":
                out.redactions[first + i] = matches
        filtered = bool(details) and rule.action in ("block", "redact")
        out.blocked |= bool(details) and rule.action == "block"
        out.results["pii"] = {"filtered": filtered, "detected": bool(details),
                              "redacted": bool(details) and rule.action == "redact", "details": details}

    def _lists(self, direction: str, rules: Direction, parts: list[str], out: Outcome, first: int) -> None:
        profanity = self.profanity if rules.profanity != "off" else None
        normalized = [normalize(t) for t in parts] if self.blocklists or profanity else []
        if profanity is not None:
            detected = False
            for i, text in enumerate(parts):
                for hit in profanity.find(text, normalized[i]):
                    detected = True
                    out.decisions.append(Decision(direction, first + i, "profanity", "profanity", 1.0, None,
                                                  rules.profanity, (hit.start, hit.end)))
            filtered = detected and rules.profanity == "block"
            out.blocked |= filtered
            out.results["profanity"] = {"filtered": filtered, "detected": detected}
        if self.blocklists:
            details = []
            for blocklist in self.blocklists:
                matched = False
                for i, text in enumerate(parts):
                    for hit in blocklist.find(text, normalized[i]):
                        matched = True
                        out.decisions.append(Decision(direction, first + i, "blocklist", blocklist.name, 1.0, None,
                                                      rules.blocklists, (hit.start, hit.end)))
                if matched:
                    details.append({"filtered": rules.blocklists == "block", "id": blocklist.name})
            filtered = bool(details) and rules.blocklists == "block"
            out.blocked |= filtered
            out.results["custom_blocklists"] = {"filtered": filtered, "details": details}


def redact_parts(parts: list[str], redactions: dict[int, list[pii.Match]], first: int = 0) -> list[str]:
    return [pii.redact(text, redactions[first + i]) if first + i in redactions else text for i, text in enumerate(parts)]
