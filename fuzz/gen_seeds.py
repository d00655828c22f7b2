#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (a handful of small files
each). Rerun after changing a target's input layout: python3 fuzz/gen_seeds.py"""
import base64, hashlib, os, struct, zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def frame(op, payload=b"", fin=True, rsv=0, mask=None, length=None):
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        head += bytes(mask)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def deflate(data, final=False, comp=None):
    c = comp or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    if not final:
        assert out.endswith(b"\x00\x00\xff\xff")
        out = out[:-4]
    return out


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame_seed(stream, cfg0=0, cfg1=0, cuts=()):
    return bytes([cfg0, cfg1, len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + stream


# --- frame: [cfg0, cfg1, ncuts, cuts..., stream] ---------------------------
K = [1, 2, 3, 4]
write("frame", "client-valid", frame_seed(
    frame(1, b"hello") + frame(2, bytes(range(40))) + frame(9, b"p") + frame(10, b"q")
    + frame(8, struct.pack(">H", 1000) + b"bye")))
write("frame", "client-fragmented", frame_seed(
    frame(1, "h\u00e9".encode()[:2], fin=False) + frame(9, b"ping") + frame(0, "\u00e9llo".encode()[1:], fin=False)
    + frame(0, b" world"), cfg1=0x40, cuts=(1, 3, 5, 9)))
write("frame", "server-masked", frame_seed(
    frame(1, b"hi there", mask=K) + frame(9, b"x" * 125, mask=K) + frame(2, b"\x00" * 300, mask=K)
    + frame(8, struct.pack(">H", 1001), mask=K), cfg0=0x21, cfg1=3, cuts=(2, 7, 200)))
write("frame", "deflate-text", frame_seed(
    frame(1, deflate(b"hello hello hello hello"), rsv=4) + frame(2, deflate(b"\x00" * 100), rsv=4, fin=False)
    + frame(0, b""), cfg0=0x04))
write("frame", "lying-length", frame_seed(frame(2, b"abc", length=1 << 62), cfg0=0x13))
write("frame", "bad-utf8-midframe", frame_seed(frame(1, b"ok \xed\xa0\x80 never", fin=False), cfg0=0x80))

# --- inflate: [cfg, seed, payload] -----------------------------------------
write("inflate", "hello", bytes([0x01, 0x00]) + deflate(b"Hello, world! Hello, world!"))
write("inflate", "bomb", bytes([0x00, 0x03]) + deflate(b"\x00" * 40000))
write("inflate", "stored-fragmented", bytes([0x0D, 0x21]) + deflate(os.urandom(0) + bytes(range(256)) * 3))
write("inflate", "bfinal", bytes([0x02, 0x02]) + deflate(b"final block " * 10, final=True))


class Lcg:  # wsfleet_fuzz::Lcg
    def __init__(self, s):
        self.s = s

    def below(self, n):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return (self.s >> 33) % n


c = zlib.compressobj(6, zlib.DEFLATED, -15)
a, b = deflate(b"takeover: the second message refers back. " * 3, comp=c), deflate(b"takeover: the second message refers back.", comp=c)
for seed in range(256):
    if Lcg(seed | 0x100).below(len(a) + len(b) + 1) == len(a):
        write("inflate", "takeover-two-messages", bytes([0x83, seed]) + a + b)
        break

# --- handshake: [mode, bytes] ----------------------------------------------
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
key = base64.b64encode(bytes([7] * 16))
accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
write("handshake", "response-101", b"\x00" + b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: chat\r\n"
      b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n\x81\x00")
write("handshake", "response-302", b"\x04HTTP/1.1 302 Found\r\nLocation: ws://other/\r\nRetry-After: 3\r\n\r\n")
write("handshake", "request", b"\x01GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
      b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
      b"Sec-WebSocket-Protocol: chat, superchat\r\n\r\n")
write("handshake", "encode", b"\x02example.com:8080\xff/path?q=1\xffhttps://o.example\xffchat,mqtt\xffAuthorization\xffBearer t0k3n")

# --- frame, structured (cfg0 bit 6; see wsfleet_fuzz::structured_stream) ----
# records: [b0 = FIN|RSV|opcode, b1 = flip-mask bit | length code, payload or fill byte]
rec = (bytes([0x01, 0x7B]) + b"x" + bytes([0x89, 0x03]) + b"abc"
       + (bytes([0x00, 0x7B]) + b"y") * 2 + bytes([0x80, 0x05]) + b"hello"
       + bytes([0x88, 0x02, 0x03, 0xE8]))
write("frame", "structured-fragmented", frame_seed(rec, cfg0=0x40))
rec = (bytes([0xC1, 0x7C]) + b"z" + bytes([0x42, 0x7A]) + b"\x00" + bytes([0x80, 0x7D]) + b"q"
       + bytes([0x02, 0x7B]) + b"w" + (bytes([0x00, 0x7B]) + b"w") * 4)
write("frame", "structured-deflate-too-large", frame_seed(rec, cfg0=0x44, cuts=(100, 5000)))
