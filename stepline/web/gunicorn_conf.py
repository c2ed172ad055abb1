"""gunicorn settings for Stepline. `stepline serve` uses this module; for
production, behind nginx (see README), run e.g.

    gunicorn -c python:stepline.web.gunicorn_conf -w 4 -b 127.0.0.1:8000 \\
        'stepline.web.app:create_app()'
"""

worker_class = "gevent"
worker_connections = 2000   # WebSocket/SSE connections per worker
timeout = 60                # gevent workers heartbeat while connections idle
graceful_timeout = 5
keepalive = 5
accesslog = None
# gunicorn 25+ opens a control socket at ~/.gunicorn/gunicorn.ctl, one path
# for every gunicorn of the user: two instances fight over it. Stepline has
# no use for it (Ctrl-C / SIGTERM stop `serve`).
control_socket_disable = True


def post_worker_init(worker) -> None:
    """On SIGTERM a gevent worker stops accepting, then waits up to
    graceful_timeout for open requests, and live connections never end by
    themselves: pages said "live" for those 5 s. This ends them as soon as the
    worker is told to stop, so ordinary requests still get their grace."""
    import gevent

    stepline = getattr(worker.wsgi, "extensions", {}).get("stepline")
    if stepline is None:  # the app is wrapped in other middleware: keep the grace
        return
    hub = stepline.hub

    def close_live_when_stopping() -> None:
        while worker.alive:
            gevent.sleep(0.2)
        hub.close_all()

    gevent.spawn(close_live_when_stopping)
