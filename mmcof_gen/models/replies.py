"""Reply schemas shared by the model roles of the search agent (agent/vlm_search.py) and of task synthesis
(tasks/vlm_writer.py): bounded fields, and the reader's answer.

Every string, list and number of a reply schema is bounded: a server that decodes to the schema (vLLM's
structured outputs) otherwise lets a model that never closes a string run on to max_tokens, and the cut
reply is not JSON. The bounds are far above what a useful reply holds, and a planner action filled to
every bound (about 450 characters) still fits the default agent.reply_tokens of 512.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, WithJsonSchema

Phrase = Annotated[str, Field(max_length=60)]
Thought = Annotated[str, Field(max_length=200)]
# Asked for as 4 integer pixels (what the prompts say); validated leniently, so that a wrong box becomes an
# observation the planner can correct (imaging.validate_box) rather than a malformed reply.
BoxValues = Annotated[list[int | float], WithJsonSchema({
    "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99999}, "minItems": 4, "maxItems": 4})]


class ReaderReply(BaseModel):
    answer: Phrase
