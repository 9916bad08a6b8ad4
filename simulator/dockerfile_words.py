"""Docker's word processing for ``ENV``, ``ARG`` and ``WORKDIR`` (BuildKit's shell lexer,
``frontend/dockerfile/shell/lex.go``): quotes removed, ``\\`` escaping, and variables expanded.

- ``'...'`` is literal; in ``"..."`` a ``\\`` escapes only ``"``, ``\\`` and ``$``; elsewhere it
  escapes any character.
- ``$NAME`` / ``${NAME}``: the value, empty when unset. Special parameters (``$1``, ``$@``,
  ``$$``, ...) are never set here: empty. A ``$`` starting nothing stays.
- ``${NAME:-word}`` / ``${NAME-word}``: word if unset (or, with ``:``, empty);
  ``${NAME:+word}`` / ``${NAME+word}``: word if set (and, with ``:``, not empty);
  ``${NAME:?message}`` / ``${NAME?message}``: the value, or the build fails with message;
  ``${NAME#glob}`` / ``##``, ``${NAME%glob}`` / ``%%``: the shortest / longest matching prefix
  or suffix removed. ``word`` is processed the same way, whitespace kept, up to the first
  ``}`` outside quotes.
- An expanded value never splits a word. Nesting is bounded (MAX_DEPTH): a Dockerfile is
  untrusted input and the lexer recurses.
"""

from __future__ import annotations

import fnmatch

MAX_DEPTH = 32
SPECIAL = frozenset("@*#?-$!0123456789")


class DockerfileError(ValueError):
    pass


def split_words(text: str, where: str, env: dict[str, str]) -> list[str]:
    """``text`` as words split at unquoted white space (ENV ``k=v`` pairs, ARG names)."""
    return _Lexer(text, where, env).words()


def one_word(text: str, where: str, env: dict[str, str]) -> str:
    """``text`` as one word, its white space kept (WORKDIR; the legacy ``ENV K value``)."""
    lexer = _Lexer(text, where, env)
    return lexer.until(None, split=False)


class _Lexer:
    def __init__(self, text: str, where: str, env: dict[str, str]):
        self.text, self.where, self.env = text, where, env
        self.i = 0
        self.depth = 0

    def error(self, message: str) -> DockerfileError:
        return DockerfileError(f"{self.where}: {message}")

    def words(self) -> list[str]:
        out: list[str] = []
        while True:
            while self.i < len(self.text) and self.text[self.i].isspace():
                self.i += 1
            if self.i >= len(self.text):
                return out
            out.append(self.until(None, split=True))

    def until(self, stop: str | None, *, split: bool) -> str:
        """Characters up to ``stop`` (consumed; None: the end) or, with ``split``, unquoted
        white space (not consumed)."""
        text, piece = self.text, []
        while True:
            if self.i >= len(text):
                if stop is not None:
                    raise self.error(f"no closing brace in {text!r}")
                return "".join(piece)
            c = text[self.i]
            if c == stop:
                self.i += 1
                return "".join(piece)
            if split and c.isspace():
                return "".join(piece)
            if c == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    raise self.error("no closing quotation")
                piece.append(text[self.i + 1:end])
                self.i = end + 1
            elif c == '"':
                piece.append(self._double_quoted())
            else:
                piece.append(self._piece(escapable=None))

    def _double_quoted(self) -> str:
        text, piece = self.text, []
        self.i += 1
        while True:
            if self.i >= len(text):
                raise self.error("no closing quotation")
            if text[self.i] == '"':
                self.i += 1
                return "".join(piece)
            piece.append(self._piece(escapable='"\\$'))

    def _piece(self, escapable: str | None) -> str:
        """What starts at ``self.i`` (consumed): an escaped character (``\\`` before any one, or
        only before those in ``escapable``; otherwise the ``\\`` stays), a reference's value,
        or the character itself."""
        text, c = self.text, self.text[self.i]
        if c == "\\" and (escapable is None or text[self.i + 1:self.i + 2] in tuple(escapable)):
            self.i += 2
            return text[self.i - 1:self.i]
        if c == "$":
            return self._dollar()
        self.i += 1
        return c

    def _dollar(self) -> str:
        """The value of the reference at ``$`` (``self.i``), which it consumes."""
        text = self.text
        self.i += 1
        if self.i >= len(text):
            return "$"
        c = text[self.i]
        if c == "{":
            self.i += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"substitutions nested deeper than {MAX_DEPTH}")
            try:
                return self._braced()
            finally:
                self.depth -= 1
        if c in SPECIAL:  # $1, $@, $$, ...: parameters a Dockerfile never has
            self.i += 1
            return ""
        name = self._name()
        if not name:
            return "$"  # a $ starting no reference
        return self.env.get(name, "")

    def _name(self) -> str:
        start, text = self.i, self.text
        if self.i < len(text) and (text[self.i].isalpha() or text[self.i] == "_"):
            self.i += 1
            while self.i < len(text) and (text[self.i].isalnum() or text[self.i] == "_"):
                self.i += 1
        return text[start:self.i]

    def _braced(self) -> str:
        text = self.text
        if self.i < len(text) and text[self.i] in SPECIAL and text[self.i] not in "#?-":
            name, value = text[self.i], None  # ${1}, ${@}: never set
            self.i += 1
            while name.isdigit() and self.i < len(text) and text[self.i].isdigit():
                name += text[self.i]
                self.i += 1
        else:
            name = self._name()
            if not name:
                raise self.error(f"bad substitution: ${{{text[self.i:self.i + 20]}")
            value = self.env.get(name)
        if self.i >= len(text):
            raise self.error(f"no closing brace in {text!r}")
        op = text[self.i]
        if op == "}":
            self.i += 1
            return value or ""
        colon = op == ":"
        if colon:
            self.i += 1
            op = text[self.i:self.i + 1]
        if op in ("-", "+", "?"):
            self.i += 1
            word = self.until("}", split=False)
            unset = value is None or (colon and value == "")
            if op == "-":
                return word if unset else value or ""
            if op == "+":
                return "" if unset else word
            if unset:
                raise self.error(f"{name}: {word or 'is not set'}")
            return value or ""
        if not colon and op in ("#", "%"):
            longest = text.startswith(op * 2, self.i)
            self.i += 2 if longest else 1
            pattern = self.until("}", split=False)
            return _strip(value or "", pattern, prefix=op == "#", longest=longest)
        raise self.error(f"bad substitution: ${{{name}{text[self.i - colon:self.i + 20]}")


def _strip(value: str, pattern: str, *, prefix: bool, longest: bool) -> str:
    """``value`` without its shortest (or longest) prefix (or suffix) matching ``pattern``."""
    sizes = range(len(value), -1, -1) if longest else range(len(value) + 1)
    for size in sizes:
        part = value[:size] if prefix else value[len(value) - size:]
        if fnmatch.fnmatchcase(part, pattern):
            return value[size:] if prefix else value[:len(value) - size]
    return value
