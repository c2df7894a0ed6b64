"""Content-filter policies: what a deployment checks, on prompts and completions, and what each finding does.

A deployment names its policy (`content_filter: strict`); policies are defined under `content_filters` in the
config. `default` is Azure's default unless redefined: harm categories filtered from medium severity on both
sides, prompt attacks blocked, harmful requests and PII annotated. Actions: `block` refuses a prompt (400 `content_filter`) or ends a
completion (`finish_reason: content_filter`); `redact` replaces PII with its kind (`[EMAIL]`) before the model
or the client sees it; `annotate` only reports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelworks.safety.pii import KINDS

HARM_CATEGORIES = ("hate", "sexual", "violence", "self_harm")
SEVERITY_LEVELS = {"low": 2, "medium": 4, "high": 6}  # the lowest 0-7 severity of each level


def severity_level(severity: int) -> str:
    """Azure's mapping of the 0-7 scale: safe 0-1, low 2-3, medium 4-5, high 6-7."""
    return "safe" if severity < 2 else "low" if severity < 4 else "medium" if severity < 6 else "high"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HarmRule(_Strict):
    threshold: Literal["low", "medium", "high", "off"] = Field(
        default="medium", description="filter from this severity up; off: neither checked nor annotated")
    action: Literal["block", "annotate"] = "block"

    @property
    def min_severity(self) -> int | None:
        return SEVERITY_LEVELS.get(self.threshold)


class PiiRule(_Strict):
    action: Literal["block", "redact", "annotate", "off"] = "annotate"
    kinds: list[Literal[KINDS]] = Field(default_factory=lambda: list(KINDS))  # type: ignore[valid-type]


class Direction(_Strict):
    """The checks of one side: the prompt or the completion."""

    hate: HarmRule = HarmRule()
    sexual: HarmRule = HarmRule()
    violence: HarmRule = HarmRule()
    self_harm: HarmRule = HarmRule()
    pii: PiiRule = PiiRule()
    profanity: Literal["block", "annotate", "off"] = "annotate"
    blocklists: Literal["block", "annotate"] = "block"

    def harm(self, category: str) -> HarmRule:
        return getattr(self, category)


class JudgeSettings(_Strict):
    deployment: str = Field(description="a deployment that answers like Llama Guard (`safe` / `unsafe` + codes)")


class ContentFilterPolicy(_Strict):
    prompt: Direction = Direction()
    completion: Direction = Direction()
    jailbreak: Literal["block", "annotate", "off"] = Field(default="block", description="user prompt attacks")
    indirect_attack: Literal["block", "annotate", "off"] = Field(
        default="annotate", description="instructions hidden in tool results and documents")
    harmful_request: Literal["block", "annotate", "off"] = Field(
        default="annotate", description="a user asking for help with something harmful (\"how do I make a pipe "
                                        "bomb\"), which need not be harmful text of any category; annotated as "
                                        "`harmful_request`. Annotated by default: its classifier still flags too many "
                                        "safe look-alikes to block on its own (see the card)")
    blocklists: list[str] = Field(default_factory=list, description="names of the project's blocklists to apply")
    judge: JudgeSettings | None = Field(default=None, description="harm categories from an LLM judge instead of the "
                                                                  "built-in classifiers (prompts and whole answers; "
                                                                  "streams keep the classifiers)")
    fail_closed: bool = Field(default=False, description="refuse (503) when a check fails, instead of serving "
                                                         "the request with a content_filter_error annotation")
    stream_mode: Literal["buffered", "async"] = Field(
        default="buffered", description="buffered: completions are checked before release; async: streamed at once, "
                                        "checked behind, cut within one check chunk of a violation")
    stream_check_chars: int = Field(default=1000, ge=50, le=20000, description="characters per output check")
    annotation_frame: bool = Field(default=True, description="streams start with an annotation-only frame "
                                                             "(empty choices), as Azure's do")
    log_content: bool = Field(default=False, description="keep prompt and completion text with the decisions")
    content_retention_days: int = Field(default=30, ge=1, le=3650)


def builtin_policies() -> dict[str, ContentFilterPolicy]:
    return {"default": ContentFilterPolicy()}
