"""The Kubernetes path, offline: the manifests under deploy/ validate (core kinds against Kubernetes'
own schemas, the custom resources against deploy/schemas/), agree with the code they deploy (the
RayService's Serve config builds our application; the InferencePool selects the pods and the port the
Deployment serves on), and a real server's /metrics carries the gauges inference gateways route on,
under the names their endpoint pickers read by default, moving with the load."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from testkit.server_process import ServerProcess
from tests.conftest import TINY_LLAMA

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = "1.33"  # a version every maintained cluster runs or has passed


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def schema(kind: str) -> dict:
    return json.loads((DEPLOY / "schemas" / f"{kind.lower()}.schema.json").read_text())


def validate(document: dict) -> None:
    """Kubernetes' own schema for a core kind (strict: an unknown field is an error), ours for a CRD;
    a RayService's pod templates against Kubernetes' own, as PodTemplates."""
    if document["kind"] in ("RayService", "InferencePool"):
        jsonschema.validate(document, schema(document["kind"]))
        if document["kind"] == "RayService":
            cluster = document["spec"]["rayClusterConfig"]
            for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
                pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": group["template"]}
                kubernetes_validate.validate(pod, KUBERNETES, strict=True)
        return
    kubernetes_validate.validate(document, KUBERNETES, strict=True)


@pytest.mark.parametrize("manifest", sorted(DEPLOY.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_manifest_validates(manifest: Path) -> None:
    docs = documents(manifest)
    assert docs
    for document in docs:
        validate(document)


@pytest.mark.parametrize(
    ("manifest", "kind", "break_it", "complaint"),
    [
        ("gateway/slipstream-pool.yaml", "Deployment", lambda d: d["spec"].update(replicas="three"), "three"),
        ("gateway/slipstream-pool.yaml", "Deployment", lambda d: d["spec"]["template"]["spec"].update(containerz=[]), "containerz"),
        ("gateway/slipstream-pool.yaml", "InferencePool", lambda d: d["spec"].pop("targetPorts"), "targetPorts"),
        ("gateway/slipstream-pool.yaml", "InferencePool", lambda d: d["spec"]["endpointPickerRef"].update(failureMode="Maybe"), "Maybe"),
        ("kuberay/rayservice.yaml", "RayService", lambda d: d["spec"]["rayClusterConfig"].update(workerGroupSpec=[]), "workerGroupSpec"),
        (
            "kuberay/rayservice.yaml",
            "RayService",
            lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0].update(
                containerPort="gcs-port"
            ),
            "gcs-port",
        ),
    ],
    ids=["replicas-a-string", "a-misspelt-field", "pool-without-ports", "bad-failure-mode", "misspelt-worker-groups", "bad-pod-field"],
)
def test_a_broken_manifest_is_caught(manifest: str, kind: str, break_it, complaint: str) -> None:
    document = next(d for d in documents(DEPLOY / manifest) if d["kind"] == kind)
    break_it(document)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)) as caught:
        validate(document)
    assert complaint in str(caught.value)


def test_the_rayservice_runs_our_application_with_settings_that_exist() -> None:
    from ray.serve.deployment import Application

    import server.rayserve.app as app

    service = documents(DEPLOY / "kuberay" / "rayservice.yaml")[0]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    module, _, builder = application["import_path"].partition(":")
    assert module == app.__name__ and builder == "build"
    assert isinstance(app.build(application["args"]), Application)
    with pytest.raises(ValueError, match="ray_replica"):  # a misspelt setting is refused, not ignored
        app.build({**application["args"], "ray_replica": 3})
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    # each engine replica fits a worker pod: its CPUs are what the pod's Ray node offers
    assert float(workers["rayStartParams"]["num-cpus"]) >= application["args"]["ray_replica_cpus"]
    assert (
        workers["maxReplicas"] * float(workers["rayStartParams"]["num-cpus"])
        >= application["args"]["ray_max_replicas"] * application["args"]["ray_replica_cpus"]
    )


def test_the_inference_pool_selects_the_pods_on_the_port_they_serve() -> None:
    deployment, service, pool = documents(DEPLOY / "gateway" / "slipstream-pool.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in container["ports"]}
    assert {p["number"] for p in pool["spec"]["targetPorts"]} <= ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # a loading pod takes no traffic
    assert service["spec"]["selector"].items() <= labels.items()


# --- the gauges gateways read ---

GATEWAY_GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")


def gauges(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        name: float(re.search(rf'^{re.escape(name)}\{{model_name="{TINY_LLAMA}"\}} (\S+)$', text, re.M).group(1)) for name in GATEWAY_GAUGES
    }


def test_metrics_carry_the_gauges_gateways_route_on_and_they_move(long_llama_repo: Path) -> None:
    with ServerProcess(long_llama_repo, [TINY_LLAMA], threads=1, flags=["--max-batch-rows", "8"]) as server:
        idle = gauges(server)
        assert idle == dict.fromkeys(GATEWAY_GAUGES, 0.0)
        started = threading.Event()

        def long_request() -> None:
            body = {"prompt": "def f(x):\n", "max_tokens": 900, "n": 4, "ignore_eos": True, "stream": True, "temperature": 0.8}
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
                for _line in response.iter_lines():
                    started.set()

        client = threading.Thread(target=long_request)
        client.start()
        assert started.wait(60)
        busy = gauges(server)
        client.join(120)
        assert busy["vllm:num_requests_running"] == 1
        assert busy["vllm:kv_cache_usage_perc"] == 4 / 8  # its 4 rows of the batch's 8
        assert busy["vllm:num_requests_waiting"] == 0
        deadline = time.monotonic() + 10
        while gauges(server) != idle and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gauges(server) == idle
