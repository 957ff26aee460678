#!/usr/bin/env python3
"""Writes the committed seed corpus: a handful of valid inputs per fuzz target.

The fuzzer starts from these instead of from nothing, so every run reaches the
interesting paths (fragmentation, 16/64-bit lengths, each client command, each
token source, a full config file) within its first seconds. Each target's input
layout is described at the top of its file in fuzz/fuzz_targets/.

Usage: python3 fuzz/seeds/generate.py   (rewrites fuzz/seeds/<target>/*)
"""

import json
import pathlib
import re
import struct
import zlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode, payload, fin=True, wide=None, rsv1=False):
    """A masked client frame; `wide` forces the 16- or 64-bit length form; `rsv1` marks
    a permessage-deflate message."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if wide == 64 or n > 0xFFFF:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    elif wide == 16 or n >= 126:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | n])
    masked = bytes(b ^ MASK[i & 3] for i, b in enumerate(payload))
    return head + MASK + masked


def reader_input(stream, small_max=125, cuts=()):
    """frame_reader layout: [small_max][k][k x u16 LE cut offsets][stream]."""
    return bytes([small_max, len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + stream


def deflated(data):
    """Raw deflate, sync-flushed, the 00 00 ff ff tail removed (RFC 7692 §7.2.1)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def frame_reader():
    hello = frame(OP_TEXT, b"hello")
    packed = deflated(('{"type":"subscribe","channel":"news"} ' * 8).encode())
    frag = (
        frame(OP_TEXT, "hé".encode(), fin=False)
        + frame(OP_PING, b"p")
        + frame(OP_CONT, b"llo")
    )
    utf8 = frame(OP_TEXT, ("ünïcödé " * 40).encode())  # 16-bit length
    return {
        "text_hello": reader_input(hello),
        "fragmented_with_ping": reader_input(frag, cuts=(1, 7, 9, 14)),
        "binary_over_small_max": reader_input(frame(OP_BINARY, bytes(range(200))), small_max=16),
        "text_16bit_split_mid_char": reader_input(utf8, cuts=(5, 9, 10, 101, 102)),
        "text_64bit_length": reader_input(frame(OP_TEXT, b'{"type":"ping"}', wide=64)),
        "close_1000": reader_input(frame(OP_CLOSE, struct.pack(">H", 1000) + b"bye")),
        "ping_pong_text": reader_input(
            frame(OP_PING, b"") + frame(OP_PONG, b"x" * 125) + hello, cuts=(3,)
        ),
        # permessage-deflate (read with deflate on; off, RSV1 is a protocol error).
        "deflated_text": reader_input(frame(OP_TEXT, packed, rsv1=True)),
        "deflated_fragmented": reader_input(
            frame(OP_TEXT, packed[:10], fin=False, rsv1=True)
            + frame(OP_PING, b"p")
            + frame(OP_CONT, packed[10:]),
            cuts=(4, 20),
        ),
        "deflate_bomb": reader_input(frame(OP_TEXT, deflated(b"0" * 200_000), rsv1=True)),
        # A limit below the inflater's first buffer (the fuzzer's first find: a panic).
        "deflated_small_max": reader_input(frame(OP_TEXT, packed, rsv1=True), small_max=15),
    }


def client_command():
    msgs = [
        {"type": "ping"},
        {"type": "subscribe", "channel": "news", "ref": 1},
        {"type": "subscribe", "channel": "sync:42.tv", "since": {"offset": 3, "epoch": "e1"}, "ref": "r"},
        {"type": "unsubscribe", "channel": "news"},
        {"type": "publish", "channel": "sync:42", "data": {"n": 1, "s": "x"}, "ref": [1]},
        {"type": "refresh", "token": "eyJhbGciOiJIUzI1NiJ9.e30.sig"},
        {"type": "acknowledge_broadcast", "broadcast_id": "0190c2c8-aaaa-7bbb-8ccc-0123456789ab"},
        {"type": "get_active_broadcast"},
    ]
    out = {m["type"] + (f"_{i}" if m["type"] == "subscribe" else ""): json.dumps(m).encode()
           for i, m in enumerate(msgs)}
    out["bare_ping"] = b" ping\n"
    return out


def channel_name():
    return {
        "news": b"\x02news",
        "sync_user": b"\x07sync:42",
        "sync_device": b"\x07sync:42.tv",
        "unknown_namespace": b"\x03nope:1",
        "all_allowed_chars": b"\x05Ab9_.:@-z",
    }


def token_extraction():
    return {
        "bearer": b"A:Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\n",
        "cookie": b"C:theme=dark; herald_token=tok123; x=1\n",
        "query": b"Q:a=1&token=abc%2Edef+g\n",
        "all_three": b"A:bearer  hdr \nC:herald_token=c\nQ:token=q\n",
        "not_bearer": b"A:Basic dXNlcjpwYXNz\nC:a=b\nC:herald_token=second\n",
    }


def config_loader():
    template = (ROOT / "crates/herald/src/config/template.rs").read_text()
    default_toml = re.search(r'r#"(.*?)"#', template, re.S).group(1)
    return {
        "genconfig_default": default_toml.encode(),
        "small_file": b'listen = "127.0.0.1:9000"\n[auth]\nmode = "none"\n[ws]\nheartbeat_s = 5\n',
        "namespaces": (
            b'[namespaces.chat]\nsubscribe = "any"\npublish = "any"\npresence = true\n'
            b'history_size = 10\n[namespaces.sync]\nsubscribe = "owner"\npublish = "owner"\n'
        ),
        "env_only": (
            b"#env HERALD_AUTH__MODE=none\n#env HERALD_WS__IDLE_TIMEOUT_S=40\n"
            b'#env HERALD_ALLOWED_ORIGINS=["https://a.example"]\n#env HERALD_LOG=herald=debug\n'
        ),
        "file_and_env": (
            b'[limits]\nconnections_per_user = 3\n#env NAMESPACES__CHAT__PUBLISH=any\n'
            b"#env HERALD_RELAY__REDIS_URL=redis://127.0.0.1:6379\n"
        ),
    }


def main():
    for target, seeds in {
        "frame_reader": frame_reader(),
        "client_command": client_command(),
        "channel_name": channel_name(),
        "token_extraction": token_extraction(),
        "config_loader": config_loader(),
    }.items():
        d = HERE / target
        d.mkdir(exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
