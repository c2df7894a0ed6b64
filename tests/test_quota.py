"""Quotas with Azure's semantics: the limiter (in process and on the real Redis), answers and headers, and
limits that hold across two replicas sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from conftest import API_KEY
from modelworks.quota.limiter import Check, InProcessLimiter
from support.databases import fresh_postgres, require_redis
from support.servers import start_modelworks
from support.waiting import wait_until_async

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def limiter(request):
    if request.param == "memory":
        yield InProcessLimiter()
        return
    from modelworks.quota.redis_limiter import RedisLimiter

    made = RedisLimiter(require_redis(), prefix=f"mw:test:{uuid.uuid4().hex}:")
    yield made
    await made.close()


async def test_all_or_nothing_and_remaining(limiter):
    checks = [Check("a:tok", 60, 100, 40), Check("a:req", 60, 3, 1)]
    first = await limiter.acquire(checks)
    assert first.admitted and first.remaining == (60, 2)
    assert (await limiter.acquire(checks)).admitted
    third = await limiter.acquire(checks)
    assert not third.admitted and third.refused == 0  # 120 tokens > 100: nothing was charged
    small = await limiter.acquire([Check("a:tok", 60, 100, 20), Check("a:req", 60, 3, 1)])
    assert small.admitted and small.remaining == (0, 0)
    refused = await limiter.acquire([Check("a:tok", 60, 100, 0), Check("a:req", 60, 3, 1)])
    assert not refused.admitted and refused.refused == 1 and 1 <= refused.retry_after_s <= 61


async def test_corrections_free_room(limiter):
    check = Check("b:tok", 60, 100, 90)
    decision = await limiter.acquire([check])
    assert not (await limiter.acquire([Check("b:tok", 60, 100, 20)])).admitted
    await limiter.adjust("b:tok", 60, decision.second, -70)  # it used 20, not 90
    if hasattr(limiter, "flush"):
        await limiter.flush()
    assert (await limiter.acquire([Check("b:tok", 60, 100, 20)])).admitted


async def test_short_window_expires(limiter):
    async def pair() -> tuple:
        check = Check(f"c:req10:{uuid.uuid4().hex}", 2, 1, 1)  # a key of its own each time
        return check, await limiter.acquire([check]), await limiter.acquire([check])

    # The second acquisition is refused when it lands in the first's 2-second window: at most 1 second later by
    # the limiter's clock. On a busy machine it may land later, and is then rightly admitted; a fresh pair is tried.
    def close_enough(seen) -> bool:
        _, first, second = seen
        if second.second - first.second <= 1:
            return True
        assert first.admitted and second.admitted, seen  # the first's window had passed
        return False

    check, first, refused = await wait_until_async(pair, close_enough, what="two acquisitions within a second")
    assert first.admitted
    assert not refused.admitted and refused.retry_after_s <= 3
    await asyncio.sleep(2.1)  # a lower bound: the window has surely passed
    assert (await limiter.acquire([check])).admitted


def _config(**quota) -> dict:
    return {"quota": quota,
            "backends": {"fake": {"type": "fake", "reply": "one two three four"}},
            "deployments": {"fake": {"backend": "fake"},
                            "burst": {"backend": "fake", "rpm": 12},              # 2 per 10 s
                            "tokens": {"backend": "fake", "tpm": 100, "rpm": 600},
                            "embed-limited": {"backend": "fake", "tpm": 50}}}


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory):
    proc = start_modelworks(tmp_path_factory.mktemp("quota"), _config(), API_KEY, name="quota")
    yield proc
    proc.stop()


HTTP_TIMEOUT = 60


def _chat(url: str, model: str, path: str = "/v1/chat/completions", **extra) -> httpx.Response:
    return httpx.post(url + path, json={"model": model, "messages": [{"role": "user", "content": "hi there"}], **extra},
                      headers={"api-key": API_KEY}, timeout=HTTP_TIMEOUT)


def _windows(first_second: int, seconds: int) -> int:
    """How many `seconds`-long windows of 1-second buckets cover every bucket from `first_second` to now (the
    limiter's buckets are seconds of this machine's clock, Redis's included): a limit of L per window admits at
    most L times that many over the span."""
    return -(-(int(time.time()) - first_second + 1) // seconds)


def _until_refused(send, most: int = 13) -> list[httpx.Response]:
    answers = [send()]
    while answers[-1].status_code == 200:
        assert len(answers) < most, f"{most} calls admitted in a row"
        answers.append(send())
    assert answers[-1].status_code == 429, answers[-1].text
    return answers


async def test_bursts_are_refused_azure_style(quota_server, specs):
    url = quota_server.url
    first_second = int(time.time())
    # 2 per 10 s though 12 per minute are allowed: the third call in 10 s is refused
    answers = _until_refused(lambda: _chat(url, "burst"))
    assert len(answers) >= 3, f"refused after {len(answers) - 1} admitted: {answers[-1].text}"
    ok, refused = answers[0], answers[-1]
    assert ok.headers["x-ratelimit-limit-requests"] == "12"
    assert ok.headers["x-ratelimit-remaining-requests"] == "11"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert int(refused.headers["retry-after-ms"]) == 1000 * int(refused.headers["retry-after"])
    assert "retry after" in refused.json()["error"]["message"]
    specs.check("/v1/chat/completions", 429, refused.json())
    azure_answers = _until_refused(
        lambda: _chat(url, "", path="/openai/deployments/burst/chat/completions?api-version=2024-10-21"))
    azure = azure_answers[-1]
    # calls are answered one after another: on an idle machine all in one window, so exactly 2 are admitted (the
    # Azure call is refused at once); a slower run may span more windows, each admitting at most 2
    admitted = len(answers) - 1 + len(azure_answers) - 1
    windows = _windows(first_second, 10)
    assert admitted <= 2 * windows, f"{admitted} calls admitted over {windows} 10-second window(s)"
    assert azure.status_code == 429 and azure.json()["error"]["code"] == "429"
    assert "ChatCompletions_Create" in azure.json()["error"]["message"]
    specs.check("/openai/deployments/burst/chat/completions", 429, azure.json())
    default = _chat(url, "fake")  # no tpm in the config: the default quota, and its headers
    assert default.status_code == 200 and default.headers["x-ratelimit-limit-tokens"] == "1000000"


async def test_tokens_are_charged_at_arrival_and_corrected(quota_server):
    url = quota_server.url
    first = _chat(url, "tokens", max_tokens=60)  # charged ~8 prompt + 60: 32 left
    assert first.status_code == 200
    assert int(first.headers["x-ratelimit-remaining-tokens"]) <= 40
    # It used only a few tokens: the charge was corrected, so another request of the same size fits.
    second = _chat(url, "tokens", max_tokens=60)
    assert second.status_code == 200, second.text
    assert _chat(url, "tokens", max_tokens=200).status_code == 429  # more than the whole quota


async def test_embeddings_are_limited_too(quota_server):
    url = quota_server.url
    text = "word " * 40  # about 50 tokens
    first = httpx.post(f"{url}/v1/embeddings", json={"model": "embed-limited", "input": text},
                       headers={"api-key": API_KEY}, timeout=HTTP_TIMEOUT)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "50"
    second = httpx.post(f"{url}/v1/embeddings", json={"model": "embed-limited", "input": text * 2},
                        headers={"api-key": API_KEY}, timeout=HTTP_TIMEOUT)
    assert second.status_code == 429


def test_limits_hold_across_two_replicas(tmp_path):
    redis_url = require_redis()
    db_url, drop = fresh_postgres()
    tag = uuid.uuid4().hex[:8]
    config = {"quota": {"limiter": "redis", "redis_url": redis_url}, "database": {"url": db_url},
              "backends": {"fake": {"type": "fake", "reply": "one two three"}},
              "deployments": {f"shared-rpm-{tag}": {"backend": "fake", "rpm": 30},       # 5 per 10 s
                              f"shared-tpm-{tag}": {"backend": "fake", "tpm": 300, "rpm": 6000}}}
    one = start_modelworks(tmp_path, config, API_KEY, name="replica-a")
    two = start_modelworks(tmp_path, config, API_KEY, name="replica-b")
    try:
        async def blast(model: str, each: int, **extra) -> list[httpx.Response]:
            """8 clients, 4 on each replica, each sending `each` calls one after another."""
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, headers={"api-key": API_KEY}) as client:
                answers = []

                async def worker(url: str) -> None:
                    for _ in range(each):
                        answers.append(await client.post(f"{url}/v1/chat/completions", json={
                            "model": model, "messages": [{"role": "user", "content": "hi"}], **extra}))
                await asyncio.gather(*(worker(u) for u in (one.url, two.url) for _ in range(4)))
                return answers

        # 48 calls: on an idle machine all within one 10-second window; the bound counts the windows they spanned
        first_second = int(time.time())
        answers = asyncio.run(blast(f"shared-rpm-{tag}", 6))
        most = min(5 * _windows(first_second, 10), 30 * _windows(first_second, 60))
        admitted = sum(a.status_code == 200 for a in answers)
        assert {a.status_code for a in answers} <= {200, 429}
        assert 5 <= admitted <= most, (f"{admitted} of 48 admitted by two replicas; the limit is 5 per 10 s "
                                       f"(and 30 per minute): at most {most} over the seconds the calls spanned")
        first_second = int(time.time())
        answers = asyncio.run(blast(f"shared-tpm-{tag}", 6, max_tokens=40))
        most = 300 * _windows(first_second, 60)
        used = sum(a.json()["usage"]["total_tokens"] for a in answers if a.status_code == 200)
        assert 0 < used <= most, (f"{used} tokens admitted by two replicas; the TPM is 300: at most {most} over "
                                  f"the seconds the calls spanned")
    finally:
        one.stop()
        two.stop()
        drop()


async def test_admissions_decided_together_stay_exact(limiter):
    """Many admissions in one turn of the event loop: exactly the limit is admitted, in order."""
    decisions = await asyncio.gather(*(limiter.acquire([Check("d:req10", 10, 7, 1), Check("d:tok", 60, 1000, 10)])
                                       for _ in range(20)))
    assert [d.admitted for d in decisions] == [True] * 7 + [False] * 13
    assert [d.remaining[0] for d in decisions[:7]] == [6, 5, 4, 3, 2, 1, 0]
    assert all(d.refused == 0 and d.retry_after_s >= 1 for d in decisions[7:])


async def test_leases_admit_locally_and_never_overshoot():
    """Two limiters (two replicas) far from the limit lease surplus and admit from it without asking Redis;
    the total they admit never passes the limit, and what a lease did not use goes back when its second ends."""
    from modelworks.quota.redis_limiter import RedisLimiter

    prefix = f"mw:test:{uuid.uuid4().hex}:"
    one, two = RedisLimiter(require_redis(), prefix=prefix), RedisLimiter(require_redis(), prefix=prefix)
    calls = {"n": 0}
    original = one.redis.eval_script

    async def counted(*args, **kwargs):
        calls["n"] += 1
        return await original(*args, **kwargs)

    one.redis.eval_script = counted
    try:
        checks = [Check("e:req", 60, 400, 1), Check("e:tok", 60, 40_000, 10)]
        admitted = 0
        for _ in range(150):  # one after another: after the first, most come from the lease
            admitted += (await one.acquire(checks)).admitted
        assert admitted == 150 and calls["n"] < 40, calls

        async def hammer(limiter) -> int:
            count = 0
            for _ in range(300):
                count += (await limiter.acquire(checks)).admitted
            return count

        admitted += sum(await asyncio.gather(hammer(one), hammer(two)))
        # never more than the limit; less only by what a lease held when its replica stopped asking (1/20 each)
        assert 360 <= admitted <= 400, f"{admitted} admitted; the limit is 400 and 750 asked"
        # Every lease's second ends (within a second of its charge): the unused rest goes back, in a correction
        # that a background flush sends. Wait until no lease is held and no background flush is on its way, then
        # send what is left and read the total once every correction has been answered by Redis.
        for limiter in (one, two):
            await wait_until_async(_pending(limiter), lambda p: p == {"leases": [], "flushing": False},
                                   what="leases given back and background flushes done")
            await limiter.flush()
        total = int(await one.redis.call("HGET", prefix + "e:req", "t"))
        assert total == admitted, f"Redis holds {total} charged requests; {admitted} were admitted"
    finally:
        await one.close()
        await two.close()


def _pending(limiter):
    """What `limiter` has still to give back: leases held, and a background flush on its way (one that took its
    corrections but whose calls Redis has not answered yet would be missed by a `flush()` now)."""
    async def read() -> dict:
        flusher = limiter._flusher
        return {"leases": sorted(limiter._held), "flushing": flusher is not None and not flusher.done()}
    return read


async def test_no_leases_when_one_check_cannot_be_leased():
    """A request that must ask Redis for one check anyway leases none: no surplus held for nothing."""
    from modelworks.quota.redis_limiter import RedisLimiter

    prefix = f"mw:test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(require_redis(), prefix=prefix)
    try:
        checks = [Check("f:req", 60, 100_000, 1), Check("f:tok", 60, 1_000, 100)]  # 1/20 of 1,000 < 100
        assert all([(await limiter.acquire(checks)).admitted for _ in range(5)])
        assert limiter._held == {}
        assert int(await limiter.redis.call("HGET", prefix + "f:req", "t")) == 5
    finally:
        await limiter.close()
