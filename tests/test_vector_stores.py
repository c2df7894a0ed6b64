"""Vector stores through the official openai SDK, on the real MiniLM embeddings: files of every supported type
ingested in the background, hybrid search with filters, thresholds and limits, file batches, attributes, content,
failures with their reasons, isolation between projects, and bad requests answered with a 400 naming the field."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from conftest import API_KEY
from support.documents import make_docx, make_pdf
from support.servers import start_modelworks
from support.spec import CheckingTransport

pytestmark = pytest.mark.model

DOCS = {
    "cats.md": b"# Cats\n\nCats are small domesticated carnivorous mammals. They purr, sleep most of the day and "
               b"hunt mice in the garden.",
    "rockets.html": b"<html><head><title>Rockets</title><script>var x = 'ignore me';</script></head><body>"
                    b"<h1>Rocket engines</h1><p>A rocket engine burns propellant and expels exhaust to produce "
                    b"thrust for spaceflight.</p></body></html>",
    "bread.json": b'{"recipe": "sourdough bread", "steps": ["mix flour and water", "ferment with a starter", '
                  b'"bake in a hot oven"]}',
    "tides.csv": b"place,high tide,low tide\nBrest,06:10,12:25\nSaint-Malo,07:02,13:20\n",
    "volcano.pdf": make_pdf([["Volcanoes erupt when magma rises through the crust.",
                              "Lava flows and ash clouds follow an eruption."]]),
    "chess.docx": make_docx(["Chess is a board game for two players.",
                             "Each player starts with sixteen pieces, including a king and a queen."]),
    "notes.txt": b"Meeting notes: the quarterly budget review moves to Thursday afternoon.",
}
TOPICS = {"cats.md": "animals", "rockets.html": "space", "bread.json": "food", "tides.csv": "sea",
          "volcano.pdf": "earth", "chess.docx": "games", "notes.txt": "work"}


@pytest.fixture(scope="module")
def vs_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vectors")
    config = {"backends": {"minilm": {"type": "minilm"}, "fake": {"type": "fake"}},
              "deployments": {"all-minilm-l6-v2": {"backend": "minilm", "tpm": 100_000_000},
                              "fake": {"backend": "fake"}},
              "vector_stores": {"ingest_lease_s": 5}}
    proc = start_modelworks(tmp, config, API_KEY, name="vectors")
    yield proc
    proc.stop()


@pytest.fixture
def sdk(vs_server, recorder):
    with httpx.Client(transport=CheckingTransport(recorder), timeout=120) as http:
        yield openai.OpenAI(base_url=f"{vs_server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


@pytest.fixture
def http(vs_server, recorder):
    with httpx.Client(base_url=vs_server.url, transport=CheckingTransport(recorder), timeout=120,
                      headers={"authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def wait_ingested(sdk, store_id: str, timeout: float = 120) -> object:
    end = time.monotonic() + timeout
    while True:
        store = sdk.vector_stores.retrieve(store_id)
        if store.file_counts.in_progress == 0:
            return store
        assert time.monotonic() < end, f"still ingesting: {store.file_counts}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def library(vs_server):
    """A store of one file of each supported type, each with attributes."""
    with httpx.Client(timeout=120) as http:
        sdk = openai.OpenAI(base_url=f"{vs_server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)
        ids = {name: sdk.files.create(file=(name, data), purpose="assistants").id for name, data in DOCS.items()}
        store = sdk.vector_stores.create(name="library", metadata={"team": "docs"})
        assert store.status in ("completed", "in_progress") and store.file_counts.total == 0
        files = [{"file_id": ids[name], "attributes": {"topic": TOPICS[name], "rank": i, "public": i % 2 == 0}}
                 for i, name in enumerate(DOCS)]
        batch = sdk.vector_stores.file_batches.create(store.id, files=files)
        assert batch.object == "vector_store.files_batch" and batch.file_counts.total == len(DOCS)
        wait_ingested(sdk, store.id)
        return {"store": store.id, "files": ids, "batch": batch.id}


def test_every_type_is_ingested_and_found(sdk, library):
    store = sdk.vector_stores.retrieve(library["store"])
    assert store.status == "completed" and store.file_counts.completed == len(DOCS) and store.usage_bytes > 0
    for f in sdk.vector_stores.files.list(library["store"]):
        assert f.status == "completed" and f.last_error is None and f.usage_bytes > 0
        assert f.chunking_strategy.type == "static" and f.chunking_strategy.static.max_chunk_size_tokens == 800
    for query, expected in (("how does a rocket produce thrust", "rockets.html"),
                            ("lava and ash from an eruption", "volcano.pdf"),
                            ("pieces on a board game, king and queen", "chess.docx"),
                            ("baking sourdough with a starter", "bread.json"),
                            ("pets that purr and catch mice", "cats.md"),
                            ("tide times in Brest", "tides.csv"),
                            ("when is the budget review", "notes.txt")):
        page = sdk.vector_stores.search(library["store"], query=query)
        assert page.data and page.data[0].filename == expected, (query, [(d.filename, d.score) for d in page.data])
        assert page.search_query == [query]
        assert 0 <= page.data[-1].score <= page.data[0].score <= 1
        assert page.data[0].attributes["topic"] == TOPICS[expected]
    html = sdk.vector_stores.search(library["store"], query="rocket").data[0].content[0].text
    assert "Rocket engines" in html and "ignore me" not in html and "<p>" not in html


def test_filters_limits_and_threshold(sdk, library):
    store = library["store"]
    only = sdk.vector_stores.search(store, query="rocket engines",
                                    filters={"type": "eq", "key": "topic", "value": "animals"})
    assert [d.filename for d in only.data] == ["cats.md"]
    compound = sdk.vector_stores.search(store, query="anything", filters={
        "type": "and", "filters": [{"type": "gte", "key": "rank", "value": 2},
                                   {"type": "or", "filters": [{"type": "eq", "key": "public", "value": True},
                                                              {"type": "in", "key": "topic", "value": ["games"]}]}]})
    ranks = sorted(d.attributes["rank"] for d in compound.data)
    assert ranks == [2, 4, 5, 6], ranks
    assert {d.filename for d in sdk.vector_stores.search(store, query="x", filters={
        "type": "nin", "key": "topic", "value": ["animals", "space", "food", "sea", "earth"]}).data} == {
        "chess.docx", "notes.txt"}
    assert not sdk.vector_stores.search(store, query="x", filters={"type": "eq", "key": "topic",
                                                                     "value": "none"}).data
    assert len(sdk.vector_stores.search(store, query="science", max_num_results=2).data) == 2
    strict = sdk.vector_stores.search(store, query="rocket thrust", ranking_options={"score_threshold": 0.5})
    assert strict.data and all(d.score >= 0.5 for d in strict.data)
    assert len(strict.data) < len(DOCS)


def test_file_batches_files_attributes_and_content(sdk, library):
    store, batch = library["store"], library["batch"]
    got = sdk.vector_stores.file_batches.retrieve(batch, vector_store_id=store)
    assert got.status == "completed" and got.file_counts.completed == len(DOCS)
    listed = list(sdk.vector_stores.file_batches.list_files(batch, vector_store_id=store, limit=3))
    assert len(listed) == len(DOCS)
    assert len(list(sdk.vector_stores.files.list(store, filter="completed"))) == len(DOCS)
    assert not list(sdk.vector_stores.files.list(store, filter="failed"))
    cats = library["files"]["cats.md"]
    updated = sdk.vector_stores.files.update(file_id=cats, vector_store_id=store,
                                             attributes={"topic": "pets", "rank": 0, "public": True})
    assert updated.attributes["topic"] == "pets"
    found = sdk.vector_stores.search(store, query="purr", filters={"type": "eq", "key": "topic", "value": "pets"})
    assert [d.filename for d in found.data] == ["cats.md"]
    sdk.vector_stores.files.update(file_id=cats, vector_store_id=store,
                                   attributes={"topic": "animals", "rank": 0, "public": True})
    content = sdk.vector_stores.files.content(file_id=library["files"]["volcano.pdf"], vector_store_id=store)
    assert "magma rises" in "".join(part.text for part in content)


def test_removing_a_file_and_deleting_a_file(sdk):
    one = sdk.files.create(file=("owls.txt", b"Owls hunt at night and turn their heads almost all the way round."),
                           purpose="assistants")
    two = sdk.files.create(file=("trains.txt", b"High-speed trains run on dedicated tracks at 300 km/h."),
                           purpose="assistants")
    store = sdk.vector_stores.create(name="removal", file_ids=[one.id, two.id],
                                     chunking_strategy={"type": "static", "static": {
                                         "max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}})
    wait_ingested(sdk, store.id)
    got = sdk.vector_stores.files.retrieve(file_id=one.id, vector_store_id=store.id)
    assert got.chunking_strategy.static.max_chunk_size_tokens == 100
    assert sdk.vector_stores.search(store.id, query="owls at night").data[0].filename == "owls.txt"
    deleted = sdk.vector_stores.files.delete(file_id=one.id, vector_store_id=store.id)
    assert deleted.deleted is True
    assert "owls.txt" not in {d.filename for d in sdk.vector_stores.search(store.id, query="owls at night").data}
    sdk.files.delete(two.id)  # a deleted File leaves every vector store, its chunks with it
    assert not sdk.vector_stores.search(store.id, query="trains").data
    assert sdk.vector_stores.retrieve(store.id).file_counts.total == 0
    assert sdk.vector_stores.delete(store.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.vector_stores.retrieve(store.id)


def test_a_file_added_again_is_searched_once(sdk):
    made = sdk.files.create(file=("ferries.txt", b"Ferries cross the strait every hour in summer."),
                            purpose="assistants")
    store = sdk.vector_stores.create(name="again", file_ids=[made.id])
    wait_ingested(sdk, store.id)
    assert len(sdk.vector_stores.search(store.id, query="ferry crossings").data) == 1
    sdk.vector_stores.files.create(vector_store_id=store.id, file_id=made.id,
                                   chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100,
                                                                                   "chunk_overlap_tokens": 0}})
    wait_ingested(sdk, store.id)
    hits = sdk.vector_stores.search(store.id, query="ferry crossings", max_num_results=5).data
    assert len(hits) == 1 and hits[0].file_id == made.id  # the old chunks are gone from the index too
    assert sdk.vector_stores.search(store.id, query="ferry crossings", max_num_results=1).data
    sdk.vector_stores.delete(store.id)


def test_a_store_gone_elsewhere_while_its_query_is_embedded(sdk, http, vs_server):
    """After a first search, this replica embeds a store's queries while it reads the store; a store that another
    replica deleted (here: taken out of the project in the database) is still a clean 404, and the server goes on."""
    import sqlite3

    made = sdk.files.create(file=("moved.txt", b"Gliders ride thermals over the ridge."), purpose="assistants")
    store = sdk.vector_stores.create(name="moving", file_ids=[made.id])
    wait_ingested(sdk, store.id)
    assert sdk.vector_stores.search(store.id, query="gliders").data
    db = vs_server.log_path.parent / "vectors-data" / "modelworks.db"

    def searches() -> int:
        time.sleep(1.5)  # metering reaches the store within its flush interval
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM usage_records WHERE operation = 'vector_stores.search'"
                                ).fetchone()[0]

    before = searches()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE vector_stores SET project_id = 'proj_elsewhere' WHERE id = ?", (store.id,))
    for _ in range(3):
        r = http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "gliders over the ridge"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "vector_store_id", r.text
    # only the first had started embedding its query (a record: cancelled, or done if it finished first)
    assert searches() - before <= 1
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE vector_stores SET project_id = (SELECT project_id FROM files WHERE id = ?) "
                     "WHERE id = ?", (made.id, store.id))
    assert sdk.vector_stores.search(store.id, query="gliders").data
    sdk.vector_stores.delete(store.id)


def test_failures_say_why(sdk):
    png = sdk.files.create(file=("picture.png", b"\x89PNG\r\n\x1a\nnot really"), purpose="assistants")
    blank = sdk.files.create(file=("blank.pdf", make_pdf([[]])), purpose="assistants")
    store = sdk.vector_stores.create(name="failures", file_ids=[png.id, blank.id])
    store = wait_ingested(sdk, store.id)
    assert store.file_counts.failed == 2 and store.status == "completed"
    errors = {f.id: f.last_error for f in sdk.vector_stores.files.list(store.id, filter="failed")}
    assert errors[png.id].code == "unsupported_file" and ".png" in errors[png.id].message
    assert errors[blank.id].code == "invalid_file" and "no text" in errors[blank.id].message


def test_store_objects_list_update_and_expiry(sdk):
    made = sdk.vector_stores.create(name="temporary", expires_after={"anchor": "last_active_at", "days": 2},
                                    metadata={"a": "1"})
    assert made.expires_after.days == 2 and made.expires_at == made.last_active_at + 2 * 86400
    renamed = sdk.vector_stores.update(made.id, name="renamed", metadata={"a": "2"})
    assert renamed.name == "renamed" and renamed.metadata == {"a": "2"}
    assert made.id in [s.id for s in sdk.vector_stores.list(limit=2)]
    sdk.vector_stores.delete(made.id)


@pytest.fixture(scope="module")
def other_key(vs_server):
    admin = {"authorization": f"Bearer {API_KEY}"}
    project = httpx.post(f"{vs_server.url}/admin/v1/projects", headers=admin,
                         json={"name": f"other-{uuid.uuid4().hex[:8]}"}).json()
    made = httpx.post(f"{vs_server.url}/admin/v1/keys", headers=admin,
                      json={"name": "other-user", "role": "user", "project_id": project["id"]})
    return made.json()["key"]


def test_another_projects_stores_are_not_there(vs_server, library, other_key, recorder):
    store, file_id, batch = library["store"], library["files"]["cats.md"], library["batch"]
    with httpx.Client(base_url=vs_server.url, transport=CheckingTransport(recorder), timeout=60,
                      headers={"authorization": f"Bearer {other_key}"}) as theirs:
        for method, path, body in (
                ("GET", f"/v1/vector_stores/{store}", None),
                ("POST", f"/v1/vector_stores/{store}", {"name": "mine now"}),
                ("DELETE", f"/v1/vector_stores/{store}", None),
                ("POST", f"/v1/vector_stores/{store}/search", {"query": "cats"}),
                ("GET", f"/v1/vector_stores/{store}/files", None),
                ("POST", f"/v1/vector_stores/{store}/files", {"file_id": file_id}),
                ("GET", f"/v1/vector_stores/{store}/files/{file_id}", None),
                ("POST", f"/v1/vector_stores/{store}/files/{file_id}", {"attributes": {}}),
                ("DELETE", f"/v1/vector_stores/{store}/files/{file_id}", None),
                ("GET", f"/v1/vector_stores/{store}/files/{file_id}/content", None),
                ("POST", f"/v1/vector_stores/{store}/file_batches", {"file_ids": [file_id]}),
                ("GET", f"/v1/vector_stores/{store}/file_batches/{batch}", None),
                ("POST", f"/v1/vector_stores/{store}/file_batches/{batch}/cancel", None),
                ("GET", f"/v1/vector_stores/{store}/file_batches/{batch}/files", None)):
            r = theirs.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert store not in [s["id"] for s in theirs.get("/v1/vector_stores").json()["data"]]
        # nor may they put my file in a store of theirs
        own = theirs.post("/v1/vector_stores", json={"name": "theirs"}).json()
        r = theirs.post(f"/v1/vector_stores/{own['id']}/files", json={"file_id": file_id})
        assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"


BAD = [
    ("/v1/vector_stores", {"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 100,
                                                                              "chunk_overlap_tokens": 60}}},
     "chunking_strategy.static"),
    ("/v1/vector_stores", {"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 50,
                                                                              "chunk_overlap_tokens": 0}}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ("/v1/vector_stores", {"chunking_strategy": {"type": "semantic"}}, "chunking_strategy.type"),
    ("/v1/vector_stores", {"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after.anchor"),
    ("/v1/vector_stores", {"expires_after": {"anchor": "last_active_at", "days": 400}}, "expires_after.days"),
    ("/v1/vector_stores", {"file_ids": ["file-nope"]}, "file_ids[0]"),
    ("/v1/vector_stores", {"embedding_model": "no-such-deployment"}, "embedding_model"),
    ("/v1/vector_stores", {"name": 7}, "name"),
    ("/v1/vector_stores", {"metadata": {"k": "v" * 600}}, "metadata"),
]
SEARCH_BAD = [
    ({"query": ""}, "query"),
    ({"query": "x", "max_num_results": 0}, "max_num_results"),
    ({"query": "x", "max_num_results": 51}, "max_num_results"),
    ({"query": "x", "filters": {"type": "like", "key": "a", "value": "b"}}, "filters.type"),
    ({"query": "x", "filters": {"type": "in", "key": "a", "value": "b"}}, "filters.value"),
    ({"query": "x", "filters": {"type": "and", "filters": []}}, "filters.filters"),
    ({"query": "x", "filters": {"type": "gt", "key": "a", "value": True}}, "filters.value"),
    ({"query": "x", "ranking_options": {"score_threshold": 2}}, "ranking_options.score_threshold"),
    ({}, "query"),
]


@pytest.mark.parametrize("path,body,param", BAD)
def test_bad_store_requests_name_the_field(http, path, body, param):
    r = http.post(path, json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param, r.json()


@pytest.mark.parametrize("body,param", SEARCH_BAD)
def test_bad_searches_name_the_field(http, library, body, param):
    r = http.post(f"/v1/vector_stores/{library['store']}/search", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_bad_file_requests_name_the_field(http, library):
    store = library["store"]
    for body, param in (({"file_ids": ["a", "a"]}, "file_ids"), ({}, None),
                        ({"file_ids": ["x"], "files": [{"file_id": "y"}]}, None),
                        ({"files": [{"file_id": library["files"]["cats.md"], "attributes": {"k": [1]}}]},
                         "files[0].attributes")):
        r = http.post(f"/v1/vector_stores/{store}/file_batches", json=body)
        assert r.status_code == 400, r.text
        if param:
            assert r.json()["error"]["param"] == param, r.json()
    r = http.post(f"/v1/vector_stores/{store}/files", json={"file_id": "file-nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"
    r = http.get(f"/v1/vector_stores/{store}/files?filter=done")
    assert r.status_code == 400 and r.json()["error"]["param"] == "filter"
    r = http.get("/v1/vector_stores?limit=101")
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
