"""Errors in OpenAI's shape, `{"error": {"message", "type", "code"}}`, for every refusal of the REST API."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# HTTP status -> OpenAI error type
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """A refusal with its status; the message is shown to the client, so it never carries internals."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def _response(exc: ApiError) -> JSONResponse:
    headers = None
    if exc.status == 401:  # RFC 6750 §3: say which error, so OAuth clients know to fetch a new token
        headers = {"WWW-Authenticate": 'Bearer realm="whisper-fleet"' if exc.code == "missing_token"
                   else 'Bearer error="invalid_token"'}
    elif exc.status == 403:
        headers = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
    return JSONResponse(error_body(exc.status, exc.message, exc.code, exc.param), exc.status, headers=headers)


def install(app: FastAPI) -> None:
    """Route every error, FastAPI's own 422 and any escaped exception included, into the OpenAI shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _response(exc)

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        msg = f"invalid field {where!r}: {first.get('msg', 'invalid value')}" if where else "invalid request"
        return _response(ApiError(400, msg, "invalid_field", where or None))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _response(ApiError(exc.status_code, str(exc.detail)))

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("REST request failed")  # the traceback stays here; the client gets its type only
        return _response(ApiError(500, f"the server failed ({type(exc).__name__}); it is logged there",
                                  "server_error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
