"""Tests of btfiler_node.py: nodes run as subprocesses on 127.0.0.1, port 0.

Run with: python3 -m unittest discover -s tests/btfiler -p 'test_*.py' -v
"""

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import btfiler_node  # noqa: E402  (the module under test, for its frame and MAC helpers)

NODE = os.path.join(HERE, "btfiler_node.py")
TIMEOUT = 10.0  # upper bound on any single wait

# The trusted session's MAC (docs/protocol.md, TRST): HMAC-SHA256 keyed with the node's
# secret over `<nonce> <op-text>`, as lower-case hex. Computed with Python's hmac module;
# tests/integration/filer.rs pins the same values against p2pipe's code.
MAC_SECRET = b"p2pipe known-answer secret"
MAC_NONCE = "000102030405060708090a0b0c0d0e0f"
MAC_FIXTURE = [
    ("ADDP 127.0.0.1:7 127.0.0.1 7",
     "8996b4c7921d054a0452e66b32b9953aa04556bef203dc2b2ebfee96c993ddec"),
    ("FIND song", "5c4d06cc16d886e36d7c7087e9ec1246aabb17d74e1601cf1e6555e1c94ead3d"),
    ("FIND \u00fcn\u00efcode",
     "c6c24e98b7ce39d9a703f659ee5268cc70e9119f7d908f382bd4e763e97922f7"),
]


class NodeProc:
    """A `serve` subprocess whose stdout event lines are collected by a thread."""

    def __init__(self, folder, *extra):
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, NODE, "serve", "--port", "0", "--dir", folder, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.wait_line(lambda l: l.startswith("READY "))
        self.pid = ready.split()[1]
        self.port = int(self.pid.rsplit(":", 1)[1])

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pred, timeout=TIMEOUT):
        """The first collected line satisfying pred; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching line in {self.lines}")
                self.cond.wait(left)

    def has_line(self, line):
        with self.cond:
            return line in self.lines

    def request(self, ftype, payload=""):
        return request(self.port, ftype, payload)

    def peers(self):
        replies = self.request("LIST")
        return {r["payload"].split()[0] for r in replies[1:]}

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def run(*args):
    return subprocess.run([sys.executable, NODE, *args], capture_output=True, text=True,
                          timeout=TIMEOUT + 5)


def request(port, ftype, payload=""):
    res = run("request", "127.0.0.1", str(port), ftype, payload)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def raw_exchange(port, data):
    """Send raw bytes and end the sending side, return everything read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def poll(cond, timeout=TIMEOUT, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


class BtfilerNodeTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="btfiler-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.nodes = []

    def tearDown(self):
        for node in self.nodes:
            node.stop(signal.SIGKILL)

    def folder(self, name, files=None):
        path = os.path.join(self.tmp, name)
        os.mkdir(path)
        for fname, body in (files or {}).items():
            with open(os.path.join(path, fname), "wb") as f:
                f.write(body)
        return path

    def node(self, name, *extra, files=None):
        n = NodeProc(self.folder(name, files), *extra)
        self.nodes.append(n)
        return n

    def joined(self, name, contact, *extra, files=None):
        """A node that joins contact and has finished joining."""
        n = self.node(name, "--join", contact.pid, *extra, files=files)
        n.wait_line(lambda l: l.startswith(f"JOINED {contact.pid} "))
        return n

    def one(self, replies):
        self.assertEqual(len(replies), 1, replies)
        return replies[0]["type"], replies[0]["payload"]

    # -- basic messages

    def test_name_and_lower_case_type(self):
        a = self.node("a")
        self.assertEqual(self.one(a.request("NAME")), ("REPL", a.pid))
        self.assertEqual(self.one(a.request("name")), ("REPL", a.pid))

    def test_list_after_join(self):
        a = self.node("a")
        self.assertEqual(self.one(a.request("LIST")), ("REPL", "0"))
        b = self.joined("b", a)
        a.wait_line(lambda l: l == f"PEER+ {b.pid}")
        b.wait_line(lambda l: l == f"PEER+ {a.pid}")
        replies = a.request("LIST")
        self.assertEqual([r["payload"] for r in replies],
                         ["1", f"{b.pid} 127.0.0.1 {b.port}"])
        self.assertEqual(b.peers(), {a.pid})

    def test_join_errors(self):
        a = self.node("a", "--max-peers", "2")
        for bad in ["", "x:1", "x:1 x", "x:1 x 1 extra", "x:1 x port", "nocolon x 1"]:
            self.assertEqual(self.one(a.request("JOIN", bad)),
                             ("ERRO", "Join: incorrect arguments"), bad)
        self.assertEqual(self.one(a.request("JOIN", "h:1 127.0.0.1 1")),
                         ("REPL", "Join: peer added: h:1"))
        self.assertEqual(self.one(a.request("JOIN", "h:1 127.0.0.1 1")),
                         ("ERRO", "Join: peer already inserted h:1"))
        self.assertEqual(self.one(a.request("JOIN", f"{a.pid} 127.0.0.1 {a.port}")),
                         ("ERRO", f"Join: peer already inserted {a.pid}"))
        self.assertEqual(self.one(a.request("JOIN", "h:2 127.0.0.1 2")),
                         ("REPL", "Join: peer added: h:2"))
        self.assertEqual(self.one(a.request("JOIN", "h:3 127.0.0.1 3")),
                         ("ERRO", "Join: too many peers"))

    def test_quit_removes(self):
        a = self.node("a")
        b = self.joined("b", a, "--stabilize", "0")
        a.wait_line(lambda l: l == f"PEER+ {b.pid}")
        self.assertEqual(self.one(a.request("QUIT", b.pid)),
                         ("REPL", f"Quit: peer removed: {b.pid}"))
        a.wait_line(lambda l: l == f"PEER- {b.pid}")
        self.assertEqual(a.peers(), set())
        self.assertEqual(self.one(a.request("QUIT", b.pid)),
                         ("ERRO", f"Quit: peer not found: {b.pid}"))

    def test_sigterm_sends_quit(self):
        a = self.node("a")
        b = self.joined("b", a)
        a.wait_line(lambda l: l == f"PEER+ {b.pid}")
        b.stop(signal.SIGTERM)
        self.assertEqual(b.proc.returncode, 0)
        a.wait_line(lambda l: l == f"PEER- {b.pid}")
        self.assertEqual(a.peers(), set())

    def test_stabilizer_drops_dead_peer(self):
        a = self.node("a", "--stabilize", "0.2")
        b = self.joined("b", a, "--stabilize", "0")
        a.wait_line(lambda l: l == f"PEER+ {b.pid}")
        b.stop(signal.SIGKILL)  # no QUIT: only the stabilizer can notice
        a.wait_line(lambda l: l == f"PEER- {b.pid}")

    def test_unknown_type_and_ping_close_without_reply(self):
        a = self.node("a")
        self.assertEqual(a.request("XXXX", "anything"), [])
        self.assertEqual(a.request("PING"), [])
        self.assertEqual(a.request("RESP", "f.txt 127.0.0.1:1"), [])
        self.assertEqual(a.request("REPL", "stray"), [])
        self.assertEqual(self.one(a.request("NAME")), ("REPL", a.pid))

    def test_oversized_and_truncated_frames_are_dropped(self):
        a = self.node("a")
        self.assertEqual(raw_exchange(a.port, struct.pack(">4sI", b"NAME", 0xFFFFFFFF)), b"")
        self.assertEqual(raw_exchange(a.port, struct.pack(">4sI", b"JOIN", 10) + b"x:1"), b"")
        self.assertEqual(raw_exchange(a.port, b"NA"), b"")
        # a well-formed frame still gets its exact bytes back
        reply = raw_exchange(a.port, struct.pack(">4sI", b"NAME", 0))
        self.assertEqual(reply, struct.pack(">4sI", b"REPL", len(a.pid)) + a.pid.encode())

    # -- files

    def test_fget_returns_the_bytes(self):
        body = bytes(range(256)) * 1000
        a = self.node("a", files={"blob.bin": body, "hello.txt": b"hello\n"})
        out = os.path.join(self.tmp, "out.bin")
        res = run("fetch", "--from", a.pid, "blob.bin", "-o", out)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(json.loads(res.stdout), {"bytes": len(body)})
        with open(out, "rb") as f:
            self.assertEqual(f.read(), body)
        self.assertEqual(self.one(a.request("FGET", "hello.txt")), ("REPL", "hello\n"))
        reply = a.request("FGET", "blob.bin")[0]
        self.assertTrue(reply["b64"])
        self.assertEqual(reply["len"], len(body))

    def test_fget_refuses_paths_outside_its_folder(self):
        a = self.node("a", files={"ok.txt": b"ok"})
        secret = os.path.join(self.tmp, "secret.txt")
        with open(secret, "w") as f:
            f.write("secret")
        os.symlink(secret, os.path.join(a.folder, "link.txt"))
        for name in ["../secret.txt", secret, "/etc/passwd", "link.txt", ".", "..",
                     "missing.txt", ""]:
            self.assertEqual(self.one(a.request("FGET", name)),
                             ("ERRO", "File not found"), name)
        # a name learnt from an unauthenticated RESP is remote, never served
        self.assertEqual(a.request("RESP", f"{secret} 127.0.0.1:1"), [])
        a.wait_line(lambda l: l == f"RESP {secret} 127.0.0.1:1")
        self.assertEqual(self.one(a.request("FGET", secret)), ("ERRO", "File not found"))
        res = run("fetch", "--from", a.pid, "../secret.txt", "-o",
                  os.path.join(self.tmp, "out"))
        self.assertEqual(res.returncode, 1)
        self.assertEqual(res.stderr.strip(), "File not found")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "out")))

    # -- search

    def test_query_ack_and_errors(self):
        a = self.node("a")
        self.assertEqual(self.one(a.request("QUER", "127.0.0.1:1 key 0")),
                         ("REPL", "Query ACK: key"))
        for bad in ["", "127.0.0.1:1 key", "127.0.0.1:1 key x", "nocolon key 1"]:
            self.assertEqual(self.one(a.request("QUER", bad)),
                             ("ERRO", "Query: incorrect arguments"), bad)

    def test_search_across_two_hops(self):
        # chain a - b - c: a does not know c, c holds the file
        b = self.node("b")
        a = self.joined("a", b, "--hops", "1")
        c = self.joined("c", b, "--hops", "1", files={"song-42.mp3": b"la la"})
        self.assertTrue(poll(lambda: b.peers() == {a.pid, c.pid}))
        self.assertEqual(a.peers(), {b.pid})
        self.assertEqual(c.peers(), {b.pid})

        res = run("search", "--via", a.pid, "--key", "song", "--ttl", "2", "--wait", "5",
                  "--count", "1")
        self.assertEqual(res.returncode, 0, res.stderr)
        found = [json.loads(line) for line in res.stdout.splitlines()]
        self.assertIn({"name": "song-42.mp3", "owner": c.pid}, found)

        # the key is a case-sensitive substring
        res = run("search", "--via", a.pid, "--key", "SONG", "--ttl", "2", "--wait", "1")
        self.assertEqual(res.stdout, "")

        # ttl 1 stops at b, one hop short
        res = run("search", "--via", a.pid, "--key", "song", "--ttl", "1", "--wait", "1")
        self.assertEqual(res.stdout, "")

    def test_node_records_resp_for_its_own_query(self):
        b = self.node("b", files={"doc.txt": b"d"})
        a = self.joined("a", b)
        self.assertEqual(self.one(b.request("QUER", f"{a.pid} doc 1")),
                         ("REPL", "Query ACK: doc"))
        a.wait_line(lambda l: l == f"RESP doc.txt {b.pid}")
        # a now knows where doc.txt is, but does not serve it
        self.assertEqual(self.one(a.request("FGET", "doc.txt")), ("ERRO", "File not found"))


class TrustedMacTest(unittest.TestCase):
    """The trusted session's MAC, as docs/protocol.md states it."""

    def test_the_mac_matches_the_fixture_computed_with_the_hmac_module(self):
        for op_text, want in MAC_FIXTURE:
            message = (MAC_NONCE + " " + op_text).encode("utf-8")
            self.assertEqual(hmac.new(MAC_SECRET, message, hashlib.sha256).hexdigest(), want,
                             op_text)
            self.assertEqual(btfiler_node.trusted_mac(MAC_SECRET, MAC_NONCE, op_text), want,
                             op_text)
        # Any other secret, nonce or text gives another MAC.
        op_text, want = MAC_FIXTURE[0]
        self.assertNotEqual(btfiler_node.trusted_mac(b"other", MAC_NONCE, op_text), want)
        self.assertNotEqual(btfiler_node.trusted_mac(MAC_SECRET, "0" * 32, op_text), want)
        self.assertNotEqual(btfiler_node.trusted_mac(MAC_SECRET, MAC_NONCE, op_text + " "),
                            want)

    def test_the_trusted_command_sends_chal_then_trst_with_the_mac(self):
        # A stand-in node: CHAL gets the fixture's nonce, TRST is recorded and accepted.
        got = []
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        listener.settimeout(TIMEOUT)

        def serve():
            for _ in range(2):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(TIMEOUT)
                    ftype, payload = btfiler_node.recv_frame(conn)
                    got.append((ftype, payload.decode()))
                    if ftype == b"CHAL":
                        btfiler_node.send_frame(conn, "REPL", MAC_NONCE)
                    else:
                        btfiler_node.send_frame(conn, "REPL", "Trust: accepted")
                        btfiler_node.send_frame(conn, "REPL", "Join: peer added: 127.0.0.1:7")

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        secret = os.path.join(self.tmp_dir(), "secret")
        with open(secret, "wb") as f:
            f.write(MAC_SECRET + b"\n")  # a trailing newline is not part of the secret
        port = listener.getsockname()[1]
        res = run("trusted", "--to", f"127.0.0.1:{port}", "--secret-file", secret,
                  "addp", "127.0.0.1:7", "127.0.0.1", "7")
        server.join(TIMEOUT)
        self.assertEqual(res.returncode, 0, res.stderr)
        op_text, mac = MAC_FIXTURE[0]
        self.assertEqual(got, [(b"CHAL", ""), (b"TRST", f"{MAC_NONCE} {mac} {op_text}")])
        self.assertEqual([json.loads(l)["payload"] for l in res.stdout.splitlines()],
                         [MAC_NONCE, "Trust: accepted", "Join: peer added: 127.0.0.1:7"])
        self.assertNotIn(MAC_SECRET.decode(), res.stdout + res.stderr)

    def tmp_dir(self):
        path = tempfile.mkdtemp(prefix="btfiler-")
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        return path


if __name__ == "__main__":
    unittest.main()
