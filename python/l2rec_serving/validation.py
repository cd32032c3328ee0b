"""Request validation: a JSON body in, a ``RecommendRequest`` or a ``RequestError`` out.

This is the serving boundary: everything a client sends is checked here, with one clear
message per bad field, *before* a request can join a batch. So a bad request gets a 4xx
and can never fail (or read out of bounds in) a forward shared with other users.

* the body (``decode_body``): a JSON object (400 otherwise) of at most ``max_body_bytes``
  (413);
* its fields (``validate_request``, 422 with every bad field at once, unknown ones too):
  the pydantic model ``schema.RecommendRequest`` declares them (types, ranges, defaults)
  and checks them, with the deployment's ``RequestLimits`` (the served model's ranges, the
  server's caps; ``limits``) as validation context.

Importing this module does not import pydantic: ``validate_request`` imports the model on
first use, so a service that never validates a request (batch scoring) runs without it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .limits import FieldError, RequestError, RequestLimits, body_too_large, json_type_name

if TYPE_CHECKING:
    from .schema import RecommendRequest


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
                                                    f"JSON {json_type_name(payload)}")])
    from .schema import RecommendRequest  # (pydantic, on first use: see the module docstring)

    return RecommendRequest.from_payload(payload, limits)


def parse_request(body: bytes | str, limits: RequestLimits) -> RecommendRequest:
    """Raw HTTP body -> ``RecommendRequest`` (``RequestError`` with a 4xx status if bad)."""
    return validate_request(decode_body(body, limits), limits)
