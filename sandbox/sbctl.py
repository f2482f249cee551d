"""Readiness checks and status for pgsandbox; runs inside the sandbox's client namespace.

Every question goes to the node it is about (its own Patroni REST API, its own pgbouncer): the DCS view
(`patronictl list`, /cluster) lags by up to loop_wait. Exit status 0 means "yes", 1 "not (yet)".
"""

import argparse
import json
import socket
import sys
import urllib.error
import urllib.request

from etcdgw import Etcd

REST_PORT = 8008
TEST_DSN = "user=dbuser_test password=DBUser.Test dbname=test connect_timeout=2"


def rest(addr, path, timeout=1.0):
    """(status, parsed JSON body or None) of GET http://addr:8008/path; (None, None) when unreachable."""
    url = f"http://{addr}:{REST_PORT}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"null")
        except ValueError:
            body = None
        return e.code, body
    except (OSError, ValueError):
        return None, None


def members(pairs):
    out = []
    for p in pairs:
        name, _, addr = p.partition("=")
        out.append((name, addr))
    return out


def etcd_client(a):
    return Etcd.from_dir(a.url, a.tls_dir, a.user, a.password)


def cmd_etcd_has_key(a):
    return 0 if etcd_client(a).get(a.key) is not None else 1


def cmd_etcd_init_auth(a):
    """Pigsty's etcd RBAC: root, and the cluster's user with read-write on its prefix; then auth on."""
    Etcd.from_dir(a.url, a.tls_dir).init_auth(a.root_password, [(a.user, a.password, a.prefix)])
    # the user can now read its prefix, and only with its password
    etcd_client(a).get(a.prefix + "leader")
    return 0


def cmd_check_node(a):
    code, body = rest(a.addr, "/patroni")
    if code is None or not isinstance(body, dict):
        return 1
    if (a.running or a.role != "any" or a.streaming) and body.get("state") != "running":
        return 1
    if a.role == "primary":
        pcode, _ = rest(a.addr, "/primary")
        if body.get("role") != "primary" or pcode != 200:
            return 1
    elif a.role == "replica" and body.get("role") != "replica":
        return 1
    if a.streaming and body.get("replication_state") != "streaming":
        return 1
    return 0


def connect(addr, port):
    import psycopg2

    return psycopg2.connect(f"host={addr} port={port} {TEST_DSN}")


def cmd_check_write(a):
    conn = connect(a.addr, a.port)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO probe(run, seq, client_ts, server_addr, in_recovery)"
                " VALUES ('check', 0, now(), inet_server_addr(), pg_is_in_recovery())"
                " RETURNING server_addr"
            )
            got = cur.fetchone()[0]
    finally:
        conn.close()
    return 0 if a.anywhere or got == a.addr else 1


def cmd_check_read(a):
    conn = connect(a.addr, a.port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT inet_server_addr(), pg_is_in_recovery()")
            addr, _ = cur.fetchone()
    finally:
        conn.close()
    return 0 if a.anywhere or addr == a.addr else 1


def cmd_leader(a):
    leaders = [name for name, addr in members(a.members) if rest(addr, "/primary")[0] == 200]
    if len(leaders) != 1:
        print(f"leaders: {leaders}", file=sys.stderr)
        return 1
    print(leaders[0])
    return 0


def cmd_check_cluster(a):
    """One leader answering /primary, every other member a running replica that streams, and every
    member's pgbouncer serving queries from its own node."""
    leaders = 0
    for _, addr in members(a.members):
        code, body = rest(addr, "/patroni")
        if code is None or not isinstance(body, dict) or body.get("state") != "running":
            return 1
        if body.get("role") == "primary":
            if rest(addr, "/primary")[0] != 200:
                return 1
            leaders += 1
        elif body.get("role") != "replica" or body.get("replication_state") != "streaming":
            return 1
        if not pgbouncer_ok(addr):
            return 1
    return 0 if leaders == 1 else 1


def pgbouncer_ok(addr):
    try:
        conn = connect(addr, 6432)
    except Exception:  # noqa: BLE001 - any failure means "not serving"
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        conn.close()


def cmd_status(a):
    rows = []
    primary_lsn = None
    for name, addr in members(a.members):
        code, body = rest(addr, "/patroni")
        body = body if isinstance(body, dict) else {}
        xlog = body.get("xlog") or {}
        if body.get("role") == "primary":
            primary_lsn = xlog.get("location")
        rows.append(
            {
                "name": name,
                "addr": addr,
                "rest": code,
                "role": body.get("role"),
                "state": body.get("state"),
                "timeline": body.get("timeline"),
                "replication_state": body.get("replication_state"),
                "replayed": xlog.get("replayed_location"),
                "tags": body.get("tags", {}),
                "pgbouncer": pgbouncer_ok(addr),
            }
        )
    for r in rows:
        r["lag_bytes"] = (
            primary_lsn - r["replayed"]
            if primary_lsn is not None and r["replayed"] is not None
            else (0 if r["role"] == "primary" else None)
        )
        del r["replayed"]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = "{:<10} {:<13} {:<8} {:<9} {:>3} {:<10} {:>9} {:<9} {}"
    print(fmt.format("member", "addr", "role", "state", "tl", "repl", "lag(B)", "pgbouncer", "tags"))
    for r in rows:
        tags = ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items()) if v)
        print(
            fmt.format(
                r["name"],
                r["addr"],
                str(r["role"] or "-"),
                str(r["state"] or ("down" if r["rest"] is None else "-")),
                str(r["timeline"] or "-"),
                str(r["replication_state"] or "-"),
                "-" if r["lag_bytes"] is None else str(r["lag_bytes"]),
                "up" if r["pgbouncer"] else "DOWN",
                tags,
            )
        )
    return 0


def etcd_login_args(s):
    s.add_argument("--tls-dir", help="ca.crt, server.crt, server.key (Pigsty's /pg/cert)")
    s.add_argument("--user")
    s.add_argument("--password")


def main():
    p = argparse.ArgumentParser(prog="sbctl")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("etcd-has-key")
    s.add_argument("url")
    s.add_argument("key")
    etcd_login_args(s)
    s.set_defaults(fn=cmd_etcd_has_key)
    s = sub.add_parser("etcd-init-auth")
    s.add_argument("url")
    etcd_login_args(s)
    s.add_argument("--root-password", required=True)
    s.add_argument("--prefix", required=True)
    s.set_defaults(fn=cmd_etcd_init_auth)
    s = sub.add_parser("check-node")
    s.add_argument("addr")
    s.add_argument("--role", choices=["primary", "replica", "any"], default="any")
    s.add_argument("--streaming", action="store_true")
    s.add_argument("--running", action="store_true")
    s.set_defaults(fn=cmd_check_node)
    for name, fn in (("check-write", cmd_check_write), ("check-read", cmd_check_read)):
        s = sub.add_parser(name)
        s.add_argument("addr")
        s.add_argument("port", type=int)
        s.add_argument("--anywhere", action="store_true", help="any node may answer (a service address)")
        s.set_defaults(fn=fn)
    s = sub.add_parser("leader")
    s.add_argument("members", nargs="+", help="name=addr")
    s.set_defaults(fn=cmd_leader)
    s = sub.add_parser("check-cluster")
    s.add_argument("members", nargs="+", help="name=addr")
    s.set_defaults(fn=cmd_check_cluster)
    s = sub.add_parser("status")
    s.add_argument("--json", action="store_true")
    s.add_argument("members", nargs="+", help="name=addr")
    s.set_defaults(fn=cmd_status)
    a = p.parse_args()
    try:
        return a.fn(a)
    except Exception as e:  # noqa: BLE001 - a failed check is a "no", said on stderr
        print(f"sbctl {a.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    socket.setdefaulttimeout(3)
    sys.exit(main())
