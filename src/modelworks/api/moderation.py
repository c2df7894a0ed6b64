"""OpenAI's moderation API, `POST /v1/moderations`, on the built-in classifiers.

Categories: `hate`, `harassment` (the hate classifier: its training data folds harassment into hate),
`self-harm`, `sexual`, `violence` come from their classifiers, flagged from a score of 0.5 (severity medium);
`illicit` (asking for help with something harmful or illegal) from the harmful-request classifier, flagged from
its threshold. The finer categories (`hate/threatening`, `sexual/minors`, `violence/graphic`, the self-harm kinds,
`illicit/violent`) carry their parent's score but are never flagged on their own: no classifier tells them apart
yet. `flagged` is true when any category is, or when the `flagged` classifier (harmful in any way, trained on
OpenAI's own moderation labels) reaches its threshold. An array input gets one result per string (or per text
part; image parts are refused with a 400 naming them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelworks.api.http import JSONResult
from modelworks.api.request import Request
from modelworks.errors import Unsupported
from modelworks.offload import offload
from modelworks.policies.chain import Call, PolicyChain
from modelworks.protocol.parse import parse_request
from modelworks.protocol.render import new_id
from modelworks.protocol.requests import ModerationRequest

if TYPE_CHECKING:
    from modelworks.safety.classifier import TextSafetyModel

MODEL_NAME = "modelworks-text-safety-v2"
_PARENT = {"hate": "hate", "hate/threatening": "hate", "harassment": "hate", "harassment/threatening": "hate",
           "self-harm": "self_harm", "self-harm/intent": "self_harm", "self-harm/instructions": "self_harm",
           "sexual": "sexual", "sexual/minors": "sexual", "violence": "violence", "violence/graphic": "violence",
           "illicit": "harmful_request", "illicit/violent": "harmful_request"}
_FLAGGABLE = {"hate", "harassment", "self-harm", "sexual", "violence", "illicit"}


class ModerationHandlers:
    def __init__(self, chain: PolicyChain, model_loader, max_body: int) -> None:
        self.chain = chain
        self.model_loader = model_loader
        self.max_body = max_body

    async def create(self, request: Request) -> JSONResult:
        call = Call(operation="moderations", headers=request.headers)
        await self.chain.authenticate(call)
        req = await parse_request(ModerationRequest, await request.body(self.max_body))
        texts = _texts(req.input)
        results = await offload(_results, self.model_loader, texts)  # ~16 ms a 126-token window (up to 32 a text): off the event loop
        return JSONResult({"id": new_id("modr-"), "model": req.model or MODEL_NAME, "results": results})


def _results(model_loader, texts: list[str]) -> list[dict]:
    model: TextSafetyModel = model_loader()
    return [_result(model, t) for t in texts]


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif item.type == "text":
            out.append(item.text)
        else:
            raise Unsupported("Only text is moderated here; image inputs are not supported.", param=f"input[{i}]")
    return out


def _result(model: TextSafetyModel, text: str) -> dict:
    values = model.score(text, every_window=True).values if text else {h: 0.0 for h in model.heads}
    scores = {name: round(float(values.get(parent, 0.0)), 6) for name, parent in _PARENT.items()}
    categories = {name: name in _FLAGGABLE and _PARENT[name] in model.thresholds
                  and scores[name] >= model.thresholds[_PARENT[name]] for name in _PARENT}
    flagged = any(categories.values()) or values.get("flagged", 0.0) >= model.thresholds.get("flagged", 1.0)
    return {"flagged": flagged, "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": {name: ["text"] for name in scores}}
