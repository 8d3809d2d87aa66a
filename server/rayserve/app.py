"""The Serve application: our FastAPI app as the ingress deployment (every route unchanged, its backend
RayBackend) and the engine deployment (EngineReplica) it streams from, with the router, autoscaling,
health checks and bounds taken from the settings."""

from __future__ import annotations

import math
from typing import Any

from server.settings import Settings

APP = "slipstream"
HEALTH_CHECK_PERIOD_S = 1.0  # Serve's 10 s default left a dead replica's slot empty for about 9 s
ROUTING_STATS_PERIOD_S = 1.0


class Ingress:
    """The ingress deployment's class: our app, built in the replica (server/app.py's create_app)."""

    def __init__(self, settings: dict[str, Any], keys: list[str], engine: Any) -> None:
        from server.app import create_app
        from server.auth import ENV_KEYS
        from server.backends.ray_serve import RayBackend
        from server.logs import configure_logging

        resolved = Settings(**settings)
        configure_logging(resolved.log_level)  # the access log's JSON lines, on this replica's stdout (Ray's worker log)
        environ = {ENV_KEYS: ",".join(keys)} if keys else {}  # read where `serve` ran: this node need not have them
        self.built = create_app(resolved, environ, backend=RayBackend(resolved, engine, APP))

    def __serve_build_asgi_app__(self) -> Any:
        return self.built


def engine_settings(settings: Settings) -> Settings:
    """The replicas' settings: ONNX Runtime threads as many as the CPUs each replica reserves, unless set."""
    threads = settings.threads or max(1, math.floor(settings.ray_replica_cpus))
    return settings.model_copy(update={"threads": threads})


def application(settings: Settings, keys: list[str]) -> Any:
    """The bound application for serve.run; `keys` the API keys (auth.load_keys where `serve` runs)."""
    from ray import serve
    from ray.serve.config import AutoscalingConfig, RequestRouterConfig

    from server.rayserve.replica import EngineReplica
    from server.rayserve.router import PrefixRouter

    replicas = settings.ray_replicas
    most = max(settings.ray_max_replicas, replicas)
    routing: dict[str, Any] = (
        {"request_router_class": PrefixRouter, "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S}
        if settings.ray_router == "prefix"
        else {}  # Serve's own: power of two choices
    )
    router = RequestRouterConfig(**routing)
    engine = serve.deployment(
        name="engine",
        ray_actor_options={"num_cpus": settings.ray_replica_cpus},
        # a replica holds max_queue requests, as the embedded server does; past that many queued in the
        # router too, a request is refused (429) rather than left waiting
        max_ongoing_requests=settings.max_queue,
        max_queued_requests=settings.max_queue,
        autoscaling_config=AutoscalingConfig(
            min_replicas=replicas,
            initial_replicas=replicas,
            max_replicas=most,
            target_ongoing_requests=max(1, settings.max_batch_rows // 2),
        ),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s,
        request_router_config=router,
    )(EngineReplica).bind(engine_settings(settings).model_dump(mode="json"))
    ingress_class = serve.ingress()(Ingress)
    ingress = serve.deployment(
        name="ingress",
        ray_actor_options={"num_cpus": 0},  # it tokenises and relays: the CPUs are the engines'
        max_ongoing_requests=settings.max_queue * most + 64,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s,
    )(ingress_class).bind(settings.model_dump(mode="json"), keys, engine)
    return ingress


def build(args: dict[str, Any]) -> Any:
    """The application for a Serve config's import_path (`server.rayserve.app:build`: KubeRay's RayService,
    `serve run`): the settings from the SLIPSTREAM_* variables where it is built, `args` (settings by
    name) over them; the API keys from the same variables."""
    from server.auth import load_keys

    unknown = sorted(set(args) - set(Settings.model_fields))
    if unknown:  # Settings ignores unknown names (the environment holds others): a misspelt arg must not be
        raise ValueError(f"unknown settings in the Serve config's args: {', '.join(unknown)}")
    return application(Settings(**args), load_keys())
