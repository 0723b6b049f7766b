"""One exception family; each class knows its HTTP status and OpenAI error type."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class MxnError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(MxnError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class AuthError(MxnError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(MxnError):
    status = 403
    type = "permission_error"


class NotFound(MxnError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class Conflict(MxnError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(MxnError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class ClientGone(MxnError):
    """The client hung up before the answer was ready (nginx's 499); nobody reads this response."""

    status = 499
    type = "client_closed"
    default_code = "client_closed"


class RateLimited(MxnError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class TooManyAuthFailures(RateLimited):
    """Too many failed authentications from one client address: every attempt waits out the window."""

    default_code = "too_many_auth_failures"


class UpstreamError(MxnError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class ServiceUnavailable(MxnError):
    status = 503
    type = "service_unavailable"
    default_code = "no_running_endpoint"


class UpstreamTimeout(MxnError):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"
