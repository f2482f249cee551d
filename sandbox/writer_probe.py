#!/usr/bin/env python3
"""Writer probe: how long writes through a service address are unavailable around an event.

  writer_probe.py run --host 198.18.0.2 --port 5433 [--out FILE] [--duration S] [--interval 0.05]
      Every interval opens a NEW connection, inserts one row into `probe` (recording which node took it:
      inet_server_addr(), pg_is_in_recovery()), the whole attempt bounded by --timeout (1 s) of wall
      time, so a hanging connection costs at most that much resolution; one JSON line per attempt:
      {"seq", "t0", "t1", "ok", "addr", "in_recovery", "id", "err"}  (t0/t1: epoch seconds).
      Runs until --duration elapses or SIGINT/SIGTERM. With --read, each attempt runs
      `SELECT inet_server_addr(), pg_is_in_recovery()` instead (a read load through a replica service;
      "id" is then null).
  writer_probe.py aggregate DIR [--label TEXT]
      Table (and DIR/results.json) of failover-scenario's per-run summaries, with medians.
  writer_probe.py summary FILE [--event T]... [--events-file F] [--verify-host H --verify-port P] [--json]
      Per event T (epoch seconds; pgsandbox prints them and keeps them in $STATE/events.log):
        window   = first failed attempt at/after T -> end of the first success after the last failure
                   before the next event (0 when nothing failed);
        max_gap  = the longest time between two successive successful commits in that span.
      Safety: every acknowledged write must have come from a node not in recovery, the node taking writes
      may change only across an event, and (with --verify-*) every acknowledged row must be on the final
      primary, from the node that acknowledged it (acknowledged-but-lost rows are listed).

Needs psycopg2 (the sandbox venv's python). Connection: --user/--password/--dbname, default the
sandbox's test user.
"""

import argparse
import json
import select
import signal
import sys
import time

INSERT = (
    "INSERT INTO probe(run, seq, client_ts, server_addr, in_recovery)"
    " VALUES (%s, %s, to_timestamp(%s), inet_server_addr(), pg_is_in_recovery())"
    " RETURNING id, host(server_addr), in_recovery"
)


def dsn(a, host, port):
    return (
        f"host={host} port={port} user={a.user} password={a.password} dbname={a.dbname}"
        f" connect_timeout={max(2, int(a.timeout + 0.999))}"
    )


def wait_ready(conn, deadline):
    """Drives an asynchronous psycopg2 connection until its current operation completes or the deadline."""
    import psycopg2.extensions as ext

    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        left = deadline - time.time()
        if left <= 0:
            raise TimeoutError("no answer within the attempt timeout")
        if state == ext.POLL_READ:
            select.select([conn.fileno()], [], [], left)
        elif state == ext.POLL_WRITE:
            select.select([], [conn.fileno()], [], left)
        else:
            raise RuntimeError(f"unexpected poll state {state}")


READ = "SELECT NULL::bigint, host(inet_server_addr()), pg_is_in_recovery()"


def attempt(conninfo, run_id, seq, t0, timeout, read=False):
    """One write on a new connection (autocommit: the INSERT is its own transaction), all of it —
    connect, authentication through any pooler, commit — bounded by `timeout` seconds of wall time.
    A write whose acknowledgement did not arrive in time counts as failed even if it committed."""
    import psycopg2

    deadline = t0 + timeout
    conn = psycopg2.connect(conninfo, async_=1)
    try:
        wait_ready(conn, deadline)
        cur = conn.cursor()
        if read:
            cur.execute(READ)
        else:
            cur.execute(INSERT, (run_id, seq, t0))
        wait_ready(conn, deadline)
        return cur.fetchone()
    finally:
        conn.close()


def cmd_run(a):
    stop = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.append(1))
    out = open(a.out, "a", buffering=1) if a.out else sys.stdout
    run_id = a.run_id or f"probe-{int(time.time())}"
    conninfo = dsn(a, a.host, a.port)
    t_end = time.time() + a.duration if a.duration else None
    next_t = time.time()
    seq = 0
    while not stop and (t_end is None or time.time() < t_end):
        seq += 1
        t0 = time.time()
        rec = {"run": run_id, "seq": seq, "t0": round(t0, 4)}
        try:
            row_id, addr, in_rec = attempt(conninfo, run_id, seq, t0, a.timeout, a.read)
            rec.update(ok=True, id=row_id, addr=addr, in_recovery=in_rec)
        except Exception as e:  # noqa: BLE001 - every failure is data here
            rec.update(ok=False, err=" ".join(str(e).split())[:200])
        rec["t1"] = round(time.time(), 4)
        out.write(json.dumps(rec) + "\n")
        next_t += a.interval
        delay = next_t - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.time()  # fell behind (a slow attempt): do not burst to catch up
    return 0


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                recs.append(json.loads(line))
    recs.sort(key=lambda r: r["t0"])
    return recs


def load_events(path):
    events = []
    with open(path) as f:
        for line in f:
            parts = line.split(None, 1)
            if parts:
                events.append((float(parts[0]), parts[1].strip() if len(parts) > 1 else ""))
    return events


def window(recs, start, end):
    """Unavailability around an event at `start` (span ends at `end`)."""
    span = [r for r in recs if start <= r["t0"] < end]
    fails = [r for r in span if not r["ok"]]
    oks = [r for r in span if r["ok"]]
    res = {"attempts": len(span), "failed": len(fails), "window_s": 0.0, "max_gap_s": None}
    prev_ok = [r for r in recs if r["ok"] and r["t1"] <= start]
    commits = ([prev_ok[-1]["t1"]] if prev_ok else []) + [r["t1"] for r in oks]
    gaps = [b - a for a, b in zip(commits, commits[1:])]
    if gaps:
        res["max_gap_s"] = round(max(gaps), 3)
    if fails:
        first_fail = fails[0]["t0"]
        last_fail = fails[-1]["t0"]
        after = [r for r in oks if r["t0"] > last_fail]
        res["first_fail_after_event_s"] = round(first_fail - start, 3)
        if after:
            res["window_s"] = round(after[0]["t1"] - first_fail, 3)
            res["recovered_after_event_s"] = round(after[0]["t1"] - start, 3)
        else:
            res["window_s"] = None  # never recovered inside the span
        kinds = {}
        for r in fails:
            k = r.get("err", "")[:70]
            kinds[k] = kinds.get(k, 0) + 1
        res["errors"] = sorted(kinds.items(), key=lambda kv: -kv[1])[:5]
    before = {r["addr"] for r in prev_ok[-1:]}
    res["writer_before"] = sorted(before)
    res["writer_after"] = sorted({r["addr"] for r in oks[-1:]})
    return res


def segments(recs):
    segs = []
    for r in recs:
        if not r["ok"]:
            continue
        if segs and segs[-1]["addr"] == r["addr"]:
            segs[-1]["last"] = r["t1"]
            segs[-1]["writes"] += 1
        else:
            segs.append({"addr": r["addr"], "first": r["t1"], "last": r["t1"], "writes": 1})
    return segs


def verify(a, recs):
    import psycopg2

    acked = {(r["run"], r["seq"]): r["addr"] for r in recs if r["ok"]}
    runs = sorted({k[0] for k in acked})
    conn = psycopg2.connect(dsn(a, a.verify_host, a.verify_port))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT run, seq, host(server_addr), pg_is_in_recovery() FROM probe WHERE run = ANY(%s)",
                (runs,),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    stored = {(run, seq): addr for run, seq, addr, _ in rows}
    lost = sorted(k for k in acked if k not in stored)
    moved = sorted(k for k in acked if k in stored and stored[k] != acked[k])
    return {
        "acknowledged": len(acked),
        "stored": len(stored),
        "lost": [{"run": k[0], "seq": k[1], "addr": acked[k]} for k in lost][:20],
        "lost_count": len(lost),
        "addr_mismatch_count": len(moved),
    }


def cmd_summary(a):
    recs = load(a.file)
    if not recs:
        print("no records", file=sys.stderr)
        return 1
    events = [(t, "") for t in a.event or []]
    if a.events_file:
        events += load_events(a.events_file)
    events = sorted(e for e in events if recs[0]["t0"] <= e[0] <= recs[-1]["t1"])
    oks = [r for r in recs if r["ok"]]
    commits = [r["t1"] for r in oks]
    gaps = [b - a for a, b in zip(commits, commits[1:])]
    segs = segments(recs)
    violations = []
    for r in oks:
        if r.get("in_recovery"):
            violations.append(f"seq {r['seq']}: write acknowledged by {r['addr']} while in recovery")
    for s0, s1 in zip(segs, segs[1:]):
        # the event that moved the writer happened after the old writer's first write (its command may
        # take a moment to act, so the old node may still commit a few writes after the event)
        if not any(s0["first"] <= t <= s1["first"] for t, _ in events):
            violations.append(
                f"writer changed {s0['addr']} -> {s1['addr']} between {s0['last']:.3f} and "
                f"{s1['first']:.3f} with no event in between"
            )
    summary = {
        "file": a.file,
        "attempts": len(recs),
        "ok": len(oks),
        "failed": len(recs) - len(oks),
        "duration_s": round(recs[-1]["t1"] - recs[0]["t0"], 3),
        "max_gap_between_writes_s": round(max(gaps), 3) if gaps else None,
        "writers": [
            {"addr": s["addr"], "writes": s["writes"], "first": s["first"], "last": s["last"]} for s in segs
        ],
        "events": [],
        "violations": violations,
    }
    bounds = [t for t, _ in events] + [recs[-1]["t1"] + 1]
    for (t, what), nxt in zip(events, bounds[1:]):
        w = window(recs, t, nxt)
        w.update(event_time=t, event=what)
        summary["events"].append(w)
    if a.verify_host:
        summary["verify"] = verify(a, recs)
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['attempts']} attempts, {summary['ok']} ok, {summary['failed']} failed over "
            f"{summary['duration_s']}s; longest gap between writes {summary['max_gap_between_writes_s']}s"
        )
        for s in summary["writers"]:
            print(f"  writer {s['addr']}: {s['writes']} writes")
        for w in summary["events"]:
            print(
                f"  event {w['event'] or w['event_time']}: window {w['window_s']}s, "
                f"max gap {w['max_gap_s']}s, {w['failed']}/{w['attempts']} failed, "
                f"writer {w['writer_before']} -> {w['writer_after']}"
            )
            for err, n in w.get("errors", []):
                print(f"      {n:5d} x {err}")
        if "verify" in summary:
            v = summary["verify"]
            print(
                f"  verify: {v['acknowledged']} acknowledged, {v['lost_count']} lost, "
                f"{v['addr_mismatch_count']} with another node's address"
            )
        for v in violations:
            print(f"  VIOLATION: {v}")
    return 1 if violations else 0


def cmd_aggregate(a):
    """Collects DIR/<kind>-<round>.summary.json (failover-scenario's output) into a table."""
    import glob
    import os
    import statistics

    kinds = {}
    for path in sorted(glob.glob(os.path.join(a.dir, "*.summary.json"))):
        name = os.path.basename(path)[: -len(".summary.json")]
        kind = name.rsplit("-", 1)[0]
        with open(path) as f:
            summ = json.load(f)
        ev = summ["events"][0] if summ["events"] else {}
        kinds.setdefault(kind, []).append(
            {
                "run": name,
                "window_s": ev.get("window_s"),
                "max_gap_s": ev.get("max_gap_s"),
                "failed": ev.get("failed"),
                "attempts": ev.get("attempts"),
                "lost": summ.get("verify", {}).get("lost_count"),
                "violations": len(summ["violations"]),
            }
        )
    result = {"label": a.label, "kinds": {}}
    for kind, runs in kinds.items():
        gaps = [r["max_gap_s"] for r in runs if r["max_gap_s"] is not None]
        wins = [r["window_s"] for r in runs if r["window_s"] is not None]
        result["kinds"][kind] = {
            "runs": runs,
            "median_max_gap_s": statistics.median(gaps) if gaps else None,
            "median_window_s": statistics.median(wins) if wins else None,
        }
    with open(os.path.join(a.dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"write unavailability through {a.label}")
    print(f"  {'run':<20} {'window(s)':>9} {'max gap(s)':>10} {'failed':>11} {'lost':>5} {'violations':>10}")
    for kind, k in result["kinds"].items():
        for r in k["runs"]:
            print(
                f"  {r['run']:<20} {r['window_s']!s:>9} {r['max_gap_s']!s:>10} "
                f"{r['failed']!s:>5}/{r['attempts']!s:<5} {r['lost']!s:>5} {r['violations']:>10}"
            )
        print(f"  {kind + ' median':<20} {k['median_window_s']!s:>9} {k['median_max_gap_s']!s:>10}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", default="dbuser_test")
    p.add_argument("--password", default="DBUser.Test")
    p.add_argument("--dbname", default="test")
    p.add_argument(
        "--timeout", type=float, default=1.0, help="wall-time limit of one attempt (connect + write), seconds"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--interval", type=float, default=0.05)
    r.add_argument("--duration", type=float, default=0, help="seconds; 0 = until SIGINT/SIGTERM")
    r.add_argument("--out", help="append JSON lines here (default stdout)")
    r.add_argument("--run-id")
    r.add_argument("--read", action="store_true", help="a read per attempt instead of a write")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("summary")
    s.add_argument("file")
    s.add_argument("--event", type=float, action="append", help="epoch seconds of an event")
    s.add_argument("--events-file", help="lines of '<epoch> <description>' (pgsandbox's events.log)")
    s.add_argument("--verify-host")
    s.add_argument("--verify-port", type=int, default=5433)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_summary)
    g = sub.add_parser("aggregate", help="table of failover-scenario's DIR/*.summary.json")
    g.add_argument("dir")
    g.add_argument("--label", default="")
    g.set_defaults(fn=cmd_aggregate)
    a = p.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
