"""Perplexity of a served model per language, PolyCoder's way (Xu et al. 2022):

    PPL = exp(− Σ_files log p(file) / Σ_files N_tokens)

pooled per language, where N_tokens counts the file's tokens by the language's Pygments lexer (tokens
that are only whitespace left out), not the model's own tokens, so that models with different
tokenizers compare. log p(file) comes from the server (echo + logprobs, max_tokens 0: the prompt's own
token log-probabilities, legacy layout with text_offset), in natural log.

Long files are scored in rolling windows of characters: each window after the first repeats the end of
the previous one as context (`overlap` of it) and only its new characters' tokens count (a token
belongs to the window part where it starts). A window is sized in characters from the server's context
and the characters per token seen so far; when the server had to trim a window to fit (its first echoed
token does not start at 0), the window is halved and that file scored again. A file's very first token
has no log-probability when the model adds no BOS token before it: it is left out and counted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from client.api import AsyncClient

MIN_BYTES, MAX_BYTES = 1_000, 30_000
MIN_WINDOW_CHARS = 16


@dataclass
class FileScore:
    path: str
    chars: int
    lexer_tokens: int
    model_tokens: int  # scored
    unscored: int  # tokens without a log-probability (a first token without BOS)
    logprob: float  # Σ natural-log p of the scored tokens
    windows: int


@dataclass
class LanguageResult:
    model: str
    language: str
    files: int
    chars: int
    lexer_tokens: int
    model_tokens: int
    logprob: float
    perplexity: float  # per lexer token: exp(-logprob / lexer_tokens)
    model_token_perplexity: float  # per model token, for reference (not comparable across tokenizers)
    bits_per_char: float


def lexer_for(language: str):
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        return get_lexer_by_name(language)
    except ClassNotFound as exc:
        raise ValueError(f"Pygments has no lexer named {language!r} (try python, c, javascript, rust, go)") from exc


def lexer_token_count(text: str, language: str) -> int:
    """Tokens of the language's Pygments lexer, whitespace-only tokens left out."""
    lexer = lexer_for(language)
    lexer.stripnl = lexer.stripall = False
    return sum(1 for _, value in lexer.get_tokens(text) if value.strip())


def pick_files(folder: Path, language: str, count: int) -> list[Path]:
    """`count` files of the language (by the lexer's file name patterns) between MIN_BYTES and MAX_BYTES,
    spread evenly over the sorted list, so that the pick is the same on every run."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    patterns = lexer_for(language).filenames
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns) and MIN_BYTES <= p.stat().st_size <= MAX_BYTES
    )
    if not found:
        raise ValueError(f"no {language} file ({', '.join(patterns)}) of {MIN_BYTES}-{MAX_BYTES} bytes under {folder}")
    if len(found) <= count:
        return found
    return [found[round(i * (len(found) - 1) / max(count - 1, 1))] for i in range(count)]


class WindowTrimmed(Exception):
    pass


async def score_text(client: AsyncClient, model: str, text: str, window_chars: int, overlap: float) -> tuple[float, int, int, int]:
    """(Σ logprob, tokens scored, tokens unscored, windows) of text; raises WindowTrimmed when a window
    did not fit the server's context."""
    total, scored, unscored, windows = 0.0, 0, 0, 0
    start = 0  # first character not yet scored
    while start < len(text):
        context = 0 if start == 0 else min(int(window_chars * overlap), start)
        begin = start - context
        end = min(len(text), begin + window_chars)
        chunk = text[begin:end]
        response = await client.complete(chunk, model=model, max_tokens=0, echo=True, logprobs=0, temperature=0)
        logprobs = response["choices"][0].get("logprobs") or {}
        offsets, values = logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or []
        if not offsets:
            raise ValueError(f"the server echoed no logprobs for {model}: it needs echo + logprobs with max_tokens 0")
        if (response.get("usage") or {}).get("prompt_tokens_trimmed") or offsets[0] > 0:
            raise WindowTrimmed
        for offset, value in zip(offsets, values, strict=True):
            if offset < context:
                continue  # context only: scored by the window before
            if value is None:
                unscored += 1
            else:
                total += value
                scored += 1
        windows += 1
        start = end
    return total, scored, unscored, windows


async def score_files(
    url: str,
    model: str,
    language: str,
    files: list[Path],
    context_tokens: int,
    overlap: float,
    progress: Callable[[FileScore], None] | None = None,
) -> list[FileScore]:
    chars_per_token = 2.5  # a cautious start for code; learnt from each file scored
    out = []
    async with AsyncClient(url, timeout=600) as client:
        for path in files:
            text = path.read_text(errors="replace")
            window = max(MIN_WINDOW_CHARS, int(context_tokens * chars_per_token))
            while True:
                try:
                    total, scored, unscored, windows = await score_text(client, model, text, window, overlap)
                    break
                except WindowTrimmed:
                    if window <= MIN_WINDOW_CHARS:
                        raise ValueError(f"{path}: even {window} characters overflow {model}'s context") from None
                    window //= 2
            chars_per_token = max(1.0, 0.9 * len(text) / max(scored + unscored, 1))  # 10% to spare
            score = FileScore(str(path), len(text), lexer_token_count(text, language), scored, unscored, total, windows)
            out.append(score)
            if progress:
                progress(score)
    return out


def pool(model: str, language: str, scores: list[FileScore]) -> LanguageResult:
    logprob = sum(s.logprob for s in scores)
    lexer_tokens = sum(s.lexer_tokens for s in scores)
    model_tokens = sum(s.model_tokens for s in scores)
    chars = sum(s.chars for s in scores)
    return LanguageResult(
        model,
        language,
        len(scores),
        chars,
        lexer_tokens,
        model_tokens,
        logprob,
        math.exp(-logprob / lexer_tokens),
        math.exp(-logprob / model_tokens),
        -logprob / math.log(2) / chars,
    )


def run(
    url: str,
    models: list[str],
    languages: dict[str, Path],
    out: Path,
    files: int = 20,
    window_tokens: int = 512,
    overlap: float = 0.25,
    log: Callable[[str], None] = print,
) -> list[LanguageResult]:
    """Every model over every language; window_tokens caps the window below the model's context (echo
    returns logits for every position, [window, vocabulary] floats)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    picks = {lang: pick_files(folder, lang, files) for lang, folder in languages.items()}
    contexts = asyncio.run(_contexts(url))
    results = []
    out.mkdir(parents=True, exist_ok=True)
    detail: dict = {}
    for model in models:
        if model not in contexts:
            raise ValueError(f"{url} does not serve {model!r}; it serves {', '.join(contexts)}")
        context = min(window_tokens, contexts[model] or window_tokens)
        for lang, paths in picks.items():
            done = [0]

            def progress(score: FileScore, model: str = model, lang: str = lang, n: int = len(paths), done: list[int] = done) -> None:
                done[0] += 1
                log(
                    f"  {model} {lang} [{done[0]}/{n}] {Path(score.path).name}: {score.model_tokens} tokens, "
                    f"{score.windows} windows, {score.logprob / max(score.lexer_tokens, 1):.3f} nats/lexer token"
                )

            scores = asyncio.run(score_files(url, model, lang, paths, context, overlap, progress))
            detail.setdefault(model, {})[lang] = [asdict(s) for s in scores]
            results.append(pool(model, lang, scores))
            log(f"{model} {lang}: perplexity {results[-1].perplexity:.3f} per Pygments token")
    results, detail = _merge_earlier(out / "perplexity.json", results, detail, window_tokens, overlap)
    (out / "perplexity.json").write_text(
        json.dumps({"results": [asdict(r) for r in results], "files": detail, "window_tokens": window_tokens, "overlap": overlap}, indent=2)
        + "\n"
    )
    (out / "perplexity.md").write_text(markdown(results, window_tokens, overlap))
    _plot(out / "perplexity.png", results)
    return results


def _merge_earlier(
    path: Path, results: list[LanguageResult], detail: dict, window_tokens: int, overlap: float
) -> tuple[list[LanguageResult], dict]:
    """An earlier run's (model, language) results in the same folder are kept unless this run measured
    them again (with the same windows: otherwise the numbers would not compare, and are replaced)."""
    if not path.is_file():
        return results, detail
    earlier = json.loads(path.read_text())
    if (earlier.get("window_tokens"), earlier.get("overlap")) != (window_tokens, overlap):
        return results, detail
    done = {(r.model, r.language) for r in results}
    kept = [LanguageResult(**r) for r in earlier.get("results", []) if (r["model"], r["language"]) not in done]
    for model, languages in earlier.get("files", {}).items():
        for language, files in languages.items():
            if (model, language) not in done:
                detail.setdefault(model, {})[language] = files
    return kept + results, detail


async def _contexts(url: str) -> dict[str, int]:
    async with AsyncClient(url, timeout=60) as client:
        return {m["id"]: int(m.get("context_length") or 0) for m in await client.models()}


def markdown(results: list[LanguageResult], window_tokens: int, overlap: float) -> str:
    lines = [
        "# Perplexity per language",
        "",
        "PPL = exp(−Σ log p(file) / Σ Pygments tokens), pooled per language (PolyCoder's method: comparable "
        f"across tokenizers); windows of up to {window_tokens} model tokens, {overlap:.0%} of each repeated "
        "as context. Per model token and bits per character for reference. Pygments makes a whole "
        "preprocessor line or comment one token: header files full of #define lines count few tokens, "
        "so their per-token perplexity is far higher than their bits per character say.",
        "",
        "| model | language | files | chars | Pygments tokens | model tokens | PPL (Pygments) | PPL (model tokens) | bits/char |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.language} | {r.files} | {r.chars} | {r.lexer_tokens} | {r.model_tokens} | "
            f"{r.perplexity:.3f} | {r.model_token_perplexity:.3f} | {r.bits_per_char:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(path: Path, results: list[LanguageResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = list(dict.fromkeys(r.language for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(languages), 3.6))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = {r.language: r.perplexity for r in results if r.model == model}
        ax.bar([j + i * width for j in range(len(languages))], [values.get(lang, 0) for lang in languages], width, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(languages))], languages)
    ax.set_ylabel("perplexity per Pygments token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
