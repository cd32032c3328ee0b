"""The HTTP API's request and response bodies as pydantic models: they validate requests, and
``/openapi.json`` is generated from them.

``RecommendRequest`` declares a request: strict types (JSON ``true`` is not an id, ``3.0``
is not an int), the bounds that hold for every deployment (ids >= 1, ``k`` >= 1, non-empty
lists), no unknown fields, and a description and an example per field. What depends on the
deployment (the served model's id ranges, the server's limits) comes in as validation
context, a ``RequestLimits``, which its validators read:

    RecommendRequest.model_validate(payload, context={"limits": limits})

``RecommendRequest.from_payload(payload, limits)`` does that and turns pydantic's errors into
this API's ``RequestError`` (422, one message per bad field, all at once). A request built
in code, without limits, is held to the static rules only. The JSON schema, generated from
the declarations alone, is the same for every deployment; a server's ranges and limits are
at ``GET /healthz``.

Needs pydantic (FastAPI's dependency); ``import l2rec_serving`` does not import this module
(``l2rec_serving.RecommendRequest`` imports it on first use).
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .limits import DEFAULT_K, FieldError, RequestError, RequestLimits, json_type_name

FIRST_ITEM_ID = 1  # item ids are 1-based (0 is the models' padding)
FIRST_TOKEN_ID = 0

ItemId = Annotated[StrictInt, Field(ge=FIRST_ITEM_ID)]
TokenId = Annotated[StrictInt, Field(ge=FIRST_TOKEN_ID)]


class _IdRange(NamedTuple):
    """What a list of ids (``history`` or ``prompt_ids``) may hold under a deployment's limits:
    ids in ``low..high``, at most ``most`` of them."""

    what: str
    low: int
    high: int
    most: int

    @classmethod
    def of(cls, field: str, limits: RequestLimits) -> _IdRange:
        if field == "history":
            return cls("item id", FIRST_ITEM_ID, limits.num_items, limits.max_history_items)
        return cls("token id", FIRST_TOKEN_ID, limits.vocab_size - 1, limits.max_prompt_tokens)

    def out_of_range(self, path: str, value: int) -> str:
        return f"{path} = {value} is out of range: {self.what}s are {self.low}..{self.high}"


def _k_out_of_range(k: int, limits: RequestLimits) -> str:
    """The message for a ``k`` outside [1, ``limits.k_max``], saying which limit set the top."""
    why = (f"the catalogue has {limits.num_items} items" if limits.k_max == limits.num_items
           else f"this server's max_k is {limits.max_k}")
    return f"k must be in [1, {limits.k_max}] ({why}), got {k}"


def _limits(info: ValidationInfo) -> RequestLimits | None:
    """The deployment's limits from the validation context; None for a request built in code."""
    return (info.context or {}).get("limits")


def _ids_within(field: str, ids: tuple[int, ...], limits: RequestLimits) -> tuple[int, ...]:
    """``ids`` if the deployment takes that many of them and each is below its top (the static
    lower bound is the field type's); a ValueError naming the first problem otherwise."""
    allowed = _IdRange.of(field, limits)
    if len(ids) > allowed.most:
        raise ValueError(f"{field} has {len(ids)} entries; at most {allowed.most} are accepted")
    bad = next((i for i, v in enumerate(ids) if v > allowed.high), None)
    if bad is not None:
        raise ValueError(allowed.out_of_range(f"{field}[{bad}]", ids[bad]))
    return ids


class RecommendRequest(BaseModel):
    """The POST /recommend request body. Ids and k are JSON integers written without a
    fraction (3, not 3.0). The served model's id ranges and the server's limits (GET
    /healthz: num_items, vocab_size, limits) bound them further."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # In this order: k's validator reads the history and exclude_history validated before it.
    history: tuple[ItemId, ...] = Field(
        min_length=1, examples=[[3, 17, 42]],
        description="The user's item ids (1..num_items), oldest first, at most max_history_items of them. "
                    "The model reads the most recent max_history; exclude_history excludes all of them.")
    exclude_history: StrictBool = Field(True, description="Leave the history's items out of the answer.")
    k: StrictInt = Field(
        DEFAULT_K, ge=1, examples=[5],
        description="How many items to return (default min(10, max_k)); at most min(num_items, max_k), and "
                    "with exclude_history at most the items left after excluding the history.")
    prompt_ids: tuple[TokenId, ...] | None = Field(
        None, min_length=1, validate_default=True, examples=[[1, 52, 9]],
        description="The tokenised prompt: token ids (0..vocab_size-1), at most max_prompt_tokens of them. "
                    "Optional when the server builds prompts from the history (GET /healthz: "
                    "builds_prompts), required when not.")

    @model_validator(mode="before")
    @classmethod
    def _deployment_default_k(cls, data, info: ValidationInfo):
        """Without k, the deployment's default: 10, or the largest k it allows if smaller."""
        limits = _limits(info)
        if limits is not None and isinstance(data, dict) and "k" not in data:
            return {**data, "k": limits.default_k}
        return data

    @field_validator("history")
    @classmethod
    def _history_within_limits(cls, history: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        limits = _limits(info)
        return history if limits is None else _ids_within("history", history, limits)

    @field_validator("k")
    @classmethod
    def _k_within_limits(cls, k: int, info: ValidationInfo) -> int:
        """At most ``k_max`` and, when the history is excluded, at most the items left."""
        limits = _limits(info)
        if limits is None:
            return k
        if k > limits.k_max:
            raise ValueError(_k_out_of_range(k, limits))
        history = info.data.get("history")  # absent when the history itself is bad
        if info.data.get("exclude_history") and history is not None:
            distinct = len(set(history))
            left = limits.num_items - distinct
            if k > left:
                raise ValueError(f"k = {k} is more than the {left} catalogue items left after excluding "
                                 f"the {distinct} distinct history items; lower k or set exclude_history "
                                 "to false")
        return k

    @field_validator("prompt_ids")
    @classmethod
    def _prompt_within_limits(cls, prompt: tuple[int, ...] | None,
                              info: ValidationInfo) -> tuple[int, ...] | None:
        """Within the deployment's ranges; required where the deployment builds no prompts."""
        limits = _limits(info)
        if limits is None:
            return prompt
        if prompt is None:
            if limits.requires_prompt_ids:
                raise ValueError("prompt_ids is required: this deployment has no prompt builder, so send "
                                 "the tokenised prompt")
            return None
        return _ids_within("prompt_ids", prompt, limits)

    @classmethod
    def from_payload(cls, payload: dict, limits: RequestLimits) -> RecommendRequest:
        """``payload`` (decoded JSON) validated with ``limits`` as context; a ``RequestError``
        (422) with one ``FieldError`` per bad field otherwise."""
        try:
            return cls.model_validate(payload, context={"limits": limits})
        except ValidationError as exc:
            raise RequestError(422, _field_errors(exc, limits)) from None

    def model_history(self, max_history: int) -> tuple[int, ...]:
        """The most recent ``max_history`` items: what the model's encoders read."""
        return self.history[-max_history:]


def _field_errors(exc: ValidationError, limits: RequestLimits) -> list[FieldError]:
    """pydantic's errors as this API's: one ``FieldError`` per bad field (its first problem,
    where pydantic lists one per bad entry), in words that give the value and what is allowed."""
    first: dict[str, dict] = {}
    for error in exc.errors(include_url=False):
        first.setdefault(str(error["loc"][0]) if error["loc"] else "body", error)
    return [FieldError(field, _message(field, error, limits)) for field, error in first.items()]


def _message(field: str, error: dict, limits: RequestLimits) -> str:
    """One pydantic error on ``field`` of a ``RecommendRequest``, said in this API's words. The
    error types are the ones the field declarations above can raise."""
    kind, value = error["type"], error["input"]
    where = field + "".join(f"[{i}]" for i in error["loc"][1:])  # e.g. history[3]
    got = f"got {value!r} ({json_type_name(value)})"
    if kind == "value_error":  # one of the validators above: its message is already ours
        return str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        return f"unknown field {field!r}; allowed fields are {list(RecommendRequest.model_fields)}"
    if kind == "missing":  # (history is the one required field)
        return f"{field} is required: a non-empty list of item ids"
    if kind == "bool_type":
        return f"{where} must be true or false, {got}"
    if field == "k":  # int_type or greater_than_equal
        return f"k must be an int, {got}" if kind == "int_type" else _k_out_of_range(value, limits)
    allowed = _IdRange.of(field, limits)  # history or prompt_ids
    if kind == "tuple_type":
        return f"{field} must be a list of {allowed.what}s, got {json_type_name(value)}"
    if kind == "too_short":
        return f"{field} must not be empty"
    if kind == "greater_than_equal":
        return allowed.out_of_range(where, value)
    return f"{where} must be an int {allowed.what}, {got}"  # int_type


class RecommendResponse(BaseModel):
    """The POST /recommend answer: the top k items, best first."""

    items: list[int] = Field(description="Item ids, best first.", examples=[[42, 7, 19]])
    scores: list[float] = Field(description="Their scores, descending.", examples=[[2.31, 1.87, 1.02]])


class FieldErrorBody(BaseModel):
    field: str = Field(description='The part of the request at fault ("history", "k", "body", "path", '
                                   '"method", ...), or "server" for overload, timeout and internal errors.',
                       examples=["k"])
    message: str = Field(examples=["k must be an int, got '5' (str)"])


class ErrorResponse(BaseModel):
    """The body of every error response (4xx and 5xx)."""

    error: str = Field(description="All the messages, joined with '; '.")
    errors: list[FieldErrorBody] = Field(description="One entry per problem.")
