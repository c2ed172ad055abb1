"""Stepline: `engine` (states, definitions, the worker), `store` (the SQLite
store and its events outbox) and `web` (pages, API and live updates) on top."""
