#!/usr/bin/env python3
"""Writes a seed corpus for the packet_decode target from the reference
captures: one file per distinct captured packet, prefixed with the byte
the target uses to pick the opcode a reply is decoded for. That byte is
not the reply's real opcode (it simply varies from seed to seed); the
fuzzer mutates it, so every reply seed meets many control decoders.

usage: seeds_from_captures.py CAPTURES_DIR CORPUS_DIR
"""
import hashlib
import json
import pathlib
import sys

captures, corpus = map(pathlib.Path, sys.argv[1:3])
corpus.mkdir(parents=True, exist_ok=True)
seen = set()
for i, line in enumerate(
    l for f in sorted(captures.glob("*.jsonl")) for l in f.read_text().splitlines() if l.strip()
):
    pkt = bytes.fromhex(json.loads(line)["hex"])
    if pkt in seen:
        continue
    seen.add(pkt)
    data = bytes([i % 256]) + pkt
    (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
print(f"{len(seen)} seeds in {corpus}")
