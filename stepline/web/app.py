"""Stepline's Flask app factory: `create_app()` wires every module in.

Production: `gunicorn -c python:stepline.web.gunicorn_conf 'stepline.web.app:create_app()'`
(in a checkout, the top-level `app.py` also offers `app:app`)."""

import os
import secrets
from dataclasses import dataclass, field

from flask import Flask
from flask_sock import Sock
from werkzeug.exceptions import HTTPException

from stepline import config
from stepline.engine.params import ParamError
from stepline.store import errors as store_errors
from stepline.store.errors import Conflict, NotFound
from stepline.store.writes import Store
from stepline.web import api, auth, live, pages, parts, render
from stepline.web.http import ApiError, definition_unavailable, error_response
from stepline.web.hub import Hub


@dataclass
class Stepline:
    store: Store
    hub: Hub
    snapshots: dict = field(default_factory=dict)  # view key -> latest snapshot Message


def create_app(db_path: str | None = None, definitions_dir: str | None = None,
               token: str | None = None) -> Flask:
    # Templates and static files ship inside the package (wheel or checkout alike).
    app = Flask(__name__, template_folder=str(config.PACKAGE / "templates"),
                static_folder=str(config.PACKAGE / "static"))
    app.jinja_environment = render.RowEnvironment
    app.config.update(
        STEPLINE_DB=config.db_path(db_path),
        STEPLINE_DEFINITIONS=definitions_dir or os.environ.get("STEPLINE_DEFINITIONS"),
        STEPLINE_TOKEN=token if token is not None else os.environ.get("STEPLINE_TOKEN"),
        SOCK_SERVER_OPTIONS={"ping_interval": 20},
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.json.sort_keys = False  # key order as written; sorting 1,000 steps costs
    store = Store(app.config["STEPLINE_DB"])
    # One secret for every gunicorn worker: kept in the database.
    app.secret_key = os.environ.get("STEPLINE_SECRET") or store.secret("session",
                                                                       secrets.token_hex(32))
    app.extensions["stepline"] = Stepline(store, Hub(store.event_watch,
                                                     live.render_for_hub(app)))

    render.register(app)
    app.jinja_env.globals.update(csrf_token=auth.csrf_token,
                                 definition_unavailable=definition_unavailable)
    app.before_request(auth.check_request)
    for blueprint in (auth.bp, pages.bp, parts.bp, api.bp, live.bp):
        app.register_blueprint(blueprint)
    Sock(app).route("/ws")(live.websocket)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(NotFound)
    def not_found(exc):
        return error_response(404, str(exc))

    @app.errorhandler(Conflict)
    def conflict(exc):
        return error_response(409, str(exc))

    @app.errorhandler(ParamError)
    def bad_param(exc):
        return error_response(400, str(exc))

    def database_unavailable(exc):
        """Locked by a long write elsewhere, disk full, read-only: nothing was
        written (the transaction rolled back), so the client may simply retry."""
        body, status = error_response(503, f"database unavailable ({exc}): nothing was"
                                           " changed; try again")
        return body, status, {"Retry-After": "1"}

    for unavailable in store_errors.unavailable():  # SQLite's, and psycopg's if in use
        app.register_error_handler(unavailable, database_unavailable)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        body, status = error_response(exc.code or 500, exc.description or exc.name)
        # keep what the exception says beyond its body, e.g. a 405's Allow
        return body, status, [(k, v) for k, v in exc.get_headers() if k != "Content-Type"]

    return app

