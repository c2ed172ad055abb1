"""Step functions the benchmarks run inside a real worker."""


def log_flood(ctx, lines: int = 1_000_000) -> None:
    """Log as fast as one thread can."""
    log = ctx.log
    for i in range(lines):
        log(f"line {i} of a step logging as fast as it can")


def log_paced(ctx, per_second: int = 20_000, seconds: float = 30) -> None:
    """Log at a steady rate (for the coalescing benchmark)."""
    import time

    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * per_second)
        for i in range(sent, due):
            ctx.log(f"paced line {i}")
        sent = due
        time.sleep(0.005)


def noop_tasks(ctx, tasks: int = 10_000, concurrency: int = 8) -> None:
    ctx.spawn(range(tasks), lambda item: None, concurrency=concurrency)


def nothing(ctx) -> None:
    """A one-step job that only finishes (the jobs-list benchmark)."""
