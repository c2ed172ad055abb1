"""One gunicorn gevent worker serving many WebSocket clients: fan-out (#3),
memory per idle connection (#4), a client that stops reading (#5)."""

import argparse
import asyncio
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

from bench.harness import (
    Store,
    definition,
    fd_count,
    median,
    pct,
    print_table,
    rss_kb,
    temp_db,
    web,
)
from bench.latency import drive, steps_toml
from bench.wsclient import Connection


@contextmanager
def served_job(steps: int):
    """A pending job of `steps` steps, served by one gunicorn gevent worker:
    yields (store, job_id, server, worker pid, parsed url)."""
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(steps_toml(steps)), {})
        with web(path) as server:
            yield store, job_id, server, server.worker_pids()[0], urlsplit(server.url)


async def open_many(host, port, path, n) -> list[Connection]:
    conns = []
    for start in range(0, n, 50):  # in waves, as a crowd of tabs would
        conns += await asyncio.gather(*(Connection.open(host, port, path)
                                        for _ in range(min(50, n - start))))
    return conns


def idle_memory(clients: int) -> list[tuple]:
    with served_job(5) as (_, job_id, _, pid, url):
        loop = asyncio.new_event_loop()
        warm = loop.run_until_complete(open_many(url.hostname, url.port,
                                                 f"/ws?job={job_id}", 10))
        time.sleep(1)
        for c in warm:
            c.close()
        time.sleep(2)
        base_rss, base_fds = rss_kb(pid), fd_count(pid)
        conns = loop.run_until_complete(open_many(url.hostname, url.port,
                                                  f"/ws?job={job_id}", clients))
        time.sleep(3)
        rss, fds = rss_kb(pid), fd_count(pid)
        for c in conns:
            c.close()
        loop.run_until_complete(asyncio.sleep(3))
        after_rss, after_fds = rss_kb(pid), fd_count(pid)
    per_conn = (rss - base_rss) / clients
    return [
        (f"RSS per idle WebSocket ({clients:,} on one worker)", f"{per_conn:.0f} KB "
         f"({base_rss / 1024:.0f} -> {rss / 1024:.0f} MB)", "<= 100 KB", per_conn <= 100),
        ("after they all closed: RSS / open fds", f"{after_rss / 1024:.0f} MB / {after_fds}"
         f" (baseline {base_fds}, peak {fds})", "fds back to baseline", after_fds <= base_fds + 2),
    ]


def fan_out(clients: int, seconds: float, rate: float) -> list[tuple]:
    transitions = int(seconds * rate)
    with served_job(transitions // 2 + 1) as (store, job_id, _, pid, url):
        loop = asyncio.new_event_loop()
        conns = loop.run_until_complete(open_many(url.hostname, url.port,
                                                  f"/ws?job={job_id}", clients))
        async def read_all():
            await asyncio.gather(*(c.run() for c in conns))

        runner = threading.Thread(target=loop.run_until_complete, args=(read_all(),),
                                  daemon=True)
        runner.start()
        time.sleep(2)
        started = time.time()
        committed = drive(store, job_id, 1 / rate)
        elapsed = time.time() - started
        rss = rss_kb(pid)
        time.sleep(3)
        for c in conns:  # the loop runs in another thread: ask it to close
            loop.call_soon_threadsafe(c.abort)
        runner.join(10)
    expected = list(committed)
    complete = in_order = 0
    latencies = []
    disconnected = sum(c.closed and len(c.received) < len(expected) for c in conns)
    for c in conns:
        seqs = [s for s, _ in c.received if s in committed]
        complete += seqs == expected
        in_order += seqs == sorted(seqs)
        latencies += [(t - committed[s]) * 1000 for s, t in c.received if s in committed]
    ok = complete == clients and pct(latencies, 99) <= 250
    return [
        (f"{clients:,} WS clients, one gevent worker, {len(expected)} events at "
         f"{len(expected) / elapsed:.0f}/s for {elapsed:.0f}s",
         f"{complete:,} got every message in order ({in_order:,} in order)",
         "all, in order", complete == clients),
        ("fan-out latency p50 / p99 / max", f"{median(latencies):.0f} / "
         f"{pct(latencies, 99):.0f} / {max(latencies):.0f} ms", "p99 <= 250 ms", ok),
        ("clients disconnected early / worker RSS", f"{disconnected} / {rss / 1024:.0f} MB",
         "0", disconnected == 0),
    ]


def slow_reader(seconds: float, rate: float) -> list[tuple]:
    """A client that stops reading while events flow: the worker's memory
    stays bounded (its queue is bounded; the socket buffer fills) and, when
    it reads again, it gets a fresh snapshot instead of the backlog."""
    import socket

    transitions = int(seconds * rate)
    with served_job(transitions // 2 + 1) as (store, job_id, _, pid, url):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((url.hostname, url.port))
        sock.sendall((f"GET /ws?job={job_id} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: c3RlcGxpbmUtYmVuY2gtMQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        base = rss_kb(pid)
        samples = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                samples.append(rss_kb(pid))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        drive(store, job_id, 1 / rate)  # meanwhile nobody reads `sock`
        done.set()
        sampler.join()
        sock.settimeout(10)
        data = b""
        # the first snapshot came on connect; a second one means it resynced
        while data.count(b'"snapshot": true') < 2 and len(data) < 50_000_000:
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        sock.close()
    peak = max(samples)
    return [
        (f"a client stops reading for {seconds:g}s while {transitions} events flow",
         f"worker RSS {base / 1024:.0f} -> peak {peak / 1024:.0f} MB", "bounded",
         peak - base < 64 * 1024),
        ("when it reads again it gets a fresh snapshot",
         f"snapshot after {len(data) / 1024:.0f} KB of stale frames",
         "fresh snapshot", data.count(b'"snapshot": true') >= 2),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--only", choices=["idle", "fanout", "slow"])
    args = parser.parse_args()
    rows = []
    if args.only in (None, "idle"):
        rows += idle_memory(args.clients)
    if args.only in (None, "fanout"):
        rows += fan_out(args.clients, args.seconds, args.rate)
    if args.only in (None, "slow"):
        rows += slow_reader(args.seconds, args.rate)
    print_table("WebSocket fan-out on one gevent worker", rows)


if __name__ == "__main__":
    main()
