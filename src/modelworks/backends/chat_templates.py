"""Chat templates: the GGUF's own (`tokenizer.chat_template`), else a named family template.

Templates are Jinja2, rendered in a sandbox, the way Hugging Face tokenizers render them.
"""

from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


def _raise_exception(message: str):
    raise TemplateError(message)


_ENV.globals["raise_exception"] = _raise_exception


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str, origin: str) -> None:
        self.template = _ENV.from_string(source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.origin = origin

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            text = self.template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                                        eos_token=self.eos_token)
        except TemplateError as exc:
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


def template_messages(messages) -> list[dict[str, str]]:
    """Plain role/content dicts; developer becomes system and tool results become user turns."""
    out = []
    for m in messages:
        role = m.role
        text = m.text()
        if role == "developer":
            role = "system"
        elif role in ("tool", "function"):
            role, text = "user", f"Tool result ({m.tool_call_id or m.name or 'tool'}):\n{text}"
        out.append({"role": role, "content": text})
    return out
