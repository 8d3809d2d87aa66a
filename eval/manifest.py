"""A HumanEval run's manifest (<run folder>/manifest.json): what its samples are generated with, the
server's /v1/models entry, the dataset's hash and the tool's version, written when the run starts.

A run resumed into the same folder asks only for the samples still missing, matched by (task, index):
with other generation settings its new samples would mix silently with the old ones, so a resume whose
settings or dataset differ from the manifest's is refused, the differences named. n may grow (more
samples of the same kind), and --limit may change (the dataset's hash is the whole file's)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval import instruct
from eval.datasets import humaneval_file
from eval.generate import GenerationConfig

FILE = "manifest.json"
# what a sample's text depends on; n and per_request only say how many and how they were asked for
COMPARED = ("model", "temperature", "max_tokens", "top_p", "seed", "prompt_format", "stop", "server_stops", "mode")


class RunMismatch(ValueError):
    """A resume into a run folder whose samples were generated otherwise."""


def generation(config: GenerationConfig) -> dict[str, Any]:
    """The settings a sample's text depends on, as sent (greedy: top_p 1; instruct: its own prompt)."""
    values = asdict(config)
    values["top_p"] = config.top_p if config.temperature > 0 else 1.0
    values["prompt_format"] = instruct.PROMPT_FORMAT if config.mode == "instruct" else config.prompt_format
    values["stop"] = list(config.stop)
    return {key: values[key] for key in COMPARED}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tool_version() -> str:
    try:
        return importlib.metadata.version("slipstream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def start(folder: Path, config: GenerationConfig, server_entry: dict[str, Any], dataset: Path, samples: list[dict[str, Any]]) -> None:
    """Write the manifest of a new run, or check a resumed run against its own (or, for a folder from
    before manifests, against what its samples record); RunMismatch names every difference."""
    wanted = {"generation": generation(config), "dataset": {"file": dataset.name, "sha256": file_hash(dataset)}}
    path_held = {"path": str(dataset.resolve())}  # where the studies read the problems back (not compared: files move)
    path = folder / FILE
    if path.is_file():
        held = json.loads(path.read_text())
        differences = [
            f"{key}: {held['generation'].get(key)!r} there, {value!r} now"
            for key, value in wanted["generation"].items()
            if held["generation"].get(key) != value
        ]
        if held.get("dataset", {}).get("sha256") != wanted["dataset"]["sha256"]:
            differences.append(f"dataset: {held.get('dataset')} there, {wanted['dataset']} now")
        if differences:
            raise RunMismatch(
                f"{folder} holds a run generated otherwise ({'; '.join(differences)}): give another --out, or the same settings"
            )
        return
    if samples and dataset.resolve() != humaneval_file().resolve():  # folders from before manifests hold HumanEval
        raise RunMismatch(f"{folder} holds HumanEval samples from before run manifests, not {dataset.name}'s: give another --out")
    recorded = {key: wanted["generation"][key] for key in ("model", "temperature", "top_p", "prompt_format", "mode")}
    for sample in samples:  # a folder from before manifests: what each sample says of itself
        differences = [f"{key}: {sample.get(key)!r} there, {value!r} now" for key, value in recorded.items() if sample.get(key) != value]
        if differences:
            raise RunMismatch(f"{folder} holds samples generated otherwise ({'; '.join(differences)}): give another --out")
    wanted["dataset"] |= path_held
    manifest = wanted | {"server": server_entry, "tool": {"slipstream": tool_version()}, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(manifest, indent=2) + "\n")
