"""The HTTP API's request and response bodies as pydantic models: what ``/openapi.json`` shows.

These models *describe* the API: the shape of a request (field types, static bounds such
as ``k >= 1``, no unknown fields) and of every response. They do not validate requests:
``validation`` does, with one readable message per bad field, all at once, and with the
ranges that depend on the served model (item ids up to ``num_items``, token ids below the
vocabulary size, ``k`` up to ``min(num_items, max_k)``). ``request_schema(limits)`` adds
those ranges to the JSON schema, so a served ``/openapi.json`` states the exact bounds of
the model behind it.

Needs pydantic (FastAPI's dependency); ``import l2rec_serving`` does not import this module.
"""

from __future__ import annotations

import copy
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .validation import DEFAULT_K, RequestLimits


class RecommendBody(BaseModel):
    """The POST /recommend request body. Ids and k are JSON integers written without a
    fraction (3, not 3.0: JSON Schema counts 3.0 as an integer, this server does not)."""

    model_config = ConfigDict(extra="forbid", title="RecommendRequest")

    history: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, description="The user's item ids (1-based), oldest first. The model reads the most "
                                  "recent max_history of them; exclude_history excludes all of them.")
    k: int = Field(DEFAULT_K, ge=1, description="How many items to return (default min(10, max_k)); at most "
                                                "min(num_items, max_k), and with exclude_history at most "
                                                "the items left after excluding the history.")
    exclude_history: bool = Field(True, description="Leave the history's items out of the answer.")
    prompt_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="The tokenised prompt. Optional when the server builds prompts "
                                        "from the history (GET /healthz: builds_prompts), required when not.")


class RecommendResponse(BaseModel):
    """The POST /recommend answer: the top k items, best first."""

    items: list[int] = Field(description="Item ids, best first.")
    scores: list[float] = Field(description="Their scores, descending.")


class FieldErrorBody(BaseModel):
    field: str = Field(description='The part of the request at fault ("history", "k", "body", "path", '
                                   '"method", ...), or "server" for overload, timeout and internal errors.')
    message: str


class ErrorResponse(BaseModel):
    """The body of every error response (4xx and 5xx)."""

    error: str = Field(description="All the messages, joined with '; '.")
    errors: list[FieldErrorBody] = Field(description="One entry per problem.")


def request_schema(limits: RequestLimits | None = None) -> dict:
    """The JSON schema of a request body; with ``limits``, the served model's ranges too."""
    schema = copy.deepcopy(RecommendBody.model_json_schema())
    if limits is None:
        return schema
    props = schema["properties"]
    props["history"]["items"]["maximum"] = limits.num_items
    props["history"]["maxItems"] = limits.max_history_items
    props["k"]["maximum"] = limits.k_max
    props["k"]["default"] = limits.default_k
    prompt = next(s for s in props["prompt_ids"]["anyOf"] if s.get("type") == "array")
    prompt["items"]["maximum"] = limits.vocab_size - 1
    prompt["maxItems"] = limits.max_prompt_tokens
    if limits.requires_prompt_ids:
        schema["required"] = [*schema["required"], "prompt_ids"]
    return schema
