"""`file_search` in the Responses API: the server searches the tool's vector stores before the model answers,
adds a `file_search_call` item (with its results when `include` asks), hands the results to the model, and cites
the files the answer draws on; with streaming events, through the official SDK and the Agents SDK's
FileSearchTool. The `upstream-echo` deployment (the fake upstream) answers with the search results it was given,
so what is cited is known; the embedded SmolLM2 shows the same plumbing on a real model."""

from __future__ import annotations

import time

import pytest

POLICY = (b"# Travel policy\n\nEmployees may book economy class for flights under six hours. Business class is "
          b"allowed for flights longer than six hours. Hotel costs are capped at 180 euros a night in every city.")
MENU = b"# Canteen\n\nThe canteen serves lasagne on Mondays and fish on Fridays. Coffee is free before nine."


@pytest.fixture(scope="module")
def stores(server):
    import httpx
    import openai

    from conftest import API_KEY

    with httpx.Client(timeout=120) as http:
        c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)
        policy = c.files.create(file=("policy.md", POLICY), purpose="assistants")
        menu = c.files.create(file=("canteen.md", MENU), purpose="assistants")
        store = c.vector_stores.create(name="handbook", file_ids=[policy.id, menu.id])
        end = time.monotonic() + 120
        while c.vector_stores.retrieve(store.id).file_counts.in_progress:
            assert time.monotonic() < end
            time.sleep(0.3)
        c.vector_stores.files.update(file_id=menu.id, vector_store_id=store.id, attributes={"kind": "menu"})
        c.vector_stores.files.update(file_id=policy.id, vector_store_id=store.id, attributes={"kind": "policy"})
        return {"store": store.id, "policy": policy.id, "menu": menu.id}


def _tool(stores, **extra):
    return {"type": "file_search", "vector_store_ids": [stores["store"]], **extra}


def test_search_results_and_citations(client, stores):
    r = client.responses.create(model="upstream-echo", input="What is the hotel cost cap per night?",
                                tools=[_tool(stores)], include=["file_search_call.results"])
    call, message = r.output[0], r.output[-1]
    assert call.type == "file_search_call" and call.status == "completed" and call.id.startswith("fs_")
    assert call.queries == ["What is the hotel cost cap per night?"]
    assert call.results[0].file_id == stores["policy"] and call.results[0].filename == "policy.md"
    assert 0 < call.results[0].score <= 1 and "180 euros" in call.results[0].text
    assert call.results[0].attributes == {"kind": "policy"}
    assert "180 euros" in r.output_text  # the model was given the results
    cited = [a for a in message.content[0].annotations if a.type == "file_citation"]
    assert [a.file_id for a in cited][:1] == [stores["policy"]] and cited[0].filename == "policy.md"
    assert cited[0].index == len(message.content[0].text)
    stored = client.responses.retrieve(r.id)
    assert stored.output[0].type == "file_search_call"


def test_results_only_when_included_and_filters(client, stores):
    r = client.responses.create(model="upstream-echo", input="What does the canteen serve on Fridays?",
                                tools=[_tool(stores, max_num_results=1,
                                             filters={"type": "eq", "key": "kind", "value": "menu"})])
    assert r.output[0].type == "file_search_call" and r.output[0].results is None
    assert "fish on Fridays" in r.output_text
    assert [a.file_id for a in r.output[-1].content[0].annotations] == [stores["menu"]]
    none = client.responses.create(model="upstream-echo", input="What does the canteen serve?",
                                   tools=[_tool(stores, filters={"type": "eq", "key": "kind", "value": "nothing"})],
                                   include=["file_search_call.results"])
    assert none.output[0].results == [] and not none.output[-1].content[0].annotations


def test_streaming_events(client, stores):
    events = list(client.responses.create(model="upstream-echo", input="Can I fly business class to Tokyo?",
                                          tools=[_tool(stores)], stream=True))
    kinds = [e.type for e in events]
    order = ["response.file_search_call.in_progress", "response.file_search_call.searching",
             "response.file_search_call.completed", "response.output_text.annotation.added",
             "response.output_text.done", "response.completed"]
    seen = [k for k in kinds if k in order]
    assert [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k] == order, " ".join(kinds)
    added = next(e for e in events if e.type == "response.output_text.annotation.added")
    assert added.annotation.file_id == stores["policy"]
    done = events[-1].response
    assert done.output[0].type == "file_search_call" and done.output[-1].content[0].annotations


def test_embedded_model_answers_after_searching(client, stores):
    r = client.responses.create(model="smollm2-135m-instruct", input="How much may a hotel night cost?",
                                tools=[_tool(stores)], include=["file_search_call.results"], max_output_tokens=24)
    assert r.output[0].type == "file_search_call" and r.output[0].results
    assert r.output[-1].type == "message" and r.usage.input_tokens > 60  # the results were in its prompt


def test_several_stores_embed_the_query_once(client, server, stores):
    """Stores on the same embeddings deployment share the query's vectors: one embedding call, metered as the
    file_search of its response; the results come from both stores."""
    import sqlite3

    made = client.files.create(file=("parking.md", b"Parking spaces in the garage are free for visitors."),
                               purpose="assistants")
    second = client.vector_stores.create(name="facilities", file_ids=[made.id])
    end = time.monotonic() + 60
    while client.vector_stores.retrieve(second.id).file_counts.in_progress:
        assert time.monotonic() < end
        time.sleep(0.2)
    tool = {"type": "file_search", "vector_store_ids": [stores["store"], second.id]}
    for _ in range(2):  # the second time the query is embedded while the stores are read
        r = client.responses.create(model="upstream-echo", input="Is parking free, and what about hotel costs?",
                                    tools=[tool], include=["file_search_call.results"])
        assert {h.file_id for h in r.output[0].results} >= {made.id, stores["policy"]}
        time.sleep(1.5)  # metering reaches the store within its flush interval
        with sqlite3.connect(server.log_path.parent / "modelworks-data" / "modelworks.db") as conn:
            rows = conn.execute("SELECT deployment, status, prompt_tokens FROM usage_records WHERE response_id = ? "
                                "AND operation = 'file_search'", (r.id,)).fetchall()
        assert len(rows) == 1 and rows[0][:2] == ("all-minilm-l6-v2", 200) and rows[0][2] > 0, rows
    client.vector_stores.delete(second.id)


def test_a_store_on_another_embeddings_deployment(client):
    """Any embeddings deployment makes a store's vectors (here the fake upstream's), metered as its calls."""
    made = client.files.create(file=("tides.txt", b"High tide at Brest is at six in the morning."),
                               purpose="assistants")
    store = client.vector_stores.create(name="upstream-vectors", file_ids=[made.id],
                                        extra_body={"embedding_model": "upstream-model"})
    end = time.monotonic() + 60
    while client.vector_stores.retrieve(store.id).file_counts.in_progress:
        assert time.monotonic() < end
        time.sleep(0.2)
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 1
    hits = client.vector_stores.search(store.id, query="tide at Brest").data
    assert hits and hits[0].file_id == made.id
    client.vector_stores.delete(store.id)


def test_bad_file_search_tools(raw, stores):
    for tool, param in (({"type": "file_search"}, "tools[0].vector_store_ids"),
                        ({"type": "file_search", "vector_store_ids": []}, "tools[0].vector_store_ids"),
                        ({"type": "file_search", "vector_store_ids": ["vs_nope"]}, "tools[0].vector_store_ids[0]"),
                        (_tool(stores, max_num_results=0), "tools[0].max_num_results"),
                        (_tool(stores, filters={"type": "like", "key": "k", "value": 1}), "tools[0].filters.type")):
        r = raw.post("/v1/responses", json={"model": "upstream-echo", "input": "hi", "tools": [tool]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, (tool, r.json())
    two = raw.post("/v1/responses", json={"model": "upstream-echo", "input": "hi",
                                          "tools": [_tool(stores), _tool(stores)]})
    assert two.status_code == 400 and two.json()["error"]["param"] == "tools"


def test_agents_sdk_file_search_tool(server, stores):
    import asyncio

    import httpx
    import openai
    from agents import Agent, FileSearchTool, OpenAIResponsesModel, Runner

    from conftest import API_KEY

    async def run():
        async with httpx.AsyncClient(timeout=120) as http:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, http_client=http,
                                        max_retries=0)
            agent = Agent(name="handbook", instructions="Answer from the handbook.",
                          model=OpenAIResponsesModel(model="upstream-echo", openai_client=client),
                          tools=[FileSearchTool(vector_store_ids=[stores["store"]], max_num_results=2,
                                                include_search_results=True)])
            return await Runner.run(agent, "What is the hotel cost cap per night?")

    result = asyncio.run(run())
    assert "180 euros" in result.final_output
    calls = [i for i in result.new_items if getattr(i.raw_item, "type", None) == "file_search_call"]
    assert calls and calls[0].raw_item.results[0].file_id == stores["policy"]
