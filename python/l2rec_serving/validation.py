"""Request validation: a JSON body in, a ``RecommendRequest`` or a ``RequestError`` out.

This is the serving boundary: everything a client sends is checked here, with one clear
message per bad field, *before* a request can join a batch. So a bad request gets a 4xx
and can never fail (or read out of bounds in) a forward shared with other users.

Rules (the README's serving section documents them for clients):

* the body is a JSON object (400 otherwise) of at most ``max_body_bytes`` (413);
  unknown fields are rejected (422), so a typo such as ``exclude_histroy`` is not ignored;
* ``history``: required, a non-empty list of int item ids in [1, num_items], at most
  ``max_history_items`` long. The model reads the most recent ``max_history`` of them
  (older ones are dropped, not rejected); ``exclude_history`` excludes all of them;
* ``k``: an int in [1, min(num_items, max_k)] (default ``min(10, num_items, max_k)``);
  with ``exclude_history`` it may not exceed the items left after excluding the history;
* ``exclude_history``: a JSON boolean (default true);
* ``prompt_ids``: optional non-empty list of int token ids in [0, vocab_size), at most
  ``max_prompt_tokens`` long; required when the deployment has no prompt builder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ALLOWED_FIELDS = ("history", "k", "exclude_history", "prompt_ids")
DEFAULT_K = 10
# Request limits a deployment may change (ServiceSpec, CLI flags, app_builder keys). Defaults
# are generous for real users and still bound the work one request can cause: the history's
# exclusion set and the prompt are O(length) per request, and k is the width of the top-k.
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_HISTORY_ITEMS = 10_000
DEFAULT_MAX_K = 1000


def check_positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1, else a ValueError that names the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request."""

    field: str
    message: str


class RequestError(ValueError):
    """A request the server refuses or could not answer: ``status`` (4xx, or 5xx for the
    server's own conditions: overload, timeout), one ``FieldError`` per problem and any
    response ``headers`` (e.g. ``Retry-After``). Every error response has this shape."""

    def __init__(self, status: int, errors: list[FieldError], headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.errors = list(errors)
        self.headers = dict(headers or {})
        super().__init__("; ".join(e.message for e in self.errors))

    def to_json(self) -> dict:
        """The response body: a readable summary plus the per-field list."""
        return {"error": str(self),
                "errors": [{"field": e.field, "message": e.message} for e in self.errors]}


@dataclass(frozen=True)
class RequestLimits:
    """What a valid request may contain: the served model's ranges (``num_items``,
    ``vocab_size``, ``max_prompt_tokens``) and the deployment's own caps."""

    num_items: int
    max_history: int
    vocab_size: int
    max_prompt_tokens: int
    requires_prompt_ids: bool = False
    max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_k: int = DEFAULT_MAX_K

    def __post_init__(self) -> None:
        for name in ("num_items", "max_history", "vocab_size", "max_prompt_tokens", "max_history_items",
                     "max_body_bytes", "max_k"):
            check_positive_int(name, getattr(self, name))

    @property
    def k_max(self) -> int:
        """The largest k a request may ask for: the catalogue or ``max_k``, whichever is smaller."""
        return min(self.num_items, self.max_k)

    @property
    def default_k(self) -> int:
        return min(DEFAULT_K, self.k_max)

    def to_json(self) -> dict:
        """What ``GET /healthz`` reports, so a client can read the limits it must respect."""
        return {"max_body_bytes": self.max_body_bytes, "max_history_items": self.max_history_items,
                "max_k": self.k_max, "max_prompt_tokens": self.max_prompt_tokens}


@dataclass(frozen=True)
class RecommendRequest:
    """A validated request. ``history`` is everything the client sent, in order."""

    history: tuple[int, ...]
    k: int
    exclude_history: bool = True
    prompt_ids: tuple[int, ...] | None = None

    def model_history(self, max_history: int) -> tuple[int, ...]:
        """The most recent ``max_history`` items: what the model's encoders read."""
        return self.history[-max_history:]


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value) -> bool:
    # JSON true/false arrive as Python bools, which are ints: they are not ids.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id_list(name: str, value, low: int, high: int, max_len: int, what: str,
                   errors: list[FieldError]) -> tuple[int, ...] | None:
    """A non-empty list of ints in [low, high]; appends one message and returns None if not."""
    if not isinstance(value, list):
        errors.append(FieldError(name, f"{name} must be a list of {what}s, got {_type_name(value)}"))
        return None
    if not value:
        errors.append(FieldError(name, f"{name} must not be empty"))
        return None
    if len(value) > max_len:
        errors.append(FieldError(name, f"{name} has {len(value)} entries; at most {max_len} are accepted"))
        return None
    for i, v in enumerate(value):
        if not _is_int(v):
            errors.append(FieldError(name, f"{name}[{i}] must be an int {what}, got {v!r} ({_type_name(v)})"))
            return None
        if not low <= v <= high:
            errors.append(FieldError(name, f"{name}[{i}] = {v} is out of range: {what}s are {low}..{high}"))
            return None
    return tuple(value)


def body_too_large(size: str | int, max_body_bytes: int) -> RequestError:
    """The 413 for a body of ``size`` bytes (a number, or a phrase such as "more than 10")."""
    return RequestError(413, [FieldError("body", f"the request body has {size} bytes; at most "
                                                 f"{max_body_bytes} are accepted")])


def decode_body(body: bytes | str, limits: RequestLimits):
    """Raw body -> parsed JSON value, or a 400/413 ``RequestError``."""
    if len(body) > limits.max_body_bytes:
        raise body_too_large(len(body), limits.max_body_bytes)
    if not body or not body.strip():
        raise RequestError(400, [FieldError("body", 'the request body is empty; send a JSON object '
                                                    'such as {"history": [1, 2, 3], "k": 10}')])
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RequestError(400, [FieldError("body", f"the request body is not valid JSON: {exc}")]) from None


def validate_request(payload, limits: RequestLimits) -> RecommendRequest:
    """A parsed JSON value -> ``RecommendRequest``; every bad field is reported at once."""
    if not isinstance(payload, dict):
        raise RequestError(400, [FieldError("body", "the request body must be a JSON object, got a "
                                                    f"JSON {_type_name(payload)}")])
    errors: list[FieldError] = []
    for key in payload:
        if key not in ALLOWED_FIELDS:
            errors.append(FieldError(key, f"unknown field {key!r}; allowed fields are "
                                          f"{list(ALLOWED_FIELDS)}"))

    history = None
    if "history" not in payload:
        errors.append(FieldError("history", "history is required: a non-empty list of item ids"))
    else:
        history = _check_id_list("history", payload["history"], 1, limits.num_items,
                                 limits.max_history_items, "item id", errors)

    exclude = payload.get("exclude_history", True)
    if not isinstance(exclude, bool):
        errors.append(FieldError("exclude_history", "exclude_history must be true or false, got "
                                                    f"{exclude!r} ({_type_name(exclude)})"))
        exclude = None

    k = payload.get("k", limits.default_k)
    if not _is_int(k):
        errors.append(FieldError("k", f"k must be an int, got {k!r} ({_type_name(k)})"))
    elif not 1 <= k <= limits.k_max:
        why = (f"the catalogue has {limits.num_items} items" if limits.k_max == limits.num_items
               else f"this server's max_k is {limits.max_k}")
        errors.append(FieldError("k", f"k must be in [1, {limits.k_max}] ({why}), got {k}"))
    elif exclude and history is not None:
        left = limits.num_items - len(set(history))
        if k > left:
            errors.append(FieldError("k", f"k = {k} is more than the {left} catalogue items left after "
                                          f"excluding the {len(set(history))} distinct history items; "
                                          "lower k or set exclude_history to false"))

    prompt = payload.get("prompt_ids")
    if prompt is None:
        if limits.requires_prompt_ids:
            errors.append(FieldError("prompt_ids", "prompt_ids is required: this deployment has no "
                                                   "prompt builder, so send the tokenised prompt"))
    else:
        prompt = _check_id_list("prompt_ids", prompt, 0, limits.vocab_size - 1,
                                limits.max_prompt_tokens, "token id", errors)

    if errors:
        raise RequestError(422, errors)
    return RecommendRequest(history=history, k=k, exclude_history=exclude, prompt_ids=prompt)


def parse_request(body: bytes | str, limits: RequestLimits) -> RecommendRequest:
    """Raw HTTP body -> ``RecommendRequest`` (``RequestError`` with a 4xx status if bad)."""
    return validate_request(decode_body(body, limits), limits)
