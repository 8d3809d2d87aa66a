"""Triton's python-backend model: slipstream's engine and its continuous-batching scheduler inside
Triton. Each exported model's `1/model.py` imports TritonPythonModel from here.

Decoupled: execute() hands every request to the scheduler and returns at once; a thread running an
event loop streams each request's events back through its response sender, one response per event,
then the final flag. A request whose client went away leaves the batch at the scheduler's next step:
the API sends a cancel request for it on the same stream (wire.py), and a watcher polls Triton's own
cancelled mark (an API server that died). Requests from every Triton execution share one batch: the scheduler, not Triton's
dynamic batcher, decides what decodes together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub

from server.engine import DRAFTERS, Engine, Scheduler
from server.settings import Settings
from server.triton import wire

log = logging.getLogger("slipstream.triton")
_CANCEL_POLL_S = 0.05


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"])  # model_repository/<name>
        settings = engine_settings(parameters)
        device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        self.engine = Engine.load(folder.parent, args["model_name"], device=device, **settings.engine_options())
        self.scheduler = Scheduler(self.engine, settings.max_queue, settings.max_batch_rows, settings.prefill_tokens_per_step)
        self._cancels: dict[str, threading.Event] = {}  # request id -> its scheduler cancel, while it runs
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="slipstream-triton-events", daemon=True)
        self._thread.start()
        # the engine's work on Triton's own /metrics (port 8002), as our server's /metrics shows it in process
        self._family = pb_utils.MetricFamily(
            name="slipstream_decoded_rows",
            description="Rows of every decode step (a token each), cancelled ones included",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._decoded = self._family.Metric(labels={"model": args["model_name"]})
        self._reported = 0
        # speculation's draft tokens, by drafter, under the names our server's /metrics gives them
        self._draft_families = [
            pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.COUNTER)
            for name, text in (
                ("slipstream_draft_tokens", "Draft tokens a speculative step verified"),
                ("slipstream_accepted_draft_tokens", "Draft tokens the rows' own decisions confirmed"),
            )
        ]
        self._drafts = [
            {d: family.Metric(labels={"model": args["model_name"], "drafter": d}) for d in DRAFTERS} for family in self._draft_families
        ]
        self._drafts_reported: list[dict[str, int]] = [{}, {}]
        self.loop.call_soon_threadsafe(self._report_decoded)

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                sampling = _string(request, "sampling_parameters")
                if (target := wire.load_cancel(sampling)) is not None:  # the API's cancel for a client gone
                    if (cancel := self._cancels.get(target)) is not None:
                        cancel.set()
                    _finish(sender, None)
                    continue
                prompt = wire.load_prompt(_string(request, "prompt"))
                params = wire.load_params(sampling)
            except (KeyError, TypeError, ValueError) as exc:
                _finish(sender, wire.dump_error(wire.INVALID_INPUT, f"malformed request: {exc}"))
                continue
            cancel = threading.Event()
            request_id = request.request_id()
            if request_id:
                self._cancels[request_id] = cancel
            asyncio.run_coroutine_threadsafe(self._stream(prompt, params, sender, cancel, request_id), self.loop)
        return None

    async def _stream(self, prompt, params, sender, cancel: threading.Event, request_id: str) -> None:
        error = None
        watch = asyncio.create_task(_watch(sender, cancel))
        try:
            async with contextlib.aclosing(self.scheduler.submit(prompt, params, cancel)) as events:
                async for event in events:
                    if cancel.is_set():
                        break  # the final flag still ends the request
                    sender.send(_response(wire.dump_event(event)))
                    # sending one response per event can lag behind the engine (n rows a step): the cancel
                    # requests, the watcher and the other requests' streams get their turn between sends
                    await asyncio.sleep(0)
        except wire.REFUSALS as exc:  # a full queue, a bad field: the API answers with its status
            error = wire.dump_exception(exc)
        except Exception as exc:  # noqa: BLE001 - the client learns of it; the model goes on
            log.exception("generation failed")
            error = wire.dump_exception(exc)
        finally:
            watch.cancel()
            self._cancels.pop(request_id, None)
        _finish(sender, error)

    def _report_decoded(self) -> None:
        """The scheduler's count onto the Triton counter, twice a second (on the event loop's thread)."""
        now = self.scheduler.rows_decoded
        if now > self._reported:
            self._decoded.increment(now - self._reported)
            self._reported = now
        for metrics, reported, counts in zip(self._drafts, self._drafts_reported, self.engine.speculator.counts(), strict=True):
            for drafter, count in counts.items():
                if count > reported.get(drafter, 0):
                    metrics[drafter].increment(count - reported.get(drafter, 0))
                    reported[drafter] = count
        self.loop.call_later(0.5, self._report_decoded)

    def finalize(self) -> None:
        self.scheduler.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        del self._decoded, self._drafts  # a Triton metric goes before its family
        del self._family, self._draft_families


async def _watch(sender, cancel: threading.Event) -> None:
    """Triton marks a request cancelled when its client goes; the scheduler drops its rows at the next
    step once `cancel` is set, however far its events' sending lags behind."""
    while not cancel.is_set():
        if sender.is_cancelled():
            cancel.set()
            return
        await asyncio.sleep(_CANCEL_POLL_S)


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
