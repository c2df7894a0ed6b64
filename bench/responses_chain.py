"""Bench section "Responses vs chat completions": what the Responses API's stored state costs over a plain chat
completion carrying the same conversation, through one Modelworks on the fake upstream (non-streaming).

Both sides replay 10-turn conversations. Responses: each request continues the previous response of its chain
(`previous_response_id`), so the server reads the stored chain (up to 9 earlier turns) and stores the new
response; a chain restarts after 10 turns, and each connection keeps one chain going. Chat completions: the
same turns with the same history in the request (turn k sends 2k + 1 messages), so the model calls of both sides
carry the same messages (checked: the fake upstream's log gives their sizes, reported as `messages`).

The load is wrk with a Lua script, as in the proxy section. wrk cannot tell which connection a response came
on, so the Responses script keeps a queue of chains to continue: a response's id (and its turn, echoed from
`metadata`) goes on it, and the next request to go out takes one, or starts a chain when it is empty. Each
connection has one request in flight, so as many chains run as there are connections. The script's `done`
hook prints how many requests started a chain and how many continued one (9 of 10 when all went well).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from loadgen import run_wrk
from modelworks.testing.fake_upstream import REPLY

TURNS = 10
CONNECTIONS = (1, 16)
MODEL = "fake-model"
QUESTIONS = [f"Question {k + 1} of {TURNS}: tell me one more thing about the sea." for k in range(TURNS)]
APIS = ("chat completions", "responses")
PATHS = {"chat completions": "/v1/chat/completions", "responses": "/v1/responses"}

_HEAD = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @KEY@"
"""

CHAT_LUA = _HEAD + """
local bodies = {@BODIES@}
local n = 0

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n - 1) % #bodies + 1])
end
"""

RESPONSES_LUA = _HEAD + """
local first = [==[@FIRST@]==]
local heads = {@HEADS@}  -- heads[k] .. id .. tails[k]: turn k's body, continuing the response `id`
local tails = {@TAILS@}
local ready = {}  -- chains to continue: {id = the last response's id, turn = the next turn}
local threads = {}
started, continued = 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function request()
  local link = table.remove(ready)
  if link == nil then
    started = started + 1
    return wrk.format(nil, nil, nil, first)
  end
  continued = continued + 1
  return wrk.format(nil, nil, nil, heads[link.turn] .. link.id .. tails[link.turn])
end

function response(status, headers, body)
  if status ~= 200 then
    return  -- that chain ends; a new one starts in its place
  end
  local id = body:match('^{"id":"(resp_%w+)"')  -- the server's compact JSON: found at once, not searched for
  local at = body:find('"turn":"', 1, true)
  local turn = at and tonumber(body:match('^(%d+)', at + 8))
  if id and turn and turn + 1 < @TURNS@ then
    table.insert(ready, {id = id, turn = turn + 1})
  end
end

function done(summary, latency, requests)
  local s, c = 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("started")
    c = c + t:get("continued")
  end
  io.write(string.format("chains: started %d, continued %d\\n", s, c))
end
"""


def chat_body(turn: int) -> str:
    messages = []
    for k in range(turn):
        messages += [{"role": "user", "content": QUESTIONS[k]}, {"role": "assistant", "content": REPLY}]
    messages.append({"role": "user", "content": QUESTIONS[turn]})
    return json.dumps({"model": MODEL, "messages": messages})


def responses_body(turn: int, previous: str | None) -> str:
    body: dict = {"model": MODEL, "input": QUESTIONS[turn], "metadata": {"turn": str(turn)}}
    if previous is not None:
        body["previous_response_id"] = previous
    return json.dumps(body)


def _lua_strings(values: list[str]) -> str:
    return ", ".join(f"[==[{v}]==]" for v in values)


def scripts(tmp: Path, key: str) -> dict[str, Path]:
    chat = CHAT_LUA.replace("@BODIES@", _lua_strings([chat_body(k) for k in range(TURNS)]))
    marker = "@ID@"
    halves = [responses_body(k, marker).split(marker) for k in range(1, TURNS)]
    responses = (RESPONSES_LUA.replace("@FIRST@", responses_body(0, None))
                 .replace("@HEADS@", _lua_strings([h for h, _ in halves]))
                 .replace("@TAILS@", _lua_strings([t for _, t in halves])).replace("@TURNS@", str(TURNS)))
    paths = {"chat completions": tmp / "chat-history.lua", "responses": tmp / "responses-chain.lua"}
    for name, text in (("chat completions", chat), ("responses", responses)):
        paths[name].write_text(text.replace("@KEY@", key))
    return paths


def _upstream_message_counts(upstream_url: str) -> list[int]:
    sent = httpx.get(f"{upstream_url}/_fake/requests", timeout=30).json()["requests"]
    return [len(r["body"].get("messages") or []) for r in sent if r["path"].endswith("/chat/completions")]


def run(tmp: Path, server_url: str, upstream_url: str, key: str, seconds: float, rounds: int,
        settle: float = 10.0) -> dict:
    """Both APIs at each connection count, in `rounds` interleaved rounds (median reported)."""
    paths = scripts(tmp, key)
    time.sleep(settle)  # let start-up work finish before measuring
    messages: dict[str, dict] = {}
    for name in APIS:  # warm-up, and the check that both sides send the model the same conversations
        httpx.delete(f"{upstream_url}/_fake/requests", timeout=30)
        run_wrk(server_url + PATHS[name], 4, 2, paths[name])
        counts = _upstream_message_counts(upstream_url)
        messages[name] = {"min": min(counts), "max": max(counts), "mean": sum(counts) / len(counts)} if counts else {}
    out: dict = {"turns": TURNS, "messages_per_model_call": messages, "apis": {name: {} for name in APIS}}
    for c in CONNECTIONS:
        samples: dict[str, list[dict]] = {name: [] for name in APIS}
        for _ in range(rounds):
            for name in APIS:
                samples[name].append(run_wrk(server_url + PATHS[name], c, seconds, paths[name]))
        for name, runs in samples.items():
            point = {"rps": _median([r["rps"] for r in runs]), "p50_ms": _median([r["p50_ms"] for r in runs]),
                     "p99_ms": _median([r["p99_ms"] for r in runs]), "non_2xx": sum(r["non_2xx"] for r in runs),
                     "rounds_rps": [r["rps"] for r in runs]}
            chains = [re.search(r"chains: started (\d+), continued (\d+)", r["output"]) for r in runs]
            if name == "responses":
                started = sum(int(m.group(1)) for m in chains if m)
                continued = sum(int(m.group(2)) for m in chains if m)
                point["continued_share"] = continued / max(started + continued, 1)
            out["apis"][name][str(c)] = point
    chat, responses = out["apis"]["chat completions"], out["apis"]["responses"]
    out["ratio"] = {str(c): responses[str(c)]["rps"] / max(chat[str(c)]["rps"], 1e-9) for c in CONNECTIONS}
    return out


def print_result(r: dict) -> None:
    print(f"\n== Responses vs chat completions: {r['turns']}-turn conversations, non-streaming, fake upstream "
          "(wrk, 1 worker; median of rounds) ==")
    print(f"  {'api':17} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   req/s per round")
    for name, points in r["apis"].items():
        for c, p in points.items():
            spread = "/".join(f"{x:.0f}" for x in p["rounds_rps"])
            chained = f"  ({p['continued_share'] * 100:.0f}% continued a chain)" if "continued_share" in p else ""
            print(f"  {name:17} {c:>4} {p['rps']:9.0f} {p['p50_ms'] or 0:8.2f} {p['p99_ms'] or 0:8.2f} "
                  f"{p['non_2xx']:7d}   rounds: {spread}{chained}")
    for name, m in r["messages_per_model_call"].items():
        if m:
            print(f"  {name}: {m['min']}-{m['max']} messages per model call (mean {m['mean']:.1f})")
    print("  responses / chat completions requests/s: " + ", ".join(
        f"c={c} {ratio:.2f}" for c, ratio in r["ratio"].items()) + "  (target >= 0.8)")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
