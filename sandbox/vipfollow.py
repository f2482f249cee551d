#!/usr/bin/env python3
"""The sandbox's vip-manager: keeps the cluster's L2 VIP on the node whose member holds the leader key.

  vipfollow.py --etcd URL --key /pg/pg-test/leader --vip 198.18.0.3/24 --dev eth0 \
      --member pg-test-1=NETNS1 --member pg-test-2=NETNS2 ... [--interval 0.02] [--events FILE]
      [--cacert F --cert F --key-file F] [--user U --password P]

Like vip-manager, it reads the leader key from etcd (here by polling the v3 JSON gateway every
--interval, which also covers what a watch can miss), and when the key names another member it removes
the address from the old holder's interface first, then adds it on the new one's and announces it with a
gratuitous ARP. When the key is gone (the leader's lease expired) or etcd does not answer for --ttl
seconds, the address is held by nobody. Every move is a line `<epoch> vip <member|none>` in --events.
Runs until SIGTERM/SIGINT; then it leaves the address where it is (the sandbox's `down` deletes the
namespaces).
"""

import argparse
import signal
import subprocess
import sys
import time

from etcdgw import Etcd


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} vipfollow: {msg}", file=sys.stderr, flush=True)


def ip(netns, *args):
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=False)


def garp(netns, dev, addr):
    """A gratuitous ARP request for `addr` from `dev` inside `netns` (as vip-manager sends)."""
    code = (
        "import socket,struct,fcntl,sys\n"
        "dev,a=sys.argv[1],socket.inet_aton(sys.argv[2])\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
        "s.bind((dev,0x0806))\n"
        "mac=s.getsockname()[4]\n"
        "b=b'\\xff'*6\n"
        "arp=struct.pack('!HHBBH',1,0x0800,6,4,1)+mac+a+b'\\x00'*6+a\n"
        "s.send(b+mac+struct.pack('!H',0x0806)+arp)\n"
    )
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, dev, addr], check=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--etcd", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--vip", required=True, help="ADDR/PREFIX")
    p.add_argument("--dev", default="eth0")
    p.add_argument("--member", action="append", default=[], help="NAME=NETNS")
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--ttl", type=float, default=30.0)
    p.add_argument("--events")
    p.add_argument("--cacert")
    p.add_argument("--cert")
    p.add_argument("--key-file")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()
    members = dict(m.split("=", 1) for m in a.member)
    addr = a.vip.split("/")[0]
    stop = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.append(1))
    etcd = Etcd(a.etcd, a.cacert, a.cert, a.key_file, a.user, a.password)
    # start from what the interfaces say (a restarted follower adopts the current holder)
    holder = None
    for name, netns in members.items():
        if f" {addr}/" in ip(netns, "-4", "addr", "show", "dev", a.dev).stdout:
            holder = name if holder is None else holder
            if holder != name:
                ip(netns, "addr", "del", a.vip, "dev", a.dev)
    last_ok = time.time()
    log(f"following {a.key} on {a.etcd}; VIP {a.vip} on {holder or 'nobody'}")
    while not stop:
        try:
            want = etcd.get(a.key)
            last_ok = time.time()
        except (OSError, ValueError, KeyError) as e:
            if time.time() - last_ok < a.ttl:
                time.sleep(a.interval)
                continue
            if holder is not None:
                log(f"etcd unreachable for {a.ttl}s ({e}): releasing the VIP")
            want = None
        if want not in members:
            want = None
        if want != holder:
            if holder is not None:
                ip(members[holder], "addr", "del", a.vip, "dev", a.dev)
            if want is not None:
                r = ip(members[want], "addr", "add", a.vip, "dev", a.dev)
                if r.returncode != 0 and "File exists" not in r.stderr:
                    log(f"adding {a.vip} on {want}: {r.stderr.strip()}")
                garp(members[want], a.dev, addr)
            t = time.time()
            log(f"VIP {a.vip}: {holder or 'nobody'} -> {want or 'nobody'}")
            if a.events:
                with open(a.events, "a") as f:
                    f.write(f"{t:.3f} vip {want or 'none'}\n")
            holder = want
        time.sleep(a.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
