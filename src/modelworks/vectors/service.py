"""The Vector Stores API's work: stores, their files and file batches, and hybrid search.

Every vector, a chunk's or a query's, comes from an embeddings deployment through `ModelCalls.embed`, the path
of `/v1/embeddings`: the same quotas, budgets, routing, residency and metering (operation
`vector_stores.ingest` or `vector_stores.search`, on the key that added the file or that searches).
Each replica keeps an in-memory index per store it has searched, brought up to date before each search from the
store's `version` (one small query), so a file added through one replica is searchable through every other as
soon as its ingestion commits."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from datetime import timedelta

import numpy as np

from modelworks.calls import ModelCalls
from modelworks.errors import InvalidRequest, NotFound
from modelworks.files.service import FilesService
from modelworks.policies.chain import Call
from modelworks.protocol.requests import EmbeddingRequest
from modelworks.service import Gateway
from modelworks.store.schema import VectorStoreFileBatchRow
from modelworks.vectors.filters import compile_filter
from modelworks.vectors.index import DENSE_WEIGHT, StoreIndex
from modelworks.vectors.protocol import (
    ChunkingStrategy, CreateFileBatch, CreateVectorStore, CreateVectorStoreFile, SearchRequest, UpdateAttributes,
    UpdateVectorStore,
)
from modelworks.vectors.store import VectorStoreDB, batch_view, file_view, new_id
from modelworks.vectors.terms import terms

log = logging.getLogger("modelworks.vectors")

AUTO_CHUNKING = ChunkingStrategy(type="auto")


class VectorStoresService:
    def __init__(self, store: VectorStoreDB, files: FilesService, calls: ModelCalls, gateway: Gateway,
                 default_deployment, max_indexes: int = 64) -> None:
        self.store = store
        self.files = files
        self.calls = calls
        self.gateway = gateway
        self.default_deployment = default_deployment  # () -> the embeddings deployment to use when none is named
        self.indexes: OrderedDict[str, StoreIndex] = OrderedDict()
        self.max_indexes = max_indexes
        self._locks: dict[str, asyncio.Lock] = {}
        self._deployments: dict[tuple[str, str], str] = {}  # (project, store) -> its embedding deployment
        self.wake = asyncio.Event()  # the ingestion worker's: files are waiting
        self._builds: set[asyncio.Task] = set()

    # -- stores -----------------------------------------------------------------------------------------------------

    async def create(self, who, req: CreateVectorStore) -> dict:
        deployment = req.embedding_model or self.default_deployment()
        if deployment is None:
            raise InvalidRequest("No embeddings deployment is configured for vector stores; name one in "
                                 "'embedding_model'.", param="embedding_model")
        self.gateway.resolve(deployment, param="embedding_model")
        files = await self._files(who.project_id, [CreateVectorStoreFile(file_id=f) for f in req.file_ids or []],
                                  req.chunking_strategy, None, "file_ids")
        days = req.expires_after.days if req.expires_after else None
        row = await asyncio.to_thread(self.store.create, who.project_id, name=req.name or "",
                                      description=req.description, days=days, metadata=req.metadata or {},
                                      deployment=deployment)
        body = await asyncio.to_thread(self._attach_and_view, who, row.id, files, None)
        if files:
            self.wake.set()
        return body

    def _attach_and_view(self, who, store_id: str, files, batch_id) -> dict:
        with self.store.db.session() as s:
            row = self.store.store_row(s, who.project_id, store_id, usable=True)
            if files:
                self.store.attach(s, row, files, who.key_id, batch_id)
            return self.store.view(s, row)

    async def get(self, project_id: str, store_id: str) -> dict:
        def run():
            with self.store.db.session() as s:
                return self.store.view(s, self.store.store_row(s, project_id, store_id))
        return await asyncio.to_thread(run)

    async def update(self, project_id: str, store_id: str, req: UpdateVectorStore) -> dict:
        sent = req.model_fields_set

        def run():
            with self.store.db.session() as s:
                row = self.store.store_row(s, project_id, store_id)
                if "name" in sent and req.name is not None:
                    row.name = req.name
                if "metadata" in sent and req.metadata is not None:
                    row.metadata_json = json.dumps(req.metadata)
                if "expires_after" in sent:
                    row.expires_after_days = req.expires_after.days if req.expires_after else None
                    row.expires_at = (row.last_active_at + timedelta(days=row.expires_after_days)
                                      if row.expires_after_days else None)
                return self.store.view(s, row)
        return await asyncio.to_thread(run)

    async def delete(self, project_id: str, store_id: str) -> dict:
        await asyncio.to_thread(self.store.delete, project_id, store_id)
        self.indexes.pop(store_id, None)
        self._deployments.pop((project_id, store_id), None)
        return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

    async def list(self, project_id: str, **page) -> tuple[list[dict], bool]:
        return await asyncio.to_thread(self.store.list, project_id, **page)

    # -- files ------------------------------------------------------------------------------------------------------

    async def _files(self, project_id: str, items: list[CreateVectorStoreFile], chunking: ChunkingStrategy | None,
                     attributes: dict | None, param: str) -> list[tuple[str, str, dict | None, dict]]:
        """(file_id, filename, attributes, chunking) of files of the project; a missing one is a 404 naming it."""
        out = []
        for i, item in enumerate(items):
            try:
                row = await asyncio.to_thread(self.files.row, project_id, item.file_id)
            except NotFound:
                raise NotFound(f"No file found with id '{item.file_id[:80]}'.",
                               param=param if param == "file_id" else f"{param}[{i}]") from None
            strategy = item.chunking_strategy or chunking or AUTO_CHUNKING
            attrs = item.attributes if item.attributes is not None else attributes
            out.append((row.id, row.filename, attrs, strategy.resolved()))
        return out

    async def add_file(self, who, store_id: str, req: CreateVectorStoreFile) -> dict:
        files = await self._files(who.project_id, [req], None, None, "file_id")

        def run():
            with self.store.db.session() as s:
                row = self.store.store_row(s, who.project_id, store_id, usable=True)
                (made,) = self.store.attach(s, row, files, who.key_id, None)
                return file_view(made)
        body = await asyncio.to_thread(run)
        self.wake.set()
        return body

    async def get_file(self, project_id: str, store_id: str, file_id: str) -> dict:
        def run():
            with self.store.db.session() as s:
                self.store.store_row(s, project_id, store_id)
                return file_view(self.store.file_row(s, store_id, file_id))
        return await asyncio.to_thread(run)

    async def update_file(self, project_id: str, store_id: str, file_id: str, req: UpdateAttributes) -> dict:
        def run():
            with self.store.db.session() as s:
                self.store.store_row(s, project_id, store_id)
                self.store.bump(s, store_id)  # filters read attributes from the index
                row = self.store.file_row(s, store_id, file_id)
                row.attributes = json.dumps(req.attributes) if req.attributes is not None else None
                return file_view(row)
        return await asyncio.to_thread(run)

    async def delete_file(self, project_id: str, store_id: str, file_id: str) -> dict:
        def run():
            with self.store.db.session() as s:
                self.store.detach(s, self.store.store_row(s, project_id, store_id), file_id)
        await asyncio.to_thread(run)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    async def list_files(self, project_id: str, store_id: str, **page) -> tuple[list[dict], bool]:
        return await asyncio.to_thread(self.store.list_files, project_id, store_id, **page)

    async def file_content(self, project_id: str, store_id: str, file_id: str) -> dict:
        def run():
            with self.store.db.session() as s:
                self.store.store_row(s, project_id, store_id)
                self.store.file_row(s, store_id, file_id)
            return self.store.file_chunks(store_id, file_id)
        chunks = await asyncio.to_thread(run)
        return {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": c} for c in chunks],
                "has_more": False, "next_page": None}

    # -- file batches -----------------------------------------------------------------------------------------------

    async def create_batch(self, who, store_id: str, req: CreateFileBatch) -> dict:
        items = req.files or [CreateVectorStoreFile(file_id=f) for f in req.file_ids or []]
        files = await self._files(who.project_id, items, req.chunking_strategy,
                                  req.attributes if req.file_ids is not None else None,
                                  "files" if req.files is not None else "file_ids")
        batch_id = new_id("vsfb_")

        def run():
            with self.store.db.session() as s:
                store = self.store.store_row(s, who.project_id, store_id, usable=True)
                row = VectorStoreFileBatchRow(id=batch_id, vector_store_id=store.id, project_id=who.project_id,
                                              created_at=store.last_active_at, cancelled=False)
                s.add(row)
                self.store.attach(s, store, files, who.key_id, batch_id)
                row.created_at = store.last_active_at
                return batch_view(row, self.store.batch_counts(s, batch_id))
        body = await asyncio.to_thread(run)
        self.wake.set()
        return body

    async def get_batch(self, project_id: str, store_id: str, batch_id: str, cancel: bool = False) -> dict:
        def run():
            with self.store.db.session() as s:
                self.store.store_row(s, project_id, store_id)
                row = self.store.batch_row(s, store_id, batch_id)
                if cancel:
                    self.store.cancel_batch(s, row)
                    s.flush()
                return batch_view(row, self.store.batch_counts(s, batch_id))
        return await asyncio.to_thread(run)

    async def batch_files(self, project_id: str, store_id: str, batch_id: str, **page) -> tuple[list[dict], bool]:
        def check():
            with self.store.db.session() as s:
                self.store.store_row(s, project_id, store_id)
                self.store.batch_row(s, store_id, batch_id)
        await asyncio.to_thread(check)
        return await asyncio.to_thread(self.store.list_files, project_id, store_id, batch_id=batch_id, **page)

    # -- search -----------------------------------------------------------------------------------------------------

    async def search(self, who, call: Call, store_ids: list[str], req: SearchRequest) -> tuple[list[str], list[dict]]:
        """The best chunks of the stores for the query (or queries): (the queries, result items)."""
        queries = [req.query] if isinstance(req.query, str) else list(req.query)
        predicate = compile_filter(req.filters)
        options = req.ranking_options
        threshold = options.score_threshold if options else 0.0
        weight = _dense_weight(options)
        query_terms = [terms(text) for text in queries]
        embeddings: dict[str, asyncio.Task] = {}  # embedding deployment -> the queries' vectors from it
        plans: list[tuple] = []
        try:
            if weight > 0:  # stores this project searched here before: the queries are embedded while they are read
                for deployment in {self._deployments.get((who.project_id, i)) for i in store_ids} - {None}:
                    embeddings[deployment] = self._embed(call, deployment, queries)
            try:
                rows = await asyncio.to_thread(self.store.searchable, who.project_id, store_ids)
            except Exception:
                for store_id in store_ids:  # gone or expired: its next search starts no embedding before reading it
                    self._deployments.pop((who.project_id, store_id), None)
                raise
            for row in rows:
                self._remember(who.project_id, row.id, row.embedding_deployment)
                if weight > 0 and row.embedding_deployment not in embeddings:
                    embeddings[row.embedding_deployment] = self._embed(call, row.embedding_deployment, queries)
                index = await self.index(row.id, row.version)
                # the BM25 half is computed while the queries are embedded (on the other core, if there is one)
                lexical = asyncio.create_task(asyncio.to_thread(_locked_lexical, index, query_terms)) \
                    if 0 < weight < 1 else None
                plans.append((row, index, lexical))
            vectors = {deployment: await task for deployment, task in embeddings.items()}
            searches = []
            for row, index, lexical in plans:
                lexical = await lexical if lexical is not None else [None] * len(queries)
                allowed = None
                if predicate is not None:
                    allowed = {index.file_number(f.file_id) for f in index.files if predicate(f.attributes)}
                    allowed.discard(None)
                found = vectors.get(row.embedding_deployment)
                searches += [(index, found[q] if found is not None else None, query_terms[q], allowed, lexical[q])
                             for q in range(len(queries))]
        except BaseException:
            for task in [*embeddings.values(), *(plan[2] for plan in plans if plan[2] is not None)]:
                # an embedding stopped here is completed as cancelled (a usage record with no tokens), or as done
                # if it finished first; a task that failed on its own has its exception read
                task.cancel()
                task.add_done_callback(_quietly)
            raise

        def find():  # one trip to a worker thread: the searches, then the texts of the best chunks
            best: dict[int, object] = {}
            for index, vector, query_terms, allowed, lexical in searches:
                for hit in _locked_search(index, vector, query_terms, req.max_num_results, allowed, weight,
                                          threshold, lexical):
                    if hit.seq not in best or hit.score > best[hit.seq].score:
                        best[hit.seq] = hit
            ranked = sorted(best.values(), key=lambda h: (-h.score, h.seq))
            return ranked, self.store.texts(store_ids, [h.seq for h in ranked])

        ranked, texts = await asyncio.to_thread(find)
        ranked = [h for h in ranked if h.seq in texts][:req.max_num_results]  # a chunk just replaced is left out
        return queries, [{"file_id": h.file.file_id, "filename": h.file.filename, "score": round(h.score, 6),
                          "attributes": h.file.attributes or None, "content": [{"type": "text",
                                                                                 "text": texts.get(h.seq, "")}]}
                         for h in ranked]

    def _embed(self, call: Call, deployment: str, queries: list[str]) -> asyncio.Task:
        return asyncio.create_task(self._query_vectors(call, deployment, queries))

    def _remember(self, project_id: str, store_id: str, deployment: str) -> None:
        """A store's embedding deployment (fixed when it is created), for the next search to start early."""
        if len(self._deployments) >= 10_000 and (project_id, store_id) not in self._deployments:
            self._deployments.clear()
        self._deployments[(project_id, store_id)] = deployment

    async def _query_vectors(self, call: Call, deployment: str, queries: list[str]) -> np.ndarray:
        route = self.gateway.resolve(deployment, param="embedding_model")
        # metered as the search's own (a file_search's carries its response)
        facts = {"response_id": call.facts["response_id"]} if "response_id" in call.facts else None
        result = await self.calls.embed(ModelCalls.another(call, call.operation, facts), route,
                                        EmbeddingRequest(model=deployment, input=queries))
        vectors = np.asarray(result.vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    async def index(self, store_id: str, version: int) -> StoreIndex:
        """This replica's index of the store, brought up to date with what the store holds at `version` (read by
        the caller with the store's row)."""
        lock = self._locks.setdefault(store_id, asyncio.Lock())
        async with lock:
            index = self.indexes.get(store_id)
            if index is not None and index.version >= version:  # (versions only grow; a caller may have
                # read one before another caller brought the index past it)
                self.indexes.move_to_end(store_id)
                return index
            if index is None or index.masked_fraction > 0.5:
                index = StoreIndex(store_id)
            index = await asyncio.to_thread(self._refresh, index, version)
            if index.needs_clusters():
                index.building = True
                self._builds.add(asyncio.create_task(self._cluster(index)))
            self.indexes[store_id] = index
            self.indexes.move_to_end(store_id)
            while len(self.indexes) > self.max_indexes:
                gone, _ = self.indexes.popitem(last=False)
                self._locks.pop(gone, None)
            return index

    async def maintain(self, every_s: float, leases=None) -> None:
        """Forever, every `every_s`: delete expired vector stores (with `leases`, only on the replica that holds the
        lease `vector_stores.purge`)."""
        while True:
            try:
                if leases is not None and not await asyncio.to_thread(
                        leases.take, "vector_stores.purge", timedelta(seconds=2 * every_s + 30)):
                    await asyncio.sleep(every_s)
                    continue
                removed = await asyncio.to_thread(self.store.purge_expired)
                if removed:
                    log.info("deleted %d expired vector stores", removed)
            except Exception:  # noqa: BLE001 - the next round retries
                log.warning("could not delete expired vector stores", exc_info=True)
            await asyncio.sleep(every_s)

    async def _cluster(self, index: StoreIndex) -> None:
        try:
            started = time.perf_counter()
            await asyncio.to_thread(index.build_clusters)
            log.info("built the IVF index of %s (%d chunks) in %.1f s", index.store_id, index.clusters.trained,
                     time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - searches stay exact; the next refresh tries again
            log.warning("could not build the IVF index of %s", index.store_id, exc_info=True)
        finally:
            index.building = False
            self._builds = {t for t in self._builds if not t.done()}

    def _refresh(self, index: StoreIndex, version: int) -> StoreIndex:
        """Load what is new into the index, under its lock (a search never sees it half loaded); a store whose
        files' chunks were replaced is loaded anew (into a fresh index, returned)."""
        with index.lock:
            index.begin_load()
            while True:
                rows = self.store.chunks_after(index.store_id, index.last_seq)
                if not rows:
                    break
                if not index.add_chunks(rows):
                    fresh = StoreIndex(index.store_id)
                    return self._refresh(fresh, version)
            index.set_files(self.store.live_files(index.store_id))
            index.version = version
        return index


def _locked_search(index: StoreIndex, *args):
    with index.lock:
        return index.search(*args)


def _quietly(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _locked_lexical(index: StoreIndex, query_terms: list[list[str]]) -> list:
    with index.lock:
        return [index.lexical_scores(t) if t else None for t in query_terms]


def default_embedding_deployment(gateway: Gateway) -> str | None:
    """The first deployment of the built-in MiniLM, else the first whose backend serves embeddings."""
    capable = [name for name, route in gateway.routes.items() if route.backend.capabilities.embeddings]
    builtin = [name for name in capable if type(gateway.routes[name].backend).__name__ == "MiniLMBackend"]
    return (builtin or capable or [None])[0]


def _dense_weight(options) -> float:
    hybrid = options.hybrid_search if options is not None else None
    if not hybrid:
        return DENSE_WEIGHT
    try:
        dense = float(hybrid.get("embedding_weight", 1.0))
        text = float(hybrid.get("text_weight", 1.0))
    except (TypeError, ValueError):
        raise InvalidRequest("Invalid value for 'ranking_options.hybrid_search': embedding_weight and text_weight "
                             "are numbers.", param="ranking_options.hybrid_search") from None
    if dense < 0 or text < 0 or dense + text <= 0:
        raise InvalidRequest("Invalid value for 'ranking_options.hybrid_search': weights are 0 or more, not both 0.",
                             param="ranking_options.hybrid_search")
    return dense / (dense + text)
