"""Admin commands of the CLI, over the admin API: `modelworks projects|keys|deployments|blocklists|usage|audit`.

The server is `--url` (or MODELWORKS_URL, default http://127.0.0.1:8000); the key is `--api-key` (or
MODELWORKS_API_KEY). Answers are printed as JSON; `audit export` prints JSON Lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def add_commands(sub) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=os.environ.get("MODELWORKS_URL", "http://127.0.0.1:8000"))
        p.add_argument("--api-key", default=os.environ.get("MODELWORKS_API_KEY"))
        return p

    projects = sub.add_parser("projects", help="projects (tenants)").add_subparsers(dest="action", required=True)
    p = common(projects.add_parser("list"))
    p.add_argument("--status", choices=["active", "archived"])
    p = common(projects.add_parser("create"))
    p.add_argument("name")
    p.add_argument("--monthly-token-cap", type=int)
    p.add_argument("--monthly-cost-cap", type=float)
    p = common(projects.add_parser("show"))
    p.add_argument("project_id", metavar="project", help="its id or name")
    p = common(projects.add_parser("archive", help="revoke its keys, refuse new ones, keep its usage and audit"))
    p.add_argument("project_id", metavar="project", help="its id or name")
    p = common(projects.add_parser("delete", help="only an empty project (no usage, no live keys); else archive it"))
    p.add_argument("project_id", metavar="project", help="its id or name")

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    p = common(keys.add_parser("list"))
    p.add_argument("--project", help="its id or name")
    p = common(keys.add_parser("create"))
    p.add_argument("--project", help="its id or name; default: the calling key's project")
    p.add_argument("--name", help="default: the key's id")
    p.add_argument("--role", choices=["admin", "project_admin", "user"], default="user")
    p.add_argument("--expires", help="ISO 8601 time, e.g. 2027-01-31T00:00:00Z")
    p = common(keys.add_parser("revoke"))
    p.add_argument("key_id")

    deps = sub.add_parser("deployments", help="deployments").add_subparsers(dest="action", required=True)
    common(deps.add_parser("list"))
    p = common(deps.add_parser("show"))
    p.add_argument("name")
    for verb in ("create", "update"):
        p = common(deps.add_parser(verb))
        p.add_argument("name")
        p.add_argument("--backend", action="append", dest="backends", required=verb == "create",
                       help="a configured backend (repeat for several)")
        p.add_argument("--model")
        p.add_argument("--type", dest="deployment_type")
        p.add_argument("--region")
        p.add_argument("--data-zone", choices=["EU", "US"])
        p.add_argument("--tpm", type=int)
        p.add_argument("--rpm", type=int)
        p.add_argument("--content-filter", dest="content_filter_policy")
        p.add_argument("--price-input-per-1k", type=float)
        p.add_argument("--price-output-per-1k", type=float)
        p.add_argument("--enabled", choices=["true", "false"])
        p.add_argument("--spillover", help="provisioned types: the standard deployment taking overflow")
    p = common(deps.add_parser("delete"))
    p.add_argument("name")

    lists = sub.add_parser("blocklists", help="custom blocklists of a project").add_subparsers(dest="action",
                                                                                              required=True)
    p = common(lists.add_parser("list"))
    p.add_argument("--project", help="its id or name")
    p = common(lists.add_parser("create"))
    p.add_argument("name")
    p.add_argument("--project", help="its id or name; default: the calling key's project")
    p.add_argument("--description")
    for verb in ("show", "delete", "items"):
        common(lists.add_parser(verb)).add_argument("blocklist_id")
    p = common(lists.add_parser("add"))
    p.add_argument("blocklist_id")
    p.add_argument("--term", action="append", default=[], help="a word or phrase (repeat for several)")
    p.add_argument("--regex", action="append", default=[], help="a regular expression (repeat for several)")
    p = common(lists.add_parser("remove"))
    p.add_argument("blocklist_id")
    p.add_argument("item_id")

    usage = common(sub.add_parser("usage", help="usage aggregated by day, deployment and key"))
    usage.add_argument("--group-by", default="day,deployment,key")
    usage.add_argument("--since")
    usage.add_argument("--until")
    usage.add_argument("--project", help="its id or name")
    usage.add_argument("--csv", action="store_true")

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="action", required=True)
    p = common(audit.add_parser("list"))
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    common(audit.add_parser("verify"))
    common(audit.add_parser("export"))


ADMIN_COMMANDS = ("projects", "keys", "deployments", "blocklists", "usage", "audit")
_DEPLOYMENT_FIELDS = ("backends", "model", "deployment_type", "region", "data_zone", "tpm", "rpm",
                      "content_filter_policy", "price_input_per_1k", "price_output_per_1k", "spillover")


def _deployment_body(args: argparse.Namespace, with_name: bool) -> dict:
    body = _drop_none({f: getattr(args, f) for f in _DEPLOYMENT_FIELDS})
    if args.enabled is not None:
        body["enabled"] = args.enabled == "true"
    if with_name:
        body["name"] = args.name
    return body


def run(args: argparse.Namespace) -> int:
    if not args.api_key:
        print("modelworks: give --api-key or set MODELWORKS_API_KEY", file=sys.stderr)
        return 2
    if args.command == "usage":
        query = urllib.parse.urlencode(_drop_none({"group_by": args.group_by, "since": args.since,
                                                   "until": args.until, "project_id": args.project,
                                                   "format": "csv" if args.csv else None}))
        args.action = "csv" if args.csv else "json"
    route = {
        ("usage", "json"): lambda: ("GET", f"/admin/v1/usage?{query}", None),
        ("usage", "csv"): lambda: ("GET", f"/admin/v1/usage?{query}", None),
        ("projects", "list"): lambda: ("GET", "/admin/v1/projects" + (f"?status={_q(args.status)}" if args.status
                                                                       else ""), None),
        ("projects", "create"): lambda: ("POST", "/admin/v1/projects", _drop_none(
            {"name": args.name, "monthly_token_cap": args.monthly_token_cap,
             "monthly_cost_cap": args.monthly_cost_cap})),
        ("projects", "show"): lambda: ("GET", f"/admin/v1/projects/{_q(args.project_id)}", None),
        ("projects", "archive"): lambda: ("POST", f"/admin/v1/projects/{_q(args.project_id)}/archive", None),
        ("projects", "delete"): lambda: ("DELETE", f"/admin/v1/projects/{_q(args.project_id)}", None),
        ("keys", "list"): lambda: ("GET", "/admin/v1/keys" + (f"?project_id={_q(args.project)}" if args.project
                                                               else ""), None),
        ("keys", "create"): lambda: ("POST", "/admin/v1/keys", _drop_none(
            {"name": args.name, "role": args.role, "project_id": args.project, "expires_at": args.expires})),
        ("keys", "revoke"): lambda: ("DELETE", f"/admin/v1/keys/{_q(args.key_id)}", None),
        ("deployments", "list"): lambda: ("GET", "/admin/v1/deployments", None),
        ("deployments", "show"): lambda: ("GET", f"/admin/v1/deployments/{_q(args.name)}", None),
        ("deployments", "create"): lambda: ("POST", "/admin/v1/deployments", _deployment_body(args, True)),
        ("deployments", "update"): lambda: ("PATCH", f"/admin/v1/deployments/{_q(args.name)}",
                                            _deployment_body(args, False)),
        ("deployments", "delete"): lambda: ("DELETE", f"/admin/v1/deployments/{_q(args.name)}", None),
        ("blocklists", "list"): lambda: ("GET", "/admin/v1/blocklists" + (
            f"?project_id={_q(args.project)}" if args.project else ""), None),
        ("blocklists", "create"): lambda: ("POST", "/admin/v1/blocklists", _drop_none(
            {"name": args.name, "project_id": args.project, "description": args.description})),
        ("blocklists", "show"): lambda: ("GET", f"/admin/v1/blocklists/{_q(args.blocklist_id)}", None),
        ("blocklists", "delete"): lambda: ("DELETE", f"/admin/v1/blocklists/{_q(args.blocklist_id)}", None),
        ("blocklists", "items"): lambda: ("GET", f"/admin/v1/blocklists/{_q(args.blocklist_id)}/items", None),
        ("blocklists", "add"): lambda: ("POST", f"/admin/v1/blocklists/{_q(args.blocklist_id)}/items", {"items": [
            *({"kind": "term", "value": t} for t in args.term), *({"kind": "regex", "value": r} for r in args.regex)]}),
        ("blocklists", "remove"): lambda: (
            "DELETE", f"/admin/v1/blocklists/{_q(args.blocklist_id)}/items/{_q(args.item_id)}", None),
        ("audit", "list"): lambda: ("GET", f"/admin/v1/audit?after={args.after}&limit={args.limit}", None),
        ("audit", "verify"): lambda: ("GET", "/admin/v1/audit/verify", None),
        ("audit", "export"): lambda: ("GET", "/admin/v1/audit/export", None),
    }[(args.command, args.action)]
    method, path, body = route()
    status, text = _request(args.url, args.api_key, method, path, body)
    if status >= 400:
        print(f"modelworks: {status}: {_error_message(text)}", file=sys.stderr)
        return 1
    if (args.command, args.action) in (("audit", "export"), ("usage", "csv")):
        sys.stdout.write(text)
        return 0
    data = json.loads(text)
    print(json.dumps(data, indent=2))
    if (args.command, args.action) == ("keys", "create"):
        print(f"\nThe key (shown this once): {data['key']}", file=sys.stderr)
    if (args.command, args.action) == ("audit", "verify") and not data["ok"]:
        return 3
    return 0


def _request(base: str, key: str, method: str, path: str, body: dict | None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                     headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return 599, json.dumps({"error": {"message": f"cannot reach {base}: {exc.reason}"}})


def _error_message(text: str) -> str:
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text[:300]


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")
