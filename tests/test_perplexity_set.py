"""`slipstream eval perplexity --fetch-set`: a set of languages from real registries (PyPI, npm, Debian),
laid out with where each file came from, measured with `--set`; a package that cannot be had is said,
the others kept."""

from __future__ import annotations

import json
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from eval import perplexity_set
from eval.perplexity import MAX_BYTES, MIN_BYTES, lexer_for
from tests.conftest import ROOT, TINY


def slipstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipstream.cli", "eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_fetch_a_set_from_each_kind_of_registry_and_measure_it(tiny_server, tmp_path: Path) -> None:
    out = tmp_path / "set"
    # one language a registry kind: a PyPI sdist, an npm package, a Debian binary package with sources
    done = slipstream("perplexity", "--fetch-set", str(out), "--fetch-languages", "python,javascript,ruby", "--files", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["language"]: r for r in json.loads((out / "sources.json").read_text())}
    assert set(rows) == {"python", "javascript", "ruby"} and not any("error" in r for r in rows.values())
    assert rows["python"]["version"] == "2.32.3" and rows["python"]["licence"] == "Apache-2.0"  # requests' PKG-INFO
    assert rows["javascript"]["version"] == "4.17.21" and rows["javascript"]["licence"] == "MIT"  # lodash's package.json
    assert rows["ruby"]["version"] and rows["ruby"]["licence"] == "Expat"  # ruby-rack's debian/copyright
    for language in rows:
        files = sorted((out / language).iterdir())
        patterns = lexer_for(language).filenames  # each named by its path in the package, joined by "__"
        assert len(files) == rows[language]["files"] == 3
        assert all(any(fnmatch(f.name.split("__")[-1], p) for p in patterns) for f in files)
        assert all(MIN_BYTES <= f.stat().st_size <= MAX_BYTES for f in files)
        assert sum(f.stat().st_size for f in files) == rows[language]["bytes"]
    assert "| ruby | deb | ruby-rack |" in (out / "SOURCES.md").read_text()

    # measured as a set: every language in it, without naming folders
    measured = slipstream(
        "perplexity", "--url", tiny_server.url, "--model", TINY, "--set", str(out), "--files", "1", "--out", str(tmp_path / "ppl")
    )
    assert measured.returncode == 0, measured.stderr[-3000:]
    result = json.loads((tmp_path / "ppl" / "perplexity.json").read_text())
    assert {r["language"] for r in result["results"]} == set(rows)

    not_a_set = slipstream("perplexity", "--model", TINY, "--set", str(tmp_path))
    assert not_a_set.returncode == 1 and "holds no perplexity set" in not_a_set.stderr
    unknown = slipstream("perplexity", "--fetch-set", str(tmp_path / "x"), "--fetch-languages", "cobol")
    assert unknown.returncode == 1 and "no source for cobol" in unknown.stderr


def test_a_package_that_cannot_be_had_is_said_and_the_others_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = (
        perplexity_set.Source("javascript", "npm", "slipstream-no-such-package-7f3a@1.0.0"),
        perplexity_set.Source("python", "pypi", "requests==2.32.3"),
    )
    monkeypatch.setattr(perplexity_set, "SOURCES", sources)
    monkeypatch.setattr(perplexity_set, "LANGUAGES", ("javascript", "python"))
    rows = perplexity_set.fetch(tmp_path, files=2, log=lambda _line: None)
    assert "error" in rows[0] and "npm pack" in rows[0]["error"] and not (tmp_path / "javascript").exists()
    assert "error" not in rows[1] and len(list((tmp_path / "python").iterdir())) == 2
    assert "not fetched" in (tmp_path / "SOURCES.md").read_text()
