"""A small client of etcd's v3 JSON gateway, for the sandbox's scripts (sbctl.py, vipfollow.py).

The sandbox's etcd runs as Pigsty's does: https only, client certificates required
(`--client-cert-auth`), RBAC on. Every client therefore gives a CA, a certificate and key (a node's
`server.crt`/`server.key`, as Pigsty's /pg/cert holds them) and logs in as a user.
"""

import base64
import json
import ssl
import urllib.error
import urllib.request


def b64(text):
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix):
    """The range end that covers every key starting with `prefix` (etcdctl's --prefix)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class Etcd:
    def __init__(self, url, cacert=None, cert=None, key=None, user=None, password=None, timeout=1.0):
        self.url = url.rstrip("/")
        self.ctx = None
        if self.url.startswith("https"):
            self.ctx = ssl.create_default_context(cafile=cacert)
            if cert:
                self.ctx.load_cert_chain(cert, key)
        self.user, self.password = user, password
        self.token = None
        self.timeout = timeout

    @classmethod
    def from_dir(cls, url, tls_dir, user=None, password=None, timeout=1.0):
        """A client with a Pigsty-style certificate directory (ca.crt, server.crt, server.key)."""
        if not tls_dir:
            return cls(url, user=user, password=password, timeout=timeout)
        return cls(
            url,
            cacert=f"{tls_dir}/ca.crt",
            cert=f"{tls_dir}/server.crt",
            key=f"{tls_dir}/server.key",
            user=user,
            password=password,
            timeout=timeout,
        )

    def post(self, path, body, auth=True):
        if auth and self.user and not self.token:
            self.token = self.post(
                "/v3/auth/authenticate", {"name": self.user, "password": self.password}, auth=False
            )["token"]
        headers = {"Content-Type": "application/json"}
        if auth and self.token:
            headers["Authorization"] = self.token
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 401:
                self.token = None
            raise

    def get(self, key):
        """The value of `key`, or None when there is no such key."""
        kvs = self.post("/v3/kv/range", {"key": b64(key)}).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def init_auth(self, root_password, users):
        """Pigsty's RBAC: user root (role root), and for each (name, password, prefix) a role `name`
        with read-write on `prefix` and a user `name` holding it; then authentication on. Run once,
        before authentication is on (the caller then logs in as one of these users)."""
        self.post("/v3/auth/user/add", {"name": "root", "password": root_password}, auth=False)
        self.post("/v3/auth/user/grant", {"user": "root", "role": "root"}, auth=False)
        for name, password, prefix in users:
            self.post("/v3/auth/role/add", {"name": name}, auth=False)
            perm = {"permType": "READWRITE", "key": b64(prefix), "range_end": prefix_end(prefix)}
            self.post("/v3/auth/role/grant", {"name": name, "perm": perm}, auth=False)
            self.post("/v3/auth/user/add", {"name": name, "password": password}, auth=False)
            self.post("/v3/auth/user/grant", {"user": name, "role": name}, auth=False)
        self.post("/v3/auth/enable", {}, auth=False)
