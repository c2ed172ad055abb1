"""Python step functions used by the tests (called by real worker processes)."""

import threading
import time

from stepline.engine.context import StepFailed


def log_many(ctx, threads: int = 100, lines: int = 50) -> None:
    """Many threads logging into one step at once."""

    def worker(t: int) -> None:
        for n in range(lines):
            ctx.log(f"t{t} n{n}")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def fan_out(ctx, items: int = 20, fail_every: int = 0, concurrency: int = 4) -> None:
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            attempts[i] = attempts.get(i, 0) + 1
        ctx.log(f"task {i} attempt {attempts[i]}")
        if fail_every and i % fail_every == 0 and attempts[i] == 1:
            raise RuntimeError(f"task {i} flaked")
        return i * i

    result = ctx.spawn(range(items), task, concurrency=concurrency)
    if result.failed:
        raise StepFailed(f"{len(result.failed)} tasks failed")
    ctx.log(f"sum {sum(result.results)}")


def spawn_a_task_that_never_stops(ctx) -> None:
    """A task that loops for ever and never looks at ctx.cancelled."""
    def forever(_item) -> None:
        ctx.log("looping for ever")
        while True:
            time.sleep(0.05)

    ctx.spawn([0], forever, concurrency=1)


def boom(ctx) -> None:
    raise ValueError("something broke")


def wait_until_cancelled(ctx) -> None:
    ctx.log("waiting")
    while not ctx.wait(0.05):
        pass


# Hostile text for the XSS test: each payload would set window.__pwned (or
# fetch a URL with "pwned" in it) if the page ever treated it as markup.
XSS_PAYLOADS = [
    "<script>window.__pwned='script'</script>",
    "\"><img src=x onerror=\"window.__pwned='img'\">",
    "'><svg onload=window.__pwned='svg'>",
    "<a href=\"javascript:window.__pwned='link'\">click</a>",
    "javascript:window.__pwned='bare'",
    "<div hx-get=\"/api/jobs?pwned=htmx\" hx-trigger=\"load\">htmx</div>",
    "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>",
    "{{7*7}} ${7*7} {% raw %} <!--",
]
ANSI_PAYLOADS = [
    "\x1b]8;;javascript:window.__pwned='osc8'\x1b\\osc link\x1b]8;;\x1b\\",
    "\x1b[31m<b>red</b>\x1b[0m\x1b[2J\x1b[H after clear",
    "invoice\u202egnp.exe",
]


def hostile(ctx) -> None:
    for payload in XSS_PAYLOADS + ANSI_PAYLOADS:
        ctx.log(payload)
    ctx.log(XSS_PAYLOADS[0], "error")
    raise StepFailed(XSS_PAYLOADS[1])


def huge_lines(ctx) -> None:
    ctx.log("x" * (1024 * 1024))
    ctx.log("nul \x00 inside, lone surrogate \udcff, emoji \U0001f600")
    ctx.log("after")


def flood(ctx, lines: int) -> None:
    """Log as fast as one thread can: the buffer bound must hold it back."""
    log = ctx.log
    for n in range(1, lines + 1):
        log(f"flood {n}")


def tolerate_failures(ctx, items: int = 4) -> None:
    """Fans out, one task fails, and the function returns as if all was well."""

    def task(i: int) -> None:
        if i == 2:
            raise RuntimeError(f"task {i} broke")

    ctx.spawn(range(items), task, concurrency=2)


def log_bursts(ctx, lines: int = 40_000, burst: int = 2_000, pause: float = 0.1) -> None:
    """`line 1` .. `line <lines>`, `burst` lines at a time as fast as the log
    writer takes them, `pause` seconds apart: the bursty logging of #9."""
    for n in range(1, lines + 1):
        ctx.log(f"line {n}")
        if n % burst == 0 and pause and ctx.wait(pause):
            raise StepFailed(ctx.stop_reason or "stopped")


def numbered_log(ctx, lines: int = 2300, errors: tuple = (), fail: bool = False) -> None:
    """`lines` lines "line <n>: hello world <n>", those in `errors` at level
    error; fails at the end when asked (which logs the failure, also an error)."""
    for n in range(1, lines + 1):
        ctx.log(f"line {n}: hello world {n}", "error" if n in errors else "info")
    if fail:
        raise StepFailed(f"{len(errors)} errors")

def flaky_tasks(ctx, items: int = 60, pause: float = 0.0) -> None:
    """Fans out `items` tasks, each `pause` s long; every third fails with a
    two-line error that names it and holds markup (shown as text, never run)."""

    def task(i: int) -> None:
        if pause and ctx.wait(pause):
            raise StepFailed("stopped")
        if i % 3 == 0:
            raise ValueError(f"row {i} has <b>no</b> id & cannot be parsed\n  in chunk {i // 10}")

    result = ctx.spawn(range(items), task, concurrency=4)
    if result.failed:
        raise StepFailed(f"{len(result.failed)} of {items} tasks failed")


def wait_for_step(ctx, step: str, status: str, timeout: float = 60) -> None:
    """Run until another step of this job has `status`: orders a test's steps
    by what happened, not by how long a sleep lasts. Reads the job's steps
    through the worker's own store, as any step could."""
    from stepline.store import reads

    for _ in range(int(timeout / 0.05)):
        if any(s["name"] == step and s["status"] == status
               for s in reads.job_steps(ctx.store.db, ctx.job_id)):
            ctx.log(f"{step} is {status}")
            return
        if ctx.wait(0.05):
            return  # stopped: the runner records why
    raise StepFailed(f"{step} never became {status} in {timeout:g}s")


def deaf(ctx, seconds: float = 120) -> None:
    """Step code that never looks at ctx.cancelled: nothing can stop it early."""
    import time

    ctx.log("not listening")
    time.sleep(seconds)
