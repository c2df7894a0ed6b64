"""How a chat becomes the embedded model's tokens: the template's markers are control tokens, the user's text never.

llama.cpp, asked to parse special tokens, turns every `<start_of_turn>` or `<|im_end|>` in the text into the
control token, wherever it came from: a user who types one forges a turn. So the template is rendered with each
message's text between two private-use sentinels; the rendered text is then cut into the template's own text,
where control tokens are parsed, and the messages' text, which is tokenized as plain text. Runs of plain text
between two control tokens are tokenized as one piece, which is exactly how llama.cpp itself splits a text at
its special tokens, so an honest prompt gets the same tokens as before.

The vocabulary also gives a cheap bound: no token covers more than `max_token_chars` characters, so a text of
more than `n_ctx * max_token_chars` characters cannot fit the context and is refused without being tokenized
(tokenizing a few MiB takes seconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelworks.backends.chat_templates import CLOSE, OPEN, ChatTemplate

_CONTENT = re.compile(f"{OPEN}(.*?){CLOSE}", re.DOTALL)
_CONTROL_ATTRS = 8 | 1  # llama.cpp's LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_UNKNOWN


@dataclass(frozen=True)
class Vocabulary:
    control: dict[str, int]        # the text of each control token -> its id
    pattern: re.Pattern | None     # any control token's text, longest first
    max_token_chars: int           # the most characters one (non-control) token covers
    bos: int | None                # the token a prompt starts with, if the model wants one
    eos: int | None                # the token llama.cpp adds at the end, if the model wants one

    @classmethod
    def read(cls, llama) -> "Vocabulary":
        """Read once per model at start-up (about half a second for a 262k vocabulary)."""
        model = llama._model
        control: dict[str, int] = {}
        longest = 1
        get_attr, get_text = model.token_get_attr, model.token_get_text
        for token in range(model.n_vocab()):
            text = get_text(token)
            if get_attr(token) & _CONTROL_ATTRS:
                if text:
                    control.setdefault(text, token)
                continue
            longest = max(longest, len(text.replace("\u2581", " ")))
        if any(c in text for c in (OPEN, CLOSE) for text in control):
            raise ValueError("a control token contains a private-use sentinel character")
        pattern = re.compile(_trie_pattern(control)) if control else None
        bos = model.token_bos() if model.add_bos_token() and model.token_bos() >= 0 else None
        eos = model.token_eos() if model.add_eos_token() and model.token_eos() >= 0 else None
        return cls(control, pattern, longest, bos, eos)

    def cannot_fit(self, chars: int, n_ctx: int) -> bool:
        return chars > n_ctx * self.max_token_chars

    def strip_control(self, text: str) -> str:
        """Remove control-token texts (until none is left: removing one can join the halves of another)."""
        if self.pattern is None:
            return text
        while True:
            cleaned = self.pattern.sub("", text)
            if cleaned == text:
                return text
            text = cleaned


def tokenize_chat(llama, vocab: Vocabulary, template: ChatTemplate, messages: list[dict[str, str]]) -> list[int]:
    rendered = template.render_guarded(messages)
    if rendered is None:  # a template that cut into a message's text: fall back to removing control texts
        plain = [{**m, "content": vocab.strip_control(m["content"])} for m in messages]
        return llama.tokenize(template.render(plain).encode("utf-8"), add_bos=True, special=True)
    fragments: list[int | str] = []
    raw: list[str] = []
    pos = 0
    for match in _CONTENT.finditer(rendered):
        _template_text(rendered[pos:match.start()], vocab, fragments, raw)
        raw.append(match.group(1))  # the message's own text: never parsed for control tokens
        pos = match.end()
    _template_text(rendered[pos:], vocab, fragments, raw)
    if raw:
        fragments.append("".join(raw))
    tokens = [vocab.bos] if vocab.bos is not None else []
    for fragment in fragments:
        if isinstance(fragment, int):
            tokens.append(fragment)
        elif fragment:
            tokens.extend(llama.tokenize(fragment.encode("utf-8"), add_bos=False, special=False))
    if vocab.eos is not None:  # as llama.cpp's own tokenize(add_special=True) does
        tokens.append(vocab.eos)
    return tokens


def _template_text(text: str, vocab: Vocabulary, fragments: list, raw: list[str]) -> None:
    """The template's own text: its control tokens become ids, the rest joins the current run of plain text."""
    if not text:
        return
    pos = 0
    if vocab.pattern is not None:
        for match in vocab.pattern.finditer(text):
            raw.append(text[pos:match.start()])
            if any(raw):
                fragments.append("".join(raw))
            raw.clear()
            fragments.append(vocab.control[match.group(0)])
            pos = match.end()
    raw.append(text[pos:])


def _trie_pattern(words) -> str:
    """One regular expression for a set of literal words, as a trie (thousands of `<unusedN>` tokens: an
    alternation of them all would be tried branch by branch at every `<` of a text). Longest match first."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return build(trie)
