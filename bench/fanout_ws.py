"""Two web instances on ONE database, 1,000 WebSocket clients each, a job
emitting 50 events/s (issue 12): does every client get every message in
order, and how long from the writer's commit to each client?

    python3 -m bench.fanout_ws                       # SQLite, then PostgreSQL
    python3 -m bench.fanout_ws --backend postgres --clients 50 --seconds 10

Each instance is its own gunicorn (one gevent worker) on its own port, as two
machines would be; on PostgreSQL each LISTENs, on SQLite each polls the one
file. The clients of each instance live in a process of their own (one epoll
loop, bench/wscrowd.py), so reading 50,000 frames a second shares no GIL with
the writer whose commit times they are measured against. Most clients
watch the job's page (`/ws?job=<id>`: one message per event); `--list-clients`
of each instance watch the jobs list (`/ws?view=jobs`: coalesced, about 10
messages a second, each carrying the seq of the last event it covers).
"""

import argparse
import multiprocessing
import os
import resource
import time
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import Store, definition, median, pct, rss_kb, temp_db, web
from bench.latency import steps_toml
from bench.wscrowd import Client, Crowd

STEPS = 50  # a job of 50 steps, each running, reporting progress, completing
SETTLE_S = 2.0  # after every client is open: the last snapshots arrive
CATCH_UP_S = 30.0  # after the last commit: how long clients may take to get it


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Every client socket is a descriptor in the client process, and one in
    a web worker (which inherits this limit). Returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"ulimit -n is {soft} (hard {hard}); {needed} descriptors needed")
    return soft, hard


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine spent, over all cores."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- the writer ------------------------------------------------------------------


def drive(store: Store, job_id: str, events: int, rate: float) -> dict[int, float]:
    """`events` events at `rate` a second on a fixed schedule (a slow commit
    does not lower the rate), as a worker running the job would write them:
    the job starts, each step goes running -> progress updates -> completed,
    the job completes. Returns the commit time (time.time()) by seq."""
    from stepline.store import reads

    steps = [s["id"] for s in reads.job_steps(store.db, job_id)]
    per_step = max(2, (events - 2) // len(steps))  # running + progress... + completed
    writes = [("job", job_id, "running")]
    for step in steps:
        writes.append(("step", step, "running"))
        writes += [("progress", step, (done, per_step - 1)) for done in range(1, per_step - 1)]
        writes.append(("step", step, "completed"))
    writes.append(("job", job_id, "completed"))
    committed, due = {}, time.monotonic()
    for kind, entity, arg in writes:
        with store.write() as tx:
            if kind == "progress":
                tx.set_progress(entity, *arg)
            else:
                tx.transition(kind, entity, arg)
        committed[tx.last_seq] = time.time()
        due += 1 / rate
        time.sleep(max(0.0, due - time.monotonic()))
    return committed


# -- one instance's clients, in a process of their own -------------------------------


def clients_process(port: int, paths: list[str], pipe) -> None:
    """Open a WebSocket per path; report ("ready", opened, errors, seconds);
    read them all until ("done", committed) comes and every client has the
    last seq (or CATCH_UP_S passed), then send back this instance's summary."""
    crowd, errors = Crowd(), {}
    started = time.monotonic()
    for n, path in enumerate(paths, 1):
        try:
            crowd.open(port, path)
        except Exception as exc:  # refused, timed out, not a 101: counted, shown
            errors[repr(exc)[:80]] = errors.get(repr(exc)[:80], 0) + 1
        if n % 50 == 0:  # snapshots keep coming in while the crowd grows
            crowd.poll(0)
    pipe.send(("ready", len(crowd.clients), errors, time.monotonic() - started))
    while not pipe.poll(0):
        crowd.poll(0.05)
    _, committed = pipe.recv()
    last, deadline = max(committed), time.monotonic() + CATCH_UP_S
    clients = list(crowd.clients.values())
    while time.monotonic() < deadline and not all(
            c.closed or (c.received and c.received[-1][0] >= last) for c in clients):
        crowd.poll(0.1)
    dropped = sum(c.closed for c in clients)  # before we close them: the server did
    crowd.close_all()
    pipe.send(summarise([("list" if "view=jobs" in c.path else "job", c) for c in clients],
                        committed, dropped))


def summarise(conns: list[tuple[str, Client]], committed: dict[int, float],
              dropped: int) -> dict:
    """Per kind of client: how many got every message after their snapshot
    in order with no gap (job page: exactly the committed seqs after the
    snapshot's; jobs list: increasing seqs ending at the last), how many
    resynced (a second snapshot), and commit -> arrival latencies in ms (the
    jobs list: of each event, to the first message covering it). For the job
    page also each event's first and last arrival over the instance's
    clients: a late event that reached every client late was a stall
    upstream (tailer, machine), a wide spread is the fan-out itself."""
    order = sorted(committed)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    result = {kind: {"clients": 0, "complete": 0, "in_order": 0, "resyncs": 0,
                     "latencies": []} for kind in ("job", "list")}
    for kind, conn in conns:
        r = result[kind]
        r["clients"] += 1
        received = conn.received
        if not received or conn.snapshots[:1] != [0]:
            continue  # no snapshot first: counts as neither complete nor in order
        r["resyncs"] += len(conn.snapshots) > 1
        seqs = [seq for seq, _ in received[1:]]
        increasing = all(a < b for a, b in pairwise(seqs))
        r["in_order"] += increasing
        after = [seq for seq in order if seq > received[0][0]]
        if kind == "job":
            r["complete"] += seqs == after and len(conn.snapshots) == 1
            r["latencies"] += [(t - committed[seq]) * 1000 for seq, t in received[1:]
                               if seq in committed]
            for seq, t in received[1:]:
                first[seq] = min(first.get(seq, t), t)
                last[seq] = max(last.get(seq, t), t)
        else:
            r["complete"] += (len(conn.snapshots) == 1 and bool(seqs) and seqs[-1] == order[-1]
                              and increasing)
            i = 0
            for seq in after:  # the first message at or past each event
                while i < len(seqs) and seqs[i] < seq:
                    i += 1
                if i < len(seqs):
                    r["latencies"].append((received[1 + i][1] - committed[seq]) * 1000)
    for r in result.values():
        lat = r.pop("latencies")
        r["p50"], r["p99"] = (median(lat), pct(lat, 99)) if lat else (float("nan"),) * 2
        r["max"], r["samples"] = max(lat, default=float("nan")), len(lat)
    spreads = [(last[seq] - first[seq]) * 1000 for seq in last if seq in committed]
    worst = max((seq for seq in last if seq in committed),
                key=lambda seq: last[seq] - committed[seq], default=None)
    result["spread"] = (median(spreads), pct(spreads, 99)) if spreads else (float("nan"),) * 2
    result["worst"] = ((first[worst] - committed[worst]) * 1000,
                       (last[worst] - committed[worst]) * 1000) if worst else (float("nan"),) * 2
    result["dropped"] = dropped
    return result


# -- one backend -----------------------------------------------------------------------


def run(backend: str, clients: int, list_clients: int, seconds: float, rate: float) -> dict:
    events = int(seconds * rate)
    spawn = multiprocessing.get_context("spawn")  # no fork of the writer's pool threads
    with temp_db(backend=backend) as db:
        store = Store(db)
        job_id = store.create_job(definition(steps_toml(STEPS)), {})
        with web(db) as first, web(db) as second:
            instances = []
            for server in (first, second):
                url = urlsplit(server.url)
                paths = ["/ws?view=jobs"] * list_clients + [f"/ws?job={job_id}"] * (
                    clients - list_clients)
                parent, child = spawn.Pipe()
                proc = spawn.Process(target=clients_process, args=(url.port, paths, child),
                                     daemon=True)
                proc.start()
                instances.append({"server": server, "pid": server.worker_pids()[0],
                                  "proc": proc, "pipe": parent})
            for inst in instances:  # both crowds open at once
                _, inst["opened"], inst["errors"], inst["open_s"] = inst["pipe"].recv()
            time.sleep(SETTLE_S)
            for inst in instances:
                inst["cpu"] = cpu_seconds(inst["pid"])
                inst["client_cpu"] = cpu_seconds(inst["proc"].pid)
            load_before, busy = os.getloadavg()[0], machine_busy_seconds()
            started = time.time()
            committed = drive(store, job_id, events, rate)
            elapsed = time.time() - started
            load_after, busy = os.getloadavg()[0], machine_busy_seconds() - busy
            for inst in instances:
                inst["cpu"] = cpu_seconds(inst["pid"]) - inst["cpu"]
                inst["client_cpu"] = cpu_seconds(inst["proc"].pid) - inst["client_cpu"]
                inst["rss"] = rss_kb(inst["pid"])
                inst["pipe"].send(("done", committed))
            for inst in instances:
                inst["summary"] = inst["pipe"].recv()
                inst["proc"].join(30)
        store.close()
    return {"backend": backend, "events": len(committed), "elapsed": elapsed,
            "load": (load_before, load_after), "busy": busy, "instances": instances,
            "clients": clients, "list_clients": list_clients}


def print_results(results: list[dict]) -> None:
    from bench.harness import machine

    print(f"\n## 2 web instances x WebSocket clients on one database  ({machine()})\n")
    print("| backend | instance | clients open (job page + jobs list) | events | every message"
          " in order, no gap (job page / list) | resyncs / dropped | job page: commit ->"
          " message p50 / p99 / max | jobs list: commit -> covered p50 / p99 / max |"
          " one event to all job-page clients: spread p50 / p99; slowest event: first"
          " / last client | web worker CPU / RSS | its clients' CPU | load (all cores busy) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for n, inst in enumerate(res["instances"], 1):
            s, job, lst = inst["summary"], inst["summary"]["job"], inst["summary"]["list"]
            errors = f" ({sum(inst['errors'].values())} failed: {inst['errors']})" \
                if inst["errors"] else ""
            print(f"| {res['backend']} | {n} | {inst['opened']:,}{errors} = {job['clients']:,}"
                  f" + {lst['clients']:,} in {inst['open_s']:.1f} s | {res['events']:,} at"
                  f" {res['events'] / res['elapsed']:.1f}/s | {job['complete']:,} /"
                  f" {lst['complete']:,} ({job['in_order']:,} / {lst['in_order']:,} in order)"
                  f" | {job['resyncs'] + lst['resyncs']} / {s['dropped']} |"
                  f" {job['p50']:.0f} / {job['p99']:.0f} / {job['max']:.0f} ms |"
                  f" {lst['p50']:.0f} / {lst['p99']:.0f} / {lst['max']:.0f} ms |"
                  f" {s['spread'][0]:.0f} / {s['spread'][1]:.0f} ms; {s['worst'][0]:.0f} /"
                  f" {s['worst'][1]:.0f} ms |"
                  f" {inst['cpu'] / res['elapsed'] * 100:.0f} % / {inst['rss'] / 1024:.0f} MB |"
                  f" {inst['client_cpu'] / res['elapsed'] * 100:.0f} % |"
                  f" {res['load'][0]:.1f} -> {res['load'][1]:.1f}"
                  f" ({res['busy'] / res['elapsed'] / os.cpu_count() * 100:.0f} %) |")
    met = all(inst["summary"]["job"]["complete"] == inst["summary"]["job"]["clients"]
              and inst["summary"]["list"]["complete"] == inst["summary"]["list"]["clients"]
              and inst["opened"] == res["clients"] and inst["summary"]["job"]["p99"] <= 250
              for res in results for inst in res["instances"])
    print(f"\ntarget: every client every message in order, job page p99 <= 250 ms:"
          f" {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", nargs="+", choices=["sqlite", "postgres"],
                        default=["sqlite", "postgres"])
    parser.add_argument("--clients", type=int, default=1000, help="per instance")
    parser.add_argument("--list-clients", type=int, default=100,
                        help="of those, how many watch the jobs list")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=50, help="events per second")
    args = parser.parse_args()
    # clients + their server sides (in the web workers) + slack for the rest
    soft, hard = raise_fd_limit(args.clients * 2 + 256)
    print(f"ulimit -n: soft {soft}, hard {hard}")
    results = [run(backend, args.clients, args.list_clients, args.seconds, args.rate)
               for backend in args.backend]
    print_results(results)


if __name__ == "__main__":
    main()
