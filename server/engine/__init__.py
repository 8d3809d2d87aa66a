"""Turns token ids into token ids. Knows no HTTP and no Triton: the same engine runs in process and
inside Triton's python backend.

The public surface, what the rest of the server imports: the prompt side (Prompter, Prompt,
ContextFile, InvalidInput), the sampling parameters, the events a generation yields, the Engine and its Scheduler
(continuous batching, QueueFull past its bound), the errors a model can raise when it loads, and
the bare session (Runner) with log_softmax, for checking an export's logits (server/verify.py);
the drafters speculation uses (DRAFTERS names them; prompt_lookup, the first).
"""

from server.engine.drafts import prompt_lookup
from server.engine.engine import Engine
from server.engine.events import Delta, FinishReason, TokenLogprob, Usage
from server.engine.prefix_cache import CacheStats
from server.engine.prompts import ContextFile, InvalidInput, Prompt, Prompter
from server.engine.reuse_grid import ReusePolicy
from server.engine.runner import DeviceError, GraphError, Runner
from server.engine.sampling import SamplingParams, log_softmax
from server.engine.scheduler import QueueFull, Scheduler
from server.engine.speculator import DRAFTERS

__all__ = [
    "DRAFTERS",
    "CacheStats",
    "ContextFile",
    "Delta",
    "DeviceError",
    "Engine",
    "FinishReason",
    "GraphError",
    "InvalidInput",
    "Prompt",
    "Prompter",
    "QueueFull",
    "ReusePolicy",
    "Runner",
    "SamplingParams",
    "Scheduler",
    "TokenLogprob",
    "Usage",
    "log_softmax",
    "prompt_lookup",
]
