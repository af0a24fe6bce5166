"""Access control and hardening: the shared token, browser sessions, CSRF, headers, body limit.

With TRAINBOARD_TOKEN set, every route but /healthz, /login and /static needs it: scripts send
`Authorization: Bearer <token>`, browsers log in once and carry a signed session cookie. The
session's signing key is derived from the token, so changing the token ends every session.

CSRF: a browser's unsafe request (it sends Origin or Referer, or it is authorised by the
session cookie) must come from this origin and carry the double-submit token: the
`trainboard_csrf` cookie echoed in the form field `csrf_token` or the `X-CSRF-Token` header.
Bearer requests are exempt: a cross-site page cannot attach that header.
"""

import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import wants_html
from app.inputs import whole_number
from app.templating import templates

SESSION_COOKIE = "trainboard_session"
CSRF_COOKIE = "trainboard_csrf"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 7 * 24 * 3600
SESSION_EXPIRY_DIGITS = 12  # a Unix time in seconds, good for 30,000 years
MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PATHS = ("/healthz", "/login")
PUBLIC_PREFIXES = ("/static/",)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
# Swagger UI and ReDoc load their own scripts and styles and start with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com; font-src 'self' https://fonts.gstatic.com; "
    "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


# ---------------------------------------------------------------------------------------------
# Tokens and signed sessions
# ---------------------------------------------------------------------------------------------


def _session_key(token: str) -> bytes:
    return hashlib.sha256(b"trainboard session\0" + token.encode()).digest()


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def make_session(token: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    signature = hmac.new(_session_key(token), f"session.{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{signature}"


def session_valid(cookie: str | None, token: str) -> bool:
    if not cookie or "." not in cookie:
        return False
    expires, _, signature = cookie.partition(".")
    moment = whole_number(expires, max_digits=SESSION_EXPIRY_DIGITS)
    if moment is None or moment < time.time():
        return False
    expected = hmac.new(_session_key(token), f"session.{expires}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.encode(), expected.encode())


def bearer_token(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def csrf_token(request: Request) -> str:
    """The token this request's page must put in its forms (also read by templates)."""
    return request.state.csrf_token


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _same_origin(request: Request) -> bool | None:
    """None when the request names no origin (scripts); else whether it is this site."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return None if not source else False
    origin = urlsplit(source)
    return f"{origin.scheme}://{origin.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


# ---------------------------------------------------------------------------------------------
# Middleware: the body limit first (pure ASGI, counts streamed bodies too), then the rules
# ---------------------------------------------------------------------------------------------


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        # Counted in digits first: int() refuses numbers of more than 4,300 digits.
        if declared.isdigit() and (len(declared) > len(str(self.max_bytes)) or int(declared) > self.max_bytes):
            await _too_large(scope, receive, send, self.max_bytes)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not refused:
                    refused = True
                    await _too_large(scope, receive, send, self.max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            # Once the 413 is out, whatever the app answers to the cut-off body is dropped.
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ClientDisconnect:
            # A route that reads the body itself (the login form) sees the cut-off as a
            # disconnect: expected after a 413, so not an error to log.
            if not refused:
                raise


async def _too_large(scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
    response = JSONResponse(
        {"detail": f"request body larger than {max_bytes} bytes"}, status_code=status.HTTP_413_CONTENT_TOO_LARGE
    )
    await response(scope, receive, send)


async def guard(request: Request, call_next) -> Response:
    """Authentication, CSRF and security headers for every request."""
    token = request.app.state.settings.token_value
    request.state.csrf_token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)

    refusal = await _refusal(request, token)
    response = refusal or await call_next(request)

    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(
            CSRF_COOKIE, request.state.csrf_token, httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )
    _add_headers(request, response)
    return response


def _addressed_to_loopback(request: Request) -> bool:
    host = request.headers.get("host", "").lower()
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


async def _refusal(request: Request, token: str | None) -> Response | None:
    # Without a token only localhost is served; a page whose own domain has been re-pointed at
    # 127.0.0.1 (DNS rebinding) still names that domain in Host, and is refused.
    if not token and not _addressed_to_loopback(request):
        return _forbidden(
            request, "this dashboard has no TRAINBOARD_TOKEN, so it answers only requests addressed to localhost; "
            "set TRAINBOARD_TOKEN to reach it under another name",
        )
    bearer = bearer_token(request)
    if token and bearer is not None and not token_matches(bearer, token):
        return _unauthorized(request)
    by_bearer = token is not None and bearer is not None
    by_session = token is not None and not by_bearer and session_valid(request.cookies.get(SESSION_COOKIE), token)
    if token and not _is_public(request.url.path) and not (by_bearer or by_session):
        return _unauthorized(request)

    if request.method in UNSAFE_METHODS and not by_bearer:
        same_origin = _same_origin(request)
        if same_origin is False:
            return _forbidden(request, "cross-site request refused")
        if (same_origin or by_session) and not await _csrf_ok(request):
            return _forbidden(request, "missing or wrong CSRF token: reload the page and try again")
    return None


async def _csrf_ok(request: Request) -> bool:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected:
        return False
    given = request.headers.get("x-csrf-token")
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            # The raw body, not request.form(): the route handler still needs to read the form.
            fields = parse_qs((await request.body()).decode("utf-8", errors="replace"))
            given = (fields.get(CSRF_FIELD) or [None])[0]
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(request: Request) -> Response:
    if wants_html(request):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=status.HTTP_303_SEE_OTHER)
    return JSONResponse(
        {"detail": "a valid access token is required: send Authorization: Bearer <TRAINBOARD_TOKEN>"},
        status_code=status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"},
    )


def _forbidden(request: Request, reason: str) -> Response:
    return JSONResponse({"detail": reason}, status_code=status.HTTP_403_FORBIDDEN)


def _add_headers(request: Request, response: Response) -> None:
    csp = DOCS_CSP if request.url.path in DOCS_PATHS else PAGE_CSP
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")


# ---------------------------------------------------------------------------------------------
# Login and logout
# ---------------------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def _local_path(target: str | None) -> str:
    """Only paths on this site, so the login form cannot redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(request: Request, next_path: str, error: str | None, status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"next": next_path, "error": error, "token_required": bool(request.app.state.settings.token_value)},
        status_code=status_code,
    )


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return _login_page(request, _local_path(next), None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    next_path = _local_path(str(form.get("next", "/")))
    token = request.app.state.settings.token_value
    if not token:
        return RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    if not token_matches(str(form.get("token", "")), token):
        return _login_page(request, next_path, "That token is not right.", status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE, make_session(token), max_age=SESSION_SECONDS, httponly=True, samesite="lax",
        secure=request.url.scheme == "https", path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response

