"""Optional access token, CSRF tokens and the WebSocket Origin check.

With STEPLINE_TOKEN set every route needs it: a bearer header, or the
session cookie that /login sets. Every state change from a form carries a
CSRF token; JSON requests need none (a foreign page cannot send
`Content-Type: application/json` without a CORS preflight, never granted).
"""

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for

from stepline.web.http import ApiError

bp = Blueprint("auth", __name__)
# reachable without the token: signing in, the health probe, css and js
OPEN_ENDPOINTS = {"auth.login", "api.healthz", "static"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def token() -> str | None:
    return current_app.config.get("STEPLINE_TOKEN") or None


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def _bearer_ok() -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), (token() or "").encode())


def check_request():
    """before_request: authentication, then Origin (WS), then CSRF."""
    required = token()
    if required and request.endpoint not in OPEN_ENDPOINTS:
        if not (_bearer_ok() or session.get("authenticated")):
            if request.path.startswith(("/api/", "/ws", "/events", "/metrics")) or \
                    request.headers.get("HX-Request"):
                raise ApiError(401, "authentication required: send 'Authorization: Bearer"
                                    " <token>' or sign in at /login")
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if request.path == "/ws":
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            raise ApiError(403, f"origin {origin} may not open this WebSocket")
    if request.method not in SAFE_METHODS and not _csrf_exempt():
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
        if not sent or not hmac.compare_digest(sent.encode(), csrf_token().encode()):
            if request.path.startswith("/api/"):
                raise ApiError(403, "missing CSRF token: send a JSON body"
                                    " (Content-Type: application/json) or a bearer token")
            raise ApiError(403, "missing or wrong CSRF token: reload the page and try again")
    return None


def _csrf_exempt() -> bool:
    """A foreign page can only send "simple" requests without a CORS preflight
    (never granted here): POSTs with form or text bodies. Everything else,
    JSON bodies and methods like DELETE, cannot be forged cross-site."""
    if request.method != "POST":
        return True
    return request.mimetype == "application/json" or (bool(token()) and _bearer_ok())


@bp.route("/login", methods=["GET", "POST"])
def login():
    home = url_for("pages.jobs_page")
    target = request.values.get("next") or home
    if not target.startswith("/") or target.startswith("//"):
        target = home
    if request.method == "POST":
        given = request.form.get("token", "")
        if token() and hmac.compare_digest(given.encode(), token().encode()):
            session["authenticated"] = True
            return redirect(target)
        return render_template("login.html", next=target, error="wrong token"), 401
    return render_template("login.html", next=target, error=None)


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login"))
