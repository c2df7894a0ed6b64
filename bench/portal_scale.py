"""Bench section "Portal at scale": the Usage and Audit screens with 1,000,000 usage records and 100,000 audit
entries in the store, on SQLite and on PostgreSQL (target: each screen answers in under 1 s).

The records are spread over 90 days, 12 deployments, 200 keys and 20 projects; the audit entries are a real hash
chain (appended through `AuditLog`). A Modelworks server is started on each store, an admin and a project admin
sign in to the portal, and each screen is fetched `runs` times (the median and the worst are reported).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

USAGE_ROWS = 1_000_000
AUDIT_ROWS = 100_000
DAYS = 90
KEY = "mw-bench-portal-key-0123456789"


def fill(database_url: str, data_dir: Path, usage_rows: int = USAGE_ROWS, audit_rows: int = AUDIT_ROWS) -> dict:
    """Migrate a store and fill it; returns how long that took and the ids the screens are asked about."""
    from modelworks.control.audit import AuditLog, Event
    from modelworks.control.bootstrap import bootstrap
    from modelworks.control.keys import KeyService
    from modelworks.control.projects import ProjectService
    from modelworks.metering.usage import COLUMNS, UsageService
    from modelworks.store.db import Database

    started = time.monotonic()
    db = Database(database_url)
    bootstrap(db, KEY)
    projects = ProjectService(db)
    keys = KeyService(db)
    project_ids = [projects.create(f"scale-{i}-{uuid.uuid4().hex[:6]}")["id"] for i in range(20)]
    key_ids = [keys.create(project_ids[i % 20], "user", f"k{i}").record["id"] for i in range(200)]
    padmin = keys.create(project_ids[0], "project_admin", "scale-padmin")
    rng = random.Random(7)
    usage = UsageService(db)
    now = time.time()
    batch = []
    for i in range(usage_rows):
        k = rng.randrange(200)
        at = now - rng.random() * DAYS * 86400
        batch.append(orjson.dumps([uuid.UUID(int=rng.getrandbits(128)).hex, at, project_ids[k % 20], key_ids[k],
                                   f"deployment-{rng.randrange(12)}", "upstream", "local", "chat.completions",
                                   rng.randrange(10, 2000), rng.randrange(1, 800), 0.001, 120.0, 40.0,
                                   200 if rng.random() > 0.02 else 429, None, None, None][:len(COLUMNS)]))
        if len(batch) == 20_000:
            usage.insert_json(batch)
            batch = []
    usage.insert_json(batch)
    audit = AuditLog(db)
    actions = ("key.create", "key.revoke", "deployment.update", "project.update", "auth.failed")
    for start in range(0, audit_rows, 2000):
        audit.append([Event(rng.choice(actions), actor=rng.choice(key_ids), project_id=rng.choice(project_ids),
                            target=f"t{start + j}", detail={"n": start + j})
                      for j in range(min(2000, audit_rows - start))])
    db.dispose()
    return {"fill_s": round(time.monotonic() - started, 1), "padmin_key": padmin.key}


def measure(url: str, padmin_key: str, runs: int) -> dict:
    """Seconds per screen (median and worst of `runs`), as an admin and as a project admin."""
    today = datetime.now(timezone.utc).date()
    month = (today - timedelta(days=29)).isoformat()
    quarter = (today - timedelta(days=DAYS - 1)).isoformat()
    screens = {
        "usage, 14 days by deployment": "/portal/usage",
        "usage, 30 days by key": f"/portal/usage?since={month}&group=key",
        "usage, 90 days by project": f"/portal/usage?since={quarter}&group=project",
        "usage, 90 days, page 3": f"/portal/usage?since={quarter}&group=key&page=3",
        "usage CSV, 30 days by key": f"/portal/usage.csv?since={month}&group=key",
        "audit, newest": "/portal/audit",
        "audit, filtered by action": "/portal/audit?action=key.revoke",
        "audit, an older page": "/portal/audit?before=50000",
    }
    out: dict = {}
    for who, key in (("admin", KEY), ("project admin", padmin_key)):
        client = httpx.Client(base_url=url, timeout=120, follow_redirects=False)
        client.post("/portal/sign-in", data={"key": key}, headers={"origin": url})
        for name, path in screens.items():
            if who == "project admin" and "project" in name:
                continue
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                r = client.get(path)
                times.append(time.perf_counter() - started)
                assert r.status_code == 200, (path, r.status_code, r.text[:200])
            out[f"{who}: {name}"] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    return out


def run(tmp: Path, runs: int = 5, usage_rows: int = USAGE_ROWS, audit_rows: int = AUDIT_ROWS) -> dict:
    from support.servers import start_modelworks

    results: dict = {"usage_rows": usage_rows, "audit_rows": audit_rows, "stores": {}}
    stores = [("sqlite", f"sqlite:///{tmp / 'scale-sqlite.db'}", None)]
    try:
        from support.databases import fresh_postgres

        pg_url, drop = fresh_postgres()
        stores.append(("postgresql", pg_url, drop))
    except Exception as exc:  # noqa: BLE001 - reported, the SQLite figures still stand
        results["postgresql_skipped"] = str(exc)
    config = {"backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}}}
    for name, url, drop in stores:
        try:
            filled = fill(url, tmp / name, usage_rows, audit_rows)
            server = start_modelworks(tmp, {**config, "database": {"url": url}}, KEY, name=f"scale-{name}")
            try:
                screens = measure(server.url, filled["padmin_key"], runs)
            finally:
                server.stop()
            results["stores"][name] = {"fill_s": filled["fill_s"], "screens": screens,
                                       "worst_median_s": max(s["median_s"] for s in screens.values())}
        finally:
            if drop is not None:
                drop()
    return results


def print_result(r: dict) -> None:
    print(f"\nPortal at scale: {r['usage_rows']:,} usage records, {r['audit_rows']:,} audit entries "
          "(target: every screen under 1 s)")
    for store, s in r["stores"].items():
        print(f"  {store} (filled in {s['fill_s']} s):")
        for screen, t in s["screens"].items():
            print(f"    {screen:48s} median {t['median_s'] * 1000:7.0f} ms   worst {t['max_s'] * 1000:7.0f} ms")
    if "postgresql_skipped" in r:
        print(f"  postgresql skipped: {r['postgresql_skipped']}")


if __name__ == "__main__":
    import tempfile

    rows = int(os.environ.get("SCALE_USAGE_ROWS", USAGE_ROWS))
    result = run(Path(tempfile.mkdtemp(prefix="mw-scale-")), usage_rows=rows,
                 audit_rows=int(os.environ.get("SCALE_AUDIT_ROWS", AUDIT_ROWS)))
    print_result(result)
