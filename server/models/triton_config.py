"""Triton's config.pbtxt for an exported model, so that model_repository/ is a Triton model repository.

The model is a python-backend model running slipstream's own engine. Its interface follows the
convention of Triton's vLLM backend (a prompt input, one JSON string of sampling parameters, a
decoupled stream of responses), so a client of one reads the other:

    prompt               TYPE_STRING [1]  JSON: {"ids": [...], "text": "...", "trimmed": 0, "prefix": 1}
    sampling_parameters  TYPE_STRING [1]  JSON: the engine's SamplingParams fields
    event                TYPE_STRING [1]  JSON: one text delta or the final usage, per response

One JSON string of parameters, not a tensor per field: the request fields then map one to one onto
the engine's SamplingParams, with no second list to keep in step. The engine batches continuously
inside one instance, so Triton's dynamic batcher has nothing to add (max_batch_size 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from server.models import store
from server.models.store import Manifest

CONFIG = "config.pbtxt"
Kind = Literal["KIND_CPU", "KIND_GPU"]

_TEMPLATE = """\
# Written by `slipstream export`; rewritten by each export of this model.
name: "{name}"
backend: "python"
max_batch_size: 0

# one request, many responses: a response per text delta, then the final flag
model_transaction_policy {{
  decoupled: true
}}

input [
  {{
    name: "prompt"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }},
  {{
    name: "sampling_parameters"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]

output [
  {{
    name: "event"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]

instance_group [
  {{
    count: {instances}
    kind: {kind}
  }}
]

parameters [
  {{
    key: "precision"
    value: {{ string_value: "{precision}" }}
  }},
  {{
    key: "onnx_file"
    value: {{ string_value: "{onnx_file}" }}
  }},
  {{
    key: "threads"
    value: {{ string_value: "{threads}" }}
  }}
]
"""


def render(manifest: Manifest, *, instances: int = 1, kind: Kind | None = None, threads: int = 0) -> str:
    """threads 0: one ONNX Runtime thread per core, as the embedded backend does."""
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    kind = kind or ("KIND_GPU" if manifest.precision == "fp16" else "KIND_CPU")
    return _TEMPLATE.format(
        name=manifest.name,
        instances=instances,
        kind=kind,
        precision=manifest.precision,
        onnx_file=manifest.onnx_file,
        threads=threads,
    )


_MODEL_PY = """\
# Written by `slipstream export`. Triton's python backend loads this file; the model is slipstream's
# engine (server/triton/model.py, from the slipstream package in the Python environment Triton runs).
from server.triton.model import TritonPythonModel  # noqa: F401
"""


def write(repository: Path, manifest: Manifest, *, instances: int = 1, kind: Kind | None = None, threads: int = 0) -> Path:
    """config.pbtxt beside the manifest, and the version folder's model.py that Triton's python backend
    loads: deployment files, not part of the content hash."""
    folder = store.model_dir(repository, manifest.name)
    (folder / store.VERSION_DIR / store.TRITON_MODEL_PY).write_text(_MODEL_PY)
    path = folder / CONFIG
    path.write_text(render(manifest, instances=instances, kind=kind, threads=threads))
    return path


def ensure(repository: Path, manifest: Manifest) -> None:
    """Write Triton's files for an export made before they were part of one; leave existing ones alone."""
    folder = store.model_dir(repository, manifest.name)
    if not ((folder / CONFIG).is_file() and (folder / store.VERSION_DIR / store.TRITON_MODEL_PY).is_file()):
        write(repository, manifest)
