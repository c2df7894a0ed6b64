"""Screening a streamed completion, in Azure's two modes.

Buffered (the default): each choice's text is held back until `check_chars` of it have gathered (or the stream
ends), screened, then released; the frames go out as they came unless a redaction changed the text, in which case
that stretch goes out as one frame of the redacted text. A violation releases nothing more of that stretch: the
choice ends with `finish_reason: "content_filter"` and the stream stops (the backend is told to stop). So the
added delay is at most one check's worth of text.

Asynchronous: frames go out at once; every `check_chars` the text so far is screened and an annotation frame
follows with `content_filter_results` and `content_filter_offsets` ({check_offset, start_offset, end_offset},
in characters of that choice's text). A violation ends the choice with `finish_reason: "content_filter"` within
one check of where it began. Redaction cannot take back what was sent: in this mode PII is annotated only.

Each check screens the choice's whole text so far (a match may straddle two stretches) and counts only the
findings that end past the previous check.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

from modelworks.backends.base import Delta
from modelworks.offload import offload
from modelworks.safety.screen import Outcome, Screen, redact_parts


def _text_of(choice: dict) -> str:
    delta = choice.get("delta")
    if delta is not None:
        return delta.get("content") or ""
    return choice.get("text") or ""


class _Choice:
    __slots__ = ("index", "chat", "text", "checked", "released", "held", "finished")

    def __init__(self, index: int, chat: bool) -> None:
        self.index = index
        self.chat = chat
        self.text = ""        # all text so far
        self.checked = 0      # characters screened
        self.released = 0     # characters sent to the client
        self.held: list[dict] = []  # choice frames held back (buffered mode)
        self.finished = False


class StreamScreen:
    def __init__(self, screen: Screen, record: Callable[[Outcome], None]) -> None:
        self.screen = screen
        self.record = record
        self.mode = screen.policy.stream_mode
        self.every = screen.policy.stream_check_chars
        self.choices: dict[int, _Choice] = {}
        self.blocked = False

    async def wrap(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        try:
            async for delta in deltas:
                for out in await self._take(delta):
                    yield out
                if self.blocked:
                    return
            for out in await self._finish():
                yield out
        finally:
            await deltas.aclose()

    # -- steps ----------------------------------------------------------------------------------------------------

    async def _take(self, delta: Delta) -> list[Delta]:
        if not delta.choices:
            return [delta]
        if self.mode == "async":
            return await self._take_async(delta)
        out: list[Delta] = []
        for choice in delta.choices:
            state = self._choice(choice)
            state.text += _text_of(choice)
            state.held.append(choice)
            if choice.get("finish_reason") is not None:
                state.finished = True
            if len(state.text) - state.checked >= self.every or state.finished:
                out.extend(await self._release(state))
                if self.blocked:
                    return out
        if delta.usage is not None:
            out.append(Delta([], delta.usage))
        return out

    async def _finish(self) -> list[Delta]:
        out: list[Delta] = []
        for state in self.choices.values():
            if self.mode == "async":
                if len(state.text) > state.checked:
                    out.extend(await self._check_async(state))
            elif state.held:
                out.extend(await self._release(state))
            if self.blocked:
                break
        return out

    async def _release(self, state: _Choice) -> list[Delta]:
        """Buffered mode: screen what is held for this choice and send it on, amended, or end the choice."""
        outcome = await self._check(state)
        frames, state.held = state.held, []
        if outcome.blocked:
            self.blocked = True
            return [Delta([self._ending(state, outcome)])]
        if outcome.redactions:
            fresh = redact_parts([state.text], outcome.redactions, first=state.index)[0][state.released:]
            last = dict(frames[-1])
            if state.chat:
                last["delta"] = {**(last.get("delta") or {}), "content": fresh}
            else:
                last["text"] = fresh
            frames = [last]
            state.text = state.text[:state.released] + fresh
            state.checked = len(state.text)
        frames[-1] = {**frames[-1], "content_filter_results": outcome.results}
        state.released = len(state.text)
        return [Delta([frame]) for frame in frames]

    async def _take_async(self, delta: Delta) -> list[Delta]:
        out = [delta]
        for choice in delta.choices:
            state = self._choice(choice)
            state.text += _text_of(choice)
            state.released = len(state.text)
            if len(state.text) - state.checked >= self.every:
                out.extend(await self._check_async(state))
                if self.blocked:
                    break
        return out

    async def _check_async(self, state: _Choice) -> list[Delta]:
        start = state.checked
        outcome = await self._check(state)
        offsets = {"check_offset": start, "start_offset": start, "end_offset": len(state.text)}
        if outcome.blocked:
            self.blocked = True
            return [Delta([{**self._ending(state, outcome), "content_filter_offsets": offsets}])]
        frame = {"index": state.index, "finish_reason": None, "content_filter_results": outcome.results,
                 "content_filter_offsets": offsets}
        frame["delta" if state.chat else "text"] = {} if state.chat else ""
        return [Delta([frame])]

    # -- shared ---------------------------------------------------------------------------------------------------

    async def _check(self, state: _Choice) -> Outcome:
        text = state.text  # screened off the event loop: a check of a long answer takes milliseconds
        outcome = await offload(self.screen.completion, text, index=state.index)
        if state.checked:  # count only what is new since the last check
            outcome.decisions = [d for d in outcome.decisions if d.span is None or d.span[1] > state.checked]
        # what was sent cannot be taken back: only text not yet released is redacted
        outcome.redactions = {i: [m for m in ms if m.start >= state.released] for i, ms in outcome.redactions.items()}
        outcome.redactions = {i: ms for i, ms in outcome.redactions.items() if ms}
        if self.mode == "async":
            outcome.redactions = {}
        state.checked = len(text)
        self.record(outcome)
        return outcome

    def _ending(self, state: _Choice, outcome: Outcome) -> dict:
        frame = {"index": state.index, "finish_reason": "content_filter", "content_filter_results": outcome.results}
        if state.chat:
            frame["delta"] = {}
        else:
            frame["text"] = ""
        return frame

    def _choice(self, choice: dict) -> _Choice:
        index = choice.get("index", 0)
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = _Choice(index, "delta" in choice)
        return state
