"""gunicorn settings for Stepline. `stepline serve` uses this file; for
production run e.g. `gunicorn -c gunicorn.conf.py -w 4 -b 127.0.0.1:8000 app:app`
behind nginx (see README)."""

worker_class = "gevent"
worker_connections = 2000   # WebSocket/SSE connections per worker
timeout = 60                # gevent workers heartbeat while connections idle
graceful_timeout = 5
keepalive = 5
accesslog = None
