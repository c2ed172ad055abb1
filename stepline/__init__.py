"""Stepline's engine: store, definitions, runner, events and the web layer on top."""
