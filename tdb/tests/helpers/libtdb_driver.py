"""Drive Samba's libtdb from a line protocol on stdin, for ctdb-rs's tests.

Every command is one line; every answer is one line on stdout. Keys and
values travel hex encoded. python's `tdb` module is used where it suffices;
chain locks and the other calls it lacks go to libtdb.so.1 through ctypes,
on a second handle-free path: the same tdb_context (obtained from tdb_open
via ctypes) is used for everything, so lock nesting stays in one context.
"""
import ctypes
import os
import sys

lib = ctypes.CDLL("libtdb.so.1", use_errno=True)


class TDB_DATA(ctypes.Structure):
    _fields_ = [("dptr", ctypes.POINTER(ctypes.c_ubyte)), ("dsize", ctypes.c_size_t)]


lib.tdb_open.restype = ctypes.c_void_p
lib.tdb_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint]
for name in ("tdb_chainlock", "tdb_chainlock_nonblock", "tdb_chainunlock",
             "tdb_chainlock_read", "tdb_chainunlock_read", "tdb_delete", "tdb_exists"):
    getattr(lib, name).argtypes = [ctypes.c_void_p, TDB_DATA]
    getattr(lib, name).restype = ctypes.c_int
for name in ("tdb_lockall", "tdb_lockall_nonblock", "tdb_unlockall", "tdb_lockall_read",
             "tdb_unlockall_read", "tdb_transaction_start", "tdb_transaction_commit",
             "tdb_transaction_cancel", "tdb_transaction_prepare_commit", "tdb_close",
             "tdb_check", "tdb_transaction_start_nonblock"):
    getattr(lib, name).argtypes = [ctypes.c_void_p]
    getattr(lib, name).restype = ctypes.c_int
lib.tdb_check.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
lib.tdb_lock_nonblock.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lib.tdb_lock_nonblock.restype = ctypes.c_int
lib.tdb_unlock.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lib.tdb_unlock.restype = ctypes.c_int
F_WRLCK = 1
lib.tdb_store.argtypes = [ctypes.c_void_p, TDB_DATA, TDB_DATA, ctypes.c_int]
lib.tdb_store.restype = ctypes.c_int
lib.tdb_fetch.argtypes = [ctypes.c_void_p, TDB_DATA]
lib.tdb_fetch.restype = TDB_DATA
lib.tdb_firstkey.argtypes = [ctypes.c_void_p]
lib.tdb_firstkey.restype = TDB_DATA
lib.tdb_nextkey.argtypes = [ctypes.c_void_p, TDB_DATA]
lib.tdb_nextkey.restype = TDB_DATA
for name in ("tdb_get_seqnum", "tdb_get_flags"):
    getattr(lib, name).argtypes = [ctypes.c_void_p]
    getattr(lib, name).restype = ctypes.c_int
for name in ("tdb_enable_seqnum", "tdb_increment_seqnum_nonblock"):
    getattr(lib, name).argtypes = [ctypes.c_void_p]
    getattr(lib, name).restype = None
lib.tdb_error.argtypes = [ctypes.c_void_p]
lib.tdb_error.restype = ctypes.c_int
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]

TRAVERSE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, TDB_DATA, TDB_DATA, ctypes.c_void_p)
lib.tdb_traverse_read.argtypes = [ctypes.c_void_p, TRAVERSE_FN, ctypes.c_void_p]
lib.tdb_traverse_read.restype = ctypes.c_int

_keep = []


def datum(b):
    buf = (ctypes.c_ubyte * max(len(b), 1)).from_buffer_copy(b if b else b"\0")
    _keep.append(buf)
    return TDB_DATA(ctypes.cast(buf, ctypes.POINTER(ctypes.c_ubyte)), len(b))


def take(d):
    if not d.dptr:
        return None
    out = bytes(ctypes.string_at(d.dptr, d.dsize))
    libc.free(d.dptr)
    return out


def main():
    t = None
    for line in sys.stdin:
        _keep.clear()
        parts = line.split()
        if not parts:
            continue
        op, args = parts[0], parts[1:]
        r = "ok"
        try:
            if op == "open":
                t = lib.tdb_open(args[0].encode(), int(args[1]), int(args[2]), os.O_RDWR | os.O_CREAT, 0o600)
                r = "ok" if t else "err %d" % ctypes.get_errno()
            elif op == "close":
                lib.tdb_close(t)
                t = None
            elif op in ("chainlock", "chainlock_nonblock", "chainunlock", "chainlock_read",
                        "chainunlock_read"):
                rc = getattr(lib, "tdb_" + op)(t, datum(bytes.fromhex(args[0])))
                r = "ok" if rc == 0 else "fail"
            elif op in ("lockall", "lockall_nonblock", "unlockall", "lockall_read",
                        "unlockall_read", "transaction_start", "transaction_commit",
                        "transaction_cancel", "transaction_prepare_commit",
                        "transaction_start_nonblock"):
                rc = getattr(lib, "tdb_" + op)(t)
                r = "ok" if rc == 0 else "fail"
            elif op == "freelist_lock_nonblock":
                # list -1 is the freelist
                r = "ok" if lib.tdb_lock_nonblock(t, -1, F_WRLCK) == 0 else "fail"
            elif op == "freelist_unlock":
                r = "ok" if lib.tdb_unlock(t, -1, F_WRLCK) == 0 else "fail"
            elif op == "check":
                rc = lib.tdb_check(t, None, None)
                r = "ok" if rc == 0 else "fail"
            elif op == "store":
                rc = lib.tdb_store(t, datum(bytes.fromhex(args[0])),
                                   datum(bytes.fromhex(args[1]) if len(args) > 1 else b""), 1)
                r = "ok" if rc == 0 else "fail %d" % lib.tdb_error(t)
            elif op == "fetch":
                v = take(lib.tdb_fetch(t, datum(bytes.fromhex(args[0]))))
                r = "none" if v is None else "val " + v.hex()
            elif op == "delete":
                rc = lib.tdb_delete(t, datum(bytes.fromhex(args[0])))
                r = "ok" if rc == 0 else "fail"
            elif op == "items":
                items = []

                def fn(_t, k, v, _p):
                    items.append(bytes(ctypes.string_at(k.dptr, k.dsize)).hex() + ":" +
                                 bytes(ctypes.string_at(v.dptr, v.dsize)).hex())
                    return 0
                rc = lib.tdb_traverse_read(t, TRAVERSE_FN(fn), None)
                r = ("items " + " ".join(items)) if rc >= 0 else "fail"
            elif op == "items_slow":
                # A read traverse that takes args[0] ms over each record
                # (holding it, as libtdb's traverse does).
                import time
                n = [0]

                def fn(_t, k, v, _p):
                    n[0] += 1
                    time.sleep(int(args[0]) / 1000.0)
                    return 0
                rc = lib.tdb_traverse_read(t, TRAVERSE_FN(fn), None)
                r = ("count %d" % n[0]) if rc >= 0 else "fail"
            elif op in ("get_seqnum", "get_flags"):
                r = str(getattr(lib, "tdb_" + op)(t) & 0xFFFFFFFF)
            elif op in ("enable_seqnum", "increment_seqnum_nonblock"):
                getattr(lib, "tdb_" + op)(t)
            elif op == "pid":
                r = str(os.getpid())
            else:
                r = "unknown"
        except Exception as e:  # report, keep serving
            r = "exc %s" % e
        sys.stdout.write(r + "\n")
        sys.stdout.flush()
        if op == "close":
            return


main()
