"""An LLM judge for the harm categories: a deployment (Llama Guard 3 on vLLM, say) asked about each text.

A policy with `judge: {deployment: llama-guard}` takes its harm categories from the judge instead of the
built-in classifiers. The judge deployment gets the text as a chat (the prompt as the user's turn; a completion
as the assistant's answer to it) and answers, as Llama Guard does, `safe` or `unsafe` with a line of category
codes. Llama Guard's hazard codes map onto Azure's categories (S1 violent crimes and S9 weapons: violence; S10
hate; S11 self-harm; S3 sex crimes, S4 child exploitation and S12 sexual content: sexual); an unsafe verdict is
severity high (6) in its categories, safe is 0. Codes with no Azure category (fraud, privacy, ...) are reported
in the `judge` annotation and count as a finding of that detector.
"""

from __future__ import annotations

import re

from modelworks.protocol.requests import ChatCompletionRequest

CATEGORY_OF = {"S1": "violence", "S9": "violence", "S10": "hate", "S11": "self_harm", "S3": "sexual",
               "S4": "sexual", "S12": "sexual"}
UNSAFE_SEVERITY = 6


class JudgeError(RuntimeError):
    """The judge did not answer, or answered something that is not a verdict."""


def parse_verdict(text: str) -> tuple[bool, list[str]]:
    """(unsafe, hazard codes) from a Llama Guard style answer."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in ("safe", "unsafe"):
        raise JudgeError(f"the judge's answer is not a verdict: {text[:80]!r}")
    if lines[0].lower() == "safe":
        return False, []
    codes = re.findall(r"S\d+", " ".join(lines[1:]).upper())
    return True, codes


class LlmJudge:
    def __init__(self, gateway, deployment: str) -> None:
        self.gateway = gateway
        self.deployment = deployment

    async def assess(self, text: str, answering: str | None = None) -> tuple[dict[str, int], list[str]]:
        """Severities per Azure category and all hazard codes, for `text` (or for `text` as the answer to
        `answering`)."""
        messages = [{"role": "user", "content": text}] if answering is None else [
            {"role": "user", "content": answering}, {"role": "assistant", "content": text}]
        route = self.gateway.resolve(self.deployment)
        request = ChatCompletionRequest.model_validate({"model": self.deployment, "messages": messages,
                                                        "max_tokens": 20, "temperature": 0})
        try:
            result = await self.gateway.generate(route, self.gateway.generation_task(route, request))
        except Exception as exc:  # noqa: BLE001 - any failure of the judge is a failed check
            raise JudgeError(f"the judge deployment {self.deployment!r} failed: {exc}") from exc
        unsafe, codes = parse_verdict(result.choices[0]["message"].get("content") or "")
        severities = {c: 0 for c in ("hate", "sexual", "violence", "self_harm")}
        for code in codes if unsafe else []:
            category = CATEGORY_OF.get(code)
            if category is not None:
                severities[category] = UNSAFE_SEVERITY
        return severities, codes
