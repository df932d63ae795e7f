#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the library's fixtures.

Run from anywhere: python3 fuzz/seed.py. The seeds are committed; rerun after changing
an input format. Each target's input format is described at the top of its source.
"""
import hashlib
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, items):
    d = os.path.join(ROOT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in items:
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def frame(kind, payload=b""):
    if isinstance(payload, str):
        payload = payload.encode()
    return kind + struct.pack(">I", len(payload)) + payload


NONCE = "00112233445566778899aabbccddeeff"
MAC = "00" * 32
# (type, payload) for every request of the protocol (src/filer/mod.rs) and extensions.
REQUESTS = [
    (b"NAME", ""),
    (b"LIST", ""),
    (b"JOIN", "10.0.0.2:5000 10.0.0.2 5000"),
    (b"JOIN", "[::1]:5000 ::1 5000"),
    (b"QUER", "10.0.0.1:5000 song 4"),
    (b"RESP", "song.mp3 10.0.0.3:5001"),
    (b"FGET", "song.mp3"),
    (b"QUIT", "10.0.0.2:5000"),
    (b"PING", ""),
    (b"FINF", "song.mp3"),
    (b"FRNG", "song.mp3 0 1024"),
    (b"QHST", "10.0.0.1:5000 song 4 0123456789abcdef 10.0.0.1:5000,10.0.0.2:5000"),
    (b"CHAL", ""),
    (b"TRST", f"{NONCE} {MAC} FIND song"),
    (b"TRST", f"{NONCE} {MAC} SHAR song.mp3"),
    (b"TRST", f"{NONCE} {MAC} ADDP 10.0.0.9:5000 10.0.0.9 5000"),
    (b"TRST", f"{NONCE} {MAC} DELP [::1]:9"),
    (b"TRST", f"{NONCE} {MAC} RBLD 10.0.0.9 5000 3"),
    (b"FLST", ""),
    (b"FPFX", "song.mp3 4096"),
    (b"SRCH", "song 8 3000 300 16"),
]
REPLIES = [
    (b"REPL", "10.0.0.1:5000"),
    (b"REPL", "2"),
    (b"REPL", "10.0.0.2:5000 10.0.0.2 5000"),
    (b"REPL", "Join: peer added: 10.0.0.2:5000"),
    (b"ERRO", "Join: too many peers"),
    (b"ERRO", "Join: peer already inserted 10.0.0.1:5000"),
    (b"ERRO", "Join: incorrect arguments"),
    (b"REPL", "Query ACK: song"),
    (b"ERRO", "File not found"),
    (b"ERRO", "Error reading file"),
    (b"REPL", "Quit: peer removed: 10.0.0.2:5000"),
    (b"REPL", "1024 " + "ab" * 32),
    (b"REPL", NONCE),
    (b"REPL", "Trust: accepted"),
    (b"ERRO", "Trust: not authorized"),
    (b"REPL", "song.mp3 10.0.0.3:5001 -"),
]

# ---------------------------------------------------------------- btpeer_frame
# Byte 0: bit 0 expect_body, bits 1-3 max_control index (7 = 64 KiB), bit 4 toggle.
# Byte 1: split (0 = one piece).
btpeer = []
for i, (k, p) in enumerate(REQUESTS + REPLIES):
    btpeer.append((f"{k.decode().lower()}-{i:02}", bytes([0x0E, 0]) + frame(k, p)))
btpeer.append(("all-requests-1byte", bytes([0x0E, 1]) + b"".join(frame(k, p) for k, p in REQUESTS)))
btpeer.append(("all-replies-split7", bytes([0x0E, 7]) + b"".join(frame(k, p) for k, p in REPLIES)))
body = bytes(range(256)) * 4
btpeer.append(("fget-body", bytes([0x0F, 13]) + frame(b"ERRO", "File not found") + frame(b"REPL", body)))
btpeer.append(("body-toggle", bytes([0x1F, 5]) + frame(b"REPL", "abc") + frame(b"REPL", "2") + frame(b"REPL", "x")))
btpeer.append(("lowercase", bytes([0x0E, 3]) + b"join\0\0\0\x02abpInG\0\0\0\0"))
btpeer.append(("claim-4gib", bytes([0x0E, 0]) + b"FGET\xff\xff\xff\xffx"))
btpeer.append(("claim-4gib-streamed", bytes([0x0F, 0]) + b"REPL\xff\xff\xff\xffxyz"))
btpeer.append(("over-small-bound", bytes([0x04, 2]) + b"REPL\0\0\0\x05abcde"))
btpeer.append(("truncated-header", bytes([0x0E, 0]) + b"NAME\0\0\0"))
btpeer.append(("truncated-payload", bytes([0x0E, 0]) + b"QUER\0\0\0\x09abc"))
btpeer.append(("truncated-body", bytes([0x0F, 2]) + b"REPL\0\0\0\x05abc"))
write("btpeer_frame", btpeer)

# ---------------------------------------------------------------- filer_request
# Byte 0: index into the target's KINDS (below), or >= 20 for bytes 1..5 as the type.
KINDS = [b"NAME", b"LIST", b"JOIN", b"QUER", b"RESP", b"FGET", b"QUIT", b"PING", b"REPL",
         b"ERRO", b"FINF", b"FRNG", b"QHST", b"CHAL", b"TRST", b"FLST", b"quer", b"trst",
         b"FPFX", b"SRCH"]
req = []
for i, (k, p) in enumerate(REQUESTS + REPLIES):
    req.append((f"{k.decode().lower()}-{i:02}", bytes([KINDS.index(k)]) + p.encode()))
bad = [
    (b"JOIN", "10.0.0.2:5000 10.0.0.2 65536"),
    (b"JOIN", "10.0.0.2:5000 bad,host 5000"),
    (b"QUER", "10.0.0.2:5000 key 65"),
    (b"QUER", "10.0.0.2:5000 k\x01y 4"),
    (b"QUIT", "  a b  "),
    (b"FGET", "two words"),
    (b"FRNG", "f 18446744073709551615 1"),
    (b"QHST", "10.0.0.1:5000 song 4 0123456789ABCDEF 10.0.0.1:5000"),
    (b"QHST", "10.0.0.1:5000 song 4 0123456789abcdef " + ",".join(f"10.0.0.{i}:1" for i in range(65))),
    (b"CHAL", "x"),
    (b"TRST", f"{NONCE} {MAC} FIND"),
    (b"FPFX", "f x"),
    (b"SRCH", "song 8 30001 300 1"),
    (b"SRCH", "song 8 3000 300 0"),
]
for i, (k, p) in enumerate(bad):
    req.append((f"bad-{k.decode().lower()}-{i:02}", bytes([KINDS.index(k)]) + p.encode()))
req.append(("raw-type", bytes([200]) + b"abcd" + b"payload"))
req.append(("raw-lower-fget", bytes([200]) + b"fget" + b"song.mp3"))
write("filer_request", req)

# ---------------------------------------------------------------- stun_client


def rust_bytes(name):
    """The bytes of a `const NAME: &[u8] = &[...]` in src/stun/mod.rs (RFC 5769 vectors)."""
    src = open(os.path.join(os.path.dirname(ROOT), "..", "src", "stun", "mod.rs")).read()
    body = src[src.index(f"const {name}: &[u8] = &["):]
    body = body[body.index("= &[") + 4:body.index("];")]
    return bytes(int(x, 16) for x in body.replace("\n", " ").split(",") if x.strip())


RFC5769_V4 = rust_bytes("RFC5769_V4")
RFC5769_V6 = rust_bytes("RFC5769_V6")
TXID = RFC5769_V4[8:20]
assert len(RFC5769_V4) == 80 and len(RFC5769_V6) == 92


def response(class_bits, txid, attrs):
    body = b""
    for t, v in attrs:
        body += struct.pack(">HH", t, len(v)) + v
        while len(body) % 4:
            body += b"\0"
    return struct.pack(">HHI", 0x0001 | class_bits, len(body), 0x2112A442) + txid + body


def plain_v4(ip, port):
    return bytes([0, 1]) + struct.pack(">H", port) + bytes(ip)


SUCCESS = 0x0100
mapped = (0x0001, plain_v4([203, 0, 113, 5], 4000))
datagrams = {
    "rfc5769-v4": RFC5769_V4,
    "rfc5769-v6": RFC5769_V6,
    "mapped-only": response(SUCCESS, TXID, [mapped]),
    "rfc3489-changed-source": response(SUCCESS, TXID, [mapped, (0x0004, plain_v4([198, 51, 100, 1], 3478)),
                                                       (0x0005, plain_v4([198, 51, 100, 2], 3479))]),
    "rfc5780-other-origin": response(SUCCESS, TXID, [mapped, (0x0004, plain_v4([198, 51, 100, 1], 3478)),
                                                     (0x0005, plain_v4([198, 51, 100, 2], 3479)),
                                                     (0x802B, plain_v4([198, 51, 100, 9], 1111)),
                                                     (0x802C, plain_v4([198, 51, 100, 10], 2222))]),
    "unknown-optional": response(SUCCESS, TXID, [mapped, (0xC0DE, bytes([1, 2, 3]))]),
    "unknown-required": response(SUCCESS, TXID, [mapped, (0x7F01, bytes([1, 2, 3, 4]))]),
    "error-420": response(0x0110, TXID, [(0x0009, bytes([0, 0, 4, 20]) + b"Unknown Attribute")]),
    "no-mapped": response(SUCCESS, TXID, []),
    "other-txid": response(SUCCESS, bytes([7] * 12), [mapped]),
    "request": struct.pack(">HHI", 0x0001, 0, 0x2112A442) + TXID,
}


def dgram(src, flags, data):
    return bytes([0, src | flags]) + struct.pack(">H", len(data)) + data


# Config: expect, initial_rto (40 = 500 ms), max_rto (2 = none), transmissions, final
# wait, change flags.
DEFAULT = bytes([0, 40, 2, 7, 16, 0])
stun = []
for name, d in datagrams.items():
    stun.append((name, DEFAULT + dgram(0, 0, d)))
    stun.append((name + "-wrong-source", DEFAULT + dgram(3, 0, d) + dgram(0, 0, d)))
stun.append(("change-either", bytes([3, 8, 2, 9, 2, 7]) + dgram(1, 0, RFC5769_V4) + dgram(0, 0, RFC5769_V4)))
stun.append(("timeout-then-late", DEFAULT + bytes([1, 0xFF, 0xFF, 4]) + dgram(0, 0, RFC5769_V4)))
stun.append(("retransmit-answer", DEFAULT + bytes([1, 0x01, 0xF4, 0]) * 3 + dgram(0, 0, RFC5769_V4)))
stun.append(("restart", DEFAULT + dgram(0, 0, RFC5769_V4) + bytes([2]) + dgram(0, 0, datagrams["mapped-only"])))
stun.append(("huge-rto", bytes([0, 1, 2, 7, 16, 0]) + bytes([1, 0xFF, 0xFF, 15]) + dgram(0, 0, RFC5769_V4)))
stun.append(("any-source", bytes([1, 4, 2, 1, 1, 0]) + dgram(2, 0, RFC5769_V6)))
write("stun_client", stun)

# ---------------------------------------------------------------- nat_classifier
# Pool indices (see the target): 0 local, 1 server A1:P1, 2 other A2:P2, 3 A1:P2,
# 4 A2:P1, 5 WAN, 6 WAN other port, 7 other WAN address, 8-10 IPv6 local/server/other.
NOTRUN, NOREPLY, REPLY = 0, 1, 2


def obs(local, server, test1, m2=(NOTRUN,), m3=(NOTRUN,), f2=(NOTRUN,), f3=(NOTRUN,), samples=()):
    out = b""
    out += bytes([1, local]) if local is not None else b"\0"
    out += bytes([1, server]) if server is not None else b"\0"
    if test1[0] == REPLY:
        mapped, other = test1[1], test1[2]
        out += bytes([REPLY, mapped]) + (bytes([1, other]) if other is not None else b"\0")
    else:
        out += bytes([test1[0]])
    for p in (m2, m3, f2, f3):
        out += bytes(p)
    for l, m in samples:
        out += struct.pack(">HH", l, m)
    return out


SEQ = [(1000, 5000), (2000, 5001), (3000, 5002)]
PRES = [(1000, 1000), (2000, 2000), (3000, 3000)]
nat = [
    ("not-run", obs(0, 1, (NOTRUN,))),
    ("udp-blocked", obs(0, 1, (NOREPLY,))),
    ("open", obs(0, 1, (REPLY, 0, 2), f2=(REPLY, 2), f3=(REPLY, 3), samples=PRES)),
    ("symmetric-firewall", obs(0, 1, (REPLY, 0, 2), f2=(NOREPLY,), f3=(NOREPLY,))),
    ("full-cone", obs(0, 1, (REPLY, 5, 2), (REPLY, 5), f2=(REPLY, 2), f3=(REPLY, 3), samples=PRES)),
    ("restricted-cone", obs(0, 1, (REPLY, 5, 2), (REPLY, 5), f2=(NOREPLY,), f3=(REPLY, 3), samples=SEQ)),
    ("port-restricted", obs(0, 1, (REPLY, 5, 2), (REPLY, 5), f2=(NOREPLY,), f3=(NOREPLY,), samples=SEQ)),
    ("symmetric-ad", obs(0, 1, (REPLY, 5, 2), (REPLY, 6), (REPLY, 6), (NOREPLY,), (NOREPLY,))),
    ("symmetric-apd", obs(0, 1, (REPLY, 5, 2), (REPLY, 6), (REPLY, 7), (NOREPLY,), (NOREPLY,))),
    ("no-other", obs(0, 1, (REPLY, 5, None), samples=SEQ)),
    ("other-same-ip", obs(0, 1, (REPLY, 5, 3))),
    ("change-ignored", obs(0, 1, (REPLY, 5, 2), (REPLY, 5), f2=(REPLY, 1), f3=(REPLY, 1))),
    ("mapping-no-reply", obs(0, 1, (REPLY, 5, 2), (NOREPLY,), f2=(NOREPLY,), f3=(NOREPLY,))),
    ("v6-open", obs(8, 9, (REPLY, 8, 10), f2=(REPLY, 10))),
    ("mixed-family-other", obs(0, 1, (REPLY, 5, 10))),
    ("no-local", obs(None, 1, (REPLY, 5, 2), (REPLY, 5), f2=(REPLY, 2))),
    ("raw-v4", bytes([1, 0xF0, 10, 0, 0, 1, 0x13, 0x88, 1, 1, REPLY, 0xF1, 1, 2, 3, 4, 0, 80, 0])),
]
write("nat_classifier", nat)

# ---------------------------------------------------------------- subscription
# count, then per pattern: flags (mod 3: none, peer 0, peer 1; bit 7 drop), len, bytes;
# then payloads: peer byte, len u16, bytes.


def subs(patterns, payloads):
    out = bytes([len(patterns)])
    for flags, p in patterns:
        p = p.encode()
        out += bytes([flags, len(p)]) + p
    for peer, data in payloads:
        out += bytes([peer]) + struct.pack(">H", len(data)) + data
    return out


sub = [
    ("fan-out", subs([(0, "^GET"), (0, "GET|PUT"), (0, "^PUT")], [(0, b"GET /"), (0, b"DELETE"), (1, b"PUT x")])),
    ("peer-filter", subs([(0, "x"), (2, "x")], [(0, b"x"), (1, b"x")])),
    ("unsubscribe", subs([(0x80, "a"), (0, "b")], [(0, b"a"), (0, b"b")])),
    ("empty-pattern", subs([(0, "")], [(0, b"m"), (0, b"")])),
    ("unicode-boundary", subs([(0, r"\bcaf\w\b"), (0, "^never")], [(0, "un café noir".encode()), (0, b"cafes")])),
    ("topics", subs([(0, rf"^topic-{i}\b") for i in (0, 7, 500, 999)], [(0, b"topic-7 payload"), (1, b"topic-999")])),
    ("bytes", subs([(0, r"^\x00\xff"), (0, r"(?-u:\xff)"), (1, r"(?i)ping")], [(0, b"\x00\xff"), (0, "\u00ff".encode()), (0, b"PING\xff")])),
    ("bad-pattern", subs([(0, "(unclosed"), (0, "ok")], [(0, b"ok")])),
    ("anchors", subs([(0, "^$"), (0, r"\Aab\z"), (0, "(?m)^b$")], [(0, b""), (0, b"ab"), (0, b"a\nb\n")])),
]
write("subscription", sub)

# ---------------------------------------------------------------- target_parse
# Byte 0 mod 4: no default port, 80, 0, or another.
TARGETS = [
    "1.2.3.4:80", "1.2.3.4", "[::1]:80", "[::1]", "::1", "[fe80::1%2]:80", "fe80::1%2",
    "example.com:80", "example.com.:80", "example.com", "123.example.com:1", "::1:80",
    "1.2.3", "256.1.1.1", "1.2.3.4:00080", "1.2.3.4:", ":80", "[1.2.3.4]:80", "[::1]x",
    "-host:80", "a_b.c-d:65535", "1.2.3.4:65536", "[::ffff:1.2.3.4]:443", "0.0.0.0:0",
    "1:2:3:4:5:6:7:8:9", "[fe80::1%4294967295]:1", "[fe80::1%99999999999]:1",
    "a" * 63 + ".com:1", ".".join(["a" * 63] * 4) + ":1", "a" * 301, " host:80", "héllo:80",
]
tp = []
for i, t in enumerate(TARGETS):
    tp.append((f"t{i:02}-none", bytes([0]) + t.encode()))
    tp.append((f"t{i:02}-default", bytes([1]) + t.encode()))
write("target_parse", tp)

# ---------------------------------------------------------------- mesh_session
# Byte 0: bit 0 signs, bit 1 acceptor, bits 2-4 message bound, bits 5-7 inflation bound;
# byte 1: split; then the peer's frames (src/mesh/wire.rs).
import zlib


def mframe(body):
    return struct.pack(">I", len(body)) + body


def mhello(ident, key=None, port=7000):
    flags = 1 if key else 0
    b = b"\x01P2PM" + bytes([1, flags, len(ident)]) + ident + struct.pack(">H", port) + bytes(32)
    return mframe(b + (key or b""))


def mdata(payload, flags=0, seq=None):
    extra = struct.pack(">Q", seq) + bytes(64) if seq is not None else b""
    return mframe(bytes([0x10, flags]) + extra + payload)


HS = mhello(b"peer") + mframe(b"\x02")
MSGS = [
    mdata(b"hello"),
    mdata(b""),
    mdata(bytes(range(256))),
    mdata(zlib.compress(b"compressed " * 50), flags=1),
    mdata(zlib.compress(bytes(1 << 20)), flags=1),
    mdata(b"signed?", flags=2, seq=1),
    mframe(b"\x20" + struct.pack(">Q", 7)),
    mframe(b"\x21" + struct.pack(">Q", 7)),
    mframe(b"\x30stopping"),
    mframe(b"\x02"),
]
ms = []
for flags in (0x00, 0x02, 0x01, 0x03, 0xFC, 0xFE):
    for split in (0, 3):
        ms.append((f"hs-{flags:02x}-{split}", bytes([flags, split]) + HS + b"".join(MSGS)))
ms.append(("signed-hello", bytes([1, 0]) + mhello(b"peer", key=bytes(32)) + mframe(b"\x02" + bytes(64))))
ms.append(("self-id", bytes([0, 0]) + mhello(b"me") + mframe(b"\x02")))
ms.append(("refuse", bytes([0, 0]) + mframe(b"\x03\x01duplicate")))
ms.append(("huge-claim", bytes([0xFC, 0]) + HS + struct.pack(">I", 0xFFFFFFF0)))
ms.append(("early-data", bytes([2, 0]) + mdata(b"too early")))
write("mesh_session", ms)

# signal_open (fuzz/fuzz_targets/signal_open.rs): byte 0 even = raw bytes, odd = a valid
# envelope (kind, payload length, payload) and 4-byte mutations (op, pos:u16, val).
def sealed(kind, payload, *ops):
    return bytes([1, kind]) + struct.pack(">H", len(payload)) + payload + b"".join(
        bytes([op]) + struct.pack(">H", pos) + bytes([val]) for op, pos, val in ops
    )


HEADER = bytes([0xB1, 1]) + bytes(32) + bytes(16) + struct.pack(">Q", 1_700_000_000_000)
so = [
    ("one-way", sealed(0, b"hello")),
    ("request", sealed(1, b"send me your address")),
    ("response", sealed(2, b"192.0.2.7:4000")),
    ("empty", sealed(0, b"")),
    ("flip-nonce", sealed(0, b"hello", (0, 120, 1))),
    ("flip-tag", sealed(1, b"hello", (0, 0xFFFF, 0x80))),
    ("truncate", sealed(0, b"hello", (1, 150, 0))),
    ("append", sealed(2, b"hello", (2, 3, 0))),
    ("too-old", sealed(0, b"hello", (3, 0, 61))),
    ("from-future", sealed(0, b"hello", (3, 0, 0xE1))),
    ("edge-of-window", sealed(1, b"hello", (3, 0, 60), (3, 0, 0))),
    ("raw-header", bytes([0]) + HEADER + bytes(100)),
    ("raw-oversized", bytes([0]) + HEADER + bytes(16 * 1024)),
]
write("signal_open", so)

# tcp_hello (fuzz/fuzz_targets/tcp_hello.rs): byte 0 = flags (bit 0 responder reads,
# bit 1 responder already answered), then a hello under the target's key: the session
# key of a TCP rendezvous with nonces 0x01.. and 0x02.. (SessionKey::derive).
def hello_key(initiator, responder):
    import hmac
    return hmac.new(initiator + responder, b"p2pipe/punch/1 tcp", hashlib.sha256).digest()


def hello(kind, key):
    import hmac
    tag = hmac.new(key, b"p2pipe tcp punch hello" + bytes([kind]), hashlib.sha256).digest()
    return b"P2TH" + bytes([1, kind]) + tag[:16]


HK = hello_key(bytes([1] * 16), bytes([2] * 16))
th = [
    ("offer-to-responder", bytes([1]) + hello(1, HK)),
    ("answer-to-initiator", bytes([0]) + hello(2, HK)),
    ("confirm-after-answer", bytes([3]) + hello(3, HK)),
    ("confirm-too-early", bytes([1]) + hello(3, HK)),
    ("own-offer", bytes([0]) + hello(1, HK)),
    ("other-key", bytes([1]) + hello(1, bytes(32))),
    ("bad-kind", bytes([1]) + hello(9, HK)),
    ("short", bytes([1]) + hello(1, HK)[:21]),
]
write("tcp_hello", th)
# mapping_response (fuzz/fuzz_targets/mapping_response.rs): byte 0 the request, then
# datagram steps `0 flags len:u16 bytes` and waits `1 ms:u16`.
def dgram(b, flags=0):
    return bytes([0, flags]) + struct.pack(">H", len(b)) + b


def wait(ms):
    return bytes([1]) + struct.pack(">H", ms)


NATPMP_EXT = bytes([0, 128, 0, 0, 0, 0, 1, 0, 203, 0, 113, 5])
NATPMP_MAP = bytes([0, 129, 0, 0, 0, 0, 0, 9]) + struct.pack(">HHI", 5000, 6000, 60)
PCP_HEAD = bytes([2, 0x81, 0, 0]) + struct.pack(">II", 60, 99) + bytes(12)
PCP_MAP = bytes(12) + bytes([6, 0, 0, 0]) + struct.pack(">HH", 7000, 7000) + bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 9])
mr = [
    ("natpmp-external", bytes([0]) + dgram(NATPMP_EXT)),
    ("natpmp-map", bytes([1]) + wait(300) + dgram(NATPMP_MAP)),
    ("natpmp-refused", bytes([1]) + dgram(bytes([0, 129, 0, 2, 0, 0, 0, 1]))),
    ("natpmp-stranger", bytes([1]) + dgram(NATPMP_MAP, 1) + wait(9000)),
    ("pcp-map", bytes([2]) + dgram(PCP_HEAD + PCP_MAP, 2)),
    ("pcp-refused", bytes([2]) + dgram(PCP_HEAD[:3] + bytes([8]) + PCP_HEAD[4:] + PCP_MAP, 2)),
    ("pcp-option", bytes([2]) + dgram(PCP_HEAD + PCP_MAP + bytes([0x80, 0, 0, 4, 1, 2, 3, 4]), 2)),
    ("pcp-natpmp-only", bytes([2]) + dgram(bytes([0, 129, 0, 1, 0, 0, 0, 5]))),
    ("pcp-garbage", bytes([2]) + dgram(bytes(1101)) + wait(8000)),
]
write("mapping_response", mr)
# punch_message (fuzz/fuzz_targets/punch_message.rs): byte 0 even = a rendezvous message,
# odd = a punch packet under the key of nonces 0x01.. and 0x02.. (UDP).
import hmac as _hmac


def pr(kind, body):
    return bytes([0]) + b"PR" + bytes([2, kind]) + body


def cand(*addrs):
    out = bytes([len(addrs)])
    for ip, port in addrs:
        out += (bytes([4]) + bytes(ip) if len(ip) == 4 else bytes([6]) + bytes(ip)) + struct.pack(">H", port)
    return out


# type, mapping, filtering, allocation (1-based, 0 unknown), delta
CONE = bytes([2, 1, 1, 1]) + struct.pack(">i", 0)
SYM_SEQ = bytes([5, 3, 3, 2]) + struct.pack(">i", 2)
# the optional TCP summary: absent, or present, mapping, inbound, delta
NO_TCP = bytes([0])
TCP_SEQ = bytes([1, 3, 1]) + struct.pack(">i", 1)
PKEY = _hmac.new(bytes([1] * 16) + bytes([2] * 16), b"p2pipe/punch/1 udp", hashlib.sha256).digest()


def packet(kind, role, seq, session=bytes([1] * 8), key=PKEY):
    body = b"\xffp2punch" + bytes([kind, role]) + session + struct.pack(">I", seq)
    return bytes([1]) + body + _hmac.new(key, body, hashlib.sha256).digest()[:16]


pm = [
    ("offer", pr(1, bytes([1] * 16) + bytes([0]) + CONE + NO_TCP + cand(([198, 51, 100, 1], 4000), ([198, 18, 1, 2], 4000)))),
    ("offer-tcp", pr(1, bytes([1] * 16) + bytes([1]) + CONE + TCP_SEQ + cand(([198, 51, 100, 1], 4000)))),
    ("offer-v6", pr(1, bytes([1] * 16) + bytes([0]) + bytes(8) + NO_TCP + cand(([0x20, 1, 0xD, 0xB8] + [0] * 11 + [2], 5000)))),
    ("answer", pr(2, bytes([1] * 16) + bytes([2] * 16) + SYM_SEQ + NO_TCP + cand(([198, 51, 100, 5], 61000)))),
    ("answer-tcp", pr(2, bytes([1] * 16) + bytes([2] * 16) + CONE + bytes([1, 0, 0]) + bytes(4) + cand(([198, 51, 100, 5], 61000)))),
    ("answer-many", pr(2, bytes([1] * 16) + bytes([2] * 16) + CONE + TCP_SEQ + cand(*[([198, 51, 100, 5], 1000 + i) for i in range(8)]))),
    ("ready", pr(3, bytes([1] * 16) + struct.pack(">I", 40000))),
    ("too-many", pr(2, bytes([1] * 16) + bytes([2] * 16) + CONE + NO_TCP + bytes([200]))),
    ("probe", packet(1, 1, 1)),
    ("ack", packet(2, 1, 7)),
    ("keepalive", packet(3, 1, 9)),
    ("own-echo", packet(1, 0, 1)),
    ("other-key", packet(2, 1, 1, key=bytes(32))),
]
write("punch_message", pm)

# ---------------------------------------------------------------- turn_response
# Steps (see the target): 0 flags len:u16 bytes = a message (flag 1: the last request's
# txid written in), 1 ms:u16 = a wait, 2 = bind a channel, 3 len:u16 bytes = data sent.


def stun_msg(mtype, attrs, txid=bytes(12)):
    body = b""
    for t, v in attrs:
        body += struct.pack(">HH", t, len(v)) + v
        while len(body) % 4:
            body += b"\0"
    return struct.pack(">HHI", mtype, len(body), 0x2112A442) + txid + body


def xor_v4(ip, port):
    x = bytes(a ^ b for a, b in zip(bytes(ip), struct.pack(">I", 0x2112A442)))
    return bytes([0, 1]) + struct.pack(">H", port ^ 0x2112) + x


def msg(data, txid=True):
    return bytes([0, 1 if txid else 0]) + struct.pack(">H", len(data)) + data


ERR401 = (0x0009, bytes([0, 0, 4, 1]) + b"Unauthorized")
challenge = stun_msg(0x0113, [ERR401, (0x0014, b"r"), (0x0015, b"nonce-1")])
stale = stun_msg(0x0113, [(0x0009, bytes([0, 0, 4, 38]) + b"Stale Nonce"), (0x0014, b"r"), (0x0015, b"nonce-2")])
granted = stun_msg(0x0103, [(0x0016, xor_v4([203, 0, 113, 1], 50000)), (0x0020, xor_v4([198, 51, 100, 2], 40000)),
                            (0x000D, struct.pack(">I", 600))])
peer = xor_v4([198, 51, 100, 7], 4000)
data_ind = stun_msg(0x0017, [(0x0012, peer), (0x0013, b"hello")])
attempt = stun_msg(0x001C, [(0x002A, struct.pack(">I", 7)), (0x0012, peer)])
chan = bytes([0x40, 0, 0, 5]) + b"hello\0\0\0"
permit_ok = stun_msg(0x0108, [])
bind_ok = stun_msg(0x0109, [])
turn = [
    ("login", bytes([0]) + msg(challenge) + msg(granted)),
    ("login-tcp", bytes([1]) + msg(challenge) + msg(granted)),
    ("stale", bytes([0]) + msg(challenge) + msg(granted) + bytes([2]) + msg(stale) + msg(permit_ok)),
    ("channel", bytes([0]) + msg(challenge) + msg(granted) + bytes([2]) + msg(bind_ok) + msg(chan, False)
     + bytes([3, 0, 3]) + b"abc"),
    ("data-indication", bytes([0]) + msg(challenge) + msg(granted) + msg(data_ind, False)),
    ("connection-attempt", bytes([1]) + msg(challenge) + msg(granted) + msg(attempt, False)),
    ("endless-401", bytes([0]) + msg(challenge) * 3),
    ("oversized-nonce", bytes([0]) + msg(stun_msg(0x0113, [ERR401, (0x0014, b"r"), (0x0015, b"n" * 1000)]))),
    ("timeouts", bytes([0]) + bytes([1, 0xFF, 0xFF]) * 3),
    ("refresh", bytes([0]) + msg(challenge) + msg(granted) + bytes([1, 0xFF, 0xFF]) * 9),
]
write("turn_response", turn)

# path_packet (fuzz_targets/path_packet.rs): flags, then packets as a length byte and
# bytes. Genuine packets are sealed by the harness itself (fresh keys every run).
def plen(b):
    return bytes([len(b)]) + b


KEEPALIVE = b"\xffp2punch" + bytes([3, 0]) + bytes(28)
path = [
    ("udp-strays", bytes([0]) + plen(KEEPALIVE) + plen(b"") + plen(bytes([1]) * 33)),
    ("udp-after-msg1", bytes([2]) + plen(bytes([3]) * 114) + plen(bytes([1]) * 33)),
    ("tcp-after-msg1", bytes([3]) + plen(bytes([3]) * 114)),
    ("udp-data", bytes([4]) + plen(bytes([0x10]) + bytes(8) + bytes(20)) + plen(bytes([2]) * 129)),
    ("tcp-data", bytes([5]) + plen(bytes([0x10]) + bytes([0x80]) + bytes(7) + bytes(33))),
]
write("path_packet", path)

# connect_request (fuzz_targets/connect_request.rs): a connect request or answer.
TOKEN = bytes(range(16))
connect = [
    ("come", b"PC\x01\x01" + TOKEN + bytes([2, 2, 1, 4, 198, 51, 100, 2]) + struct.pack(">H", 4000)),
    ("relay-udp", b"PC\x01\x02" + TOKEN + bytes([1, 1, 4, 203, 0, 113, 10]) + struct.pack(">H", 50000) + bytes([0])),
    ("relay-tcp", b"PC\x01\x02" + TOKEN + bytes([2, 0, 1, 6]) + bytes(16) + struct.pack(">H", 0)),
    ("upgrade", b"PC\x01\x03" + TOKEN + bytes([1])),
    ("accepted", b"PA\x01\x00\x01\x04" + bytes([203, 0, 113, 10]) + struct.pack(">H", 3478)),
    ("refused", b"PA\x01\x01" + bytes([22]) + b"no relay is configured"),
]
write("connect_request", connect)

for t in sorted(os.listdir(ROOT)):
    n = len(os.listdir(os.path.join(ROOT, t)))
    print(f"{t}: {n} seeds")
