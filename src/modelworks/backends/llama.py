"""The embedded model: any GGUF file on llama.cpp (llama-cpp-python's bindings), in-process.

One engine per model (llama_engine): one llama.cpp context holding `parallel` sequences, one thread, continuous
batching and a prompt cache. A request takes one of `parallel` places (its choices run one after another in it);
more requests wait in a bounded line (429 past it). When its client leaves, a generation stops at the engine's
next step and frees its place; a request still waiting simply leaves the line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from pathlib import Path
from typing import AsyncIterator

from modelworks.backends import llama_generation as lg
from modelworks.backends import llama_tools
from modelworks.backends.admission import Admission
from modelworks.backends.base import (
    Backend, Capabilities, Delta, Generation, GenerationTask, Health, Usage,
)
from modelworks.backends.chat_templates import ChatTemplate, choose_template, template_messages
from modelworks.backends.llama_engine import Engine, Job, ModelView
from modelworks.backends.llama_prompt import Vocabulary, tokenize_chat
from modelworks.errors import InvalidRequest, ModelworksError, Unsupported
from modelworks.offload import offload
from modelworks.settings import LlamaCppBackend

log = logging.getLogger("modelworks.llama")


class LlamaBackend(Backend):
    capabilities = Capabilities(chat=True, completions=True, embeddings=False, streaming=True, tools=True,
                                json_schema=True, logprobs=True)

    def __init__(self, name: str, spec: LlamaCppBackend, cache_dir: Path) -> None:
        super().__init__(name)
        self.spec = spec
        self.cache_dir = cache_dir
        self.admission: Admission[int] | None = None
        self.template: ChatTemplate | None = None
        self.vocab: Vocabulary | None = None
        self.n_ctx = spec.context_size
        self.model_path: Path | None = None
        self.engine: Engine | None = None
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        from modelworks.model_files import resolve_model_source

        loop = asyncio.get_running_loop()
        self.model_path = await loop.run_in_executor(None, resolve_model_source, self.spec.model, self.cache_dir)
        engine = Engine(self.name, self.model_path, sequences=self.spec.parallel, threads=self.spec.threads,
                        context_size=self.spec.context_size, batch_size=self.spec.batch_size,
                        top_k=self.spec.sampling_top_k, prompt_cache=self.spec.prompt_cache)
        await loop.run_in_executor(None, engine.load)
        self.engine = engine  # closed with the backend, even if what follows fails
        view = engine.view
        bos = _token_text(view, view.token_bos())
        eos = _token_text(view, view.token_eos())
        self.template = choose_template(self.spec.chat_template, view.metadata, bos, eos)
        self.vocab = await loop.run_in_executor(None, Vocabulary.read, view)
        engine.start()
        self.admission = Admission(self.name, list(range(self.spec.parallel)), self.spec.max_queue)
        log.info("loaded %s (%d sequences, %d threads, context %d each, chat template: %s)", self.model_path,
                 self.spec.parallel, self.spec.threads, self.n_ctx, self.template.origin)

    @property
    def view(self) -> ModelView:
        """The loaded model, for tokenizing and templating (the engine's)."""
        return self.engine.view

    async def close(self) -> None:
        if self.engine is not None:
            self.closed = True
            await asyncio.get_running_loop().run_in_executor(None, self.engine.close)

    async def health(self) -> Health:
        if self.closed:
            return Health(ok=False, detail="closed")
        if self.admission is None or self.engine is None:
            return Health(ok=False, detail="loading")
        stats = self.engine_stats()
        return Health(ok=True, detail=f"{stats['active']} active, {stats['waiting']} waiting, "
                                      f"{stats['tokens_per_second']} tokens/s", engine=stats)

    def engine_stats(self) -> dict | None:
        """The engine's load, for /readyz and /metrics: sequences generating or reading their prompt (`active`,
        of `sequences`), requests waiting for one, completion tokens/s over the last ten seconds, and the prompt
        tokens evaluated and reused from the cache since start."""
        e = self.engine
        if e is None or self.admission is None or self.closed:
            return None
        return {"sequences": e.sequences, "active": e.active, "waiting": self.admission.waiting + e.waiting,
                "tokens_per_second": round(e.tokens_per_s, 1), "completion_tokens": e.generated,
                "prompt_tokens_evaluated": e.evaluated, "prompt_tokens_cached": e.reused}

    # -- generation ------------------------------------------------------------------------------------------

    async def generate(self, task: GenerationTask) -> Generation:
        plan = await self._plan(task)
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[dict]] = {}
        finish: dict[int, str] = {}
        usage = Usage()
        async for index, step, outcome, prompt_tokens in self._run(task, plan):
            usage.prompt_tokens = prompt_tokens
            if step is not None:
                texts.setdefault(index, []).append(step.text)
                logprobs.setdefault(index, []).extend(step.tokens)
            if outcome is not None:
                finish[index] = outcome.finish_reason
                usage.completion_tokens += outcome.completion_tokens
                if index == 0:
                    usage.cached_tokens = outcome.cached_tokens
        choices = []
        for i in range(task.request.n):
            text = "".join(texts.get(i, []))
            reason = finish.get(i, "stop")
            lp = self._logprobs(task, logprobs.get(i, [])) if self._wants_logprobs(task) else None
            if not task.is_chat:
                choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": lp})
                continue
            message = {"role": "assistant", "content": text, "refusal": None}
            if plan is not None:
                parser = llama_tools.ToolCallParser(plan)
                parser.feed(text)
                parser.finish()
                message, reason = parser.message(), parser.finish_reason(reason)
            choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": lp})
        return Generation(choices=choices, usage=usage)

    async def stream(self, task: GenerationTask) -> AsyncIterator[Delta]:
        plan = await self._plan(task)
        usage = Usage()
        shapers: dict[int, _ChoiceStream] = {}
        runner = self._run(task, plan)
        try:
            async for index, step, outcome, prompt_tokens in runner:
                usage.prompt_tokens = prompt_tokens
                shaper = shapers.get(index)
                if shaper is None:
                    shaper = shapers[index] = _ChoiceStream(self, task, index, plan)
                    if task.is_chat:
                        yield Delta([shaper.choice({"role": "assistant", "content": ""})])
                if step is not None and (step.text or step.tokens):
                    for choice in shaper.step(step):
                        yield Delta([choice])
                if outcome is not None:
                    usage.completion_tokens += outcome.completion_tokens
                    if index == 0:
                        usage.cached_tokens = outcome.cached_tokens
                    choices = shaper.end(outcome.finish_reason)
                    last = index == task.request.n - 1
                    for i, choice in enumerate(choices):
                        yield Delta([choice], usage=usage if last and i == len(choices) - 1 else None)
        finally:
            await runner.aclose()

    async def _plan(self, task: GenerationTask) -> llama_tools.ToolPlan | None:
        """The tools in play (checking their schemas grows with them: off the event loop)."""
        if not task.is_chat or not task.request.tools or task.request.tool_choice == "none":
            return None
        return await offload(llama_tools.plan, task.request)

    async def _run(self, task: GenerationTask, plan: llama_tools.ToolPlan | None):
        """Yield (choice index, step or None, outcome or None, prompt tokens) as the engine produces them."""
        # templating, tokenizing and building a grammar grow with the request: off the event loop
        prompt_tokens, params = await offload(self._prepare, task, plan)
        async with self.admission.slot():
            loop = asyncio.get_running_loop()
            for index in range(task.request.n):
                choice_params = params
                if params.seed is not None and index:
                    choice_params = lg.Params(**{**_fields(params), "seed": params.seed + index})
                queue: asyncio.Queue = asyncio.Queue()
                freed = loop.create_future()
                job = Job(prompt_tokens, choice_params, functools.partial(_post, loop, queue.put_nowait),
                          functools.partial(_post, loop, _settle, freed))
                self.engine.submit(job)
                finished = False
                try:
                    while not finished:
                        item = await queue.get()
                        if isinstance(item, BaseException):
                            raise item
                        if isinstance(item, lg.Outcome):
                            finished = True
                            yield index, None, item, len(prompt_tokens)
                        else:
                            yield index, item, None, len(prompt_tokens)
                finally:
                    if not finished:
                        self.engine.cancel(job)
                    # the place is given back only once the engine has freed the sequence (at its next step)
                    await asyncio.shield(freed)

    async def count_prompt_tokens(self, task: GenerationTask) -> int | None:
        if self.template is None:
            return None
        try:
            return len(await offload(self._prompt_tokens, task))
        except Exception:  # noqa: BLE001 - a prompt the model refuses is reported when it is generated
            return None

    async def check_prompt(self, task: GenerationTask) -> int | None:
        """The prompt's tokens, before admission: a request that cannot fit the context window (its text far too
        long, or its prompt and `max_tokens` together) is a 400 here, not charged to a quota it could never fit.
        None when the prompt cannot be counted (the model call then says what is wrong)."""
        if self.template is None:
            return None
        try:
            tokens = len(await offload(self._prompt_tokens, task))
        except ModelworksError:
            raise
        except Exception:  # noqa: BLE001 - reported when it is generated
            return None
        self.check_room(task, tokens)
        return tokens

    def _prompt_tokens(self, task: GenerationTask) -> list[int]:
        """Templated and tokenized once per request (quotas count it before generation uses it). Called off the
        event loop. Text from users never becomes a control token (see llama_prompt); a text too long for the
        context by a cheap bound is refused before it is tokenized."""
        if task.prompt_ids is None:
            llama = self.view
            if task.is_chat:
                plan = llama_tools.plan(task.request)
                messages = template_messages(task.request.messages, llama_tools.tools_prompt(plan) if plan else None)
                self._refuse_unfit(sum(len(m["content"]) for m in messages), "messages")
                task.prompt_ids = tokenize_chat(llama, self.vocab, self.template, messages)
            else:
                task.prompt_ids = self._completion_prompt(task.request, llama)
        return task.prompt_ids

    def _refuse_unfit(self, chars: int, where: str) -> None:
        if self.vocab.cannot_fit(chars, self.n_ctx):
            raise InvalidRequest(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your {where} hold {chars} "
                f"characters, which is more than {self.n_ctx} tokens of this model can hold.", param=where,
                code="context_length_exceeded")

    def check_room(self, task: GenerationTask, prompt_tokens: int) -> int:
        """The room the context window leaves for the answer; a 400 when the prompt, or the prompt and the asked
        `max_tokens`, do not fit (checked before admission too, so such a request is refused as bad input, not
        charged to a quota it could never fit)."""
        req, where = task.request, "messages" if task.is_chat else "prompt"
        room = self.n_ctx - prompt_tokens
        if room <= 0:
            raise InvalidRequest(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your {where} resulted in "
                f"{prompt_tokens} tokens.", param=where, code="context_length_exceeded")
        limit = req.token_limit
        if limit is not None and limit > room:
            raise InvalidRequest(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
                f"{prompt_tokens + limit} tokens ({prompt_tokens} in the {where}, {limit} for the completion).",
                param="max_completion_tokens" if task.is_chat and req.max_completion_tokens else "max_tokens",
                code="context_length_exceeded")
        return room

    def _prepare(self, task: GenerationTask, plan: llama_tools.ToolPlan | None) -> tuple[list[int], lg.Params]:
        req = task.request
        tokens = self._prompt_tokens(task)
        if not tokens:
            raise InvalidRequest("The prompt is empty.", param="messages" if task.is_chat else "prompt")
        bias = self._logit_bias(req.logit_bias)
        room = self.check_room(task, len(tokens))
        limit = req.token_limit
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        params = lg.Params(
            max_tokens=limit if limit is not None else min(self.spec.max_tokens_default, room),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=stop,
            grammar=llama_tools.grammar(plan) if plan is not None else self._grammar(task),
            logprobs=self._logprobs_k(task),
            logit_bias=bias,
            call_marker=llama_tools.CALL_OPEN[0] if plan is not None else None,
        )
        if params.grammar is not None:
            try:
                self.engine.vocab.check_grammar(params.grammar)  # parsed once, here rather than in the engine
            except ValueError:
                raise InvalidRequest("The answer's format cannot be expressed as a grammar for this model.",
                                     param="response_format" if plan is None else "tools") from None
        return tokens, params

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        """Token ids (as strings, OpenAI's shape) and biases between -100 and 100, applied by llama.cpp's own
        logit-bias sampler; -100 bans the token."""
        if not bias:
            return None
        vocab = self.view.n_vocab()
        out: dict[int, float] = {}
        for key, value in bias.items():
            try:
                token = int(key) if key.isascii() else None
            except ValueError:
                token = None
            if token is None or not 0 <= token < vocab or token in out:
                raise InvalidRequest(f"Invalid key in 'logit_bias': {key!r}. Keys must be token ids of this model, "
                                     f"between 0 and {vocab - 1}, each once.", param="logit_bias",
                                     code="invalid_value")
            out[token] = float(value)
        return out

    def _completion_prompt(self, req, llama) -> list[int]:
        if req.echo or req.suffix is not None or (req.best_of or 1) > 1:
            param = "echo" if req.echo else ("suffix" if req.suffix is not None else "best_of")
            raise Unsupported(f"The embedded model does not support '{param}'.", param=param)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            if len(prompt) > 1:
                raise Unsupported("The embedded model takes one prompt per request.", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) > 1:
                raise Unsupported("The embedded model takes one prompt per request.", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, list):
            vocab = llama.n_vocab()
            if any(t < 0 or t >= vocab for t in prompt):
                raise InvalidRequest(f"Token ids in 'prompt' must be between 0 and {vocab - 1}.", param="prompt")
            return list(prompt)
        self._refuse_unfit(len(prompt), "prompt")
        return llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def _grammar(self, task: GenerationTask):
        if not task.is_chat or task.request.response_format is None:
            return None
        fmt = task.request.response_format
        if fmt.type == "json_object":
            return _json_grammar()
        if fmt.type == "json_schema":
            schema = fmt.json_schema.schema_ or {}
            try:
                return _schema_grammar(json.dumps(schema))  # properties in their order
            except Exception as exc:  # noqa: BLE001 - the converter raises many kinds on bad schemas
                raise InvalidRequest(f"Invalid schema for response_format '{fmt.json_schema.name}': {exc}",
                                     param="response_format.json_schema.schema") from None
        return None

    @staticmethod
    def _wants_logprobs(task: GenerationTask) -> bool:
        return bool(task.request.logprobs) if task.is_chat else task.request.logprobs is not None

    def _logprobs_k(self, task: GenerationTask) -> int | None:
        if not self._wants_logprobs(task):
            return None
        return (task.request.top_logprobs or 0) if task.is_chat else task.request.logprobs

    @staticmethod
    def _logprobs(task: GenerationTask, entries: list[dict]) -> dict | None:
        if task.is_chat:
            return {"content": entries, "refusal": None}
        offsets, pos = [], 0
        for e in entries:
            offsets.append(pos)
            pos += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}


class _ChoiceStream:
    """One choice's stream: its steps as OpenAI stream choices (chat deltas or text), tool calls included. Logprobs
    of tokens whose text is held back (a call's closing, say) go with the next delta that is sent."""

    def __init__(self, backend: LlamaBackend, task: GenerationTask, index: int,
                 plan: llama_tools.ToolPlan | None) -> None:
        self.backend, self.task, self.index = backend, task, index
        self.parser = llama_tools.ToolCallParser(plan) if plan is not None else None
        self.wants_lp = backend._wants_logprobs(task)
        self.held: list[dict] = []

    def choice(self, delta: dict, finish_reason: str | None = None, tokens: list[dict] | None = None) -> dict:
        lp = self.backend._logprobs(self.task, tokens) if tokens is not None and self.wants_lp else None
        if self.task.is_chat:
            return {"index": self.index, "delta": delta, "finish_reason": finish_reason, "logprobs": lp}
        return {"index": self.index, "text": delta.get("content", ""), "finish_reason": finish_reason, "logprobs": lp}

    def step(self, step: lg.Step) -> list[dict]:
        if self.parser is None:
            return [self.choice({"content": step.text}, tokens=step.tokens)]
        self.held.extend(step.tokens)
        return self._send(self.parser.feed(step.text))

    def end(self, finish_reason: str) -> list[dict]:
        if self.parser is None:
            return [self.choice({}, finish_reason)]
        sent = self._send(self.parser.finish())
        return sent + [self.choice({}, self.parser.finish_reason(finish_reason), tokens=self.held or None)]

    def _send(self, deltas: list[dict]) -> list[dict]:
        choices = []
        for delta in deltas:
            choices.append(self.choice(delta, tokens=self.held))
            self.held = []
        return choices


def _fields(params: lg.Params) -> dict:
    return {name: getattr(params, name) for name in params.__slots__}


def _token_text(view: ModelView, token: int) -> str:
    if token < 0:
        return ""
    return view.detokenize([token], special=True).decode("utf-8", errors="ignore")


def _post(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """Hand something from the engine thread to the request's event loop (gone at shutdown: dropped)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _json_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


@functools.lru_cache(maxsize=128)
def _schema_grammar(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json)
