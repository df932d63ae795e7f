#!/usr/bin/env python3
"""An independent btfiler-compatible node, written from the protocol description only (docs/protocol.md)
(the btpeer/btfiler wire protocol notes).

It exists so that p2pipe's file-sharing node can be tested against a second,
separately written implementation of the btpeer/btfiler wire protocol. It behaves
like the original framework (no query de-duplication, JOIN/QUIT/RESP accepted from
anyone) except where the original is unsafe: it serves only regular files that sit
directly in its own folder, bounds every frame it reads and times out every socket.

Python 3.11 standard library only. See README.md for the command line.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading

MAX_FRAME = 64 * 1024 * 1024  # largest LEN this node reads or serves
MAX_REMOTE = 10_000  # bound on file names remembered from RESP
TIMEOUT = 5.0  # every socket operation

_HEADER = struct.Struct(">4sI")


class ProtocolError(Exception):
    """A frame that is truncated, oversized or otherwise unusable."""


# ---------------------------------------------------------------- frames


def send_frame(sock, ftype, payload=b""):
    if isinstance(ftype, str):
        ftype = ftype.encode("ascii")
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if len(ftype) != 4:
        raise ValueError(f"frame type must be 4 bytes: {ftype!r}")
    sock.sendall(_HEADER.pack(ftype, len(payload)) + payload)


def _recv_exact(sock, n):
    """n bytes, or None on EOF before the first byte; ProtocolError if cut short."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            if not buf:
                return None
            raise ProtocolError(f"truncated: {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(sock, max_len=MAX_FRAME):
    """(TYPE, payload) with TYPE as received, or None on a clean EOF."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    ftype, length = _HEADER.unpack(header)
    if length > max_len:
        raise ProtocolError(f"frame length {length} over limit {max_len}")
    payload = _recv_exact(sock, length) if length else b""
    if payload is None:
        raise ProtocolError("truncated: no payload")
    return ftype, payload


def exchange(host, port, ftype, payload=b"", timeout=TIMEOUT, max_len=MAX_FRAME):
    """One request on a fresh connection; every reply frame until the server closes."""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        send_frame(sock, ftype, payload)
        replies = []
        while (frame := recv_frame(sock, max_len)) is not None:
            replies.append(frame)
        return replies


def text(payload):
    return payload.decode("utf-8", errors="replace")


def parse_pid(pid):
    """'host:port' with exactly one colon -> (host, port); ValueError otherwise."""
    host, sep, port = pid.partition(":")
    if not sep or not host or ":" in port:
        raise ValueError(f"bad peer id {pid!r}")
    return host, parse_port(port)


def parse_port(port):
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r}")
    return int(port)


def trusted_mac(secret, nonce, op_text):
    """The MAC of a trusted request (docs/protocol.md, TRST): HMAC-SHA256 keyed with the
    node's secret over `<nonce> <op-text>`, as 64 lower-case hex digits."""
    return hmac.new(secret, f"{nonce} {op_text}".encode("utf-8"), hashlib.sha256).hexdigest()


def plain_name(name):
    """True if name can only mean a file directly inside the shared folder."""
    return (
        bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and not any(c.isspace() for c in name)
    )


# ---------------------------------------------------------------- the node


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(self.server.node.timeout)
        try:
            frame = recv_frame(sock)
            if frame is not None:
                self.server.node.dispatch(frame[0], frame[1], lambda t, p: send_frame(sock, t, p))
        except (OSError, ProtocolError):
            pass  # no message, or the requester went away: just close


class Node:
    """A btfiler peer: a listener, a peer table, a shared folder and a stabilizer."""

    def __init__(self, host="127.0.0.1", port=0, folder=None, max_peers=10,
                 on_event=None, timeout=TIMEOUT):
        self.timeout = timeout
        self.server = _Server((host, port), _Handler)
        self.server.node = self
        self.host = host
        self.port = self.server.server_address[1]
        self.myid = f"{host}:{self.port}"
        self.folder = folder
        self.max_peers = max_peers  # 0: unlimited
        self.on_event = on_event or (lambda *fields: None)
        self.peers = {}  # pid -> (host, port)
        self.remote = {}  # file name -> owner pid, learnt from RESP, never served
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.handlers = {
            b"NAME": self._h_name, b"LIST": self._h_list, b"JOIN": self._h_join,
            b"QUER": self._h_quer, b"RESP": self._h_resp, b"FGET": self._h_fget,
            b"QUIT": self._h_quit, b"PING": self._h_ping,
        }

    # -- life cycle

    def start(self, stabilize=5.0):
        threading.Thread(target=self.server.serve_forever, args=(0.2,), daemon=True).start()
        if stabilize > 0:
            threading.Thread(target=self._stabilizer, args=(stabilize,), daemon=True).start()

    def stop(self, say_goodbye=True):
        """Stop the stabilizer, send QUIT <my-id> to every peer, close the listener."""
        self.stopping.set()
        if say_goodbye:
            for pid, (host, port) in self.peer_list():
                try:
                    exchange(host, port, "QUIT", self.myid, self.timeout)
                except (OSError, ProtocolError):
                    pass
        self.server.shutdown()
        self.server.server_close()

    # -- peer table

    def peer_list(self):
        with self.lock:
            return list(self.peers.items())

    def full(self):
        with self.lock:
            return 0 < self.max_peers <= len(self.peers)

    def add_peer(self, pid, host, port):
        with self.lock:
            if pid in self.peers or pid == self.myid or self.full():
                return False
            self.peers[pid] = (host, int(port))
        self.on_event("PEER+", pid)
        return True

    def remove_peer(self, pid):
        with self.lock:
            removed = self.peers.pop(pid, None) is not None
        if removed:
            self.on_event("PEER-", pid)
        return removed

    # -- files

    def local_files(self):
        """Names of the regular files (not symlinks) directly in the shared folder."""
        if not self.folder:
            return []
        try:
            with os.scandir(self.folder) as entries:
                return sorted(e.name for e in entries
                              if e.is_file(follow_symlinks=False) and plain_name(e.name))
        except OSError:
            return []

    def known_files(self):
        """(name, owner) pairs: local files first, then names learnt from RESP."""
        with self.lock:
            remote = list(self.remote.items())
        return [(n, self.myid) for n in self.local_files()] + remote

    # -- dispatch

    def dispatch(self, ftype, payload, send):
        handler = self.handlers.get(ftype.upper())
        if handler is not None:  # unknown types: close without reply
            handler(text(payload), send)

    def _h_name(self, data, send):
        send("REPL", self.myid)

    def _h_list(self, data, send):
        peers = self.peer_list()
        send("REPL", str(len(peers)))
        for pid, (host, port) in peers:
            send("REPL", f"{pid} {host} {port}")

    def _h_join(self, data, send):
        fields = data.split()
        try:
            pid, host, port = fields
            parse_pid(pid)
            port = parse_port(port)
        except ValueError:
            send("ERRO", "Join: incorrect arguments")
            return
        with self.lock:  # decide under the lock, answer outside it
            if self.full():
                reply = ("ERRO", "Join: too many peers")
            elif pid in self.peers or pid == self.myid:
                reply = ("ERRO", f"Join: peer already inserted {pid}")
            else:
                self.add_peer(pid, host, port)
                reply = ("REPL", f"Join: peer added: {pid}")
        send(*reply)

    def _h_quer(self, data, send):
        try:
            ret, key, ttl = data.split()
            parse_pid(ret)
            if not ttl.isdigit():
                raise ValueError(ttl)
        except ValueError:
            send("ERRO", "Query: incorrect arguments")
            return
        send("REPL", f"Query ACK: {key}")
        self.on_event("QUER", ret, key, ttl)
        threading.Thread(target=self._process_query, args=(ret, key, int(ttl)),
                         daemon=True).start()

    def _process_query(self, ret, key, ttl):
        for name, owner in self.known_files():
            if key in name:
                host, port = parse_pid(ret)
                try:
                    exchange(host, port, "RESP", f"{name} {owner}", self.timeout)
                except (OSError, ProtocolError):
                    pass
                return
        if ttl > 0:
            for pid, (host, port) in self.peer_list():
                try:
                    exchange(host, port, "QUER", f"{ret} {key} {ttl - 1}", self.timeout)
                except (OSError, ProtocolError):
                    pass

    def _h_resp(self, data, send):
        fields = data.split()
        if len(fields) != 2:
            return
        name, owner = fields
        with self.lock:
            if (name not in self.remote and len(self.remote) < MAX_REMOTE
                    and name not in self.local_files()):
                self.remote[name] = owner
        self.on_event("RESP", name, owner)

    def _h_fget(self, data, send):
        name = data
        if name not in self.local_files():  # also refuses ../x, /abs, remote names
            send("ERRO", "File not found")
            self.on_event("FGET", name, "ERRO")
            return
        try:
            fd = os.open(os.path.join(self.folder, name), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise OSError("not a regular file")
                body = f.read(MAX_FRAME + 1)
            if len(body) > MAX_FRAME:
                raise OSError("file too large")
        except OSError:
            send("ERRO", "Error reading file")
            self.on_event("FGET", name, "ERRO")
            return
        send("REPL", body)
        self.on_event("FGET", name, str(len(body)))

    def _h_quit(self, data, send):
        pid = data.strip()
        if self.remove_peer(pid):
            send("REPL", f"Quit: peer removed: {pid}")
        else:
            send("ERRO", f"Quit: peer not found: {pid}")

    def _h_ping(self, data, send):
        pass  # liveness only: no reply

    # -- joining and stabilizing

    def buildpeers(self, host, port, hops=1):
        """NAME, JOIN with my id, add the contact, LIST, recurse with hops-1."""
        if self.full() or hops <= 0 or self.stopping.is_set():
            return
        pid = None
        try:
            replies = exchange(host, port, "NAME", b"", self.timeout)
            if not replies or replies[0][0] != b"REPL":
                return
            pid = text(replies[0][1]).strip()
            parse_pid(pid)
            with self.lock:
                if pid in self.peers or pid == self.myid:
                    return
            replies = exchange(host, port, "JOIN", f"{self.myid} {self.host} {self.port}",
                               self.timeout)
            if not replies:
                return
            rtype, rtext = replies[0][0], text(replies[0][1])
            # An ERRO saying it already knows us still makes it our neighbour.
            if rtype != b"REPL" and not rtext.startswith("Join: peer already inserted"):
                return
            if not self.add_peer(pid, host, port):
                return
            listing = exchange(host, port, "LIST", b"", self.timeout)
            for rtype, payload in listing[1:]:
                fields = text(payload).split()
                if rtype != b"REPL" or len(fields) != 3:
                    continue
                next_pid, next_host, next_port = fields
                if next_pid != self.myid:
                    self.buildpeers(next_host, parse_port(next_port), hops - 1)
        except (OSError, ProtocolError, ValueError):
            if pid is not None:
                self.remove_peer(pid)

    def _stabilizer(self, interval):
        while not self.stopping.wait(interval):
            for pid, (host, port) in self.peer_list():
                try:
                    with socket.create_connection((host, port), timeout=self.timeout) as s:
                        s.settimeout(self.timeout)
                        send_frame(s, "PING")
                except OSError:
                    self.remove_peer(pid)


# ---------------------------------------------------------------- command line

_out_lock = threading.Lock()


def emit(line):
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def split_hostport(value):
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    try:
        return host, parse_port(port)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def catch_stop_signals():
    """An Event set by SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_serve(args):
    if not os.path.isdir(args.dir):
        print(f"not a directory: {args.dir}", file=sys.stderr)
        return 2
    stop = catch_stop_signals()  # before READY, so an early SIGTERM still says QUIT
    node = Node(args.host, args.port, args.dir, args.max_peers,
                on_event=lambda *fields: emit(" ".join(fields)))
    node.start(args.stabilize)
    emit(f"READY {node.myid}")

    def join_all():
        for host, port in args.join:
            node.buildpeers(host, port, args.hops)
            emit(f"JOINED {host}:{port} {len(node.peer_list())}")

    threading.Thread(target=join_all, daemon=True).start()
    while not stop.wait(0.5):
        pass
    node.stop()
    emit(f"STOP {node.myid}")
    return 0


def frame_json(ftype, payload):
    try:
        body, b64 = payload.decode("utf-8"), False
    except UnicodeDecodeError:
        body, b64 = base64.b64encode(payload).decode("ascii"), True
    return json.dumps({"type": ftype.decode("ascii", errors="replace"), "payload": body,
                       "len": len(payload), "b64": b64})


def cmd_request(args):
    ftype = args.type.encode("ascii")
    if len(ftype) != 4:
        print("TYPE must be 4 ASCII characters", file=sys.stderr)
        return 2
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
            sock.settimeout(args.timeout)
            send_frame(sock, ftype, args.payload.encode("utf-8"))
            while (frame := recv_frame(sock)) is not None:
                emit(frame_json(*frame))
    except (OSError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_search(args):
    host, port = args.via
    found = []
    enough = threading.Event()

    def on_event(kind, *fields):
        if kind == "RESP":
            emit(json.dumps({"name": fields[0], "owner": fields[1]}))
            found.append(fields)
            if 0 < args.count <= len(found):
                enough.set()

    node = Node(args.host, args.port, None, max_peers=1, on_event=on_event)
    node.start(stabilize=0)
    try:
        replies = exchange(host, port, "QUER", f"{node.myid} {args.key} {args.ttl}")
        if replies and replies[0][0] == b"ERRO":
            print(text(replies[0][1]), file=sys.stderr)
            return 1
        enough.wait(args.wait)
    except (OSError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        node.stop(say_goodbye=False)
    return 0


def cmd_fetch(args):
    host, port = args.source
    try:
        replies = exchange(host, port, "FGET", args.name, args.timeout)
    except (OSError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not replies:
        print("error: no reply", file=sys.stderr)
        return 1
    ftype, payload = replies[0]
    if ftype != b"REPL":
        print(text(payload), file=sys.stderr)
        return 1
    with open(args.output, "wb") as f:
        f.write(payload)
    emit(json.dumps({"bytes": len(payload)}))
    return 0


def cmd_trusted(args):
    """CHAL, then TRST on a new connection; prints every reply of both."""
    host, port = args.to
    with open(args.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\r\n")  # as p2pipe's --secret-file reads it
    # The text the MAC covers: the code in upper case, the arguments as given (in their
    # canonical spelling), single spaces.
    op_text = " ".join([args.op.upper(), *args.args])
    try:
        replies = exchange(host, port, "CHAL", b"", args.timeout)
        for frame in replies:
            emit(frame_json(*frame))
        if len(replies) != 1 or replies[0][0] != b"REPL":
            return 1
        nonce = text(replies[0][1])
        mac = trusted_mac(secret, nonce, op_text)
        for frame in exchange(host, port, "TRST", f"{nonce} {mac} {op_text}", args.timeout):
            emit(frame_json(*frame))
    except (OSError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="btfiler-compatible test node")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run a node until SIGTERM")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--dir", required=True, help="shared folder")
    s.add_argument("--join", type=split_hostport, action="append", default=[],
                   metavar="HOST:PORT")
    s.add_argument("--hops", type=int, default=2)
    s.add_argument("--max-peers", type=int, default=10, help="0: unlimited")
    s.add_argument("--stabilize", type=float, default=5.0, metavar="SECONDS",
                   help="ping interval, 0 disables")
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("request", help="send one frame, print the replies as JSON lines")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("type")
    r.add_argument("payload", nargs="?", default="")
    r.add_argument("--timeout", type=float, default=TIMEOUT)
    r.set_defaults(func=cmd_request)

    q = sub.add_parser("search", help="QUER through a contact, print RESP as JSON lines")
    q.add_argument("--via", type=split_hostport, required=True, metavar="HOST:PORT")
    q.add_argument("--key", required=True)
    q.add_argument("--ttl", type=int, default=5)
    q.add_argument("--wait", type=float, default=3.0, metavar="SECONDS")
    q.add_argument("--count", type=int, default=0,
                   help="exit once this many RESP arrived (0: wait the whole time)")
    q.add_argument("--port", type=int, default=0, help="return listener port")
    q.add_argument("--host", default="127.0.0.1", help="return listener host")
    q.set_defaults(func=cmd_search)

    f = sub.add_parser("fetch", help="FGET a file into PATH")
    f.add_argument("--from", dest="source", type=split_hostport, required=True,
                   metavar="HOST:PORT")
    f.add_argument("name")
    f.add_argument("-o", dest="output", required=True, metavar="PATH")
    f.add_argument("--timeout", type=float, default=TIMEOUT)
    f.set_defaults(func=cmd_fetch)

    t = sub.add_parser("trusted", help="a trusted operation (CHAL, then TRST), replies as "
                                      "JSON lines")
    t.add_argument("--to", type=split_hostport, required=True, metavar="HOST:PORT")
    t.add_argument("--secret-file", required=True, metavar="PATH",
                   help="the node's secret: the file's bytes, without a trailing newline")
    t.add_argument("--timeout", type=float, default=TIMEOUT)
    t.add_argument("op", help="FIND, SHAR, ADDP, DELP or RBLD")
    t.add_argument("args", nargs="*")
    t.set_defaults(func=cmd_trusted)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
