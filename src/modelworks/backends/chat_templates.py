"""Chat templates: the GGUF's own (`tokenizer.chat_template`), else a named family template.

Templates are Jinja2, rendered in a sandbox, the way Hugging Face tokenizers render them.
"""

from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelworks.backends import llama_tools
from modelworks.errors import ConfigError, InvalidRequest

FAMILY_TEMPLATES = {
    "gemma": (
        "{{ bos_token }}{% set ns = namespace(system='') %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'] + '\n\n' %}"
        "{% endif %}{% endfor %}{% set first = namespace(done=false) %}"
        "{% for m in messages %}{% if m['role'] != 'system' %}"
        "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
        "<start_of_turn>{{ role }}\n{% if not first.done and role == 'user' %}{{ ns.system }}{% endif %}"
        "{% set first.done = true %}{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}

_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

# Private-use characters put around each message's text by `render_guarded`, so the text can be found again in
# the rendered prompt (and tokenized as plain text: see llama_prompt). Removed from what users send.
OPEN, CLOSE = "\ue000", "\ue001"
_SENTINELS = str.maketrans({OPEN: "\ufffd", CLOSE: "\ufffd"})
_PROBE = "  \ue002probe\ue002  "


def _raise_exception(message: str):
    raise TemplateError(message)


_ENV.globals["raise_exception"] = _raise_exception


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str, origin: str) -> None:
        self.template = _ENV.from_string(source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.origin = origin
        self.trims = self._trimmed_roles()

    def render_guarded(self, messages: list[dict[str, str]]) -> str | None:
        """The prompt with each message's text between OPEN and CLOSE, or None if the template does more to a
        text than trim it (the sentinels then do not come back in pairs)."""
        guarded = []
        wrapped = 0
        for m in messages:
            text = m["content"].translate(_SENTINELS)
            if m["role"] in self.trims:
                text = text.strip()
            if text:  # an empty text has nothing to guard, and `{% if content %}` must still see it empty
                text = OPEN + text + CLOSE
                wrapped += 1
            guarded.append({**m, "content": text})
        text = self.render(guarded)
        pairs = text.count(OPEN)
        if pairs != wrapped or text.count(CLOSE) != pairs:
            return None
        return text

    def _trimmed_roles(self) -> frozenset[str]:
        """Which roles' texts the template trims (`| trim`): found by rendering a probe once."""
        for roles in (("system", "user", "assistant", "user"), ("user", "assistant", "user")):
            try:
                text = self.render([{"role": r, "content": f"{_PROBE}{i}"} for i, r in enumerate(roles)])
            except InvalidRequest:  # this template wants other turns: try the next probe
                continue
            return frozenset(r for i, r in enumerate(roles) if f"{_PROBE}{i}" not in text)
        return frozenset()

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            text = self.template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                                        eos_token=self.eos_token)
        except Exception as exc:  # noqa: BLE001 - TemplateError, or a template's own TypeError or KeyError
            raise InvalidRequest(f"The messages do not fit this model's chat template: {exc}",
                                 param="messages") from None
        # The tokenizer adds BOS itself; a template that also writes it would double it.
        if self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        return text


def choose_template(setting: str, metadata: dict[str, str], bos_token: str, eos_token: str) -> ChatTemplate:
    """`setting` is 'auto' (GGUF metadata, else a family guessed from the architecture) or a family name."""
    if setting == "auto":
        source = metadata.get("tokenizer.chat_template")
        if source:
            return ChatTemplate(source, bos_token, eos_token, "gguf")
        arch = metadata.get("general.architecture", "")
        family = next((f for f in FAMILY_TEMPLATES if arch.startswith(f)), "chatml")
        return ChatTemplate(FAMILY_TEMPLATES[family], bos_token, eos_token, family)
    if setting not in FAMILY_TEMPLATES:
        raise ConfigError(f"chat_template: unknown family {setting!r}; choose auto or one of {sorted(FAMILY_TEMPLATES)}")
    return ChatTemplate(FAMILY_TEMPLATES[setting], bos_token, eos_token, setting)


def template_messages(messages, tools_prompt: str | None = None) -> list[dict[str, str]]:
    """Plain role/content dicts. Developer becomes system; tool calls and tool results are written in the Hermes
    format (llama_tools), results as user turns (results that follow each other share one turn); `tools_prompt`
    ends the first system message (or becomes one)."""
    out: list[dict[str, str]] = []
    results = False  # the last turn holds tool results
    for m in messages:
        role = m.role
        text = m.text()
        if role in ("tool", "function"):
            if results:
                out[-1]["content"] += "\n" + llama_tools.response_text(text)
                continue
            role, text = "user", llama_tools.response_text(text)
        elif role == "developer":
            role = "system"
        elif role == "assistant" and m.tool_calls:
            text = llama_tools.calls_text(text, m.tool_calls)
        results = m.role in ("tool", "function")
        out.append({"role": role, "content": text})
    if tools_prompt:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{tools_prompt}" if out[0]["content"] else tools_prompt
        else:
            out.insert(0, {"role": "system", "content": tools_prompt})
    return out
