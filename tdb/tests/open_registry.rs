//! The per-process registry of open files (one handle per file, as in
//! libtdb) must not refuse a new file that only has the numbers of one
//! being closed: a handle's file unlinked while open (its temp dir
//! removed) frees its inode when the handle closes, and the filesystem
//! may give that inode to the next file created, while the closing
//! handle's entry is still registered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use tdb::{Error, OpenOptions, Tdb};

#[test]
fn a_file_with_a_closing_handles_inode_opens() {
    let dir = tempfile::tempdir().unwrap();
    let opens = 6000;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(3));
    // Two threads each create a file, open it, unlink it and close it,
    // over and over: each close frees an inode the other may get next.
    let worker = |t: usize| {
        let dir = dir.path().to_owned();
        let stop = stop.clone();
        let start = start.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            start.wait();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) && done < opens {
                let path = dir.join(format!("t{t}-{done}.tdb"));
                let db = match Tdb::open(&path, OpenOptions::new().create(true).hash_size(7)) {
                    Ok(db) => db,
                    Err(Error::AlreadyOpen) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(format!("{} refused as already open", path.display()));
                    }
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                };
                std::fs::remove_file(&path).unwrap();
                drop(db);
                done += 1;
            }
            Ok(done)
        })
    };
    let a = worker(0);
    let b = worker(1);
    start.wait();
    let a = a.join().unwrap();
    let b = b.join().unwrap();
    assert_eq!(a, Ok(opens));
    assert_eq!(b, Ok(opens));
}

/// A second handle on a file that is open (not closing) is still refused.
#[test]
fn a_second_handle_on_an_open_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tdb");
    let db = Tdb::create(&path, 7).unwrap();
    assert!(matches!(Tdb::open_existing(&path), Err(Error::AlreadyOpen)));
    drop(db);
    Tdb::open_existing(&path).unwrap();
}
