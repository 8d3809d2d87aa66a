"""A model's prompt side: text or token ids in, the model's input ids out (prefix added, trimmed to fit
the context), and chat messages rendered through the model's own template."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenizers import Tokenizer

from server.engine.chat import ChatTemplateError, render
from server.models.store import Manifest, model_dir, read_manifest


class InvalidInput(ValueError):
    """A request the engine cannot run as given; `param` names the request field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ContextFile:
    """Another file of the project the completion may draw on (llama.cpp's input_extra chunk)."""

    filename: str
    text: str


@dataclass
class Prompt:
    ids: list[int]  # model input, prompt prefix included
    text: str  # what echo returns
    trimmed: int = 0
    prefix: int = 0  # how many of ids are the prefix
    cache_salt: str = ""  # prefix-cache isolation: only prompts of the same salt (API key) share keys and values
    cache_prompt: bool = True  # reuse and keep this prompt's keys and values (llama.cpp's field)
    prediction: list[int] = field(default_factory=list)  # the output expected, as drafts to verify (Predicted Outputs)
    # failover (server/backends/ray_serve.py): the last `resumed` of ids are tokens one choice generated on an
    # engine that died, of whose text the client was sent `sent`; the choice goes on from there (n = 1)
    resumed: int = 0
    sent: str = ""


class Prompter:
    """A model's prompt side: its manifest, tokenizer and chat template. What the API needs to turn a
    request into token ids, with or without the model itself in this process (Triton runs it elsewhere)."""

    def __init__(self, repository: Path, name: str) -> None:
        self.manifest: Manifest = read_manifest(repository, name)
        self.tokenizer = Tokenizer.from_file(str(model_dir(repository, name) / self.manifest.tokenizer_file))
        self.eos = frozenset(self.manifest.eos_token_ids)
        self._vocab = self.manifest.vocab_size

    # --- prompt ---

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @property
    def chats(self) -> bool:
        return self.manifest.chat_template is not None

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The conversation as prompt text, rendered by the model's own chat template. The template's
        bos_token is the model's raw-prompt prefix token, its eos_token the first EOS token."""
        if self.manifest.chat_template is None:
            raise InvalidInput(f"model {self.manifest.name!r} has no chat template: use /v1/completions", "model")
        decode = self.tokenizer.id_to_token
        prefix = self.manifest.prompt_prefix_ids
        try:
            return render(
                self.manifest.chat_template,
                messages,
                bos_token=decode(prefix[0]) if prefix else "",
                eos_token=decode(self.manifest.eos_token_ids[0]),
            )
        except ChatTemplateError as exc:
            raise InvalidInput(str(exc), "messages") from exc

    @property
    def fills_in_the_middle(self) -> bool:
        return self.manifest.fim is not None

    def prepare(
        self,
        prompt: str | list[int],
        max_tokens: int,
        *,
        raw: bool = True,
        suffix: str | None = None,
        extra: list[ContextFile] | None = None,
    ) -> Prompt:
        """Prefix the prompt as the model needs (raw text; a rendered chat template brings its own start)
        and trim it from the left (editor prompts are long, and their end, next to the cursor, matters
        most) so that prompt + max_tokens fits the context. With a suffix (the code after the cursor)
        and a model that has FIM sentinels: prefix-suffix-middle order, the model writes the middle.
        `extra`: other files of the project, laid out before it all (see _context)."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        bad = [t for t in ids if not 0 <= t < self._vocab]
        if bad:
            raise InvalidInput(f"token ids {bad[:5]} are outside the vocabulary [0, {self._vocab})", "prompt")
        prefix = self.manifest.prompt_prefix_ids if raw else []
        room = self.manifest.context_length - len(prefix) - max_tokens
        if room < 1:
            raise InvalidInput(
                f"max_tokens={max_tokens} leaves no room for the prompt in the model's context of {self.manifest.context_length} tokens",
                "max_tokens",
            )
        fim = suffix is not None and self.manifest.fim is not None
        after = self.encode(suffix) if fim and suffix is not None else []
        context, dropped = self._context(extra or [], room, len(ids) + len(after) + (3 if fim else 0))
        if fim and suffix is not None:
            if not ids and not after and not context:  # other files alone: an editor's warm-up of the cache
                raise InvalidInput("prompt and suffix are both empty", "prompt")
            made = self._fill_in_the_middle(prompt, ids, after, prefix + context, room - len(context))
        else:
            if not ids and not context:  # other files alone make a prompt: an editor's warm-up of the cache
                raise InvalidInput("prompt is empty", "prompt")
            room -= len(context)
            trimmed = max(0, len(ids) - room)
            if trimmed:
                ids = ids[trimmed:]
                text = self.tokenizer.decode(ids, skip_special_tokens=False)
            else:
                text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids, skip_special_tokens=False)
            made = Prompt(ids=prefix + context + ids, text=text, trimmed=trimmed)
        return replace(made, prefix=len(prefix), trimmed=made.trimmed + dropped)

    def _context(self, files: list[ContextFile], room: int, cursor_needs: int) -> tuple[list[int], int]:
        """Other files' code, before the code at the cursor: with the model's repository tokens where it
        has them (repo_name, then file_sep + path + newline + code per file, as StarCoder2 and Qwen-Coder
        were trained), else each under a `--- path ---` line. The code at the cursor comes first: the
        files get what it does not need, at most half the room while it needs less; files are dropped
        whole from the first (an editor sends the same files keystroke after keystroke, so the prompt's
        start, and with it the prefix cache, stays put), the last one cut from its start if alone too
        long. Returns the ids and how many tokens of the files were left out."""
        if not files:
            return [], 0
        fim = self.manifest.fim
        sep = self.tokenizer.token_to_id(fim.file_sep) if fim and fim.file_sep else None
        chunks = [
            ([sep] + self.encode(f"{f.filename}\n{f.text}") if sep is not None else self.encode(f"--- {f.filename} ---\n{f.text}\n\n"))
            for f in files
        ]
        head: list[int] = []
        if sep is not None and fim and fim.repo_name:
            head = [self.tokenizer.token_to_id(fim.repo_name), *self.encode("project\n")]
        budget = room - max(min(cursor_needs, room), room // 2) - len(head)
        kept: list[list[int]] = []
        for chunk in reversed(chunks):  # the last file (the most recent one an editor sends) kept first
            if len(chunk) > budget:
                if not kept and budget > 0:
                    kept.append(chunk[len(chunk) - budget :])
                break
            kept.append(chunk)
            budget -= len(chunk)
        ids = [t for chunk in reversed(kept) for t in chunk]
        total = sum(len(c) for c in chunks)
        return ((head + ids) if ids else []), total - len(ids)

    def _fill_in_the_middle(self, prompt: str | list[int], before: list[int], after: list[int], prefix: list[int], room: int) -> Prompt:
        """<prefix> before <suffix> after <middle>: the code before the cursor keeps its end, the code after
        it its start; the code after gets what the code before does not need, and at most half the room
        when both are long (what is next to the cursor matters most on both sides)."""
        fim = self.manifest.fim
        assert fim is not None
        sentinels = [self.tokenizer.token_to_id(t) for t in (fim.prefix, fim.suffix, fim.middle)]
        room -= len(sentinels)
        if room < 1:
            raise InvalidInput(
                f"max_tokens leaves no room for the prompt and suffix in the model's context of {self.manifest.context_length} tokens",
                "max_tokens",
            )
        keep_after = min(len(after), max(room // 2, room - len(before)))
        keep_before = min(len(before), room - keep_after)
        trimmed = (len(before) - keep_before) + (len(after) - keep_after)
        whole = keep_before == len(before)
        before, after = before[len(before) - keep_before :], after[:keep_after]
        pre, suf, mid = sentinels
        ids = prefix + [pre] + before + [suf] + after + [mid]
        text = prompt if isinstance(prompt, str) and whole else self.tokenizer.decode(before, skip_special_tokens=False)
        return Prompt(ids=ids, text=text, trimmed=trimmed, prefix=len(prefix))
