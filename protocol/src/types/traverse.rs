//! Traverse requests: local (`TRAVERSE_START[_EXT]`), cluster-wide between
//! daemons (`TRAVERSE_ALL[_EXT]`) and `TRAVERSE_KILL`.

use super::plain_struct;
use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer};

/// `ctdb_traverse_start`: traverse `db_id`, sending records to `srvid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraverseStart {
    pub db_id: u32,
    pub reqid: u32,
    pub srvid: u64,
}
plain_struct!(TraverseStart {
    db_id: u32,
    reqid: u32,
    srvid: u64
});

/// `ctdb_traverse_all`: a daemon asking another to traverse on its behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraverseAll {
    pub db_id: u32,
    pub reqid: u32,
    pub pnn: u32,
    pub client_reqid: u32,
    pub srvid: u64,
}
plain_struct!(TraverseAll {
    db_id: u32,
    reqid: u32,
    pnn: u32,
    client_reqid: u32,
    srvid: u64
});

/// `ctdb_traverse_start_ext`: [`TraverseStart`] plus whether empty records
/// are wanted, padded to 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraverseStartExt {
    pub db_id: u32,
    pub reqid: u32,
    pub srvid: u64,
    pub withemptyrecords: bool,
}

impl Marshal for TraverseStartExt {
    fn len(&self) -> usize {
        24
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.u32(self.reqid);
        w.u64(self.srvid);
        w.bool(self.withemptyrecords);
        w.pad(7);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("traverse db_id")?;
        let reqid = r.u32("traverse reqid")?;
        let srvid = r.u64("traverse srvid")?;
        let withemptyrecords = r.bool("traverse withemptyrecords")?;
        r.pad(7, "traverse padding")?;
        Ok((
            TraverseStartExt {
                db_id,
                reqid,
                srvid,
                withemptyrecords,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_traverse_all_ext`: [`TraverseAll`] plus whether empty records are
/// wanted, padded to 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraverseAllExt {
    pub db_id: u32,
    pub reqid: u32,
    pub pnn: u32,
    pub client_reqid: u32,
    pub srvid: u64,
    pub withemptyrecords: bool,
}

impl Marshal for TraverseAllExt {
    fn len(&self) -> usize {
        32
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.u32(self.reqid);
        w.u32(self.pnn);
        w.u32(self.client_reqid);
        w.u64(self.srvid);
        w.bool(self.withemptyrecords);
        w.pad(7);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("traverse db_id")?;
        let reqid = r.u32("traverse reqid")?;
        let pnn = r.u32("traverse pnn")?;
        let client_reqid = r.u32("traverse client_reqid")?;
        let srvid = r.u64("traverse srvid")?;
        let withemptyrecords = r.bool("traverse withemptyrecords")?;
        r.pad(7, "traverse padding")?;
        Ok((
            TraverseAllExt {
                db_id,
                reqid,
                pnn,
                client_reqid,
                srvid,
                withemptyrecords,
            },
            r.pos(),
        ))
    }
}
