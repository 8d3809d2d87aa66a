"""The decode paths bench.decode times, and what they share with the other benchmarks.

Not run on its own. Run is one timed generation (tokens, time to the first, time to the last);
EnginePath runs server.engine in this process on a model_repository export; OptimumPath runs
optimum's ORTModelForCausalLM.generate on optimum's own INT8 export, which optimum_folder builds once
from the bundled GGUF and caches under bench/.cache/; first_token_clock is the streamer that times
transformers' generate() to its first new token. ROOT is the repository, CACHE that cache.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine import Prompt

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"


@dataclass
class Run:
    tokens: int  # generated tokens, the first one included
    ttft_s: float  # start -> first generated token
    total_s: float  # start -> generation finished
    others_cores: float = 0.0  # CPU the rest of the machine took meanwhile, in cores (noise gauge)
    waited_s: float = 0.0  # time spent waiting for a quiet machine before the run

    @property
    def decode_tok_s(self) -> float:
        # the tokens after the first, over the time after it: prefill excluded
        return (self.tokens - 1) / (self.total_s - self.ttft_s)


class EnginePath:
    def __init__(self, repository: Path, name: str, threads: int) -> None:
        from server.engine import Engine

        self.engine = Engine.load(repository, name, threads)
        self.onnx_file = repository / name / self.engine.manifest.onnx_file

    def prepare(self, text: str, tokens: int) -> Prompt:
        return self.engine.prompter.prepare(text, tokens)

    def run(self, prompt: Prompt, tokens: int, ignore_eos: bool = False) -> tuple[Run, str]:
        from server.engine import Delta, SamplingParams, Usage

        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=ignore_eos)
        pieces, first, usage = [], None, None
        start = time.perf_counter()
        for item in self.engine.generate(prompt, params):
            if isinstance(item, Delta):
                if first is None:
                    first = time.perf_counter()
                pieces.append(item.text)
            elif isinstance(item, Usage):
                usage = item
        end = time.perf_counter()
        assert first is not None and usage is not None
        return Run(usage.completion_tokens, first - start, end - start), "".join(pieces)


class OptimumPath:
    """ORTModelForCausalLM.generate on optimum's INT8 export, as a user would call it."""

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the engine's settings (server/engine/runner.py)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.model = ORTModelForCausalLM.from_pretrained(
            folder, session_options=options, provider="CPUExecutionProvider", local_files_only=True
        )
        self.onnx_file = folder / "model.onnx"

    def run(self, ids: list[int], tokens: int, torch_threads: int) -> tuple[Run, list[int]]:
        import torch

        torch.set_num_threads(torch_threads)
        clock = first_token_clock()
        input_ids = torch.tensor([ids], dtype=torch.int64)
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # exactly `tokens`: no early EOS
            pad_token_id=self.model.generation_config.eos_token_id,
            streamer=clock,
        )
        end = time.perf_counter()
        new = out[0, len(ids) :].tolist()
        assert clock.at is not None
        return Run(len(new), clock.at - start, end - start), new


def first_token_clock():
    """A streamer for transformers' generate() that notes when the first new token comes (generate
    puts the prompt first, then each new token as it is chosen): `.at`, a perf_counter time."""
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.puts, self.at = 0, None

        def put(self, value) -> None:
            self.puts += 1
            if self.puts == 2:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    return FirstToken()


# --- optimum's export, cached ---


def optimum_folder(name: str) -> Path:
    """bench/.cache/<name>-optimum-int8, exported from the bundled GGUF the first time (in a child
    process: Gemma's export peaks near 7 GB and leaves torch threads and heap behind)."""
    folder = CACHE / f"{name}-optimum-int8"
    if not (folder / ".complete").is_file():
        print(f"[{name}] exporting optimum's INT8 model to {folder} (once; cached)", flush=True)
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=_export_optimum, args=(name, folder))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"[{name}] optimum export failed (exit {child.exitcode})")
        print(f"[{name}] optimum export done in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def _export_optimum(name: str, folder: Path) -> None:
    from server.models.catalog import lookup
    from server.models.gguf import import_gguf
    from server.models.optimum_export import export_optimum

    shutil.rmtree(folder, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=CACHE) as tmp:
        work = Path(tmp)
        hf_dir = import_gguf(lookup(name).locate_gguf(work), work / "hf")
        export_optimum(hf_dir, folder, dynamic_int8=True)
    (folder / ".complete").write_text("")
