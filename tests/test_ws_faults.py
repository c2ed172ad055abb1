"""WebSocket clients that misbehave -- stop reading, vanish mid-frame, reset
the connection, churn through connect/disconnect -- while events flow: the
web worker's open files and memory come back to where they were."""

import os
import re
import socket
import struct
import time

import requests

from stepline.store import reads

from .conftest import make_definition, steps_by_name, wait_for
from .live_server import ws_connect

STEADY = """
[step.steady]
type = "shell"
run = "for i in $(seq 1 100000); do echo line $i; sleep 0.01; done"
"""


def masked_frame(opcode: int, payload: bytes, claimed: int | None = None) -> bytes:
    """A client frame; `claimed` lies about the length (a frame cut short)."""
    length = len(payload) if claimed is None else claimed
    head = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126
                                     else bytes([0x80 | 126]) + struct.pack("!H", length))
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def misbehave(port: int, path: str, kind: int) -> None:
    sock = ws_connect(port, path)
    if kind == 0:  # polite: close frame, then go
        sock.sendall(masked_frame(0x8, struct.pack("!H", 1000)))
    elif kind == 1:  # connection reset, no close frame
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif kind == 2:  # a frame that promises 1,000 bytes and stops after 10
        sock.sendall(masked_frame(0x1, b"x" * 10, claimed=1000)[:16])
    else:  # reads a little of the snapshot, then vanishes
        sock.recv(100)
    sock.close()


def process_usage(pid: int) -> tuple[int, int]:
    """(open file descriptors, RSS in KB) of a process."""
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


def live_connections(url: str) -> int:
    text = requests.get(url + "/metrics", timeout=5).text
    return sum(int(n) for n in re.findall(r"stepline_live_connections\{[^}]*\} (\d+)", text))


def test_misbehaving_clients_leave_no_fd_or_memory_behind(live_server, store, start_worker,
                                                          soak):
    cycles = 1000 if soak else 400
    server = live_server()
    pid = server.worker_pids()[0]
    job_id = store.create_job(make_definition(STEADY), {})
    start_worker()
    step_id = steps_by_name(store, job_id)["steady"]["id"]
    wait_for(lambda: reads.get_step(store.db, step_id)["log_count"] > 10, what="events flow")
    path = f"/ws?job={job_id}"

    for i in range(100):  # warm up: imports, caches, the first greenlets
        misbehave(server.port, path, i % 4)
    wait_for(lambda: live_connections(server.url) == 0, 15, what="warm-up connections closed")
    time.sleep(0.5)
    fds_before, rss_before = process_usage(pid)

    stalled = ws_connect(server.port, path, rcvbuf=4096)  # never reads while events flow
    started = time.monotonic()
    for i in range(cycles):
        misbehave(server.port, path, i % 4)
    churn_s = time.monotonic() - started
    fds_during, rss_during = process_usage(pid)
    stalled.close()

    wait_for(lambda: live_connections(server.url) == 0, 15, what="every connection closed")
    wait_for(lambda: process_usage(pid)[0] <= fds_before, 15, what="fds back to baseline")
    fds_after, rss_after = process_usage(pid)
    growth_kb = rss_after - rss_before
    print(f"\n{cycles} misbehaving WebSocket cycles in {churn_s:.1f}s + 1 stalled reader:"
          f" fds {fds_before} -> {fds_during} -> {fds_after};"
          f" RSS {rss_before} -> {rss_during} -> {rss_after} KB ({growth_kb:+d} KB)")
    # a leak of even 8 KB per connection would show as 3 MB here (8 MB with --soak)
    assert growth_kb < cycles * 8 * 0.9
    fresh = ws_connect(server.port, path)
    fresh.settimeout(10)
    assert b'"snapshot": true' in fresh.recv(65536)
    fresh.close()
