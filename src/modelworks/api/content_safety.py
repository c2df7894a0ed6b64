"""Azure AI Content Safety's text APIs on the built-in classifiers, for its official SDK and REST clients.

`POST /contentsafety/text:analyze`: a severity per harm category (`Hate`, `SelfHarm`, `Sexual`, `Violence`;
`FourSeverityLevels` answers 0, 2, 4 or 6, `EightSeverityLevels` 0-7) and the matches of the caller's project
blocklists named in `blocklistNames`. `POST /contentsafety/text:shieldPrompt`: whether the user prompt, and each
document, carries a prompt attack. The key goes in `Ocp-Apim-Subscription-Key` (or `api-key`, or a bearer token).
"""

from __future__ import annotations

from modelworks.api.http import JSONResult
from modelworks.api.request import Request
from modelworks.errors import InvalidRequest, MissingApiVersion
from modelworks.offload import offload
from modelworks.policies.chain import Call, PolicyChain
from modelworks.protocol.api_version import api_version_supported
from modelworks.protocol.parse import parse_request
from modelworks.protocol.requests import AnalyzeTextRequest, ShieldPromptRequest

CATEGORIES = {"Hate": "hate", "SelfHarm": "self_harm", "Sexual": "sexual", "Violence": "violence"}


class ContentSafetyHandlers:
    def __init__(self, chain: PolicyChain, model_loader, blocklists, max_body: int) -> None:
        self.chain = chain
        self.model_loader = model_loader
        self.blocklists = blocklists  # policies.safety.ProjectBlocklists
        self.max_body = max_body

    async def analyze(self, request: Request) -> JSONResult:
        call = await self._authenticate(request, "contentsafety.analyze")
        req = await parse_request(AnalyzeTextRequest, await request.body(self.max_body))
        matches = []
        if req.blocklist_names:
            lists = await self.blocklists.get(call.principal.project_id)
            missing = [n for n in req.blocklist_names if n not in lists]
            if missing:
                raise InvalidRequest(f"No blocklist named {', '.join(missing)} in this project.",
                                     param="blocklistNames", code="InvalidRequestBody")
            matches = await offload(_blocklist_matches, [(name, lists[name]) for name in req.blocklist_names],
                                    req.text)
        analysis = []
        if not (matches and req.halt_on_blocklist_hit):
            scores = await offload(lambda: self.model_loader().score(req.text, every_window=True))
            for category in req.categories or list(CATEGORIES):
                severity = scores.severity(CATEGORIES[category])
                if req.output_type == "FourSeverityLevels":
                    severity = 2 * (severity // 2)
                analysis.append({"category": category, "severity": severity})
        return JSONResult({"blocklistsMatch": matches, "categoriesAnalysis": analysis})

    async def shield_prompt(self, request: Request) -> JSONResult:
        await self._authenticate(request, "contentsafety.shield")
        req = await parse_request(ShieldPromptRequest, await request.body(self.max_body))
        if req.user_prompt is None and not req.documents:
            raise InvalidRequest("Give a userPrompt, documents, or both.", param="userPrompt")
        return JSONResult(await offload(_shield, self.model_loader, req))

    async def _authenticate(self, request: Request, operation: str) -> Call:
        version = request.query("api-version")
        if version is None:
            raise MissingApiVersion("Missing the required query parameter 'api-version' (for example "
                                    "api-version=2024-09-01).", param="api-version")
        if not api_version_supported(version):
            raise InvalidRequest(f"Unsupported api-version '{version[:40]}'. Use a dated version such as 2024-09-01.",
                                 param="api-version", code="InvalidRequestBody")
        call = Call(operation=operation, headers=request.headers)
        await self.chain.authenticate(call)
        return call


def _blocklist_matches(lists, text: str) -> list[dict]:
    matches = []
    for name, blocklist in lists:
        for hit in blocklist.find(text):
            matches.append({"blocklistName": name, "blocklistItemId": blocklist.ids.get(hit.item, hit.item),
                            "blocklistItemText": hit.item})
    return matches


def _shield(model_loader, req: ShieldPromptRequest) -> dict:
    model = model_loader()
    threshold = model.thresholds.get("jailbreak", 0.5)
    out: dict = {}
    if req.user_prompt is not None:
        out["userPromptAnalysis"] = {"attackDetected": model.score(req.user_prompt, every_window=True).values["jailbreak"] >= threshold}
    out["documentsAnalysis"] = [{"attackDetected": model.score(d, every_window=True).values["jailbreak"] >= threshold}
                                for d in req.documents or []]
    return out
