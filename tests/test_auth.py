"""API keys and CORS on a real server process: the header forms clients send, the Copilot token
endpoint, open probes, keys never logged, a misconfiguration refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import pytest

from server.auth import AuthConfigError, key_matches, load_keys, presented_key
from tests.conftest import ROOT, TINY, ServerProcess

KEY, FILE_KEY = "sk-slip-env-0123456789", "sk-slip-file-abcdefghij"
ORIGIN = "http://localhost:3000"


def test_header_forms_and_constant_time_match() -> None:
    assert presented_key({"authorization": f"Bearer {KEY}"}) == KEY
    assert presented_key({"authorization": f"token {KEY}"}) == KEY  # the Copilot plugin's token request
    assert presented_key({"x-api-key": KEY}) == KEY and presented_key({"api-key": KEY}) == KEY
    assert presented_key({"authorization": "Basic abc"}) is None and presented_key({}) is None
    assert key_matches(KEY, [FILE_KEY, KEY]) and not key_matches(KEY[:-1], [KEY]) and not key_matches(None, [KEY])


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\n{FILE_KEY}\n\n")
    assert load_keys({"SLIPSTREAM_API_KEYS": f" {KEY} ,", "SLIPSTREAM_API_KEYS_FILE": str(keys)}) == [KEY, FILE_KEY]
    assert load_keys({}) == []
    with pytest.raises(AuthConfigError, match="holds no key"):
        load_keys({"SLIPSTREAM_API_KEYS": " , "})
    with pytest.raises(AuthConfigError, match="cannot read it"):
        load_keys({"SLIPSTREAM_API_KEYS_FILE": str(tmp_path / "missing")})
    with pytest.raises(AuthConfigError, match="shorter than 8"):
        load_keys({"SLIPSTREAM_API_KEYS": "abc"})


def test_a_locked_server(tiny_repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(FILE_KEY + "\n")
    env = {"SLIPSTREAM_API_KEYS": KEY, "SLIPSTREAM_API_KEYS_FILE": str(keys), "SLIPSTREAM_CORS_ORIGINS": f'["{ORIGIN}"]'}
    body = {"prompt": "def add(a, b):", "max_tokens": 4}
    with ServerProcess(tiny_repo, [TINY], env=env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        missing = http.post("/v1/completions", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}x"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
        assert http.get("/v1/models").status_code == 401
        ok = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["choices"]
        assert http.get("/v1/models", headers={"X-API-Key": FILE_KEY}).status_code == 200  # the file's key
        # the Copilot plugin: a token for its key, then completions on the engine route with that token
        assert http.get("/copilot_internal/v2/token").status_code == 401
        token = http.get("/copilot_internal/v2/token", headers={"Authorization": f"token {FILE_KEY}"}).json()
        assert token["token"] == FILE_KEY and token["expires_at"] > token["refresh_in"] > 0
        copilot = http.post(
            "/v1/engines/codegen/completions", json=body | {"stream": True}, headers={"Authorization": f"Bearer {token['token']}"}
        )
        assert copilot.status_code == 200 and copilot.text.rstrip().endswith("data: [DONE]")
        # probes and documents stay open; a browser preflight is answered before any key check
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200
        preflight = http.options(
            "/v1/completions",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
        # each API's clients get the refusal in their API's shape: Ollama's library, llama.vim's /infill
        wrong_key = ollama.Client(host=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}x"})
        with pytest.raises(ollama.ResponseError) as refused:
            wrong_key.generate(model=TINY, prompt="def add(a, b):", options={"num_predict": 4})
        assert refused.value.status_code == 401 and refused.value.error == "the API key is not valid"
        assert http.post("/api/generate", json={"model": TINY, "prompt": "x"}).json() == {
            "error": "no API key: send Authorization: Bearer <key>"
        }
        keyed = ollama.Client(host=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.generate(model=TINY, prompt="def add(a, b):", options={"num_predict": 4}).response
        infill = http.post("/infill", json={"input_prefix": "def f(", "input_suffix": ")"})
        assert infill.status_code == 401 and infill.json()["error"]["code"] == 401, infill.text
        assert infill.json()["error"]["type"] == "invalid_request_error"
        log = server.log.read_text()
    assert KEY not in log and FILE_KEY not in log and "API keys required (2 configured)" in log


def test_cors_is_off_by_default(tiny_server) -> None:
    preflight = httpx.options(f"{tiny_server.url}/v1/completions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_a_key_variable_without_keys_stops_the_server(tiny_repo: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slipstream.cli",
            "serve",
            "--model-repository",
            str(tiny_repo),
            "--model",
            TINY,
            "--port",
            "1",
            "--no-export-missing",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SLIPSTREAM_API_KEYS": ","},
    )
    assert done.returncode != 0 and "SLIPSTREAM_API_KEYS is set but holds no key" in done.stderr
