//! Record commands: persistent transactions (`pfetch`, `pstore`, `pdelete`,
//! `ptrans`), volatile records (`readkey`, `writekey`, `deletekey`), raw TDB
//! records (`tfetch`, `tstore`), and backups (`backupdb`, `restoredb`,
//! `dumpdbbackup`).
//!
//! `ptrans`, `backupdb` and `restoredb` stream: input is parsed a line at a
//! time, backups are written and read one record buffer at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use ctdb_client::db::KeyedTransaction;
use ctdb_client::{Db, DbKind, Transaction};
use ctdb_protocol::backup::{
    BACKUP_MAX_DB_NAME, BACKUP_MAX_REC_BUFFER_SIZE, BACKUP_VERSION, BackupChunk, BackupHeader,
};
use ctdb_protocol::types::{KEYED_EPOCH_KEY, LtdbHeader, PullDbExt, RecBuffer, db_flags};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Marshal, Opcode};

use crate::cmd_db::{self, DbRef, attach_db, db_exists};
use crate::ctx::{CtrlError, Ctx, ETIMEDOUT, SRVID_CTDB_PUSHDB};
use crate::format;
use crate::options::usage;
use crate::progress::Progress;
use ctdb_protocol::stdio::check_output;

const EINVAL: i32 = 22;

/// Finds `arg`, checks its kind, attaches it and returns it as a client
/// database. `persistent` says which kind the command needs.
async fn open_db(ctx: &Ctx, arg: &str, persistent: bool) -> Result<(DbRef, Db), i32> {
    let Some(db) = db_exists(ctx, arg).await else {
        return Err(1);
    };
    let is_pers = transactional(db.flags);
    if persistent && !is_pers {
        eprintln!("Transactions not supported on DB {}", db.name);
        return Err(1);
    }
    if !persistent && is_pers {
        eprintln!("DB {} is not a volatile database", db.name);
        return Err(1);
    }
    attach_client(ctx, db).await
}

/// What every single-record command starts with: the database `args[0]`
/// opened as [`open_db`] opens it (`persistent` says which kind the
/// command needs), then the key `args[1]` parsed. An error is the exit
/// status, said on stderr already.
async fn open_db_key(
    ctx: &Ctx,
    args: &[String],
    persistent: bool,
) -> Result<(DbRef, Db, Vec<u8>), i32> {
    let (db, h) = open_db(ctx, &args[0], persistent).await?;
    let key = parse_key(&args[1], "key")?;
    Ok((db, h, key))
}

async fn attach_client(ctx: &Ctx, db: DbRef) -> Result<(DbRef, Db), i32> {
    let a = match attach_db(ctx, &db.name, db.flags).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Failed to attach to DB {}", db.name);
            return Err(e);
        }
    };
    // Attached already: open it without a second DB_ATTACH.
    match ctx
        .client
        .open_attached(a.id, &db.name, cmd_db::kind(db.flags), 0)
        .await
    {
        Ok(h) => Ok((db, h)),
        Err(e) => {
            eprintln!("Failed to attach to DB {}", db.name);
            Err(crate::ctx::report(
                &e,
                ctdb_protocol::Opcode::DbAttach,
                ctx.pnn,
            ))
        }
    }
}

/// Whether a database takes transactions: CTDB's persistent and
/// replicated kinds, and ctdb-rs's keyed kind (per-key transactions).
fn transactional(flags: u8) -> bool {
    flags & (db_flags::PERSISTENT | db_flags::REPLICATED | db_flags::KEYED) != 0
}

/// A transaction of either model: CTDB's (one g_lock for the database) or,
/// on a keyed database, a per-key one that locks only the keys it names
/// (so `pstore` of one key does not wait for transactions on others).
enum Tx {
    Classic(Transaction),
    Keyed(KeyedTransaction),
}

impl Tx {
    /// Starts a transaction on `h` over `keys` (a classic transaction
    /// locks the whole database whatever the keys).
    async fn start(h: &Db, readonly: bool, keys: &[&[u8]]) -> ctdb_client::Result<Tx> {
        if h.kind() == DbKind::Keyed {
            h.keyed_transaction(keys).await.map(Tx::Keyed)
        } else {
            h.transaction_start(readonly).await.map(Tx::Classic)
        }
    }

    fn fetch(&self, key: &[u8]) -> ctdb_client::Result<Option<Vec<u8>>> {
        match self {
            Tx::Classic(t) => t.fetch(key),
            Tx::Keyed(t) => t.fetch(key),
        }
    }

    fn store(&mut self, key: &[u8], data: &[u8]) -> ctdb_client::Result<()> {
        match self {
            Tx::Classic(t) => t.store(key, data),
            Tx::Keyed(t) => t.store(key, data),
        }
    }

    fn delete(&mut self, key: &[u8]) -> ctdb_client::Result<()> {
        match self {
            Tx::Classic(t) => t.delete(key),
            Tx::Keyed(t) => t.delete(key),
        }
    }

    async fn commit(self) -> ctdb_client::Result<()> {
        match self {
            Tx::Classic(t) => t.commit().await,
            Tx::Keyed(t) => t.commit().await,
        }
    }

    async fn cancel(self) -> ctdb_client::Result<()> {
        match self {
            Tx::Classic(t) => t.cancel().await,
            Tx::Keyed(t) => t.cancel().await,
        }
    }
}

fn parse_key(s: &str, what: &str) -> Result<Vec<u8>, i32> {
    format::str_to_data(s.as_bytes()).map_err(|msg| {
        eprintln!("{msg}");
        eprintln!("Failed to parse {what} {s}");
        EINVAL
    })
}

/// printf's `%.*s`: the bytes up to the first NUL.
fn c_str(d: &[u8]) -> &[u8] {
    let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
    &d[..end]
}

fn client_err(ctx: &Ctx, e: &ctdb_client::ClientError) -> i32 {
    match e {
        ctdb_client::ClientError::ControlFailed { .. }
        | ctdb_client::ClientError::Timeout { .. } => {
            crate::ctx::report(e, ctdb_protocol::Opcode::Trans3Commit, ctx.pnn)
        }
        ctdb_client::ClientError::Disconnected => crate::ctx::disconnected(),
        // A commit given up, a corrupt sequence number: say which.
        ctdb_client::ClientError::Other(msg) => {
            eprintln!("{msg}");
            1
        }
        _ => 1,
    }
}

pub async fn pfetch(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("pfetch"));
    }
    let (db, h, key) = match open_db_key(ctx, args, true).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let t = match Tx::start(&h, true, &[&key]).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Failed to start transaction on db {}", db.name);
            return client_err(ctx, &e);
        }
    };
    let r = t.fetch(&key);
    let _ = t.cancel().await;
    match r {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            let _ = check_output(out.write_all(c_str(v.as_deref().unwrap_or_default())));
            let _ = check_output(out.write_all(b"\n"));
            0
        }
        Err(_) => {
            eprintln!("Failed to read record for key {}", args[1]);
            1
        }
    }
}

/// `pstore` (a value) and `pdelete` (no value).
async fn pchange(ctx: &mut Ctx, args: &[String], name: &str, value: Option<&str>) -> i32 {
    let (db, h, key) = match open_db_key(ctx, args, true).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let data = match value {
        Some(v) => match parse_key(v, "value") {
            Ok(d) => Some(d),
            Err(e) => return e,
        },
        None => None,
    };
    write_tx(ctx, &db, &h, &[&key], |t| {
        let r = match &data {
            Some(d) => t.store(&key, d),
            None => t.delete(&key),
        };
        r.map_err(|_| {
            if name == "pstore" {
                eprintln!("Failed to store record for key {}", args[1]);
            } else {
                eprintln!("Failed to delete record for key {}", args[1]);
            }
        })
    })
    .await
}

/// Starts a transaction over `keys` for writing, lets `write` fill it and
/// commits it; if `write` fails (having said why), cancels it. The exit
/// status of `pstore`, `pdelete` and `ptrans`.
async fn write_tx(
    ctx: &Ctx,
    db: &DbRef,
    h: &Db,
    keys: &[&[u8]],
    write: impl FnOnce(&mut Tx) -> Result<(), ()>,
) -> i32 {
    let mut t = match Tx::start(h, false, keys).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Failed to start transaction on db {}", db.name);
            return client_err(ctx, &e);
        }
    };
    if write(&mut t).is_err() {
        let _ = t.cancel().await;
        return 1;
    }
    if let Err(e) = t.commit().await {
        eprintln!("Failed to commit transaction on db {}", db.name);
        return client_err(ctx, &e);
    }
    0
}

pub async fn pstore(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 3 {
        usage(Some("pstore"));
    }
    let v = args[2].clone();
    pchange(ctx, args, "pstore", Some(&v)).await
}

pub async fn pdelete(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("pdelete"));
    }
    pchange(ctx, args, "pdelete", None).await
}

/// One quoted string of a `ptrans` line: `Ok(None)` for an empty string.
fn ptrans_string(p: &mut &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let t = {
        let skip = p.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
        &p[skip..]
    };
    if t.first() != Some(&b'"') {
        eprintln!("Unsupported input format in {}", String::from_utf8_lossy(p));
        return Err(());
    }
    let body = &t[1..];
    match body.iter().position(|&c| c == b'"') {
        Some(n) => {
            let v = if n > 0 {
                match format::str_to_data_in(&body[..n], body) {
                    Ok(v) => Some(v),
                    Err(msg) => {
                        eprintln!("{msg}");
                        return Err(());
                    }
                }
            } else {
                None
            };
            *p = &body[n + 1..];
            Ok(v)
        }
        None => {
            eprintln!("Unmatched \" in input {}", String::from_utf8_lossy(p));
            Err(())
        }
    }
}

/// A `ptrans` input line: `"key" "value"`; `None` for lines to skip.
fn ptrans_line(line: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut p = line;
    let key = ptrans_string(&mut p).ok()??;
    let value = ptrans_string(&mut p).ok()?.unwrap_or_default();
    Some((key, value))
}

/// Reads input as C's `fgets` with a 1024-byte buffer does: lines, with
/// longer lines cut into 1023-byte pieces.
fn fgets_lines(mut r: impl BufRead) -> impl Iterator<Item = Vec<u8>> {
    let mut buf = Vec::new();
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= buf.len() {
            buf.clear();
            at = 0;
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        let end = buf.len().min(at + 1023);
        let piece = buf[at..end].to_vec();
        at = end;
        Some(piece)
    })
}

pub async fn ptrans(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.is_empty() || args.len() > 2 {
        usage(Some("ptrans"));
    }
    let Some(dbr) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    if !transactional(dbr.flags) {
        eprintln!("Transactions not supported on DB {}", dbr.name);
        return 1;
    }
    let input: Box<dyn BufRead> = match args.get(1) {
        Some(path) => match File::open(path) {
            Ok(f) => Box::new(BufReader::with_capacity(1 << 20, f)),
            Err(_) => {
                eprintln!("Failed to open file {path}");
                return 1;
            }
        },
        None => Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
    };
    let (db, h) = match attach_client(ctx, dbr).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let recs = fgets_lines(input).filter_map(|line| ptrans_line(&line));
    if h.kind() == DbKind::Keyed {
        // A per-key transaction names its keys when it starts, so the
        // input is read first, then the keys it names are locked, written
        // and committed together.
        let recs: Vec<(Vec<u8>, Vec<u8>)> = recs.collect();
        let keys: Vec<&[u8]> = recs.iter().map(|(k, _)| k.as_slice()).collect();
        return write_tx(ctx, &db, &h, &keys, |t| {
            ptrans_store(t, recs.iter().map(|(k, v)| (k, v)))
        })
        .await;
    }
    // A classic transaction locks the whole database: records are stored
    // as the input is read.
    write_tx(ctx, &db, &h, &[], |t| ptrans_store(t, recs)).await
}

/// Stores `ptrans` records in `t`, showing progress on a terminal; stops
/// at the first store that fails.
fn ptrans_store<K, V>(t: &mut Tx, recs: impl Iterator<Item = (K, V)>) -> Result<(), ()>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut progress = Progress::new("ptrans");
    let mut n = 0u64;
    for (k, v) in recs {
        if t.store(k.as_ref(), v.as_ref()).is_err() {
            progress.finish();
            eprintln!("Failed to store record");
            return Err(());
        }
        n += 1;
        progress.update(n, None);
    }
    progress.finish();
    Ok(())
}

fn open_tdb(path: &str) -> Option<tdb::Tdb> {
    tdb::OpenOptions::new().open(path).ok()
}

pub fn tfetch(args: &[String]) -> i32 {
    if args.len() < 2 || args.len() > 3 {
        usage(Some("tfetch"));
    }
    let Some(t) = open_tdb(&args[0]) else {
        eprintln!("Failed to open TDB file {}", args[0]);
        return 1;
    };
    let key = match parse_key(&args[1], "key") {
        Ok(k) => k,
        Err(e) => return e,
    };
    let Some(data) = t.fetch(&key).ok().flatten() else {
        eprintln!("No record for key {}", args[1]);
        return 1;
    };
    if data.len() < LtdbHeader::WIRE_SIZE {
        eprintln!("Invalid record for key {}", args[1]);
        return 1;
    }
    drop(t);
    if let Some(out) = args.get(2) {
        match File::create(out) {
            Ok(mut f) => {
                if f.write_all(&data).is_err() {
                    eprintln!("Failed to write record to file");
                }
            }
            Err(_) => eprintln!("Failed to open output file {out}"),
        }
    }
    let Ok((h, d)) = LtdbHeader::split(&data) else {
        eprintln!("Failed to parse header from data");
        return 1;
    };
    let mut s = String::new();
    format::ltdb_header(&mut s, &h);
    format::tdb_data(&mut s, "data", d);
    print!("{s}");
    0
}

pub fn tstore(args: &[String]) -> i32 {
    if args.len() < 3 || args.len() > 5 {
        usage(Some("tstore"));
    }
    let Some(t) = open_tdb(&args[0]) else {
        eprintln!("Failed to open TDB file {}", args[0]);
        return 1;
    };
    let key = match parse_key(&args[1], "key") {
        Ok(k) => k,
        Err(e) => return e,
    };
    let value = match parse_key(&args[2], "value") {
        Ok(k) => k,
        Err(e) => return e,
    };
    let mut h = LtdbHeader::default();
    if let Some(rsn) = args.get(3) {
        match format::parse_standard_ulong(rsn, 0) {
            Some(v) => h.rsn = v,
            None => return EINVAL,
        }
    }
    if let Some(d) = args.get(4) {
        h.dmaster = format::atoi(d) as u32;
    }
    let mut hb = [0u8; LtdbHeader::WIRE_SIZE];
    h.push(&mut hb);
    if t.storev(&key, &[&hb, &value], tdb::StoreMode::Replace)
        .is_err()
    {
        eprintln!("Failed to write record {} to file {}", args[1], args[0]);
        return 1;
    }
    0
}

pub async fn readkey(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() < 2 || args.len() > 3 {
        usage(Some("readkey"));
    }
    if args.len() == 3 && args[2] != "readonly" {
        usage(Some("readkey"));
    }
    let (_, h, key) = match open_db_key(ctx, args, false).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    // `readonly`: a read-only delegation is enough, no migration.
    let r = if args.len() == 3 {
        h.fetch_readonly(&key).await
    } else {
        h.fetch(&key).await
    };
    match r {
        Ok(r) => {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "Data: size:{} ptr:[", r.data.len());
            let _ = check_output(out.write_all(c_str(&r.data)));
            let _ = check_output(out.write_all(b"]\n"));
            0
        }
        Err(e) => {
            eprintln!("Failed to read record for key {}", args[1]);
            client_err(ctx, &e)
        }
    }
}

pub async fn writekey(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 3 {
        usage(Some("writekey"));
    }
    let (_, h, key) = match open_db_key(ctx, args, false).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let data = match parse_key(&args[2], "value") {
        Ok(k) => k,
        Err(e) => return e,
    };
    match h.store(&key, &data).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Failed to lock record for key {}", args[0]);
            client_err(ctx, &e)
        }
    }
}

pub async fn deletekey(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("deletekey"));
    }
    let (_, h, key) = match open_db_key(ctx, args, false).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    match h.delete(&key).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Failed to fetch record for key {}", args[1]);
            client_err(ctx, &e)
        }
    }
}

/// Writes one record buffer to a backup file.
fn write_chunk(out: &mut impl Write, rb: &RecBuffer) -> std::io::Result<()> {
    let chunk = BackupChunk(rb.clone());
    let mut buf = vec![0u8; chunk.len()];
    chunk.push(&mut buf);
    out.write_all(&buf)
}

pub async fn backupdb(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("backupdb"));
    }
    let Some(db) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    let a = match attach_db(ctx, &db.name, db.flags).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Failed to attach to DB {}", db.name);
            return e;
        }
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode_0600()
        .open(&args[1])
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("Failed to open file {} for writing", args[1]);
            return e.raw_os_error().unwrap_or(1);
        }
    };
    let mut out = BufWriter::with_capacity(1 << 20, file);
    if out.write_all(&[0u8; BackupHeader::WIRE_SIZE]).is_err() {
        eprintln!("Failed to write header to file {}", args[1]);
        return 5;
    }
    let local = match ctdb_client::db::open_local(a.path.clone(), a.tdb_flags) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("Failed to collect records from DB {}: {e}", db.name);
            return 1;
        }
    };
    let mut rb = RecBuffer::new(a.id);
    let (mut nbuf, mut nrec) = (0u64, 0u64);
    let mut write_failed = false;
    let mut progress = Progress::new("backupdb");
    let r = local.with(|t| {
        // One shared lock on every record for the whole walk: a consistent
        // snapshot, and no lock calls per chain and record (the reference
        // spends most of its time in those).
        let _all = t.lockall_read();
        t.traverse_read(|k, v| {
            rb.add(0, None, k, v);
            if rb.len() >= BACKUP_MAX_REC_BUFFER_SIZE {
                if write_chunk(&mut out, &rb).is_err() {
                    write_failed = true;
                    return std::ops::ControlFlow::Break(());
                }
                nbuf += 1;
                nrec += rb.count() as u64;
                progress.update(nrec, None);
                rb.clear();
            }
            std::ops::ControlFlow::Continue(())
        })
    });
    progress.finish();
    if write_failed {
        eprintln!("Failed to write records to backup file");
        return 5;
    }
    if r.is_err() {
        eprintln!("Failed to collect records from DB {}", db.name);
        return 1;
    }
    if rb.count() > 0 {
        if write_chunk(&mut out, &rb).is_err() {
            eprintln!("Failed to write records to backup file");
            return 5;
        }
        nbuf += 1;
        nrec += rb.count() as u64;
    }
    let mut name = db.name.clone();
    name.truncate(BACKUP_MAX_DB_NAME - 1);
    let hdr = BackupHeader {
        version: BACKUP_VERSION,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        flags: db.flags as u64,
        nbuf,
        nrec,
        name,
    };
    let mut hb = vec![0u8; BackupHeader::WIRE_SIZE];
    hdr.push(&mut hb);
    let ok = out.flush().is_ok()
        && out
            .get_mut()
            .seek(SeekFrom::Start(0))
            .and_then(|_| out.get_mut().write_all(&hb))
            .is_ok();
    if !ok {
        eprintln!("Failed to write header to file {}", args[1]);
        return 5;
    }
    println!("Database backed up to {}", args[1]);
    0
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Opens a backup file and reads its header (checking the version).
fn open_backup(path: &str) -> Result<(BufReader<File>, BackupHeader), i32> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("Failed to open file {path} for reading");
            return Err(e.raw_os_error().unwrap_or(1));
        }
    };
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut hb = vec![0u8; BackupHeader::WIRE_SIZE];
    let mut got = 0;
    while got < hb.len() {
        match r.read(&mut hb[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                eprintln!("Failed to read db header from file {path}");
                return Err(e.raw_os_error().unwrap_or(1));
            }
        }
    }
    let hdr = BackupHeader::pull(&hb).map(|(h, _)| h).unwrap_or_default();
    if hdr.version != BACKUP_VERSION {
        eprintln!(
            "Wrong version of backup file, expected {BACKUP_VERSION}, got {}",
            hdr.version
        );
        return Err(EINVAL);
    }
    Ok((r, hdr))
}

/// Reads the next record buffer of a backup file.
fn read_chunk(r: &mut impl Read) -> Option<RecBuffer> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).ok()?;
    let len = u64::from_le_bytes(head[8..16].try_into().unwrap()) as usize;
    let mut buf = Vec::with_capacity(16 + len);
    buf.extend_from_slice(&head);
    buf.resize(16 + len, 0);
    r.read_exact(&mut buf[16..]).ok()?;
    BackupChunk::pull(&buf).ok().map(|(c, _)| c.0)
}

pub fn dumpdbbackup(args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("dumpbackup"));
    }
    let (mut r, hdr) = match open_backup(&args[0]) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let _ = check_output(writeln!(
        out,
        "Dumping database {} from backup @ {}",
        hdr.name,
        format::timestamp(hdr.timestamp)
    ));
    let mut count = 0u32;
    let mut s = String::new();
    for _ in 0..hdr.nbuf {
        let Some(rb) = read_chunk(&mut r) else {
            let _ = check_output(out.flush());
            eprintln!("Failed to read records");
            return 5;
        };
        for rec in rb.iter() {
            let Ok((h, d)) = LtdbHeader::split(rec.data) else {
                let _ = check_output(out.flush());
                eprintln!("Failed to dump records");
                return EINVAL;
            };
            count += 1;
            s.clear();
            format::record(&mut s, &h, rec.key, d);
            let _ = check_output(out.write_all(s.as_bytes()));
        }
    }
    let _ = check_output(writeln!(out, "Dumped {count} record(s)"));
    let _ = check_output(out.flush());
    0
}

pub async fn restoredb(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.is_empty() || args.len() > 2 {
        usage(Some("restoredb"));
    }
    let (mut r, hdr) = match open_backup(&args[0]) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let name = args.get(1).cloned().unwrap_or_else(|| hdr.name.clone());
    println!(
        "Restoring database {name} from backup @ {}",
        format::timestamp(hdr.timestamp)
    );
    let flags = (hdr.flags & 0xff) as u8;
    let a = match attach_db(ctx, &name, flags).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Failed to attach to DB {name}");
            return e;
        }
    };
    // ctdb-rs keyed databases: the restored copy moves every node to the
    // next copy epoch (see `keyed_epochs`).
    let keyed = flags & db_flags::KEYED != 0;
    let top_epoch = if keyed {
        match keyed_epochs(ctx, a.id, &name).await {
            Ok(e) => Some(e),
            Err(e) => return e,
        }
    } else {
        None
    };
    let (nodes, t) = match cmd_db::rewrite_begin(ctx, a.id).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let pull = PullDbExt {
        db_id: a.id,
        lmaster: 0,
        srvid: SRVID_CTDB_PUSHDB,
    };
    if let Err(e) = ctx.ctrl_multi(&nodes, Q::DbPushStart(pull)).await {
        return cmd_db::rewrite_failed(ctx, e).await;
    }
    let mut progress = Progress::new("restoredb");
    let mut sent = 0u64;
    // Records the nodes must confirm: the backup's (as CTDB's tool counts
    // them), for a keyed database the ones sent (its old epoch record left
    // out, the new one added; a header that miscounts cannot underflow).
    let mut expect = hdr.nrec;
    for i in 0..hdr.nbuf {
        let Some(mut rb) = read_chunk(&mut r) else {
            return cmd_db::rewrite_failed(ctx, 5).await;
        };
        rb.db_id = a.id;
        if let Some(top) = top_epoch {
            rb = without_epoch(&rb);
            if i + 1 == hdr.nbuf {
                rb.add(
                    0,
                    Some(&epoch_header(top, ctx.pnn, t.tid)),
                    KEYED_EPOCH_KEY,
                    &(top + 1).to_le_bytes(),
                );
            }
        }
        let mut buf = vec![0u8; rb.len()];
        rb.push(&mut buf);
        for &n in &nodes {
            if ctx.client.send_message(n, SRVID_CTDB_PUSHDB, &buf).is_err() {
                crate::ctx::disconnected();
            }
        }
        sent += rb.count() as u64;
        progress.update(sent, Some(hdr.nrec));
    }
    progress.finish();
    if top_epoch.is_some() {
        expect = sent;
    }
    let replies = match ctx.ctrl_multi(&nodes, Q::DbPushConfirm(a.id)).await {
        Ok(r) => r,
        Err(e) => return cmd_db::rewrite_failed(ctx, e).await,
    };
    for (n, reply) in nodes.iter().zip(replies) {
        match reply {
            Some(R::DbPushConfirm(count)) => {
                if count as u64 != expect {
                    eprintln!("Node {n} received {count} of {expect} records");
                    return cmd_db::rewrite_failed(ctx, 0).await.max(1);
                }
            }
            _ => {
                eprintln!("Invalid response from node {n}");
                return cmd_db::rewrite_failed(ctx, 71).await;
            }
        }
    }
    match cmd_db::rewrite_commit(ctx, &nodes, t).await {
        Ok(()) => {
            println!("Database {name} restored");
            0
        }
        Err(f) => {
            if keyed {
                eprintln!("{}", keyed_restore_failed(&name, nodes.len(), &f));
            }
            cmd_db::rewrite_failed(ctx, f.code()).await
        }
    }
}

/// What `restoredb` says when the end of a keyed database's rewrite
/// failed (of `count` nodes): a node that answered the commit with a
/// failure refused the new copy (the daemon checks the copy epoch there;
/// its log says why); any other failure is said as it is.
fn keyed_restore_failed(name: &str, count: usize, f: &cmd_db::RewriteFailure) -> String {
    let commit = f.op == Opcode::DbTransactionCommit;
    let op = crate::ctx::ctrl_name(f.op);
    let why: Vec<String> = f
        .failed
        .iter()
        .map(|&(n, e)| match e {
            CtrlError::Status(_) if commit => {
                format!("node {n} refused the new copy (its log says why)")
            }
            CtrlError::Status(s) => format!("node {n} answered {op} with status {s}"),
            CtrlError::Transport(ETIMEDOUT) => format!("{op} to node {n} timed out"),
            CtrlError::Transport(_) => {
                format!("{op} to node {n} could not be sent or was not answered")
            }
        })
        .collect();
    let every_refused = commit
        && f.failed.len() == count
        && f.failed
            .iter()
            .all(|(_, e)| matches!(e, CtrlError::Status(_)));
    format!(
        "Failed to restore keyed database {name}: {}{}",
        why.join("; "),
        if every_refused {
            "; every node keeps its copy"
        } else {
            ""
        }
    )
}

/// A keyed database (ctdb-rs extension) commits a rewrite of its copy only
/// if the copy carries a new copy epoch, written for this rewrite (the
/// epoch record's `reserved1` is the transaction id): so that a node that
/// misses the restore (inactive meanwhile) is behind in epoch, and the
/// next recovery refills it instead of merging its old records back.
/// Returns the highest epoch any node of the cluster holds now (each
/// reports its own in `DB_CHANGELOG_INFO`); the restored copy gets the next.
async fn keyed_epochs(ctx: &mut Ctx, db_id: u32, name: &str) -> Result<u64, i32> {
    let Some(m) = ctx.get_nodemap(false).await else {
        eprintln!("Failed to get nodemap");
        return Err(12);
    };
    let nodes: Vec<u32> = m
        .nodes
        .iter()
        .filter(|n| {
            use ctdb_protocol::types::node_flags::{DELETED, DISCONNECTED};
            n.flags & (DISCONNECTED | DELETED) == 0
        })
        .map(|n| n.pnn)
        .collect();
    let mut top = 0;
    for n in nodes {
        match ctx.ctrl(n, Q::DbChangelogInfo(db_id)).await {
            Ok(Some(R::DbChangelogInfo(i))) => top = top.max(i.epoch),
            _ => {
                eprintln!(
                    "Failed to read the copy epoch of keyed database {name} on node {n}: \
                     restoring a keyed database needs every connected node to run ctdb-rs"
                );
                return Err(1);
            }
        }
    }
    Ok(top)
}

/// `rb` without the copy epoch record of a keyed database.
fn without_epoch(rb: &RecBuffer) -> RecBuffer {
    let mut out = RecBuffer::new(rb.db_id);
    for rec in rb.iter().filter(|r| r.key != KEYED_EPOCH_KEY) {
        out.add(rec.reqid, None, rec.key, rec.data);
    }
    out
}

/// The header of the epoch record a restore writes: the next epoch as its
/// rsn (as our recovery helper writes it), stamped with the rewrite's
/// transaction id.
fn epoch_header(top: u64, pnn: u32, tid: u32) -> LtdbHeader {
    LtdbHeader {
        rsn: top + 1,
        dmaster: pnn,
        reserved1: tid,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptrans_lines() {
        assert_eq!(
            ptrans_line(b"\"key1\" \"value1\"\n"),
            Some((b"key1".to_vec(), b"value1".to_vec()))
        );
        assert_eq!(
            ptrans_line(b"  \"k\"\t\"\"\n"),
            Some((b"k".to_vec(), Vec::new()))
        );
        assert_eq!(
            ptrans_line(b"\"0x6b31\" \"0x7631\"\n"),
            Some((b"k1".to_vec(), b"v1".to_vec()))
        );
        assert_eq!(ptrans_line(b"\"\" \"v\"\n"), None);
        assert_eq!(ptrans_line(b"k v\n"), None);
        assert_eq!(ptrans_line(b"\"k\n"), None);
    }

    #[test]
    fn long_lines_are_cut_like_fgets() {
        let line = vec![b'a'; 2100];
        let pieces: Vec<usize> = fgets_lines(&line[..]).map(|p| p.len()).collect();
        assert_eq!(pieces, vec![1023, 1023, 54]);
        let lines: Vec<Vec<u8>> = fgets_lines(&b"a\n\nb"[..]).collect();
        assert_eq!(lines, vec![b"a\n".to_vec(), b"\n".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn c_strings_stop_at_nul() {
        assert_eq!(c_str(b"ab\0cd"), b"ab");
    }

    #[test]
    fn keyed_restore_says_refused_only_for_a_refused_commit() {
        use cmd_db::RewriteFailure;
        let fail = |op, failed| RewriteFailure { op, failed };
        // Every node answered the commit with a failure: all refused.
        let all = fail(
            Opcode::DbTransactionCommit,
            vec![(0, CtrlError::Status(-1)), (1, CtrlError::Status(-1))],
        );
        assert_eq!(
            keyed_restore_failed("k.tdb", 2, &all),
            "Failed to restore keyed database k.tdb: node 0 refused the new copy \
             (its log says why); node 1 refused the new copy (its log says why); \
             every node keeps its copy"
        );
        // One node refused, another did not answer: the others may have
        // committed, so no claim that every node keeps its copy.
        let mixed = fail(
            Opcode::DbTransactionCommit,
            vec![
                (1, CtrlError::Status(-1)),
                (2, CtrlError::Transport(ETIMEDOUT)),
            ],
        );
        assert_eq!(
            keyed_restore_failed("k.tdb", 3, &mixed),
            "Failed to restore keyed database k.tdb: node 1 refused the new copy \
             (its log says why); DB_TRANSACTION_COMMIT to node 2 timed out"
        );
        // A failure before or after the commit is no refusal.
        let healthy = fail(Opcode::DbSetHealthy, vec![(0, CtrlError::Status(-1))]);
        let said = keyed_restore_failed("k.tdb", 1, &healthy);
        assert_eq!(
            said,
            "Failed to restore keyed database k.tdb: node 0 answered DB_SET_HEALTHY \
             with status -1"
        );
        let thaw = fail(Opcode::DbThaw, vec![(2, CtrlError::Transport(-1))]);
        let said = keyed_restore_failed("k.tdb", 3, &thaw);
        assert_eq!(
            said,
            "Failed to restore keyed database k.tdb: DB_THAW to node 2 could not be \
             sent or was not answered"
        );
        assert!(!said.contains("refused"));
        assert_eq!(thaw.code(), -1);
        assert_eq!(mixed.code(), -1);
    }
}
