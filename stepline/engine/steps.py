"""The step types. Each is `run_<type>(ctx, spec)`; raising fails the step."""

import importlib
import os
import random
import signal
import subprocess
import threading
from typing import Any

from stepline.engine.context import StepContext, StepFailed
from stepline.engine.definitions import param_env, substitute
from stepline.engine.logwriter import MAX_LINE_CHARS, truncation_marker

KILL_GRACE_S = 1.0
GENERATED_LEVELS = ("info",) * 8 + ("debug", "warn")


def run_step(ctx: StepContext, step_type: str, spec: dict[str, Any]) -> None:
    runners = {"shell": run_shell, "python": run_python, "generate": run_generate,
               "sleep": run_sleep}
    runners[step_type](ctx, spec)


# -- shell ---------------------------------------------------------------------

def run_shell(ctx: StepContext, spec: dict[str, Any]) -> None:
    command = substitute(spec["run"], ctx.params, quote=True)
    env = {**os.environ, **param_env(ctx.params),
           **{k: str(v) for k, v in substitute(spec.get("env", {}), ctx.params).items()}}
    cwd = substitute(spec.get("cwd"), ctx.params)
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True,
    )
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, ctx, "info"), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, ctx, "warn"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        if ctx.wait(0.05):
            _kill_group(proc)
            break
    proc.wait()
    for reader in readers:
        reader.join()
    if ctx.cancelled:
        raise StepFailed(ctx.stop_reason or "stopped")
    if proc.returncode != 0:
        raise StepFailed(f"command exited with code {proc.returncode}")


def _pump(stream, ctx: StepContext, level: str) -> None:
    """Forward a pipe line by line; bad bytes become U+FFFD, never lost.
    A line over MAX_LINE_CHARS bytes is cut there (never read whole into
    memory), with a marker saying how much."""
    dropped: int | None = None  # bytes of the current over-long line not shown
    for chunk in iter(lambda: stream.readline(MAX_LINE_CHARS), b""):
        complete = chunk.endswith(b"\n")
        if dropped is not None:
            dropped += len(chunk) - complete
            if complete:
                ctx.log(truncation_marker(dropped, "bytes"), "warn")
                dropped = None
            continue
        ctx.log(chunk.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace"), level)
        if not complete and len(chunk) >= MAX_LINE_CHARS:
            dropped = 0
    if dropped:
        ctx.log(truncation_marker(dropped, "bytes"), "warn")
    stream.close()


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM the whole process group, then KILL what is left after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


# -- python --------------------------------------------------------------------

def run_python(ctx: StepContext, spec: dict[str, Any]) -> None:
    module_name, _, func_name = spec["call"].partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise StepFailed(f"cannot load {spec['call']}: {exc}") from None
    config = substitute(spec.get("config", {}), ctx.params)
    func(ctx, **config)


# -- generate ------------------------------------------------------------------

def run_generate(ctx: StepContext, spec: dict[str, Any]) -> None:
    """Load generator: `tasks` tasks, each logging `logs_per_task` lines
    `log_delay_ms` apart and failing with probability `failure_rate`."""
    spec = substitute(spec, ctx.params)
    tasks = int(spec.get("tasks", 0))
    lines = int(spec.get("logs_per_task", 0))
    delay = int(spec.get("log_delay_ms", 0)) / 1000
    rate = float(spec.get("failure_rate", 0.0))
    seed = int(spec.get("seed", 0))
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def one_task(index: int) -> int:
        with lock:
            attempts[index] = attempts.get(index, 0) + 1
            rng = random.Random(f"{seed}:{index}:{attempts[index]}")
        for n in range(1, lines + 1):
            if delay and ctx.wait(delay):
                raise StepFailed(ctx.stop_reason or "stopped")
            ctx.log(f"task {index}: line {n} of {lines}", rng.choice(GENERATED_LEVELS))
        if rng.random() < rate:
            raise StepFailed(f"task {index} failed (simulated, attempt {attempts[index]})")
        return index

    if tasks == 0:
        for n in range(1, lines + 1):
            if delay and ctx.wait(delay):
                break
            ctx.log(f"line {n} of {lines}")
        return
    result = ctx.spawn(range(tasks), one_task, concurrency=int(spec.get("concurrency") or 8))
    if ctx.cancelled:
        raise StepFailed(ctx.stop_reason or "stopped")
    if result.failed:
        raise StepFailed(f"{len(result.failed)} of {tasks} tasks failed")


def run_sleep(ctx: StepContext, spec: dict[str, Any]) -> None:
    seconds = float(substitute(spec.get("seconds", 1), ctx.params))
    ctx.log(f"sleeping {seconds:g}s")
    if ctx.wait(seconds):
        raise StepFailed(ctx.stop_reason or "stopped")
