"""Ingestion in the background: each replica's worker takes a waiting file (a lease, renewed while it works),
reads it, extracts its text, chunks it, embeds the chunks through the embeddings deployment of the store on the
key that added the file, and stores the chunks in the transaction that marks the file `completed`.

A worker that dies (a crash, a SIGKILL, a restart) leaves its lease to run out; the file is then taken again, on
this replica or another, from the start (its chunks are only ever written whole). A file that cannot be read is
`failed` with the reason; a rate-limited embedding waits and goes on, and other errors are retried a few times."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta

import numpy as np
from sqlalchemy import select

from modelworks.calls import ModelCalls
from modelworks.errors import InsufficientQuota, ModelworksError, NotFound, Overloaded
from modelworks.policies.chain import Call
from modelworks.protocol.requests import EmbeddingRequest
from modelworks.store.schema import VectorStoreFileRow, VectorStoreRow
from modelworks.vectors.chunking import chunk_text
from modelworks.vectors.extract import ExtractionError, extract_text
from modelworks.vectors.terms import terms

log = logging.getLogger("modelworks.vectors.ingest")

EMBED_BATCH = 32
MAX_ATTEMPTS = 3
CLAIM = 16  # files taken at once: their chunks are embedded together
GROUP_CHUNKS = 256  # chunks embedded together at most (more of one file are, in its own group)


class Ingestor:
    def __init__(self, service, keys, lease_s: float = 60.0) -> None:
        self.service = service
        self.store = service.store
        self.keys = keys
        self.lease = timedelta(seconds=lease_s)
        self.owner = uuid.uuid4().hex[:16]
        self.processed = 0
        self.drain = None  # modelworks.api.drain.Drain: a stopping replica takes no new file

    async def run(self, idle_s: float = 2.0) -> None:
        while True:
            try:
                rows = []
                if self.drain is None or not self.drain.draining:
                    rows = await asyncio.to_thread(self.store.claim, self.owner, self.lease, CLAIM)
            except Exception:  # noqa: BLE001 - the store is away: try again later
                log.warning("could not look for files to ingest", exc_info=True)
                rows = []
            if not rows:
                self.service.wake.clear()
                try:
                    await asyncio.wait_for(self.service.wake.wait(), idle_s)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                await self.ingest(rows)
            except Exception:  # noqa: BLE001 - the files' leases run out and they are taken again
                log.warning("ingesting %d files failed", len(rows), exc_info=True)

    async def ingest(self, rows: list[VectorStoreFileRow]) -> None:
        """Files taken together: each read, extracted and chunked, and the chunks of several embedded in shared
        batches (many small files embed much faster so; at most GROUP_CHUNKS chunks wait in memory), then each
        file's chunks stored. Leases are renewed until the last file is stored."""
        for row in rows:
            log.info("ingesting %s into %s (attempt %d)", row.file_id, row.vector_store_id, row.attempts)
        renewer = asyncio.create_task(self._renew(rows))
        try:
            pending: list[tuple] = []
            for row in rows:
                try:
                    prepared = await self._prepare(row)
                except Exception as exc:  # noqa: BLE001 - a file's failure is its own
                    await self._finish(row, self._failed_attempt(row, exc))
                    continue
                if isinstance(prepared, dict):
                    await self._finish(row, prepared)
                    continue
                pending.append((row, *prepared))
                if sum(len(p[3]) for p in pending) >= GROUP_CHUNKS:
                    await self._embed_and_store(pending)
                    pending = []
            await self._embed_and_store(pending)
        finally:
            renewer.cancel()

    async def _embed_and_store(self, pending: list[tuple]) -> None:
        groups: dict[tuple, list] = {}
        for entry in pending:  # (row, principal, deployment, chunks)
            groups.setdefault((entry[2], entry[1].key_id), []).append(entry)
        for (deployment, _), members in groups.items():
            texts = [c.text for *_, chunks in members for c in chunks]
            try:
                vectors = await self._embed(members[0][1], deployment, texts)
            except Exception as exc:  # noqa: BLE001 - the group's files fail (or wait) together
                for row, *_ in members:
                    await self._finish(row, self._failed_attempt(row, exc))
                continue
            at = 0
            for row, _, _, chunks in members:
                made = await asyncio.to_thread(_chunk_rows, chunks, vectors[at:at + len(chunks)])
                at += len(chunks)
                await self._finish(row, {"chunks": made, "usage_bytes": sum(len(c["text"].encode()) +
                                                                           len(c["vector"]) for c in made)})

    async def _finish(self, row: VectorStoreFileRow, outcome: dict | None) -> None:
        if outcome is None:  # taken again once its lease runs out
            return
        try:
            await asyncio.to_thread(self.store.finish, row.vector_store_id, row.file_id, self.owner, **outcome)
            self.processed += 1
        except Exception:  # noqa: BLE001 - the store failed: its lease runs out and it is taken again
            log.warning("could not store the outcome of %s", row.file_id, exc_info=True)

    def _failed_attempt(self, row: VectorStoreFileRow, exc: BaseException) -> dict | None:
        """A failed attempt: the file fails for good (its outcome), or after its lease runs out it is taken again
        (None)."""
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        if isinstance(exc, InsufficientQuota):
            return _failed("server_error", f"The project's budget is spent: {exc.message}")
        log.warning("ingesting %s into %s failed", row.file_id, row.vector_store_id, exc_info=exc)
        if row.attempts < MAX_ATTEMPTS:
            return None
        if isinstance(exc, ModelworksError):
            return _failed("server_error", f"The embeddings deployment failed: {exc.message}")
        return _failed("server_error", f"Ingestion failed: {type(exc).__name__}.")

    async def _renew(self, rows: list[VectorStoreFileRow]) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            for row in rows:
                try:
                    await asyncio.to_thread(self.store.renew, row.vector_store_id, row.file_id, self.owner,
                                            self.lease)
                except Exception:  # noqa: BLE001 - the next renewal may succeed before the lease runs out
                    log.warning("could not renew the lease of %s", row.file_id, exc_info=True)

    async def _prepare(self, row: VectorStoreFileRow):
        """(principal, deployment, chunks) of a file to embed, or its outcome where it cannot be."""
        digest = await asyncio.to_thread(self.keys.digest_of, row.key_id) if row.key_id else None
        principal = await asyncio.to_thread(self.keys.lookup, digest) if digest else None
        if principal is None:
            return _failed("server_error", "The API key that added this file was revoked or has expired.")
        try:
            file_row, data = await asyncio.to_thread(self.service.files.read_bytes, row.project_id, row.file_id)
        except NotFound:
            return _failed("invalid_file", "The file was deleted.")
        try:
            text = await asyncio.to_thread(extract_text, file_row.filename, data)
        except ExtractionError as exc:
            return _failed(exc.code, exc.message)
        del data
        chunking = json.loads(row.chunking)["static"]
        chunks = await asyncio.to_thread(chunk_text, text, chunking["max_chunk_size_tokens"],
                                         chunking["chunk_overlap_tokens"])
        if not chunks:
            return _failed("invalid_file", "The file has no text to search.")
        deployment = await asyncio.to_thread(self._deployment, row.vector_store_id)
        if deployment is None:
            return _failed("server_error", "The vector store is gone.")
        return principal, deployment, chunks

    def _deployment(self, store_id: str) -> str | None:
        with self.store.db.session() as s:
            return s.scalar(select(VectorStoreRow.embedding_deployment).where(VectorStoreRow.id == store_id))

    async def _embed(self, principal, deployment: str, texts: list[str]) -> np.ndarray:
        out = []
        calls: ModelCalls = self.service.calls
        for start in range(0, len(texts), EMBED_BATCH):
            part = texts[start:start + EMBED_BATCH]
            while True:
                route = self.service.gateway.resolve(deployment, param="embedding_model")
                call = Call(operation="vector_stores.ingest", headers={}, principal=principal)
                try:
                    result = await calls.embed(call, route, EmbeddingRequest(model=deployment, input=part))
                    break
                except Overloaded as exc:  # a rate limit or a full queue: wait as told, then go on
                    await asyncio.sleep(min(60.0, max(0.5, exc.retry_after_s)))
            out.append(np.asarray(result.vectors, dtype=np.float32))
        vectors = np.concatenate(out)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _failed(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _chunk_rows(chunks, vectors: np.ndarray) -> list[dict]:
    return [{"idx": c.index, "text": c.text, "terms": " ".join(terms(c.text)), "tokens": c.tokens,
             "vector": vectors[i].astype("<f4").tobytes()} for i, c in enumerate(chunks)]
