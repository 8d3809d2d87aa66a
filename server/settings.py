"""The one settings object: defaults here, `SLIPSTREAM_*` environment variables over them, CLI flags
over those. The CLI builds its flags from these fields, so there is no second list to keep in step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypedDict

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "gemma3-270m"
PROJECT = Path(__file__).resolve().parent.parent  # the checkout: `make serve` and `slipstream serve` anywhere share its store
# What the engine reads wherever it runs: in this process, or inside Triton's python backend, which
# `slipstream triton start` hands them to as SLIPSTREAM_* variables
ENGINE_SETTINGS = (
    "threads",
    "max_queue",
    "max_batch_rows",
    "prefill_tokens_per_step",
    "prefill_chunk_tokens",
    "prefix_cache_mb",
    "prefix_cache_exact",
)


class EngineOptions(TypedDict):
    """The Engine's keyword arguments that come from Settings (server/engine/engine.py's constructor)."""

    threads: int
    prefix_cache_mb: int
    prefill_chunk_tokens: int
    reuse_grid: int | None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLIPSTREAM_", extra="ignore")

    # --- network ---
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the server to the network.")
    port: int = Field(5000, ge=1, le=65535, description="Port to listen on (the Copilot/FauxPilot default).")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (CORS); none by default. API keys come from "
        "the environment only: SLIPSTREAM_API_KEYS (comma-separated) or SLIPSTREAM_API_KEYS_FILE.",
    )

    # --- models ---
    model: list[str] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        min_length=1,
        description="Model(s) to serve, by store name; the first answers requests without `model`.",
    )
    model_repository: Path = Field(
        default_factory=lambda: PROJECT / "model_repository",
        description="Folder of exported models (Triton model repository layout); by default the project's own, "
        "wherever the command runs from (a relative path given is taken from the current folder).",
    )
    export_missing: bool = Field(True, description="Export a bundled model on start-up if it is not in the store yet.")
    load: Literal["eager", "lazy"] = Field(
        "eager",
        description="eager: load every model at start-up (ready once all are in memory); lazy: export at start-up, "
        "load a model into memory on its first request.",
    )
    backend: Literal["embedded", "triton"] = Field(
        "embedded",
        description="How the API reaches the engine: embedded (in this process) or triton (Triton servers over gRPC, "
        "serving the same model_repository; `slipstream triton start` runs one here).",
    )
    triton_url: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:8001"],
        min_length=1,
        description="Triton gRPC address(es) for --backend triton; requests are spread over the ready ones.",
    )

    # --- Ray Serve (server/rayserve/) ---
    ray: str = Field(
        "",
        description="Serve on Ray Serve: `local` starts a one-machine cluster here, HOST:PORT (or `auto`) joins one "
        "started with `ray start --head`; engine replicas behind this API, routed by prompt prefix, with failover. "
        "Empty: not on Ray.",
    )
    ray_replicas: int = Field(2, ge=1, description="Engine replicas on Ray (the autoscaler's minimum and starting count).")
    ray_max_replicas: int = Field(0, ge=0, description="Most engine replicas the autoscaler may start; 0: ray_replicas (fixed).")
    ray_replica_cpus: float = Field(
        1.0, gt=0, description="CPUs each engine replica reserves on Ray; its ONNX Runtime threads, unless --threads says."
    )
    ray_coalesce_ms: float = Field(
        25.0,
        ge=0,
        description="An engine replica sends a stream's events on together when they come within this many "
        "milliseconds of the last it sent (the first and the last at once): fewer messages through Ray per token.",
    )
    ray_router: Literal["prefix", "power_of_two"] = Field(
        "prefix",
        description="How requests pick an engine replica on Ray: prefix (the replica holding the prompt's longest "
        "prefix under its key, unless it is busier) or power_of_two (Serve's own).",
    )

    # --- engine ---
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="Where the models run: cpu, or cuda (needs onnxruntime-gpu and an NVIDIA GPU; an fp16 export is "
        "the one built for it: slipstream export NAME --precision fp16). The KV cache stays on the GPU between steps.",
    )
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 means one per core of this machine.")
    max_queue: int = Field(
        64,
        ge=1,
        description="Requests a model holds at once, decoding and waiting together; past it a request is "
        "refused at once with a 429 (Retry-After) rather than left behind an unbounded backlog.",
    )
    max_batch_rows: int = Field(
        64,
        ge=1,
        description="Rows (samples) decoded together in one step at most; a request whose rows do not fit waits for rows to finish.",
    )
    prefill_tokens_per_step: int = Field(
        256,
        ge=1,
        description="Prompt tokens prefilled between two decode steps while rows decode (a prefill holds "
        "up every live row); at least one chunk is prefilled per step.",
    )
    prefill_chunk_tokens: int = Field(
        512,
        ge=64,
        description="A prompt is prefilled in chunks of at most this many tokens (a multiple of 64), "
        "interleaved with the decode steps of the other rows, so that one long prompt does not hold them all up.",
        multiple_of=64,
    )
    prefix_cache_mb: int = Field(
        256,
        ge=0,
        description="Memory per model for the keys and values of earlier prompts and completions, reused "
        "by a new prompt that starts the same way (least recently used evicted first); 0 turns it off.",
    )
    prefix_cache_exact: bool = Field(
        True,
        description="Reuse a cached prefix in whole tiles of the kernels' rows (measured at load: 2 positions "
        "on an AVX-512 Xeon), so that a prompt's logits are the same bits warm or cold. Off, a prefix is reused to "
        "the token: a position sooner, and logits only within the graph's own tolerance of a cold prefill's (up to "
        "about one logit for the bundled int8 models).",
    )

    speculative: bool = Field(
        False,
        description="Default for requests that do not say (`speculative`): a request decoding alone verifies "
        "drafts from its prompt and from the completions recently served under its key, and keeps what its own "
        "decisions confirm: editor completions 2-2.6x faster (bench/README.md). Off by default: on the bundled "
        "int8 graphs a verify step's numbers differ from a one-token step's, so greedy text can differ at near "
        "ties (bench.row_layout_probe). A request's `prediction` is verified either way.",
    )

    # --- request limits and defaults ---
    default_max_tokens: int = Field(16, ge=1, description="max_tokens when a request gives none (OpenAI's default).")
    default_temperature: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description="temperature when a request gives none: greedy by default, the best single completion for "
        "an editor (OpenAI's own default is 1.0).",
    )
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_n: int = Field(
        64, ge=1, le=1024, description="Largest n (and best_of) a request may ask for (a researcher's samples of one problem: 10 to 200)."
    )
    max_stop_sequences: int = Field(
        4, ge=1, le=64, description="Most stop strings a request may give (OpenAI allows 4; Codex's HumanEval set is 5)."
    )

    max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest request body, in bytes (413 past it).")
    max_prompt_tokens: int = Field(
        65536, ge=1, description="Longest prompt a request may send, in tokens, before it is trimmed to the context."
    )
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest a request may generate; past it, it is ended with a 408 (or, once its stream has started, an error event).",
    )

    shutdown_grace_s: float = Field(
        10.0, gt=0, description="On SIGTERM, how long in-flight generations may go on; past it they are ended cleanly."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="The server's log on stderr (text lines); at warning and above the access log (JSON lines on stdout) is off too.",
    )
    log_prompts: bool = Field(
        False, description="Put each request's prompt, suffix and generated texts in its access-log line (off: code is private)."
    )

    def environment(self, names: tuple[str, ...] = ENGINE_SETTINGS) -> dict[str, str]:
        """These settings as the SLIPSTREAM_* variables that give them to another process."""
        return {f"SLIPSTREAM_{name.upper()}": str(getattr(self, name)) for name in names}

    def engine_options(self) -> EngineOptions:
        """What an Engine is built with, wherever it runs (backends/embedded.py, triton/model.py)."""
        return {
            "threads": self.intra_op_threads(),
            "prefix_cache_mb": self.prefix_cache_mb,
            "prefill_chunk_tokens": self.prefill_chunk_tokens,
            "reuse_grid": None if self.prefix_cache_exact else 1,
        }  # None: the exact grid, measured at load

    def intra_op_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)
