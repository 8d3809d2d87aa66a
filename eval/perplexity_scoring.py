"""A file's log-probability from a server's echo (max_tokens 0, logprobs: the prompt's own tokens'
log-probabilities with their text offsets), scored in windows of characters; two ways:

- `score_rolling`, PolyCoder's (its lm-evaluation-harness fork's rolling log-likelihood): windows as
  long as the model's context, each after the first starting at the previous window's last token (one
  token of context, the rest new), the last window reaching back to a full window; the file's first
  token scored after an end-of-text token where the model has no BOS of its own;
- `score_overlapping`, ours before: each window after the first repeats `overlap` of the previous one
  as context; a file's first token without BOS stays unscored (counted as such).

A token belongs to the window part where it starts; windows end at a line break where one lies in
their second half, so that a token is rarely cut at a window's edge. A window the server had to trim
(its first echoed token does not start at 0, or usage says so) raises WindowTrimmed: the caller
shrinks the window and scores the file again."""

from __future__ import annotations

from dataclasses import dataclass

from client.api import AsyncClient


class WindowTrimmed(Exception):
    pass


@dataclass
class Scored:
    logprob: float = 0.0  # Σ natural-log p of the scored tokens
    tokens: int = 0  # scored
    unscored: int = 0  # without a log-probability (a first token without BOS)
    windows: int = 0
    prefixed: bool = False  # the first window went after the end-of-text token


async def echo(client: AsyncClient, model: str, text: str) -> tuple[list[str], list[int], list[float | None]]:
    """The text's tokens, their offsets and log-probabilities as the server echoes them (max_tokens 0);
    WindowTrimmed where the server had to cut the text to fit the model's context."""
    response = await client.complete(text, model=model, max_tokens=0, echo=True, logprobs=0, temperature=0)
    logprobs = response["choices"][0].get("logprobs") or {}
    tokens, offsets, values = logprobs.get("tokens") or [], logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or []
    if not offsets:
        raise ValueError(f"the server echoed no logprobs for {model}: it needs echo + logprobs with max_tokens 0")
    if (response.get("usage") or {}).get("prompt_tokens_trimmed") or offsets[0] > 0:
        raise WindowTrimmed
    return tokens, offsets, values


def _cut(text: str, start: int, end: int) -> int:
    """The window's end: after the last line break in its new part's second half, else `end`."""
    if end >= len(text):
        return len(text)
    newline = text.rfind("\n", start + (end - start) // 2, end)
    return newline + 1 if newline >= 0 else end


async def score_overlapping(client: AsyncClient, model: str, text: str, window_chars: int, overlap: float) -> Scored:
    out = Scored()
    start = 0  # first character not yet scored
    while start < len(text):
        context = 0 if start == 0 else min(int(window_chars * overlap), start)
        begin = start - context
        end = _cut(text, start, min(len(text), begin + window_chars))
        _tokens, offsets, values = await echo(client, model, text[begin:end])
        for offset, value in zip(offsets, values, strict=True):
            if offset < context:
                continue  # context only: scored by the window before
            if value is None:
                out.unscored += 1
            else:
                out.logprob += value
                out.tokens += 1
        out.windows += 1
        start = end
    return out


async def score_rolling(client: AsyncClient, model: str, text: str, window_chars: int, prefix: str) -> Scored:
    out = Scored()
    start, last_token = 0, 0  # first character not yet scored; where the last scored token starts
    while start < len(text):
        begin = 0 if start == 0 or start - last_token >= window_chars else last_token  # a token longer than a window: none
        end = _cut(text, start, min(len(text), begin + window_chars))
        if start > 0 and end == len(text):
            begin = max(0, min(begin, len(text) - window_chars))  # the last window: a whole window of context
        head = prefix if out.prefixed and start == 0 else ""  # the first window only: later ones have a token of context
        tokens, offsets, values = await echo(client, model, head + text[begin:end])
        if start == 0 and not head and values[0] is None:  # no BOS: the first token needs the end-of-text token
            if not prefix:
                raise ValueError(f"{model} has no BOS token and no --first-token-prefix was given: its first token cannot be scored")
            out.prefixed = True
            continue
        if head and (tokens[0] != head or len(offsets) < 2 or offsets[1] != len(head) or values[1] is None):
            raise ValueError(
                f"{model}: the first-token prefix {head!r} is not one token of its vocabulary (echoed as {tokens[:3]}): "
                "give --first-token-prefix with the model's end-of-text token, or --method windows"
            )
        skip = len(head) + start - begin  # the context: scored by the window before (or the prefix)
        for offset, value in zip(offsets, values, strict=True):
            if offset < skip:
                continue
            if value is None:
                out.unscored += 1
            else:
                out.logprob += value
                out.tokens += 1
            last_token = begin + offset - len(head)
        out.windows += 1
        start = end
    return out
