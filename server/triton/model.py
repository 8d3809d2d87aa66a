"""Triton's python-backend model: slipstream's engine and its continuous-batching scheduler inside
Triton. Each exported model's `1/model.py` imports TritonPythonModel from here.

Decoupled: execute() hands every request to the scheduler and returns at once; a thread running an
event loop streams each request's events back through its response sender, one response per event,
then the final flag. A request whose client went away (Triton marks it cancelled) leaves the batch at
its next event. Requests from every Triton execution share one batch: the scheduler, not Triton's
dynamic batcher, decides what decodes together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub

from server.engine import Engine, Scheduler
from server.settings import Settings
from server.triton import wire

log = logging.getLogger("slipstream.triton")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"])  # model_repository/<name>
        settings = engine_settings(parameters)
        device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        self.engine = Engine.load(folder.parent, args["model_name"], device=device, **settings.engine_options())
        self.scheduler = Scheduler(self.engine, settings.max_queue, settings.max_batch_rows, settings.prefill_tokens_per_step)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="slipstream-triton-events", daemon=True)
        self._thread.start()

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = wire.load_prompt(_string(request, "prompt"))
                params = wire.load_params(_string(request, "sampling_parameters"))
            except (KeyError, TypeError, ValueError) as exc:
                _finish(sender, wire.dump_error(wire.INVALID_INPUT, f"malformed request: {exc}"))
                continue
            asyncio.run_coroutine_threadsafe(self._stream(prompt, params, sender), self.loop)
        return None

    async def _stream(self, prompt, params, sender) -> None:
        error = None
        try:
            async for event in self.scheduler.submit(prompt, params):
                if sender.is_cancelled():
                    break  # leaving the iteration drops the request's rows; the final flag still ends it
                sender.send(_response(wire.dump_event(event)))
        except wire.REFUSALS as exc:  # a full queue, a bad field: the API answers with its status
            error = wire.dump_exception(exc)
        except Exception as exc:  # noqa: BLE001 - the client learns of it; the model goes on
            log.exception("generation failed")
            error = wire.dump_exception(exc)
        _finish(sender, error)

    def finalize(self) -> None:
        self.scheduler.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


def engine_settings(parameters: dict[str, str]) -> Settings:
    """The one settings object, as the embedded backend reads it: SLIPSTREAM_* variables (which
    `slipstream triton start` sets from its flags), a model's config.pbtxt `threads` parameter over
    them where it is not 0 (0, the default written at export, leaves the choice to the settings)."""
    threads = parameters.get("threads", "0")
    return Settings(threads=int(threads)) if threads not in ("", "0") else Settings()


def _string(request, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise KeyError(f"input {name!r} is missing")
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _response(event: str):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("event", np.array([event.encode()], dtype=np.object_))])


def _finish(sender, error: str | None) -> None:
    if error is not None:
        sender.send(_response(error))
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
