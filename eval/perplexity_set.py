"""A perplexity set in PolyCoder's 12 languages from what the package registries serve here: sources
shipped in Debian packages (binary ones that carry sources, and one source package), npm packages and
PyPI sdists. `slipstream eval perplexity --fetch-set DIR` downloads each, keeps `files` files of the
language (1-30 kB, picked evenly, as the study picks), and writes DIR/<language>/ plus DIR/sources.json
and DIR/SOURCES.md: the package, its version and licence per language. A language whose package
cannot be had is reported and skipped; the others are kept.

The sources are well-known projects, so likely in a model's training data (PolyCoder's own test set
was unseen repositories): the set compares models and languages, it does not measure generalisation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.perplexity import pick_files


@dataclass(frozen=True)
class Source:
    language: str  # a Pygments lexer name
    kind: str  # "deb" (a binary package with sources in it), "deb-src" (a source package), "npm", "pypi"
    package: str  # name, with ==version (pypi) or @version (npm) where pinned


SOURCES = (
    Source("c", "pypi", "brotli==1.1.0"),
    Source("cpp", "pypi", "JPype1==1.5.0"),
    Source("csharp", "pypi", "pythonnet==3.0.5"),
    Source("go", "deb", "golang-github-spf13-cobra-dev"),
    Source("java", "pypi", "JPype1==1.5.0"),
    Source("javascript", "npm", "lodash@4.17.21"),
    Source("php", "deb", "php-symfony-console"),
    Source("python", "pypi", "requests==2.32.3"),
    Source("ruby", "deb", "ruby-rack"),
    Source("rust", "deb", "librust-regex-dev"),
    Source("scala", "deb-src", "scala"),
    Source("typescript", "npm", "rxjs@7.8.1"),
)
LANGUAGES = tuple(s.language for s in SOURCES)


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".deb":
        _run(["dpkg-deb", "-x", str(archive), str(into)], into)
    elif archive.suffix == ".zip" or archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")


def _apt(work: Path) -> list[str]:
    """apt-get with a state of its own (its own lists, binary and source indexes): nothing of the system's changes."""
    codename = next(
        (
            line.split("=", 1)[1].strip()
            for line in Path("/etc/os-release").read_text().splitlines()
            if line.startswith("VERSION_CODENAME=")
        ),
        "",
    )
    if not codename or not shutil.which("apt-get"):
        raise RuntimeError("Debian packages need apt-get on a Debian system")
    state = work / "apt"
    if not (state / "ready").exists():
        (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (state / "sources.list").write_text(
            f"deb http://deb.debian.org/debian {codename} main\ndeb-src http://deb.debian.org/debian {codename} main\n"
        )
    options = [
        f"-oDir::Etc::sourcelist={state / 'sources.list'}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        "-oAPT::Sandbox::User=root",
        "-qq",
    ]
    if not (state / "ready").exists():
        _run(["apt-get", *options, "update"], work)
        (state / "ready").touch()
    return ["apt-get", *options]


def download(source: Source, work: Path) -> tuple[Path, str, str]:
    """The unpacked package, its version and its licence."""
    here = work / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{source.kind}-{source.package}")
    if here.exists():
        shutil.rmtree(here)
    here.mkdir(parents=True)
    tree = here / "tree"
    if source.kind == "pypi":
        import sys

        _run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--no-build-isolation", "-q", source.package],
            here,
        )
        [archive] = [p for p in here.iterdir() if p.is_file()]
        _unpack(archive, tree)
        info = next(tree.rglob("PKG-INFO"))
        meta = info.read_text(errors="replace")
        licence = (
            _field(meta, "License-Expression") or _field(meta, "License").removeprefix("License :: OSI Approved :: ") or _classifier(meta)
        )
        return tree, source.package.split("==", 1)[1], licence
    if source.kind == "npm":
        name = _run(["npm", "pack", source.package, "--silent"], here).strip().splitlines()[-1]
        _unpack(here / name, tree)
        package = json.loads(next(tree.rglob("package.json")).read_text())
        return tree, str(package.get("version")), str(package.get("license") or "unknown")
    apt = _apt(work)
    if source.kind == "deb":
        _run([*apt, "download", source.package], here)
        [deb] = list(here.glob("*.deb"))
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], here).strip()
        _unpack(deb, tree)
        copyright_file = next(tree.rglob("copyright"), None)
        return tree, version, _debian_licence(copyright_file.read_text(errors="replace") if copyright_file else "")
    _run([*apt, "source", "--download-only", source.package], here)
    [dsc] = list(here.glob("*.dsc"))
    version = _field(dsc.read_text(errors="replace"), "Version")
    for archive in here.glob("*.tar.*"):
        _unpack(archive, tree)
    copyright_file = next(tree.rglob("debian/copyright"), None)
    return tree, version, _debian_licence(copyright_file.read_text(errors="replace") if copyright_file else "")


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _classifier(meta: str) -> str:
    match = re.search(r"^Classifier: License :: .* :: (.+)$", meta, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def _debian_licence(copyright_text: str) -> str:
    """The licence of the main files (the first Files: * stanza's), as debian/copyright states it."""
    stanza = re.search(r"^Files:\s*\*\s*$(.*?)(?:^\s*$|\Z)", copyright_text, re.MULTILINE | re.DOTALL)
    return _field(stanza.group(1), "License") if stanza else (_field(copyright_text, "License") or "see its debian/copyright")


def fetch(out: Path, languages: list[str] | None = None, files: int = 20, log: Callable[[str], None] = print) -> list[dict]:
    """Download and lay out the set; returns one row per language (with `error` where it failed)."""
    wanted = languages or list(LANGUAGES)
    unknown = sorted(set(wanted) - set(LANGUAGES))
    if unknown:
        raise ValueError(f"no source for {', '.join(unknown)}: the set has {', '.join(LANGUAGES)}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="perplexity-set-") as scratch:
        work = Path(scratch)
        for source in (s for s in SOURCES if s.language in wanted):
            row: dict = asdict(source)
            try:
                tree, version, licence = download(source, work)
                picked = pick_files(tree, source.language, files)
                target = out / source.language
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir()
                for path in picked:  # the path inside the package kept in the name: where each file came from
                    shutil.copyfile(path, target / "__".join(path.relative_to(tree).parts))
                row |= {"version": version, "licence": licence, "files": len(picked), "bytes": sum(p.stat().st_size for p in picked)}
                log(f"{source.language}: {len(picked)} files from {source.kind} {source.package} {version} ({licence})")
            except (
                RuntimeError,
                ValueError,
                OSError,
                StopIteration,
                subprocess.TimeoutExpired,
                tarfile.TarError,
                zipfile.BadZipFile,
            ) as exc:
                row["error"] = str(exc) or type(exc).__name__
                log(f"{source.language}: not fetched: {row['error']}")
            rows.append(row)
    (out / "sources.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "SOURCES.md").write_text(_markdown(rows))
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "# The perplexity set: where each language's files come from",
        "",
        "Fetched by `slipstream eval perplexity --fetch-set`; well-known projects, so likely seen in training.",
        "",
        "| language | from | package | version | licence | files | bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['language']} | {r['kind']} | {r['package']} | not fetched: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['language']} | {r['kind']} | {r['package']} | {r['version']} | {r['licence']} | {r['files']} | {r['bytes']} |"
            )
    return "\n".join(lines) + "\n"


def languages_in(folder: Path) -> dict[str, Path]:
    """A fetched set's languages: each folder in it (DIR/<language>/)."""
    if not (folder / "sources.json").is_file():
        raise ValueError(f"{folder} holds no perplexity set (no sources.json): fetch one with --fetch-set {folder}")
    found = {d.name: d for d in sorted(folder.iterdir()) if d.is_dir() and any(d.iterdir())}
    if not found:
        raise ValueError(f"{folder}: its set has no language with files (see {folder / 'SOURCES.md'})")
    return found
