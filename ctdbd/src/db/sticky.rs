//! Sticky records, as CTDB 4.17 keeps them.
//!
//! A database marked sticky (`SET_DB_STICKY`) watches how far calls for
//! its records travel. When a `REQ_CALL` reaches this node as the data
//! master after `HopcountMakeSticky` hops or more (the record is hot:
//! nodes chase it around), the record becomes *sticky* here for
//! `StickyDuration` seconds. Whenever a sticky record migrates to this
//! node in that time, it is *pinned down* for `StickyPindown`
//! milliseconds: `REQ_CALL`s for it from any node wait here, in arrival
//! order, until the pin-down ends, so this node's clients get some work
//! done on it before it moves again. When the record stops being sticky,
//! a pin-down still running ends with it.
//!
//! (The record pins of [`super::pin`] are separate: they hold a record
//! for the local clients a migration was for, on every volatile
//! database, until those clients have looked at it.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::types::db_flags;
use ctdb_protocol::{ControlReply, ReplyControl};
use tracing::{error, info, warn};

use super::{Databases, Env, Work, ltdb};

/// Sticky records of every sticky database.
#[derive(Debug, Default)]
pub struct Sticky {
    dbs: HashMap<u32, HashMap<Vec<u8>, StickyRecord>>,
}

#[derive(Debug)]
struct StickyRecord {
    /// Sticky until then (`StickyDuration`).
    until: Instant,
    pindown: Option<Pindown>,
}

#[derive(Debug)]
struct Pindown {
    until: Instant,
    /// `REQ_CALL`s that arrived meanwhile, in order.
    waiting: Vec<Work>,
}

impl Sticky {
    /// Whether `key` of `db` is sticky here.
    pub fn is_sticky(&self, db: u32, key: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|m| m.contains_key(key))
    }

    /// Whether `key` of `db` is pinned down here.
    pub fn pinned(&self, db: u32, key: &[u8]) -> bool {
        self.dbs
            .get(&db)
            .and_then(|m| m.get(key))
            .is_some_and(|r| r.pindown.is_some())
    }

    /// Makes `key` sticky until `until` (an existing one is kept).
    fn make(&mut self, db: u32, key: &[u8], until: Instant) -> bool {
        let m = self.dbs.entry(db).or_default();
        if m.contains_key(key) {
            return false;
        }
        m.insert(
            key.to_vec(),
            StickyRecord {
                until,
                pindown: None,
            },
        );
        true
    }

    /// Pins `key` down until `until` if it is sticky and not pinned yet.
    fn pin(&mut self, db: u32, key: &[u8], until: Instant) -> bool {
        match self.dbs.get_mut(&db).and_then(|m| m.get_mut(key)) {
            Some(r) if r.pindown.is_none() => {
                r.pindown = Some(Pindown {
                    until,
                    waiting: Vec::new(),
                });
                true
            }
            _ => false,
        }
    }

    /// Keeps `w` until `key`'s pin-down ends; gives it back if not pinned.
    fn defer(&mut self, db: u32, key: &[u8], w: Work) -> Result<(), Work> {
        match self
            .dbs
            .get_mut(&db)
            .and_then(|m| m.get_mut(key))
            .and_then(|r| r.pindown.as_mut())
        {
            Some(p) => {
                p.waiting.push(w);
                Ok(())
            }
            None => Err(w),
        }
    }

    /// Ends pin-downs and sticky records that are over; returns the calls
    /// that waited, and how many pin-downs ended per database.
    fn expire(&mut self, now: Instant) -> (Vec<(u32, Work)>, Vec<u32>) {
        let mut out = Vec::new();
        let mut ended = Vec::new();
        for (&db, m) in self.dbs.iter_mut() {
            m.retain(|_, r| {
                let gone = r.until <= now;
                if let Some(p) = r.pindown.as_ref()
                    && (gone || p.until <= now)
                {
                    ended.push(db);
                    if let Some(p) = r.pindown.take() {
                        out.extend(p.waiting.into_iter().map(|w| (db, w)));
                    }
                }
                !gone
            });
        }
        self.dbs.retain(|_, m| !m.is_empty());
        (out, ended)
    }

    /// When the next pin-down or sticky record ends.
    fn wakeup(&self) -> Option<Instant> {
        self.dbs
            .values()
            .flat_map(|m| m.values())
            .map(|r| r.pindown.as_ref().map_or(r.until, |p| p.until.min(r.until)))
            .min()
    }
}

impl Databases {
    fn sticky_db(&self, db: u32) -> Option<&str> {
        self.dbs
            .get(&db)
            .filter(|d| d.flags & db_flags::STICKY != 0)
            .map(|d| d.name.as_str())
    }

    /// `SET_DB_STICKY` (volatile databases only).
    pub(crate) fn set_db_sticky(&mut self, id: u32) -> ReplyControl {
        let Some(d) = self.dbs.get_mut(&id) else {
            error!("Unknown db 0x{id:08x}");
            return ReplyControl::error(-1, format!("unknown database 0x{id:08x}"));
        };
        if d.flags & db_flags::STICKY != 0 {
            return ReplyControl::ok(ControlReply::SetDbSticky);
        }
        if !d.volatile() {
            error!("Non-volatile databases do not support sticky flag");
            return ReplyControl::error(-1, "Non-volatile databases do not support sticky flag");
        }
        d.flags |= db_flags::STICKY;
        info!("set db sticky {}", d.name);
        ReplyControl::ok(ControlReply::SetDbSticky)
    }

    /// A node's `REQ_CALL` for a pinned-down record waits for the end of
    /// the pin-down; true if it was kept.
    pub(crate) fn sticky_defer(&mut self, db: u32, key: &[u8], pkt: &Bytes) -> bool {
        let Some(name) = self.sticky_db(db) else {
            return false;
        };
        if !self.sticky.pinned(db, key) {
            return false;
        }
        warn!("Defer request for pinned down record in {name}");
        self.sticky
            .defer(db, key, Work::Node { pkt: pkt.clone() })
            .is_ok()
    }

    /// A `REQ_CALL` reached this node as the record's data master after
    /// `hopcount` hops: a hot record of a sticky database becomes sticky.
    pub(crate) fn sticky_hops(&mut self, env: &Env, db: u32, key: &[u8], hopcount: u32) {
        let Some(name) = self.sticky_db(db) else {
            return;
        };
        if hopcount < env.tunables.hopcount_make_sticky {
            return;
        }
        let secs = env.tunables.sticky_duration;
        let name = name.to_owned();
        if self.sticky.make(
            db,
            key,
            Instant::now() + Duration::from_secs(u64::from(secs)),
        ) {
            error!(
                "Make record sticky for {secs} seconds in db {name} key:0x{:08x}.",
                ltdb::key_hash(key)
            );
        }
    }

    /// This node just became the data master of `key`: a sticky record is
    /// pinned down here for `StickyPindown` ms.
    pub(crate) fn sticky_became_dmaster(&mut self, env: &Env, db: u32, key: &[u8]) {
        let Some(name) = self.sticky_db(db) else {
            return;
        };
        let ms = env.tunables.sticky_pindown;
        let name = name.to_owned();
        if self.sticky.pin(
            db,
            key,
            Instant::now() + Duration::from_millis(u64::from(ms)),
        ) {
            error!("Pinning down record in {name} for {ms} ms");
        }
    }

    /// Pin-downs and sticky records past their time end; the calls that
    /// waited run again.
    pub(crate) fn sticky_tick(&mut self, now: Instant) {
        let (work, ended) = self.sticky.expire(now);
        for db in ended {
            let name = self.dbs.get(&db).map_or("", |d| d.name.as_str());
            error!("Pindown timeout db:{name}  unstick record");
        }
        self.ready.extend(work);
    }

    pub(crate) fn sticky_wakeup(&self) -> Option<Instant> {
        self.sticky.wakeup()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(n: u8) -> Work {
        Work::Node {
            pkt: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn a_pindown_holds_calls_until_it_ends_and_a_sticky_record_expires() {
        let t0 = Instant::now();
        let mut s = Sticky::default();
        // Not sticky: nothing to pin, nothing deferred.
        assert!(!s.pin(1, b"k", t0));
        assert!(s.defer(1, b"k", work(0)).is_err());
        assert!(s.make(1, b"k", t0 + Duration::from_secs(10)));
        assert!(!s.make(1, b"k", t0 + Duration::from_secs(20)), "kept");
        assert!(s.is_sticky(1, b"k") && !s.pinned(1, b"k"));
        assert!(s.defer(1, b"k", work(0)).is_err(), "sticky but not pinned");
        assert!(s.pin(1, b"k", t0 + Duration::from_millis(200)));
        assert!(!s.pin(1, b"k", t0 + Duration::from_millis(900)), "kept");
        s.defer(1, b"k", work(1)).unwrap();
        s.defer(1, b"k", work(2)).unwrap();
        assert_eq!(s.wakeup(), Some(t0 + Duration::from_millis(200)));
        assert!(s.expire(t0 + Duration::from_millis(199)).0.is_empty());
        let (w, ended) = s.expire(t0 + Duration::from_millis(200));
        let tags: Vec<u8> = w
            .iter()
            .map(|(_, w)| match w {
                Work::Node { pkt } => pkt[0],
                _ => panic!(),
            })
            .collect();
        assert_eq!((tags, ended), (vec![1, 2], vec![1]));
        assert!(s.is_sticky(1, b"k") && !s.pinned(1, b"k"));
        // The sticky record ends, and a pin-down with it.
        assert!(s.pin(1, b"k", t0 + Duration::from_secs(60)));
        s.defer(1, b"k", work(3)).unwrap();
        let (w, _) = s.expire(t0 + Duration::from_secs(10));
        assert_eq!(w.len(), 1);
        assert!(!s.is_sticky(1, b"k"));
        assert_eq!(s.wakeup(), None);
    }
}
