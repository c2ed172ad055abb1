"""One gunicorn gevent worker serving many WebSocket clients: fan-out (#3),
memory per idle connection (#4), a client that stops reading (#5)."""

import argparse
import asyncio
import json
import threading
import time
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


async def open_many(host, port, path, n) -> list[Connection]:
    conns = []
    for start in range(0, n, 50):  # in waves, as a crowd of tabs would
        conns += await asyncio.gather(*(Connection.open(host, port, path)
                                        for _ in range(min(50, n - start))))
    return conns


def idle_memory(clients: int) -> list[tuple]:
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(steps_toml(5)), {})
        with web(path) as server:
            pid = server.worker_pids()[0]
            url = urlsplit(server.url)
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
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(steps_toml(transitions // 2 + 1)), {})
        with web(path) as server:
            pid = server.worker_pids()[0]
            url = urlsplit(server.url)
            loop = asyncio.new_event_loop()
            conns = loop.run_until_complete(open_many(url.hostname, url.port,
                                                      f"/ws?job={job_id}", clients))
            runner = threading.Thread(target=loop.run_until_complete, args=(
                asyncio.gather(*(c.run() for c in conns)),))
            runner.start()
            time.sleep(2)
            started = time.time()
            committed = drive(store, job_id, 1 / rate)
            elapsed = time.time() - started
            rss = rss_kb(pid)
            time.sleep(3)
            for c in conns:
                c.writer.transport.abort()
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
    """One client stops reading while events flow; the server's memory stays
    bounded and the client gets a fresh snapshot when it reads again."""
    import socket

    from simple_websocket import Client

    transitions = int(seconds * rate)
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(steps_toml(transitions // 2 + 1)), {})
        with web(path) as server:
            pid = server.worker_pids()[0]
            ws_url = server.url.replace("http", "ws") + f"/ws?job={job_id}"
            stalled = Client.connect(ws_url)
            stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.receive(timeout=5)  # the snapshot
            stalled_thread_stop = stalled.event  # its reader keeps the socket; we stop reading
            base = rss_kb(pid)
            samples = []
            done = threading.Event()

            def sample():
                while not done.is_set():
                    samples.append(rss_kb(pid))
                    time.sleep(1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            # the client library buffers in its own thread: stop it draining the socket
            stalled.connected = False
            drive(store, job_id, 1 / rate)
            done.set()
            sampler.join()
            del stalled_thread_stop
            fresh = Client.connect(ws_url)
            first = json.loads(fresh.receive(timeout=5))
            fresh.close()
    peak = max(samples)
    return [
        (f"a client stops reading for {seconds:g}s while {transitions} events flow",
         f"worker RSS {base / 1024:.0f} -> peak {peak / 1024:.0f} MB", "bounded",
         peak - base < 64 * 1024),
        ("a reconnecting client starts from a snapshot", f"snapshot={first.get('snapshot')}",
         "fresh snapshot", first.get("snapshot") is True),
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
