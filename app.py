"""`gunicorn app:app` in a checkout (not installed: a wheel offers
`stepline.web.app:create_app()` instead)."""

from stepline.web.app import create_app


def __getattr__(name: str):
    """Built on first use, so importing this module (tests, tools) never opens
    the default database."""
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
