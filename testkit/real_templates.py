"""Real models' chat templates as test data, without copying them into the checkout: the Jinja
templates stored in Ollama's library GGUF files (Llama 3.1/3.2, Qwen2.5, Gemma-3 instruct, SmolLM2 and
more), as Hugging Face's `@huggingface/ollama-utils` package carries them (pinned in
tests/plugins/package.json, installed by `make test`). The package keeps its table private, so Node
loads its module with one line appended that hands the table out."""

from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent.parent / "tests" / "plugins"

# run from tests/plugins, so that Node resolves the package (and its @huggingface/jinja) there
_DUMP = """
const fs = require("fs"), path = require("path"), Module = require("module");
const file = require.resolve("@huggingface/ollama-utils");
const loaded = new Module(file, module);
loaded.filename = file;
loaded.paths = Module._nodeModulePaths(path.dirname(file));
loaded._compile(fs.readFileSync(file, "utf8") + "\\nmodule.exports.__table = OLLAMA_CHAT_TEMPLATE_MAPPING;", file);
const out = {};
for (const entry of loaded.exports.__table) out[entry.model] = entry.gguf;
process.stdout.write(JSON.stringify(out));
"""


@lru_cache(maxsize=1)
def real_chat_templates() -> dict[str, str]:
    """{Ollama library name ("library/llama3.2:3b"): the model's own Jinja chat template}."""
    if not (PLUGINS / "node_modules" / "@huggingface" / "ollama-utils").is_dir():
        raise FileNotFoundError(
            f"@huggingface/ollama-utils is not installed in {PLUGINS}: run `make test` (or `npm install --omit=optional` there)"
        )
    done = subprocess.run(["node", "-e", _DUMP], cwd=PLUGINS, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"node could not read the templates:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)
