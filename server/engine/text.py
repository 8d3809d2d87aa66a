"""Token ids -> text as they arrive, and stop sequences matched on that text across token boundaries."""

from __future__ import annotations

from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decodes a growing list of ids, returning only the new text each time.

    Decoding one token alone is wrong for byte-fallback and byte-level pieces (a character split over
    tokens) and for tokenizers whose decoder treats a leading space specially, so each step decodes a
    short window that starts a few tokens back and returns what the newest tokens added. Text that ends
    in an incomplete UTF-8 sequence is held back until the character completes."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] | None = None) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(context or [])[-4:]
        self._prefix = 0  # start of the decode window
        self._read = len(self._ids)  # ids before this have been returned as text

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
        if after.endswith(_REPLACEMENT) or len(after) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Text still held back (an unfinished character) when generation ends: sent as it decodes."""
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class StopMatcher:
    """Finds the earliest stop string in the generated text and holds back a tail that may be the start
    of one, so that no stop text (or part of one) ever reaches the client."""

    def __init__(self, stops: list[str], min_indent: int = 0) -> None:
        self._stops = [s for s in stops if s]
        self._min_indent = min_indent  # llama.cpp's n_indent: a line after the first indented less ends it
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def resume(self, text: str, emitted: int) -> None:
        """Go on from `text` generated before (on an engine that died), of which the first `emitted`
        characters were sent: the rest is a tail held back, still to be matched or sent."""
        self._text, self._emitted = text, min(emitted, len(text))

    def push(self, piece: str) -> str:
        """Add generated text; return what can be sent now."""
        if self.stopped:
            return ""
        self._text += piece
        search_from = max(0, self._emitted - max((len(s) for s in self._stops), default=0))
        hits = [i for s in self._stops if (i := self._text.find(s, search_from)) >= 0]
        if (dedent := self._dedent()) is not None:
            hits.append(dedent)
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(self._text) - self._held_back()
        out = self._text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return out

    def flush(self) -> str:
        """The held-back tail, when generation ends without a stop."""
        if self.stopped:
            return ""
        out = self._text[self._emitted :]
        self._emitted = len(self._text)
        return out

    def _dedent(self) -> int | None:
        """Where the first line after the first newline that is indented less than min_indent starts
        (its newline kept), once the line shows its first character."""
        if not self._min_indent:
            return None
        start = self._text.find("\n")
        while start >= 0:
            line = self._text[start + 1 :]
            end = line.find("\n")
            line = line if end < 0 else line[:end]
            code = line.lstrip(" \t")
            if code and len(line) - len(code) < self._min_indent:
                return start + 1
            start = self._text.find("\n", start + 1)
        return None

    def _held_back(self) -> int:
        if self._min_indent and "\n" in self._text:  # a line of whitespace so far may yet turn out dedented
            tail = self._text[self._text.rfind("\n") + 1 :]
            if not tail.strip(" \t"):
                return len(tail)
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
