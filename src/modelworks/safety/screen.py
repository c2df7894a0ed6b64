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
from modelworks.safety.policy import ContentFilterPolicy, Direction

log = logging.getLogger("modelworks.safety")

FILTER_ERROR = {"code": "content_filter_error", "message": "The contents are not filtered"}


@dataclass(slots=True)
class Decision:
    direction: str             # prompt or completion
    index: int                 # which prompt part (message) or choice
    detector: str              # pii, blocklist, profanity, harm, jailbreak, indirect_attack
    category: str              # e.g. email, a blocklist's name, hate
    score: float               # 1.0 for exact matches; a classifier's probability otherwise
    threshold: float | None    # the score (or severity) from which it filters; None for exact matches
    action: str                # block, redact or annotate
    span: tuple[int, int] | None = None

    def as_dict(self) -> dict:
        out = {"direction": self.direction, "index": self.index, "detector": self.detector,
               "category": self.category, "score": round(self.score, 4), "threshold": self.threshold,
               "action": self.action}
        if self.span is not None:
            out["span"] = list(self.span)
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
                 profanity: Blocklist | None = None) -> None:
        self.policy = policy
        self.blocklists = list(blocklists)
        self.profanity = profanity

    def prompt(self, parts: list[str]) -> Outcome:
        return self._screen("prompt", self.policy.prompt, parts)

    def completion(self, text: str, index: int = 0) -> Outcome:
        return self._screen("completion", self.policy.completion, [text], first_index=index)

    def _screen(self, direction: str, rules: Direction, parts: list[str], first_index: int = 0) -> Outcome:
        out = Outcome()
        try:
            self._pii(direction, rules, parts, out, first_index)
            self._lists(direction, rules, parts, out, first_index)
        except Exception:  # noqa: BLE001 - a detector's failure is an annotation, not a failed request
            log.warning("a content filter check failed", exc_info=True)
            out.failed = True
            out.results["error"] = dict(FILTER_ERROR)
        return out

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
        normalized = [normalize(t) for t in parts] if self.blocklists or self.profanity else []
        if self.profanity is not None and rules.profanity != "off":
            detected = False
            for i, text in enumerate(parts):
                for hit in self.profanity.find(text, normalized[i]):
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
