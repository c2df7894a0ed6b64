"""The Files API through the official openai SDK (and raw HTTP for what the SDK will not send): upload, list,
retrieve, content, delete, expiry, limits, isolation between projects, and bad uploads answered with a 400 that
names the field. Run on SQLite with files in a directory, and on PostgreSQL with files in the store."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest

from conftest import API_KEY, AZURE_API_VERSION
from support.servers import start_modelworks
from support.spec import CheckingTransport

MAX_FILE = 200_000


@pytest.fixture(scope="module", params=["local-sqlite", "database-postgresql"])
def files_server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    config = {"backends": {"fake": {"type": "fake"}}, "deployments": {"fake": {"backend": "fake"}},
              "files": {"max_file_bytes": MAX_FILE, "max_project_bytes": 5 * MAX_FILE}}
    drop = None
    if request.param == "database-postgresql":
        from support.databases import fresh_postgres

        url, drop = fresh_postgres()
        config["database"] = {"url": url}
        config["files"]["storage"] = "database"
    proc = start_modelworks(tmp, config, API_KEY, name="files")
    proc.data_dir = tmp / "files-data"
    proc.storage = config["files"].get("storage", "local")
    yield proc
    proc.stop()
    if drop:
        drop()


@pytest.fixture
def sdk(files_server, recorder):
    with httpx.Client(transport=CheckingTransport(recorder), timeout=60) as http:
        yield openai.OpenAI(base_url=f"{files_server.url}/v1", api_key=API_KEY, http_client=http, max_retries=0)


@pytest.fixture
def http(files_server, recorder):
    with httpx.Client(base_url=files_server.url, transport=CheckingTransport(recorder), timeout=60,
                      headers={"authorization": f"Bearer {API_KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def other_key(files_server):
    """A user key of another project."""
    admin = {"authorization": f"Bearer {API_KEY}"}
    project = httpx.post(f"{files_server.url}/admin/v1/projects", headers=admin,
                         json={"name": f"other-{uuid.uuid4().hex[:8]}"}).json()
    made = httpx.post(f"{files_server.url}/admin/v1/keys", headers=admin,
                      json={"name": "other-user", "role": "user", "project_id": project["id"]})
    assert made.status_code == 201, made.text
    return made.json()["key"]


def test_upload_list_retrieve_content_delete(sdk, files_server):
    marker = f"secret-content-{uuid.uuid4().hex}"
    data = f"# Notes\n\n{marker}\nÜnïcödé text.\n".encode()
    made = sdk.files.create(file=("notes.md", data), purpose="assistants")
    assert made.object == "file" and made.id.startswith("file-")
    assert made.bytes == len(data) and made.filename == "notes.md" and made.purpose == "assistants"
    assert made.status == "processed" and made.expires_at is None
    assert abs(made.created_at - time.time()) < 60

    assert sdk.files.retrieve(made.id).model_dump() == made.model_dump()
    assert sdk.files.content(made.id).read() == data
    assert made.id in [f.id for f in sdk.files.list(purpose="assistants")]
    assert made.id not in [f.id for f in sdk.files.list(purpose="batch")]

    deleted = sdk.files.delete(made.id)
    assert deleted.id == made.id and deleted.deleted is True
    for fetch in (sdk.files.retrieve, sdk.files.content, sdk.files.delete):
        with pytest.raises(openai.NotFoundError):
            fetch(made.id)
    if files_server.storage == "local":  # the bytes are gone from the disk
        assert not list((files_server.data_dir / "files").rglob(made.id))
    assert marker not in files_server.output()  # contents are never logged


def test_list_pages_in_order(sdk):
    purpose = "user_data"
    ids = [sdk.files.create(file=(f"page-{i}.txt", f"text {i}".encode()), purpose=purpose).id for i in range(5)]
    newest_first = [f.id for f in sdk.files.list(purpose=purpose, limit=2)]  # the SDK follows `after`
    assert [i for i in newest_first if i in ids] == ids[::-1]
    page = sdk.files.list(purpose=purpose, limit=2, order="asc")
    assert page.has_more is True and len(page.data) == 2
    oldest_first = [f.id for f in sdk.files.list(purpose=purpose, order="asc")]
    assert [i for i in oldest_first if i in ids] == ids
    for file_id in ids:
        sdk.files.delete(file_id)


def test_expires_after(sdk):
    made = sdk.files.create(file=("short.txt", b"short-lived"), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert made.expires_at == made.created_at + 3600
    batch = sdk.files.create(file=("in.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 24 * 3600  # batch files: 30 days unless told
    sdk.files.delete(made.id)
    sdk.files.delete(batch.id)


def test_every_purpose_and_the_azure_paths(sdk, files_server, recorder):
    for purpose in ("assistants", "batch", "fine-tune", "user_data", "evals", "vision"):
        name = "x.jsonl" if purpose in ("batch", "fine-tune", "evals") else "x.txt"
        made = sdk.files.create(file=(name, b'{"a": 1}\n'), purpose=purpose)
        assert made.purpose == purpose
        sdk.files.delete(made.id)
    with httpx.Client(transport=CheckingTransport(recorder), timeout=60) as h:
        v1 = openai.OpenAI(base_url=f"{files_server.url}/openai/v1", api_key=API_KEY, http_client=h, max_retries=0)
        made = v1.files.create(file=("azure.txt", b"from the v1 path"), purpose="assistants")
        dated = openai.AzureOpenAI(azure_endpoint=files_server.url, api_key=API_KEY, api_version=AZURE_API_VERSION,
                                   http_client=h, max_retries=0)
        assert dated.files.retrieve(made.id).id == made.id
        assert dated.files.content(made.id).read() == b"from the v1 path"
        assert dated.files.delete(made.id).deleted is True


def test_another_projects_files_are_not_there(sdk, files_server, other_key, recorder):
    mine = sdk.files.create(file=("mine.txt", b"mine"), purpose="assistants")
    with httpx.Client(transport=CheckingTransport(recorder), timeout=60) as h:
        theirs = openai.OpenAI(base_url=f"{files_server.url}/v1", api_key=other_key, http_client=h, max_retries=0)
        for fetch in (theirs.files.retrieve, theirs.files.content, theirs.files.delete):
            with pytest.raises(openai.NotFoundError):
                fetch(mine.id)
        assert mine.id not in [f.id for f in theirs.files.list()]
        with pytest.raises(openai.BadRequestError):  # nor may its id be a cursor there
            theirs.files.list(after=mine.id)
    assert sdk.files.content(mine.id).read() == b"mine"
    sdk.files.delete(mine.id)


def test_size_limits(sdk, http):
    with pytest.raises(openai.APIStatusError) as err:
        sdk.files.create(file=("big.txt", b"x" * (MAX_FILE + 1)), purpose="assistants")
    assert err.value.status_code == 413
    assert sdk.files.create(file=("fits.txt", b"x" * MAX_FILE), purpose="assistants").bytes == MAX_FILE
    # the project's total: 5 files of the limit
    made = [f.id for f in sdk.files.list() if f.bytes == MAX_FILE]
    while len(made) < 5:
        made.append(sdk.files.create(file=("fits.txt", b"x" * MAX_FILE), purpose="assistants").id)
    with pytest.raises(openai.APIStatusError) as err:
        sdk.files.create(file=("one-more.txt", b"x" * 10), purpose="assistants")
    assert err.value.status_code == 413 and "limit" in err.value.message
    for file_id in made:
        sdk.files.delete(file_id)


def _docx_without_document() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("readme.txt", "not a word document")
    return out.getvalue()


BAD_UPLOADS = [
    # (form fields, file (name, bytes) or None, the param named, a word of the message)
    ({"purpose": "assistants"}, None, "file", "file"),
    ({}, ("a.txt", b"text"), "purpose", "purpose"),
    ({"purpose": "wisdom"}, ("a.txt", b"text"), "purpose", "wisdom"),
    ({"purpose": "assistants"}, ("empty.txt", b""), "file", "empty"),
    ({"purpose": "assistants"}, ("report.pdf", b"<html>not a pdf</html>"), "file", "PDF"),
    ({"purpose": "assistants"}, ("doc.docx", b"plain text"), "file", "ZIP"),
    ({"purpose": "assistants"}, ("doc.docx", _docx_without_document()), "file", "word/document.xml"),
    ({"purpose": "assistants"}, ("data.json", b"{not json"), "file", "JSON"),
    ({"purpose": "assistants"}, ("notes.txt", b"caf\xe9 latin-1"), "file", "UTF-8"),
    ({"purpose": "batch"}, ("input.csv", b"a,b\n"), "file", "jsonl"),
    ({"purpose": "batch"}, ("input.jsonl", b'{"custom_id": "1"}\n{broken\n'), "file", "line 2"),
    ({"purpose": "batch"}, ("input.jsonl", b'[1, 2]\n'), "file", "line 1"),
    ({"purpose": "assistants", "expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
     ("a.txt", b"text"), "expires_after[anchor]", "created_at"),
    ({"purpose": "assistants", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
     ("a.txt", b"text"), "expires_after[seconds]", "3600"),
    ({"purpose": "assistants", "expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"},
     ("a.txt", b"text"), "expires_after[seconds]", "integer"),
    ({"purpose": "assistants", "color": "blue"}, ("a.txt", b"text"), "color", "Unrecognized"),
    ({"purpose": "assistants"}, ("..", b"text"), "file", "filename"),
    ({"purpose": "assistants", "file": "just text"}, None, "file", "filename"),
]


@pytest.mark.parametrize("fields,upload,param,word", BAD_UPLOADS)
def test_bad_uploads_name_the_field(http, fields, upload, param, word):
    parts = [(name, (None, value)) for name, value in fields.items()]
    if upload is not None:
        parts.append(("file", upload))
    r = http.post("/v1/files", files=parts)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and word.lower() in error["message"].lower(), error
    assert error["type"] == "invalid_request_error"


def test_not_a_form_and_bad_list_queries(http):
    r = http.post("/v1/files", json={"purpose": "assistants"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]["message"]
    r = http.post("/v1/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    for query, param in (("limit=0", "limit"), ("limit=10001", "limit"), ("order=up", "order"),
                         ("purpose=wisdom", "purpose"), ("after=file-nope", "after")):
        r = http.get(f"/v1/files?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="bad\x07name.txt"\r\n\r\ntext\r\n--b--\r\n')
    r = http.post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and "control" in r.json()["error"]["message"] and r.json()["error"]["param"] == "file"
    assert http.get("/v1/files/file-nope").status_code == 404
    assert http.get("/v1/files/file-nope/content").status_code == 404
    assert http.delete("/v1/files/file-nope").status_code == 404
    assert httpx.get(f"{str(http.base_url).rstrip('/')}/v1/files").status_code == 401


def test_uploads_are_audited(sdk, http, files_server):
    made = sdk.files.create(file=("audited.txt", b"audit me"), purpose="assistants")
    sdk.files.delete(made.id)
    entries = http.get("/admin/v1/audit", params={"limit": 50}).json()["data"]
    actions = {(e["action"], e["target"]) for e in entries}
    assert ("file.create", made.id) in actions and ("file.delete", made.id) in actions


# -- the service on both stores, without a server ----------------------------------------------------------------

def test_store_both_kinds_expiry_and_purge(database_url, tmp_path):
    from modelworks.files.service import build_files
    from modelworks.settings import Settings
    from modelworks.store.db import Database
    from modelworks.store.schema import FileRow

    db = Database(database_url)
    db.upgrade()
    for storage in ("local", "database"):
        settings = Settings.model_validate({"server": {"data_dir": str(tmp_path)}, "files": {"storage": storage}})
        files = build_files(db, settings, tmp_path)
        data = bytes(range(256)) * 10_000  # 2.5 MB: three parts in the store
        made = files.store_bytes("p1", data, "blob.bin", "user_data")
        row, whole = files.read_bytes("p1", made["id"])
        assert whole == data and row.storage == storage
        assert b"".join(files.blobs.chunks(row, start=1_500_000)) == data[1_500_000:]
        with pytest.raises(Exception):
            files.get("p2", made["id"])
        with db.session() as s:  # expired a second ago
            s.get(FileRow, s.query(FileRow.seq).filter(FileRow.id == made["id"]).scalar()).expires_at = (
                datetime.now(timezone.utc) - timedelta(seconds=1))
        with pytest.raises(Exception):
            files.get("p1", made["id"])
        assert files.purge() == 1
        if storage == "database":
            assert list(files.blobs.chunks(row)) == []
        else:
            assert not (settings.files_path / "p1" / made["id"]).exists()
    db.dispose()


def test_hostile_uploads(http):
    deep = b"[" * 100_000 + b"]" * 100_000
    for name in ("deep.json", "deep.jsonl"):
        r = http.post("/v1/files", files={"file": (name, deep)}, data={"purpose": "user_data"})
        assert r.status_code == 400 and "nested" in r.json()["error"]["message"], r.text
    # a client's Content-Type is kept only where it is a plain type/subtype: it is sent back as a header
    body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="blob.bin"\r\n'
            b'Content-Type: a/b\x01\x7fc\r\n\r\nbytes\r\n--b--\r\n')
    r = http.post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 200, r.text
    got = http.get(f"/v1/files/{r.json()['id']}/content")
    assert got.status_code == 200 and got.content == b"bytes"
    assert got.headers["content-type"] == "application/octet-stream"
    http.delete(f"/v1/files/{r.json()['id']}")
