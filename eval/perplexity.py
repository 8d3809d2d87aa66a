"""Perplexity of a served model per language, PolyCoder's way (Xu et al. 2022):

    PPL = exp(− Σ_files log p(file) / Σ_files N_tokens)

pooled per language, where N_tokens counts the file's tokens by the language's Pygments lexer, not the
model's own tokens, so that models with different tokenizers compare. log p(file) comes from the
server (echo + logprobs, max_tokens 0), in natural log; eval/perplexity_scoring.py windows the file.

Two methods, the paper's the default:
- "polycoder": every token the lexer yields, whitespace included (`len(list(lexer.get_tokens(doc)))`
  with the lexer's default options, as PolyCoder's code counts), the file's first token scored (after
  an end-of-text token where the model has no BOS), rolling windows at the model's whole context;
- "windows" (ours before): whitespace-only lexer tokens left out, windows of --window model tokens
  (512) with --overlap (25%) repeated, a first token without BOS left unscored.
Each language's perplexity carries a 95% bootstrap interval over its files.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from client.api import AsyncClient
from eval.html_page import write_study
from eval.perplexity_scoring import Scored, WindowTrimmed, score_overlapping, score_rolling
from eval.stats import bootstrap_ratio_interval

Method = Literal["polycoder", "windows"]
METHODS: tuple[Method, ...] = ("polycoder", "windows")
MIN_BYTES, MAX_BYTES = 1_000, 30_000
MIN_WINDOW_CHARS = 16
END_OF_TEXT = "<|endoftext|>"  # GPT-2's, PolyCoder's, CodeGen's, StarCoder's, Qwen's, SmolLM's


@dataclass
class FileScore:
    path: str
    chars: int
    lexer_tokens: int
    model_tokens: int  # scored
    unscored: int  # tokens without a log-probability (a first token without BOS)
    logprob: float  # Σ natural-log p of the scored tokens
    windows: int
    prefixed: bool = False  # scored after the end-of-text token (a model without BOS, PolyCoder's method)


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
    perplexity_interval: list[float] = field(default_factory=list)  # 95% bootstrap over the language's files


def lexer_for(language: str):
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        return get_lexer_by_name(language)
    except ClassNotFound as exc:
        raise ValueError(f"Pygments has no lexer named {language!r} (try python, c, javascript, rust, go)") from exc


def lexer_token_count(text: str, language: str, method: Method = "windows") -> int:
    """Tokens of the language's Pygments lexer: every one, with the lexer's default options, as PolyCoder
    counts; or ("windows") whitespace-only tokens left out, the text as it is."""
    lexer = lexer_for(language)
    if method == "polycoder":
        return len(list(lexer.get_tokens(text)))
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


async def score_files(
    url: str,
    model: str,
    language: str,
    files: list[Path],
    context_tokens: int,
    method: Method = "polycoder",
    overlap: float = 0.25,
    prefix: str = END_OF_TEXT,
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
                    if method == "polycoder":
                        scored: Scored = await score_rolling(client, model, text, window, prefix)
                    else:
                        scored = await score_overlapping(client, model, text, window, overlap)
                    break
                except WindowTrimmed:
                    if window <= MIN_WINDOW_CHARS:
                        raise ValueError(f"{path}: even {window} characters overflow {model}'s context") from None
                    window = max(MIN_WINDOW_CHARS, window * 3 // 4)
            chars_per_token = max(1.0, 0.9 * len(text) / max(scored.tokens + scored.unscored, 1))  # 10% to spare
            score = FileScore(
                str(path),
                len(text),
                lexer_token_count(text, language, method),
                scored.tokens,
                scored.unscored,
                scored.logprob,
                scored.windows,
                scored.prefixed,
            )
            out.append(score)
            if progress:
                progress(score)
    return out


def pool(model: str, language: str, scores: list[FileScore]) -> LanguageResult:
    logprob = sum(s.logprob for s in scores)
    lexer_tokens = sum(s.lexer_tokens for s in scores)
    model_tokens = sum(s.model_tokens for s in scores)
    chars = sum(s.chars for s in scores)
    # resampling files: the interval of Σ logprob / Σ lexer tokens, through exp(-x) (which turns it over)
    low, high = bootstrap_ratio_interval([s.logprob for s in scores], [s.lexer_tokens for s in scores])
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
        [math.exp(-high), math.exp(-low)],
    )


def run(
    url: str,
    models: list[str],
    languages: dict[str, Path],
    out: Path,
    files: int = 20,
    method: Method = "polycoder",
    window_tokens: int | None = None,
    overlap: float | None = None,
    prefix: str = END_OF_TEXT,
    log: Callable[[str], None] = print,
) -> list[LanguageResult]:
    """Every model over every language. window_tokens: the windows' length in model tokens (polycoder: the
    model's whole context where not given; windows: 512); overlap: the windows method's share of each
    window repeated as context (0.25 where not given)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "polycoder" and overlap is not None:
        raise ValueError("--overlap is the windows method's: PolyCoder's rolling windows repeat one token (give --method windows)")
    overlap = 0.25 if overlap is None else overlap
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if method == "windows" and window_tokens is None:
        window_tokens = 512
    picks = {lang: pick_files(folder, lang, files) for lang, folder in languages.items()}
    contexts = asyncio.run(_contexts(url))
    results = []
    out.mkdir(parents=True, exist_ok=True)
    detail: dict = {}
    settings: dict[str, object] = {"method": method, "window_tokens": window_tokens, "overlap": overlap if method == "windows" else None}
    if method == "polycoder":
        settings["first_token_prefix"] = prefix
    for model in models:
        if model not in contexts:
            raise ValueError(f"{url} does not serve {model!r}; it serves {', '.join(contexts)}")
        if window_tokens is None and not contexts[model]:
            raise ValueError(f"{url} does not say {model}'s context length: give --window")
        context = min(window_tokens or contexts[model], contexts[model] or window_tokens or 0)
        for lang, paths in picks.items():
            done = [0]

            def progress(score: FileScore, model: str = model, lang: str = lang, n: int = len(paths), done: list[int] = done) -> None:
                done[0] += 1
                log(
                    f"  {model} {lang} [{done[0]}/{n}] {Path(score.path).name}: {score.model_tokens} tokens, "
                    f"{score.windows} windows, {score.logprob / max(score.lexer_tokens, 1):.3f} nats/lexer token"
                )

            scores = asyncio.run(score_files(url, model, lang, paths, context, method, overlap, prefix, progress))
            detail.setdefault(model, {})[lang] = [asdict(s) for s in scores]
            results.append(pool(model, lang, scores))
            low, high = results[-1].perplexity_interval
            log(f"{model} {lang}: perplexity {results[-1].perplexity:.3f} [{low:.3f}, {high:.3f}] per Pygments token ({method})")
    results, detail = _merge_earlier(out / "perplexity.json", results, detail, settings)
    (out / "perplexity.json").write_text(
        json.dumps({"results": [asdict(r) for r in results], "files": detail, **settings}, indent=2) + "\n"
    )
    (out / "perplexity.md").write_text(markdown(results, settings))
    _plot(out / "perplexity.png", results)
    write_study(out / "perplexity.md")
    return results


def _merge_earlier(path: Path, results: list[LanguageResult], detail: dict, settings: dict) -> tuple[list[LanguageResult], dict]:
    """An earlier run's (model, language) results in the same folder are kept unless this run measured
    them again (with the same method and windows: otherwise the numbers would not compare, and are replaced)."""
    if not path.is_file():
        return results, detail
    earlier = json.loads(path.read_text())
    if any(earlier.get(key, "windows" if key == "method" else None) != value for key, value in settings.items()):
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


def markdown(results: list[LanguageResult], settings: dict) -> str:
    if settings["method"] == "polycoder":
        window = f"{settings['window_tokens']} model tokens" if settings["window_tokens"] else "the model's whole context"
        method = (
            "PolyCoder's method: every Pygments token counted, whitespace included; the first token scored (after "
            f"{settings['first_token_prefix']!r} where the model has no BOS); rolling windows of {window}, each after "
            "the first with one token of context, the last reaching back to a whole window."
        )
    else:
        method = (
            f"Windows method (not PolyCoder's): whitespace-only Pygments tokens left out; windows of up to "
            f"{settings['window_tokens']} model tokens, {settings['overlap']:.0%} of each repeated as context; a first "
            "token without BOS left unscored."
        )
    lines = [
        "# Perplexity per language",
        "",
        "PPL = exp(−Σ log p(file) / Σ Pygments tokens), pooled per language (comparable across tokenizers), "
        "with its 95% bootstrap interval over the language's files. " + method + " Per model token and bits "
        "per character for reference. Pygments makes a whole preprocessor line or comment one token: header "
        "files full of #define lines count few tokens, so their per-token perplexity is far higher than their "
        "bits per character say.",
        "",
        "| model | language | files | chars | Pygments tokens | model tokens | PPL (Pygments) | 95% interval "
        "| PPL (model tokens) | bits/char |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        interval = f"[{r.perplexity_interval[0]:.3f}, {r.perplexity_interval[1]:.3f}]" if r.perplexity_interval else ""
        lines.append(
            f"| {r.model} | {r.language} | {r.files} | {r.chars} | {r.lexer_tokens} | {r.model_tokens} | "
            f"{r.perplexity:.3f} | {interval} | {r.model_token_perplexity:.3f} | {r.bits_per_char:.3f} |"
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
        rows = {r.language: r for r in results if r.model == model}
        values = [rows[lang].perplexity if lang in rows else 0.0 for lang in languages]
        # the bootstrap interval as error bars (none for results written before it was kept)
        spans = [
            rows[lang].perplexity_interval if lang in rows and rows[lang].perplexity_interval else [v, v]
            for lang, v in zip(languages, values, strict=True)
        ]
        errors = [
            [v - low for v, (low, _) in zip(values, spans, strict=True)],
            [high - v for v, (_, high) in zip(values, spans, strict=True)],
        ]
        ax.bar([j + i * width for j in range(len(languages))], values, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(languages))], languages)
    ax.set_ylabel("perplexity per Pygments token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
