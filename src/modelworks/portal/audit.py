"""The Audit screen: the trail newest first, paginated and filtered (action prefix, actor, outcome); admins verify
the whole chain and export it as JSON Lines. A project admin reads only their project's entries, as in
`/admin/v1/audit`."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import urlencode

from modelworks.control.plane import ControlPlane
from modelworks.control.principal import ADMIN, PROJECT_ADMIN
from modelworks.protocol.requests import INT32_MAX
from modelworks.errors import Forbidden, InvalidRequest
from modelworks.portal.web import Page, Raw, Visit, require

PAGE_SIZE = 50
OUTCOMES = ("ok", "denied", "error")
_FILTER = re.compile(r"^[A-Za-z0-9_.:-]{0,60}$")
_DIGITS = re.compile(r"[0-9]{1,10}")


class AuditScreen:
    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    async def page(self, visit: Visit, verdict=None) -> Page:
        who = require(visit, (ADMIN, PROJECT_ADMIN), "Only admins and project admins read the audit trail.")
        f = _filters(visit)
        rows = await asyncio.to_thread(self.control.audit.page, project_id=None if who.is_admin else who.project_id,
                                       before=f["before"], limit=PAGE_SIZE + 1, action=f["action"],
                                       actor=f["actor"], outcome=f["outcome"])
        for row in rows:
            row["detail_text"] = json.dumps(row["detail"], sort_keys=True)[:300]
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        shown = {k: v for k, v in f.items() if v and k != "before"}
        return Page("audit.html", {
            "rows": rows, "f": f, "outcomes": OUTCOMES, "is_admin": who.is_admin, "verdict": verdict,
            "next": f"/portal/audit?{urlencode({**shown, 'before': rows[-1]['seq']})}" if more and rows else None,
            "first": f"/portal/audit?{urlencode(shown)}" if f["before"] else None})

    async def verify(self, visit: Visit) -> Page:
        if not visit.who.is_admin:
            raise Forbidden("Only admins verify the whole audit trail.")
        verdict = await asyncio.to_thread(self.control.audit.verify)
        return await self.page(visit, verdict=verdict)

    async def export(self, visit: Visit) -> Raw:
        if not visit.who.is_admin:
            raise Forbidden("Only admins export the whole audit trail.")
        text = await asyncio.to_thread(lambda: "".join(self.control.audit.export_jsonl()))
        return Raw(text.encode(), "application/x-ndjson",
                   headers={"content-disposition": 'attachment; filename="modelworks-audit.jsonl"'})


def _filters(visit: Visit) -> dict:
    request = visit.request
    out: dict = {}
    for name in ("action", "actor"):
        value = (request.query(name) or "").strip()
        if not _FILTER.match(value):
            raise InvalidRequest(f"'{name}' takes letters, digits and . _ : - (at most 60).", param=name)
        out[name] = value or None
    outcome = request.query("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidRequest(f"'outcome' takes {', '.join(OUTCOMES)}.", param="outcome")
    out["outcome"] = outcome
    before = request.query("before")
    if before is not None and (not _DIGITS.fullmatch(before) or int(before) > INT32_MAX):  # seq is an INTEGER
        raise InvalidRequest("'before' is an entry's sequence number.", param="before")
    out["before"] = int(before) if before else None
    return out
