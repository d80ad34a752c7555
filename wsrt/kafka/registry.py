"""A Confluent-compatible Schema Registry client: schemas by id, with their references.

:meth:`Registry.load` fetches the schemas of the ids a batch needs into a
:class:`~wsrt.schemas.Schemas` (each once per process) before the batch is
framed. An id the registry does not know (404) is marked unknown, so its
records are skipped as ``unknown_schema``; a registry that cannot be reached
or fails raises :class:`RegistryUnavailable`, and the caller waits: that is
an outage, not bad data (docs/design.md, "Record formats").
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wsrt.config import Settings
from wsrt.errors import WsrtError, unreachable_words
from wsrt.schemas import References, Schemas, build


class RegistryUnavailable(WsrtError):
    """The registry did not answer (or failed): words for readiness and the log."""


class Registry:
    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._auth = None
        if username:
            basic = f"{username}:{password or ''}".encode()
            self._auth = "Basic " + base64.b64encode(basic).decode()
        self._context = ssl.create_default_context(cafile=cafile) if cafile else None
        self.schemas = Schemas()

    def needed(self, topics: frozenset[str], batches: Mapping[Any, Sequence[Any]]) -> set[int]:
        """Schema ids of the values and keys of ``batches`` on ``topics`` not loaded yet."""
        framed = [
            part for tp, records in batches.items() if tp.topic in topics
            for r in records for part in (r.value, r.key)
        ]  # fmt: skip
        return self.schemas.missing(framed)

    async def load_waiting(self, ids: set[int], most: float = 2.0) -> None:
        """:meth:`load`, retried (1 s, then up to ``most`` s apart) until the registry answers."""
        pause = 1.0
        while True:
            try:
                return await self.load(ids)
            except RegistryUnavailable:
                await asyncio.sleep(pause)  # pacing the retries of an outage
                pause = min(most, pause * 2)

    async def load(self, ids: set[int]) -> None:
        """Fetch the schemas of ``ids`` into :attr:`schemas` (404: marked unknown); each is
        read (Protobuf text: compiled) off the event loop."""
        for ident in sorted(ids):
            found = await asyncio.to_thread(self._schema, ident)
            if found is None:
                self.schemas.mark_unknown(ident)
            else:
                self.schemas.put(ident, await asyncio.to_thread(build, *found))

    def register(self, subject: str, schema: str, kind: str) -> int:
        """Register ``schema`` (``kind``: AVRO, PROTOBUF or JSON) under ``subject``; its id."""
        body: dict[str, str] = {"schema": schema}
        if kind != "AVRO":
            body["schemaType"] = kind
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = self._get(path, json.dumps(body).encode())
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise RegistryUnavailable(f"the Schema Registry at {self.url} refused the schema")
        return int(answer["id"])

    def subjects(self) -> int:
        """How many subjects the registry holds (raises :class:`RegistryUnavailable`)."""
        answer = self._get("/subjects")
        return len(answer) if isinstance(answer, list) else 0

    def _schema(self, ident: int) -> tuple[str, str, References] | None:
        # "serialized": Confluent's registry hands Protobuf back as a descriptor, which
        # needs no compiler; others ignore it (and their text is compiled).
        answer = self._get(f"/schemas/ids/{ident}?format=serialized")
        if answer is None:
            return None
        if not isinstance(answer.get("schema"), str):
            raise RegistryUnavailable(f"the Schema Registry at {self.url} gave no schema {ident}")
        return str(answer.get("schemaType", "AVRO")), answer["schema"], self._references(answer)

    def _references(self, answer: dict[str, Any], depth: int = 0) -> list[tuple[str, str]]:
        """(name, text) of the schemas ``answer`` refers to, those they refer to first."""
        texts: list[tuple[str, str]] = []
        for ref in answer.get("references") or ():
            if depth > 16:
                raise RegistryUnavailable("schema references nest deeper than 16")
            subject = urllib.parse.quote(str(ref["subject"]), safe="")
            found = self._get(f"/subjects/{subject}/versions/{ref['version']}?format=serialized")
            if found is None:
                continue  # a reference that is gone: the schema will not parse (mismatch)
            texts += self._references(found, depth + 1)
            texts.append((str(ref.get("name", "")), found["schema"]))
        return texts

    def _refused(self, code: int) -> str:
        if self._auth is None:
            return (
                f"the Schema Registry at {self.url} asks who is asking (HTTP {code}): set "
                "WS_SCHEMA_REGISTRY_USERNAME and WS_SCHEMA_REGISTRY_PASSWORD"
            )
        return (
            f"the Schema Registry at {self.url} refused WS_SCHEMA_REGISTRY_USERNAME and its "
            f"password (HTTP {code})"
        )

    def _get(self, path: str, body: bytes | None = None) -> Any:
        """GET ``path`` (POST ``body`` as JSON, when given); ``None`` for 404."""
        request = urllib.request.Request(
            self.url + path, data=body,
            headers={"Accept": "application/vnd.schemaregistry.v1+json"},
        )  # fmt: skip
        if body is not None:
            request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context
            ) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code in (401, 403):
                raise RegistryUnavailable(self._refused(exc.code)) from None
            said = exc.read().decode(errors="replace")[:300]
            raise RegistryUnavailable(
                f"the Schema Registry at {self.url} answered HTTP {exc.code} for {path}: {said}"
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise RegistryUnavailable(
                    f"the Schema Registry at {self.url} has a certificate that is not trusted "
                    f"({reason.verify_message}): set WS_SCHEMA_REGISTRY_CAFILE to its CA"
                ) from None
            raise RegistryUnavailable(
                f"cannot reach the Schema Registry at {self.url}: {unreachable_words(exc)}"
            ) from None
        except (ValueError, KeyError):
            raise RegistryUnavailable(
                f"the Schema Registry at {self.url} answered something that is not a schema"
            ) from None


def client(settings: Settings, timeout: float) -> Registry:
    """A client of ``WS_SCHEMA_REGISTRY_URL`` with its own cache (``wsrt check``, ``produce``)."""
    s = settings
    assert s.schema_registry_url
    return Registry(
        s.schema_registry_url, s.schema_registry_username, s.schema_registry_password,
        s.schema_registry_cafile, timeout,
    )  # fmt: skip


def registry(settings: Settings) -> Registry | None:
    """The process's registry client (one cache of schemas), if a topic needs one."""
    s = settings
    if not s.schema_registry_url:
        return None
    return _shared(
        s.schema_registry_url, s.schema_registry_username, s.schema_registry_password,
        s.schema_registry_cafile, s.kafka_request_timeout,
    )  # fmt: skip


@functools.cache
def _shared(
    url: str, username: str | None, password: str | None, cafile: str | None, timeout: float
) -> Registry:
    return Registry(url, username, password, cafile, timeout)


class Holding:
    """The live consumer's partitions of schema topics, held while the registry is away.

    :meth:`ready` hands back what can be framed now. When schemas cannot be
    loaded, the schema topics' partitions that need them are sought back to
    their first record of the batch and paused (nothing skipped, nothing
    taken, so nothing committed past them) while every other topic goes on;
    a task asks the registry again (``backoff`` apart) and resumes them once
    it answers. ``outage`` hears the reason, then ``None``; ``waiting`` is
    called at each retry (the watchdog must not take held records for a
    stalled consumer).
    """

    def __init__(
        self,
        registry: Registry,
        topics: frozenset[str],
        consumer: Any,
        outage: Callable[[str | None], None],
        waiting: Callable[[], None],
        backoff: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.topics = topics
        self.consumer = consumer
        self.outage = outage
        self.waiting = waiting
        self.backoff = backoff
        self.held: set[Any] = set()
        self._ids: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def ready(self, batches: Mapping[Any, list[Any]]) -> dict[Any, list[Any]]:
        ids = self.registry.needed(self.topics, batches)
        if not ids:
            return dict(batches)
        try:
            await self.registry.load(ids)
        except RegistryUnavailable as exc:
            self.outage(str(exc))
        else:
            if not self.held:
                self.outage(None)
            return dict(batches)
        ready: dict[Any, list[Any]] = {}
        for tp, records in batches.items():
            wanted = self.registry.needed(self.topics, {tp: records})
            if not wanted:
                ready[tp] = records
                continue
            self.consumer.seek(tp, records[0].offset)  # read again once the registry answers
            self.consumer.pause(tp)
            self.held.add(tp)
            self._ids |= wanted
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._retry(), name="wsrt-registry-retry")
        return ready

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(self.backoff())  # pacing the retries of an outage
            self.waiting()
            try:
                await self.registry.load(self.registry.schemas.missing_ids(self._ids))
            except RegistryUnavailable as exc:
                self.outage(str(exc))
                continue
            assigned = self.consumer.assignment()
            self.consumer.resume(*[tp for tp in self.held if tp in assigned])
            self.held.clear()
            self._ids.clear()
            self.outage(None)
            return

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
