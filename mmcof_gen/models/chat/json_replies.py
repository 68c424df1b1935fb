"""JSON replies: a reply asked for under a schema (constrained where the backend can), validated, and repaired
once when malformed."""

from __future__ import annotations

import functools
import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from mmcof_gen.models.chat.interface import ChatMessage, ChatModel, Completion
from mmcof_gen.schema import invalid_fields

Reply = TypeVar("Reply", bound=BaseModel)


class ReplyError(ValueError):
    """A reply that stayed malformed after the repair attempt; `completions` are the calls it cost."""

    def __init__(self, message: str, completions: list[Completion]):
        super().__init__(message)
        self.completions = completions


def parse_reply(text: str, schema: type[Reply]) -> Reply:
    """A reply as `schema`; a fenced ```json block is accepted (models add them even when told not to)."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    return schema.model_validate_json(text)


@functools.cache
def _json_schema(schema: type[Reply]) -> dict:
    """Built once per reply model: pydantic regenerates it on every call otherwise (measurable at 300 calls/s)."""
    return schema.model_json_schema()


async def complete_json(model: ChatModel, messages: list[ChatMessage], schema: type[Reply], *,
                        max_tokens: int = 512, temperature: float = 0.0) -> tuple[Reply, list[Completion]]:
    """A reply constrained by (where the backend can) and validated against `schema`.

    A malformed reply gets one repair attempt: the model sees its reply and the validation error.
    Raises ReplyError (with the completions spent) when the repair fails too; ChatError when a call fails.
    """
    json_schema = _json_schema(schema)
    completions = []
    conversation = list(messages)
    for attempt in range(2):
        completion = await model.complete(conversation, max_tokens=max_tokens, temperature=temperature,
                                          json_schema=json_schema)
        completions.append(completion)
        try:
            return parse_reply(completion.text, schema), completions
        except ValidationError as exc:
            problem = invalid_fields(exc, limit=3, whole="reply")
        if completion.finish_reason == "length":  # a repair would be cut at the same length: not asked
            raise ReplyError(f"reply cut at {max_tokens} tokens (finish_reason length, agent.reply_tokens) before "
                             f"it was complete: {problem}", completions)
        conversation = conversation + [
            ChatMessage("assistant", completion.text),
            ChatMessage("user", f"Your reply is not valid: {problem}. Reply again with only a JSON object "
                                f"that follows this schema: {json.dumps(json_schema)}"),
        ]
    raise ReplyError(f"malformed reply after one repair attempt: {problem}", completions)
