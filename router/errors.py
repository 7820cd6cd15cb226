"""The router's own errors; one middleware turns each into an OpenAI-shaped JSON response."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class RouterError(Exception):
    """An error a client sees: HTTP status, OpenAI error type and code, and a message."""

    status = 500
    error_type = "server_error"
    code = "internal_error"
    close_connection = False
    """Whether the answer ends the client's connection (`Connection: close`)."""
    param: str | None = None
    """The request parameter the error is about, as OpenAI's errors name it (mostly none)."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message, "type": self.error_type, "param": self.param,
                "code": self.code,
            }
        }  # fmt: skip


class BadRequest(RouterError):
    status = 400
    error_type = "invalid_request_error"
    code = "bad_request"


class NotFound(RouterError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Misdirected(RouterError):
    """An absolute-form request target (`GET http://host/path`): one for a forward proxy."""

    status = 421
    error_type = "invalid_request_error"
    code = "misdirected_request"


class PayloadTooLarge(RouterError):
    status = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(RouterError):
    """The client did not send its whole request body within `limits.body_timeout`."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class TooManyConnections(RouterError):
    """The connection is one past `limits.max_client_connections`."""

    status = 503
    error_type = "server_error"
    code = "too_many_connections"
    close_connection = True

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class NoHealthyWorker(RouterError):
    status = 503
    error_type = "server_error"
    code = "no_healthy_worker"

    def __init__(self, message: str = "no healthy worker is available", retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamError(RouterError):
    """The chosen worker failed before sending a response."""

    status = 502
    error_type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, worker: str, kind: str, retryable: bool) -> None:
        super().__init__(message)
        self.worker = worker
        self.kind = kind
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class Unauthorized(RouterError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class HistoryUnavailable(RouterError):
    """The session store (or the tokenizer) that orchestrator requests need cannot answer."""

    status = 503
    error_type = "server_error"
    code = "store_unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class TokenizerUnavailable(HistoryUnavailable):
    code = "tokenizer_unavailable"


class DegradedRefusal(NoHealthyWorker):
    """Most workers are down and `routing.degraded.action` is `refuse`."""

    code = "degraded_refused"


class HistoryAccessDenied(RouterError):
    """Server-kept history (the sessions API, orchestrator requests) is not open to this
    request under `history.access`; the message names the setting."""

    status = 403
    error_type = "invalid_request_error"
    code = "history_access_denied"


class RateLimited(RouterError):
    """The tenant is over its requests or tokens per minute (`limits.tenants`). `limit` is
    `requests` or `tokens`, OpenAI's error type for each; `headers` hold Retry-After and the
    x-ratelimit-* figures."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, limit: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.error_type = limit


class Overloaded(RouterError):
    """Every worker is saturated and the request could not wait for one: the admission queue
    was full (`queue_full`) or the wait passed `limits.admission.timeout` (`queue_timeout`)."""

    status = 503
    error_type = "server_error"

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.code = code
