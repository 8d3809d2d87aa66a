"""The paths bench.suite sets against each other, one interface: single() times one greedy stream
(a Run), samples() returns the tokens n samples of one prompt generated.

Not run on its own (bench.triton uses Server too). EngineDirect is server.engine in this process;
Server a `slipstream serve` child over HTTP through client.api, which also drives concurrent
streaming clients; Generate transformers' generate() on optimum's or torch's model; LlamaCpp
llama-cpp-python (bench.llamacpp's path). hf_checkpoint and ggufs build the peers' inputs from the
bundled GGUF once and cache them under bench/.cache/.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench.paths import CACHE, EnginePath, Run, first_token_clock

TEMPERATURE = 0.8  # the samples and the clients cases


class Generate:
    """transformers' generate() on a model that has it (optimum's ORTModelForCausalLM, torch's)."""

    def __init__(self, model, torch_threads: int) -> None:
        self.model, self.torch_threads = model, torch_threads

    def _generate(self, ids: list[int], tokens: int, n: int, sample: bool, streamer=None):
        import torch

        torch.set_num_threads(self.torch_threads)
        input_ids = torch.tensor([ids], dtype=torch.int64)
        options = dict(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
        with torch.inference_mode():
            return self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                num_return_sequences=n,
                num_beams=1,
                streamer=streamer,
                pad_token_id=self.model.generation_config.eos_token_id,
                **options,
            )

    def single(self, ids: list[int], tokens: int) -> Run:
        clock = first_token_clock()
        start = time.perf_counter()
        out = self._generate(ids, tokens, 1, False, clock)
        end = time.perf_counter()
        return Run(out.shape[1] - len(ids), (clock.at or end) - start, end - start)

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        out = self._generate(ids, tokens, n, True)
        return n * (out.shape[1] - len(ids))


class EngineDirect:
    def __init__(self, repository: Path, name: str, threads: int) -> None:
        self.path = EnginePath(repository, name, threads)

    def single(self, ids: list[int], tokens: int) -> Run:
        return self.path.run(self.path.engine.prompter.prepare(ids, tokens), tokens, ignore_eos=True)[0]

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        from server.engine import SamplingParams, Usage

        params = SamplingParams(max_tokens=tokens, temperature=TEMPERATURE, n=n, seed=0, ignore_eos=True)
        usage = [e for e in self.path.engine.generate(self.path.engine.prompter.prepare(ids, tokens), params) if isinstance(e, Usage)]
        return usage[0].completion_tokens


class Server:
    """`slipstream serve` in a child process; the client sends the prompt as token ids (the server
    adds the model's prefix, as the engine's prepare does)."""

    def __init__(
        self, repository: Path, name: str, threads: int, env: dict[str, str] | None = None, flags: list[str] | None = None
    ) -> None:
        from client.api import Client
        from testkit.server_process import ServerProcess

        self.process = ServerProcess(repository, [name], env=env, threads=threads, flags=flags)
        self.process.wait_ready(timeout=600)
        self.url, self.name = self.process.url, name
        self.client = Client(self.url, timeout=600)

    def single(self, ids: list[int], tokens: int) -> Run:
        timing = self.client.timed(
            ids, model=self.name, max_tokens=tokens, temperature=0, ignore_eos=True, cache_prompt=False
        )  # cold: the prefix cache would answer a repeated prompt
        if timing.completion_tokens != tokens:
            raise RuntimeError(f"the server generated {timing.completion_tokens} tokens, not {tokens}")
        # a first token whose text is held back (half a character) arrives with the next: the total then
        return Run(tokens, timing.ttft_s if timing.ttft_s is not None else timing.total_s, timing.total_s)

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        reply = self.client.complete(
            ids, model=self.name, max_tokens=tokens, temperature=TEMPERATURE, n=n, seed=0, ignore_eos=True, cache_prompt=False
        )
        return reply["usage"]["completion_tokens"]

    def clients(self, ids: list[int], clients: int, requests: int, tokens: int) -> dict:
        """`clients` concurrent streaming clients, each sending `requests` requests one after another."""
        from client.api import AsyncClient, Timing
        from eval.load_generator import ClosedLoop
        from eval.stats import percentiles

        timings: list[Timing] = []

        async def everyone() -> float:
            async with AsyncClient(self.url, timeout=600) as client:

                async def send(_client: int, ticket: int) -> None:
                    timings.append(
                        await client.timed(
                            ids,
                            model=self.name,
                            max_tokens=tokens,
                            temperature=TEMPERATURE,
                            seed=ticket,
                            ignore_eos=True,
                            cache_prompt=False,
                        )
                    )

                return await ClosedLoop(clients, per_client=requests).run(send)

        wall = asyncio.run(everyone())
        generated = sum(t.completion_tokens or 0 for t in timings)
        latency = percentiles([t.total_s for t in timings], (50, 95))
        ttft = percentiles([t.ttft_s for t in timings if t.ttft_s is not None], (50, 95))
        return {
            "requests": len(timings),
            "tokens": generated,
            "wall_s": wall,
            "aggregate_tok_s": generated / wall,
            "latency_p50_s": latency.get("p50"),
            "latency_p95_s": latency.get("p95"),
            "ttft_p50_s": ttft.get("p50"),
            "ttft_p95_s": ttft.get("p95"),
            "errors": sum(1 for t in timings if t.finish_reason is None),
        }

    def close(self) -> None:
        self.client.close()
        self.process.stop()


class LlamaCpp:
    def __init__(self, gguf: Path, threads: int, context: int) -> None:
        from bench.llamacpp import LlamaCppPath

        self.path = LlamaCppPath(gguf, threads, context)

    def single(self, ids: list[int], tokens: int) -> Run:
        return self.path.run(ids, tokens)[0]

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        # llama-cpp-python decodes one sequence at a time: n samples are n generations
        model, total = self.path.model, 0
        for _ in range(n):
            model.reset()
            for count, _token in enumerate(
                model.generate(ids, temp=TEMPERATURE, top_k=0, top_p=1.0, repeat_penalty=1.0, reset=True), start=1
            ):
                if count == tokens:
                    break
            total += count
        return total


# --- cached inputs for the peers ---


def hf_checkpoint(name: str) -> Path:
    """The fp32 transformers checkpoint of the bundled GGUF (bench/.cache/<name>-hf), imported once."""
    from server.models.catalog import lookup
    from server.models.gguf import import_gguf

    folder = CACHE / f"{name}-hf"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            import_gguf(lookup(name).locate_gguf(Path(tmp)), folder)
        (folder / ".complete").write_text("")
    return folder


def ggufs(name: str) -> dict[str, Path]:
    """The shipped GGUF (Q4) and a Q8_0 requantised from it with llama.cpp's own quantiser, cached."""
    import ctypes

    import llama_cpp

    from server.models.catalog import lookup

    CACHE.mkdir(parents=True, exist_ok=True)
    shipped = CACHE / f"{name}-shipped.gguf"
    if not shipped.is_file():
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            shutil.copyfile(lookup(name).locate_gguf(Path(tmp)), shipped)
    q8 = CACHE / f"{name}-q8_0.gguf"
    if not q8.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        partial = q8.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(shipped).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not requantise {shipped} to Q8_0")
        partial.rename(q8)
    return {"llama.cpp Q8_0": q8, "llama.cpp Q4": shipped}
