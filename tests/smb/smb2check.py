#!/usr/bin/python3
"""SMB2 scenarios against a clustered Samba, for the cluster tests.

Each scenario opens SMB2 connections to two nodes of a cluster (each node's
smbd on its own address), runs one file-server behaviour that depends on the
cluster's databases (byte-range locks in brlock.tdb, oplocks and leases in
locking.tdb/leases.tdb, durable handles in smbXsrv_open_global.tdb), and
checks what the servers answer. It prints one line per step and exits 1 at
the first step that differs from what an SMB2 server must answer.

Uses impacket (Debian's python3-impacket) for the connection and session
set-up; the requests under test are built here from its structures.

usage: smb2check.py SCENARIO HOST0 HOST1 SHARE USER PASSWORD
  SCENARIO: brlock | oplock | lease | durable
"""

import os
import struct
import sys
import time
import uuid

from impacket import smb3
from impacket.smb3structs import (
    FILE_OPEN_IF,
    FILE_READ_DATA,
    FILE_SHARE_READ,
    FILE_SHARE_WRITE,
    FILE_SHARE_DELETE,
    FILE_WRITE_DATA,
    FILE_NON_DIRECTORY_FILE,
    FILE_ATTRIBUTE_NORMAL,
    SMB2_CREATE,
    SMB2_DIALECT_30,
    SMB2_IL_IMPERSONATION,
    SMB2_LOCK,
    SMB2_LOCKFLAG_EXCLUSIVE_LOCK,
    SMB2_LOCKFLAG_FAIL_IMMEDIATELY,
    SMB2_LOCKFLAG_UNLOCK,
    SMB2_OPLOCK_BREAK,
    SMB2_OPLOCK_LEVEL_BATCH,
    SMB2_OPLOCK_LEVEL_II,
    SMB2_OPLOCK_LEVEL_LEASE,
    SMB2_OPLOCK_LEVEL_NONE,
    SMB2_LEASE_READ_CACHING,
    SMB2_LEASE_HANDLE_CACHING,
    SMB2_LEASE_WRITE_CACHING,
    SMB2_WRITE,
    SMB2Create,
    SMB2Create_Response,
    SMB2CreateContext,
    SMB2Lock,
    SMB2_LOCK_ELEMENT,
    SMB2LeaseBreakAcknowledgement,
    SMB2LeaseBreakNotification,
    SMB2OplockBreakAcknowledgment,
    SMB2OplockBreakNotification,
    SMB2Write,
    SMB2Write_Response,
    SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2,
    SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2,
    SMB2_CREATE_REQUEST_LEASE,
)

STATUS_SUCCESS = 0
STATUS_LOCK_NOT_GRANTED = 0xC0000054
STATUS_FILE_LOCK_CONFLICT = 0xC0000055
BREAK_ID = 0xFFFFFFFFFFFFFFFF
RWH = SMB2_LEASE_READ_CACHING | SMB2_LEASE_WRITE_CACHING | SMB2_LEASE_HANDLE_CACHING
RH = SMB2_LEASE_READ_CACHING | SMB2_LEASE_HANDLE_CACHING
TIMEOUT = 20


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def step(msg):
    print(msg, flush=True)


def status_name(s):
    return {
        STATUS_SUCCESS: "OK",
        STATUS_LOCK_NOT_GRANTED: "LOCK_NOT_GRANTED",
        STATUS_FILE_LOCK_CONFLICT: "FILE_LOCK_CONFLICT",
    }.get(s, f"0x{s:08x}")


class _SMB3(smb3.SMB3):
    """impacket's SMB3 with a client GUID of our choosing (a durable
    handle's lease is only found again by the client that holds it)."""

    def __init__(self, client_guid, host, **kw):
        self._guid = client_guid
        super().__init__(host, host, **kw)

    def negotiateSession(self, *a, **kw):
        self.ClientGuid = self._guid
        return super().negotiateSession(*a, **kw)


class Conn:
    """One SMB2 connection, session and tree connect to a node."""

    def __init__(self, host, share, user, password, client_guid=None):
        self.host = host
        self.client_guid = client_guid or uuid.uuid4().hex[:16]
        self.smb = _SMB3(self.client_guid, host, preferredDialect=SMB2_DIALECT_30, timeout=TIMEOUT)
        self.smb.login(user, password)
        self.tid = self.smb.connectTree(share)

    def packet(self, command):
        p = self.smb.SMB_PACKET()
        p["Command"] = command
        p["TreeID"] = self.tid
        return p

    def send_create(self, name, oplock=SMB2_OPLOCK_LEVEL_NONE, contexts=()):
        c = SMB2Create()
        c["RequestedOplockLevel"] = oplock
        c["ImpersonationLevel"] = SMB2_IL_IMPERSONATION
        c["DesiredAccess"] = FILE_READ_DATA | FILE_WRITE_DATA
        c["FileAttributes"] = FILE_ATTRIBUTE_NORMAL
        c["ShareAccess"] = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE
        c["CreateDisposition"] = FILE_OPEN_IF
        c["CreateOptions"] = FILE_NON_DIRECTORY_FILE
        fname = name.encode("utf-16le")
        c["NameLength"] = len(fname)
        c["Buffer"] = fname
        if contexts:
            blobs = []
            for i, (tag, data) in enumerate(contexts):
                cc = SMB2CreateContext()
                cc["NameOffset"] = 16
                cc["NameLength"] = len(tag)
                cc["DataOffset"] = 24
                cc["DataLength"] = len(data)
                cc["Buffer"] = tag + b"\0" * (8 - len(tag)) + data
                raw = cc.getData()
                if i + 1 < len(contexts):
                    raw += b"\0" * ((8 - len(raw) % 8) % 8)
                    raw = struct.pack("<L", len(raw)) + raw[4:]
                blobs.append(raw)
            ctx = b"".join(blobs)
            base = 64 + SMB2Create.SIZE + len(c["Buffer"])
            pad = (8 - base % 8) % 8
            c["Buffer"] += b"\0" * pad
            c["CreateContextsOffset"] = base + pad
            c["CreateContextsLength"] = len(ctx)
            c["Buffer"] += ctx
        p = self.packet(SMB2_CREATE)
        p["Data"] = c
        return self.smb.sendSMB(p)

    def recv(self, mid):
        return self.smb.recvSMB(mid)

    def create(self, name, oplock=SMB2_OPLOCK_LEVEL_NONE, contexts=()):
        ans = self.recv(self.send_create(name, oplock, contexts))
        if ans["Status"] != STATUS_SUCCESS:
            fail(f"create {name} on {self.host}: {status_name(ans['Status'])}")
        return CreateReply(ans)

    def write(self, fid, offset, data):
        w = SMB2Write()
        w["Length"] = len(data)
        w["Offset"] = offset
        w["FileID"] = fid
        w["Buffer"] = data
        p = self.packet(SMB2_WRITE)
        p["Data"] = w
        ans = self.recv(self.smb.sendSMB(p))
        if ans["Status"] == STATUS_SUCCESS:
            SMB2Write_Response(ans["Data"])
        return ans["Status"]

    def lock(self, fid, offset, length, flags):
        e = SMB2_LOCK_ELEMENT()
        e["Offset"] = offset
        e["Length"] = length
        e["Flags"] = flags
        lk = SMB2Lock()
        lk["LockCount"] = 1
        lk["FileID"] = fid
        lk["Locks"] = e.getData()
        p = self.packet(SMB2_LOCK)
        p["Data"] = lk
        return self.recv(self.smb.sendSMB(p))["Status"]

    def wait_break(self):
        ans = self.recv(BREAK_ID)
        # impacket charges every matched reply's CreditCharge - 1 to the
        # sequence window; an unsolicited break carries no charge, so undo it.
        self.smb._Connection["SequenceWindow"] -= ans["CreditCharge"] - 1
        if ans["Command"] != SMB2_OPLOCK_BREAK:
            fail(f"expected a break on {self.host}, got command {ans['Command']}")
        return ans

    def ack_oplock(self, fid, level):
        a = SMB2OplockBreakAcknowledgment()
        a["OplockLevel"] = level
        a["FileID"] = fid
        p = self.packet(SMB2_OPLOCK_BREAK)
        p["Data"] = a
        return self.recv(self.smb.sendSMB(p))

    def ack_lease(self, key, state):
        a = SMB2LeaseBreakAcknowledgement()
        a["LeaseKey"] = key
        a["LeaseState"] = state
        p = self.packet(SMB2_OPLOCK_BREAK)
        p["Data"] = a
        return self.recv(self.smb.sendSMB(p))

    def drop(self):
        """Drops the TCP connection without logging off (a client crash)."""
        self.smb._NetBIOSSession.get_socket().close()


class CreateReply:
    def __init__(self, ans):
        r = SMB2Create_Response(ans["Data"])
        self.fid = r["FileID"]
        self.oplock = r["OplockLevel"]
        self.contexts = {}
        if r["CreateContextsLength"]:
            buf = ans["Data"][r["CreateContextsOffset"] - 64 :][: r["CreateContextsLength"]]
            while buf:
                nxt, noff, nlen, _, doff, dlen = struct.unpack("<LHHHHL", buf[:16])
                self.contexts[bytes(buf[noff : noff + nlen])] = bytes(buf[doff : doff + dlen])
                if nxt == 0:
                    break
                buf = buf[nxt:]

    def lease_state(self):
        d = self.contexts.get(b"RqLs")
        if d is None:
            return None
        lease = SMB2_CREATE_REQUEST_LEASE(d)
        return lease["LeaseState"]


def lease_ctx(key, state):
    le = SMB2_CREATE_REQUEST_LEASE()
    le["LeaseKey"] = key
    le["LeaseState"] = state
    return (b"RqLs", le.getData())


def conflict(status):
    """A write or lock refused because of another handle's lock: SMB2
    servers answer FILE_LOCK_CONFLICT or LOCK_NOT_GRANTED."""
    if status in (STATUS_FILE_LOCK_CONFLICT, STATUS_LOCK_NOT_GRANTED):
        return "refused (lock conflict)"
    return status_name(status)


def expect(what, got, want):
    if got != want:
        fail(f"{what}: got {got}, expected {want}")
    step(f"ok: {what}: {got}")


def brlock(h0, h1, share, user, pw):
    name = f"brlock-{uuid.uuid4().hex[:8]}.dat"
    a = Conn(h0, share, user, pw)
    fa = a.create(name).fid
    expect("write 64 bytes through node 0", status_name(a.write(fa, 0, b"a" * 64)), "OK")
    # Two other handles, through node 1 and through node 0, write first:
    # their smbds now know the file's lock state (and may cache it).
    b = Conn(h1, share, user, pw)
    fb = b.create(name).fid
    c = Conn(h0, share, user, pw)
    fc = c.create(name).fid
    expect("write through node 1 before the lock", status_name(b.write(fb, 4, b"b")), "OK")
    expect("write through node 0 before the lock", status_name(c.write(fc, 4, b"c")), "OK")
    x = SMB2_LOCKFLAG_EXCLUSIVE_LOCK | SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    expect("exclusive lock [0,16) through node 0", status_name(a.lock(fa, 0, 16, x)), "OK")
    for _ in range(3):
        expect("conflicting write through node 1", conflict(b.write(fb, 4, b"b")), "refused (lock conflict)")
        expect("conflicting write through node 0", conflict(c.write(fc, 4, b"c")), "refused (lock conflict)")
    expect("conflicting lock through node 1", conflict(b.lock(fb, 8, 4, x)), "refused (lock conflict)")
    expect("write outside the range through node 1", status_name(b.write(fb, 32, b"b")), "OK")
    expect("unlock through node 0", status_name(a.lock(fa, 0, 16, SMB2_LOCKFLAG_UNLOCK)), "OK")
    expect("write after unlock through node 1", status_name(b.write(fb, 4, b"b")), "OK")
    expect("write after unlock through node 0", status_name(c.write(fc, 4, b"c")), "OK")
    expect("lock after unlock through node 1", status_name(b.lock(fb, 8, 4, x)), "OK")
    expect("write through node 0 under node 1's lock", conflict(a.write(fa, 8, b"a")), "refused (lock conflict)")


def oplock(h0, h1, share, user, pw):
    name = f"oplock-{uuid.uuid4().hex[:8]}.dat"
    a = Conn(h0, share, user, pw)
    ra = a.create(name, SMB2_OPLOCK_LEVEL_BATCH)
    expect("oplock granted through node 0", ra.oplock, SMB2_OPLOCK_LEVEL_BATCH)
    b = Conn(h1, share, user, pw)
    mid = b.send_create(name, SMB2_OPLOCK_LEVEL_BATCH)
    brk = SMB2OplockBreakNotification(a.wait_break()["Data"])
    expect("break sent to node 0's client, to level", brk["OplockLevel"], SMB2_OPLOCK_LEVEL_II)
    ack = a.ack_oplock(ra.fid, SMB2_OPLOCK_LEVEL_II)
    expect("break acknowledged", status_name(ack["Status"]), "OK")
    ans = b.recv(mid)
    expect("second open through node 1", status_name(ans["Status"]), "OK")
    expect("second opener's oplock", CreateReply(ans).oplock, SMB2_OPLOCK_LEVEL_II)


def lease(h0, h1, share, user, pw):
    name = f"lease-{uuid.uuid4().hex[:8]}.dat"
    ka, kb = uuid.uuid4().bytes, uuid.uuid4().bytes
    a = Conn(h0, share, user, pw)
    ra = a.create(name, SMB2_OPLOCK_LEVEL_LEASE, [lease_ctx(ka, RWH)])
    expect("lease granted through node 0", ra.lease_state(), RWH)
    b = Conn(h1, share, user, pw)
    mid = b.send_create(name, SMB2_OPLOCK_LEVEL_LEASE, [lease_ctx(kb, RWH)])
    brk = SMB2LeaseBreakNotification(a.wait_break()["Data"])
    expect("lease break for node 0's lease key", brk["LeaseKey"] == ka, True)
    expect("lease break from", brk["CurrentLeaseState"], RWH)
    expect("lease break to", brk["NewLeaseState"], RH)
    ack = a.ack_lease(ka, RH)
    expect("lease break acknowledged", status_name(ack["Status"]), "OK")
    ans = b.recv(mid)
    expect("second open through node 1", status_name(ans["Status"]), "OK")
    expect("second opener's lease", CreateReply(ans).lease_state(), RH)


def durable(h0, h1, share, user, pw):
    name = f"durable-{uuid.uuid4().hex[:8]}.dat"
    key, guid = uuid.uuid4().bytes, uuid.uuid4().bytes
    dh = SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2()
    dh["Timeout"] = 60000
    dh["CreateGuid"] = guid
    a = Conn(h0, share, user, pw)
    ra = a.create(name, SMB2_OPLOCK_LEVEL_LEASE, [lease_ctx(key, RWH), (b"DH2Q", dh.getData())])
    expect("lease granted through node 0", ra.lease_state(), RWH)
    expect("durable handle granted", b"DH2Q" in ra.contexts, True)
    expect("write through the durable handle", status_name(a.write(ra.fid, 0, b"durable")), "OK")
    a.drop()
    rc = SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2()
    rc["FileID"] = ra.fid
    rc["CreateGuid"] = guid
    # The server may still be tearing the old connection down: retry the
    # reconnect for a while, as a client does.
    deadline = time.monotonic() + TIMEOUT
    while True:
        n = Conn(h0, share, user, pw, client_guid=a.client_guid)
        ans = n.recv(
            n.send_create(name, SMB2_OPLOCK_LEVEL_LEASE, [lease_ctx(key, RWH), (b"DH2C", rc.getData())])
        )
        if ans["Status"] == STATUS_SUCCESS or time.monotonic() > deadline:
            break
        n.smb.logoff()
        time.sleep(0.2)
    expect("durable reconnect through node 0", status_name(ans["Status"]), "OK")
    rr = CreateReply(ans)
    expect("lease kept across the reconnect", rr.lease_state(), RWH)
    expect("write through the reconnected handle", status_name(n.write(rr.fid, 7, b"!")), "OK")


SCENARIOS = {"brlock": brlock, "oplock": oplock, "lease": lease, "durable": durable}


def main():
    if len(sys.argv) != 7 or sys.argv[1] not in SCENARIOS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
    step("PASS")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
