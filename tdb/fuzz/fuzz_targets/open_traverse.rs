//! Open arbitrary bytes as a TDB file and run every kind of operation on it
//! (see `tdb::testing::exercise`): open read-only / read-write / without
//! mmap, check, traverse, fetch, store, delete, a write traversal that
//! deletes, a transaction, chain locks. Must never panic, hang or crash.
//!
//! The first input byte selects how much of the header is made valid, so
//! that the fuzzer spends its time past the header checks too:
//! bit 0: force the magic text and version; bit 1: also force a small hash
//! size (1..=16, from the second byte).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    if mode & 1 != 0 && file.len() >= 168 {
        file[..10].copy_from_slice(b"TDB file\n\0");
        file[32..36].copy_from_slice(&0x2601_196du32.to_ne_bytes());
        if mode & 2 != 0 {
            let hs = 1 + (file[36] as u32 % 16);
            file[36..40].copy_from_slice(&hs.to_ne_bytes());
        }
    }
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let path = std::path::PathBuf::from(format!("{dir}/tdb-fuzz-{}.tdb", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    tdb::testing::exercise(&path);
    let _ = std::fs::remove_file(&path);
});
