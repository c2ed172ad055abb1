"""The step types. Each is `run_<type>(ctx, spec)`; raising fails the step."""

import importlib
import os
import random
import signal
import subprocess
import threading
import time
from typing import Any

from stepline.engine.context import StepContext, StepFailed
from stepline.engine.fanout import TaskRun, remote_tasks, run_fanout
from stepline.engine.logwriter import MAX_LINE_CHARS, truncation_marker
from stepline.engine.params import param_env, param_text, substitute

KILL_GRACE_S = 1.0
# A command's pipes reach EOF the moment it exits, unless something it started
# in the background still holds them: that gets this long to finish writing,
# then it is stopped like a cancelled step (CI runners clean up a step's orphans).
OUTPUT_GRACE_S = 0.5
GENERATED_LEVELS = ("info",) * 8 + ("debug", "warn")


def run_step(ctx: StepContext, step_type: str, spec: dict[str, Any]) -> None:
    runners = {"shell": run_shell, "python": run_python, "generate": run_generate,
               "sleep": run_sleep}
    runners[step_type](ctx, spec)


# -- shell ---------------------------------------------------------------------

def run_shell(ctx: StepContext, spec: dict[str, Any]) -> None:
    command = substitute(spec["run"], ctx.params, quote=True)
    # the params last: a step's own `env` cannot change what {params.x} is
    env = {**os.environ,
           **{k: param_text(v) for k, v in substitute(spec.get("env", {}), ctx.params).items()},
           **param_env(ctx.params)}
    cwd = substitute(spec.get("cwd"), ctx.params)
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True,
    )
    detached = threading.Event()  # set when the step stops reading before EOF
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, ctx, "info", detached), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, ctx, "warn", detached), daemon=True),
    ]
    for reader in readers:
        reader.start()
    # Cancel and timeouts signal the group from the watchdog; the exit itself
    # wakes proc.wait() at once (a 50 ms poll here cost ~25 ms per step).
    ctx.on_stop(lambda: _stop_group(proc.pid))
    proc.wait()
    if not _join(readers, OUTPUT_GRACE_S):
        ctx.log("the command exited but processes it started still hold its output;"
                " stopping them", "warn")
        _stop_group(proc.pid)
        if not _join(readers, KILL_GRACE_S + OUTPUT_GRACE_S):
            detached.set()
            ctx.log("stopped reading output held open outside the step's process group",
                    "warn")
    if ctx.cancelled:
        raise StepFailed(ctx.stop_reason or "stopped")
    if proc.returncode != 0:
        raise StepFailed(f"command exited with code {proc.returncode}")


def _pump(stream, ctx: StepContext, level: str, detached: threading.Event) -> None:
    """Forward a pipe line by line; bad bytes become U+FFFD, never lost.
    A line over MAX_LINE_CHARS bytes is cut there (never read whole into
    memory), with a marker saying how much."""
    dropped: int | None = None  # bytes of the current over-long line not shown
    for chunk in iter(lambda: stream.readline(MAX_LINE_CHARS), b""):
        if detached.is_set():  # the step has ended; this reader thread lingers until the
            break             # outside writer writes once more, then closes the pipe
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


def _join(threads: list[threading.Thread], timeout: float) -> bool:
    """Join all threads within timeout seconds in total; True if all ended."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def _stop_group(pgid: int) -> None:
    """TERM the whole process group now, KILL what is left after a grace.
    Never waits: it runs on the watchdog thread, the KILL on a timer."""
    if _signal_group(pgid, signal.SIGTERM):
        timer = threading.Timer(KILL_GRACE_S, _signal_group, (pgid, signal.SIGKILL))
        timer.daemon = True
        timer.start()


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:  # the whole group is gone
        return False


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
    `log_delay_ms` apart and failing with probability `failure_rate`, at
    most `concurrency` at once on all workers (default: no cap). Its
    tasks are declarative (spec + index say all), so every worker runs them
    (generate_task); this worker only makes them and waits."""
    spec = substitute(spec, ctx.params)
    tasks = int(spec.get("tasks", 0))
    lines = int(spec.get("logs_per_task", 0))
    delay = int(spec.get("log_delay_ms", 0)) / 1000
    if tasks == 0:
        for n in range(1, lines + 1):
            if delay and ctx.wait(delay):
                break
            ctx.log(f"line {n} of {lines}")
        return
    cap = spec.get("concurrency")  # a {params.x} is known only now
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise StepFailed(f"concurrency must be a whole number >= 1, got {cap!r}")
    run_fanout(ctx, tasks, cap)
    if ctx.cancelled:
        raise StepFailed(ctx.stop_reason or "stopped")
    # failed tasks fail the step: the runner says "N of M tasks failed"


@remote_tasks("generate")
def generate_task(task: TaskRun) -> None:
    """One generate task, on whichever worker claimed it. Its outcome depends
    on (seed, index, attempt) only, so a retry elsewhere is just as random."""
    spec = task.spec
    lines = int(spec.get("logs_per_task", 0))
    delay = int(spec.get("log_delay_ms", 0)) / 1000
    rng = random.Random(f"{int(spec.get('seed', 0))}:{task.index}:{task.attempt}")
    for n in range(1, lines + 1):
        # with no delay, still a look at the stop flag per line (~50 ns): a
        # task of many lines must not hold up a cancel or a shutdown
        if task.wait(delay) if delay else task.stopped.is_set():
            raise StepFailed("stopped")
        task.log.append(f"task {task.index}: line {n} of {lines}",
                        rng.choice(GENERATED_LEVELS))
    if rng.random() < float(spec.get("failure_rate", 0.0)):
        raise StepFailed(f"task {task.index} failed (simulated, attempt {task.attempt})")


def run_sleep(ctx: StepContext, spec: dict[str, Any]) -> None:
    seconds = float(substitute(spec.get("seconds", 1), ctx.params))
    ctx.log(f"sleeping {seconds:g}s")
    if ctx.wait(seconds):
        raise StepFailed(ctx.stop_reason or "stopped")
