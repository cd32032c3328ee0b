"""What a request may contain and how a refusal looks: the serving package's vocabulary.

* ``RequestLimits``: the served model's ranges and the deployment's caps, with the defaults
  a deployment may change (``DEFAULT_*``);
* ``RequestError`` / ``FieldError``: the one error shape every refusal has (a status, one
  message per bad field, response headers);
* ``check_positive_int``: the argument check the servers' settings share.

Imports nothing of the package and no pydantic: the request model (``schema``), body
decoding and validation (``validation``), admission, batching and batch scoring all build
on it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def json_type_name(value) -> str:
    """The type of a decoded JSON value, for messages: "null" for None, else its Python name."""
    return "null" if value is None else type(value).__name__


def body_too_large(size: str | int, max_body_bytes: int) -> RequestError:
    """The 413 for a body of ``size`` bytes (a number, or a phrase such as "more than 10")."""
    return RequestError(413, [FieldError("body", f"the request body has {size} bytes; at most "
                                                 f"{max_body_bytes} are accepted")])
