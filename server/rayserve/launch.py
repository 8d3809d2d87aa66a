"""`slipstream serve --ray local|ADDRESS`: start a one-machine Ray cluster here (or join one), run the
application (server/rayserve/app.py) with Serve's HTTP proxy on --host/--port, and take it down again
on SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from server.settings import Settings

log = logging.getLogger("slipstream.ray")

CONNECT_TIMEOUT_S = 3.0
OBJECT_STORE_BYTES = 200 << 20  # the streams' events are small; Ray's default takes 30% of memory


class NoCluster(RuntimeError):
    """--ray names an address where no Ray cluster answers."""


def connect(address: str) -> None:
    """Start a local head (`local`) or join the cluster at `address` (HOST:PORT of `ray start --head`,
    or `auto` for one started on this machine); NoCluster within seconds where none answers."""
    import ray

    if address == "local":
        # Serve's controller wakes every 0.1 s (3.5% of a core idle here, taken from the engine's threads
        # on a small machine); every 0.5 s a dead replica is replaced up to 0.4 s later (the requests it
        # held fail over at once, in the ingress). The workers inherit it; the operator's value wins.
        os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")
        # the dashboard is off (its processes start anyway): KubeRay needs it, one machine does not
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES)
        return
    if address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise NoCluster(f"--ray {address!r}: give `local`, `auto` or the head's HOST:PORT (`ray start --head` prints it)")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise NoCluster(f"no Ray cluster answers at {address}: {exc} (start one with `ray start --head`, or use --ray local)") from exc
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise NoCluster(f"could not join the Ray cluster at {address}: {exc}") from exc


class NotDeployed(RuntimeError):
    """The application did not come up (a replica's constructor failed, the cluster lacks resources)."""


def fit_to_this_machine(settings: Settings) -> Settings:
    """On one machine, replicas that reserve more CPUs than it has would wait for them forever: each
    then reserves its share of the cores (a fraction), with one engine thread at least."""
    cores = os.cpu_count() or 1
    if settings.ray_replicas * settings.ray_replica_cpus <= cores:
        return settings
    share = cores / settings.ray_replicas
    log.warning(
        "%d replicas of %g CPUs do not fit %d cores: %.2f CPUs each", settings.ray_replicas, settings.ray_replica_cpus, cores, share
    )
    return settings.model_copy(update={"ray_replica_cpus": share})


def serve_on_ray(settings: Settings) -> int:
    import ray
    from ray import serve

    from server.auth import load_keys
    from server.rayserve.app import APP, application

    keys = load_keys()  # AuthConfigError before a cluster starts; the ingress gets them as arguments
    if settings.ray == "local":
        settings = fit_to_this_machine(settings)
    connect(settings.ray)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(application(settings, keys), name=APP, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # its replicas' own errors are in the log above
            raise NotDeployed(f"the application did not start on Ray: {exc}") from exc
        log.info(
            "serving on Ray at http://%s:%d (%d engine replicas, %s router)",
            settings.host,
            settings.port,
            settings.ray_replicas,
            settings.ray_router,
        )
        stop.wait()
        log.info("stopping: the application, then Serve")
        serve.delete(APP)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
