//! Record pins: a record that has just migrated here for local clients
//! stays here until they have looked at it.
//!
//! A client that wants a record it does not hold asks its daemon to
//! migrate it; when the record arrives the daemon answers the client,
//! which then locks the record in its own copy of the file. Between the
//! answer and that lock the record is unlocked, and a request from
//! another node arriving in that window used to take it away again at
//! once: the client found the record gone and had to ask again. Under
//! contention (every node's clients retrying one record, as CTDB's g_lock
//! does) this is how a node starves: about half of all migrations were
//! lost this way, and a node whose clients are scheduled late lost nearly
//! all of them.
//!
//! So when a migration completes for a local client, the record is
//! *pinned* here: requests for it from other nodes wait, in arrival
//! order, until every local client that was answered for it meanwhile
//! has sent its daemon anything at all (its next control, call or
//! message: by then it has had its look at the record; if it still holds
//! the lock, the waiting request queues behind it in the kernel like any
//! other waiter), or went away, or [`PIN_LIMIT`] has passed (a client
//! that looks and then goes quiet). Calls of local clients are served as
//! usual meanwhile. CTDB pins records only for databases marked sticky,
//! for a fixed time; this pin is for every volatile database and ends as
//! soon as the clients that asked have had their turn.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::debug;

use super::{Databases, Env, Work};
use crate::messaging::ClientId;

/// The longest a record stays pinned for clients that do not speak.
pub const PIN_LIMIT: Duration = Duration::from_millis(2);

#[derive(Debug)]
struct Pin {
    /// Local clients answered for the record that have not spoken since.
    clients: Vec<ClientId>,
    until: Instant,
    /// Requests from other nodes, in arrival order.
    waiting: Vec<Work>,
}

/// The pinned records of every database.
#[derive(Debug, Default)]
pub struct Pins {
    by_db: HashMap<u32, HashMap<Vec<u8>, Pin>>,
    /// Number of pins (so that the common case, none, costs nothing).
    count: usize,
    /// Requests that waited for a pin (for statistics and tests).
    pub deferred_total: u64,
}

impl Pins {
    /// Pins `key` of database `db` for `client`, which a migration has
    /// just answered (an existing pin keeps its deadline).
    pub fn pin(&mut self, db: u32, key: &[u8], client: ClientId, now: Instant) {
        let m = self.by_db.entry(db).or_default();
        match m.get_mut(key) {
            Some(p) => {
                if !p.clients.contains(&client) {
                    p.clients.push(client);
                }
            }
            None => {
                m.insert(
                    key.to_vec(),
                    Pin {
                        clients: vec![client],
                        until: now + PIN_LIMIT,
                        waiting: Vec::new(),
                    },
                );
                self.count += 1;
            }
        }
    }

    /// A local client was answered for `key` from this node's copy: if the
    /// record is pinned, the pin waits for that client too.
    pub fn join(&mut self, db: u32, key: &[u8], client: ClientId) {
        if self.count == 0 {
            return;
        }
        if let Some(p) = self.by_db.get_mut(&db).and_then(|m| m.get_mut(key))
            && !p.clients.contains(&client)
        {
            p.clients.push(client);
        }
    }

    /// Keeps `w` (a request from another node for `key`) until the pin
    /// ends; gives it back if the record is not pinned.
    pub fn defer(&mut self, db: u32, key: &[u8], w: Work) -> Result<(), Work> {
        self.defer_at(db, key, w, Instant::now())
    }

    /// [`Pins::defer`] at time `now`: a pin past its limit that nothing
    /// waits for ends here (no timer was kept for it).
    fn defer_at(&mut self, db: u32, key: &[u8], w: Work, now: Instant) -> Result<(), Work> {
        if self.count == 0 {
            return Err(w);
        }
        let Some(m) = self.by_db.get_mut(&db) else {
            return Err(w);
        };
        match m.get_mut(key) {
            // A pin others wait for has a timer, which releases this
            // request with them, in order, even if it is already due.
            Some(p) if p.until > now || !p.waiting.is_empty() => {
                p.waiting.push(w);
                self.deferred_total += 1;
                Ok(())
            }
            Some(_) => {
                m.remove(key);
                if m.is_empty() {
                    self.by_db.remove(&db);
                }
                self.count -= 1;
                Err(w)
            }
            None => Err(w),
        }
    }

    /// Whether `key` of `db` is pinned.
    pub fn pinned(&self, db: u32, key: &[u8]) -> bool {
        self.count != 0 && self.by_db.get(&db).is_some_and(|m| m.contains_key(key))
    }

    /// Ends the pins matching `done`; returns their waiting requests, pin
    /// by pin in arrival order.
    fn end(&mut self, mut done: impl FnMut(&mut Pin) -> bool) -> Vec<(u32, Work)> {
        let mut out = Vec::new();
        for (&db, m) in self.by_db.iter_mut() {
            m.retain(|k, p| {
                if !done(p) {
                    return true;
                }
                debug!(
                    "db 0x{db:08x}: pin of key hash 0x{:08x} ends, {} requests waited",
                    super::ltdb::key_hash(k),
                    p.waiting.len()
                );
                out.extend(p.waiting.drain(..).map(|w| (db, w)));
                false
            });
        }
        self.by_db.retain(|_, m| !m.is_empty());
        self.count = self.by_db.values().map(|m| m.len()).sum();
        out
    }

    /// `client` sent something (or went away): pins that only waited for
    /// it end.
    pub fn spoke(&mut self, client: ClientId) -> Vec<(u32, Work)> {
        if self.count == 0 {
            return Vec::new();
        }
        // Pins past their limit end here too (one that nothing waited for
        // had no timer).
        let now = Instant::now();
        self.end(|p| {
            p.clients.retain(|c| *c != client);
            p.clients.is_empty() || p.until <= now
        })
    }

    /// Pins past their limit end.
    pub fn expire(&mut self, now: Instant) -> Vec<(u32, Work)> {
        if self.count == 0 {
            return Vec::new();
        }
        self.end(|p| p.until <= now)
    }

    /// When the next pin that holds a request runs out. A pin nothing
    /// waits for needs no timer (it usually ends when its client speaks,
    /// a fraction of its limit later; a request that finds it past its
    /// limit ends it, and so does the next expiry): the loop's timer is
    /// not moved for every migration.
    pub fn wakeup(&self) -> Option<Instant> {
        if self.count == 0 {
            return None;
        }
        self.by_db
            .values()
            .flat_map(|m| {
                m.values()
                    .filter(|p| !p.waiting.is_empty())
                    .map(|p| p.until)
            })
            .min()
    }

    /// Number of pinned records.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Databases {
    /// A local client sent a packet: the records pinned for it are free to
    /// go (the requests that waited run next, in order).
    pub fn client_spoke(&mut self, client: ClientId) {
        let w = self.calls.pins.spoke(client);
        self.ready.extend(w);
    }

    /// Pins past their limit end.
    pub(crate) fn pin_deadlines(&mut self, _env: &Env, now: Instant) {
        let w = self.calls.pins.expire(now);
        self.ready.extend(w);
    }

    /// When a pin runs out next.
    pub(crate) fn pin_wakeup(&self) -> Option<Instant> {
        self.calls.pins.wakeup()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn work(n: u8) -> Work {
        Work::Node {
            pkt: Bytes::from(vec![n]),
        }
    }

    fn tags(w: &[(u32, Work)]) -> Vec<u8> {
        w.iter()
            .map(|(_, w)| match w {
                Work::Node { pkt } => pkt[0],
                _ => panic!("unexpected work"),
            })
            .collect()
    }

    #[test]
    fn a_pin_holds_requests_until_every_client_answered_has_spoken() {
        let t0 = Instant::now();
        let mut p = Pins::default();
        assert!(p.defer(1, b"k", work(0)).is_err(), "nothing pinned yet");
        p.pin(1, b"k", 10, t0);
        p.join(1, b"k", 11);
        // Another key and another database are not pinned.
        assert!(p.defer(1, b"other", work(0)).is_err());
        assert!(p.defer(2, b"k", work(0)).is_err());
        assert!(p.defer(1, b"k", work(1)).is_ok());
        assert!(p.defer(1, b"k", work(2)).is_ok());
        assert!(p.spoke(10).is_empty(), "client 11 has not looked yet");
        assert!(p.spoke(99).is_empty());
        assert!(p.pinned(1, b"k"));
        let w = p.spoke(11);
        assert_eq!(tags(&w), [1, 2], "released in arrival order");
        assert!(!p.pinned(1, b"k") && p.is_empty());
        assert_eq!(p.deferred_total, 2);
        // Joining an unpinned record pins nothing.
        p.join(1, b"k", 11);
        assert!(p.is_empty());
    }

    #[test]
    fn a_pin_ends_at_its_limit_for_clients_that_stay_quiet() {
        let t0 = Instant::now();
        let mut p = Pins::default();
        p.pin(1, b"a", 10, t0);
        p.pin(1, b"b", 10, t0 + Duration::from_millis(2));
        // A second migration for the same record keeps the first deadline.
        p.pin(1, b"a", 12, t0 + Duration::from_millis(3));
        p.defer(1, b"a", work(1)).unwrap();
        p.defer(1, b"b", work(2)).unwrap();
        assert_eq!(p.wakeup(), Some(t0 + PIN_LIMIT));
        assert!(
            p.expire(t0 + PIN_LIMIT - Duration::from_micros(1))
                .is_empty()
        );
        assert_eq!(tags(&p.expire(t0 + PIN_LIMIT)), [1]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.wakeup(), Some(t0 + Duration::from_millis(2) + PIN_LIMIT));
        // Client 10 speaks: "b" waited only for it.
        assert_eq!(tags(&p.spoke(10)), [2]);
        assert_eq!(p.wakeup(), None);
    }

    #[test]
    fn only_a_pin_that_holds_a_request_needs_a_timer() {
        let t0 = Instant::now();
        let mut p = Pins::default();
        p.pin(1, b"k", 10, t0);
        assert_eq!(p.wakeup(), None, "nothing waits: no timer");
        p.defer_at(1, b"k", work(1), t0 + Duration::from_millis(1))
            .unwrap();
        assert_eq!(p.wakeup(), Some(t0 + PIN_LIMIT));
        // Due but not yet expired by the loop: later requests queue behind.
        p.defer_at(1, b"k", work(2), t0 + PIN_LIMIT).unwrap();
        assert_eq!(tags(&p.expire(t0 + PIN_LIMIT)), [1, 2]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_pin_past_its_limit_holds_nothing() {
        let t0 = Instant::now();
        let mut p = Pins::default();
        p.pin(1, b"k", 10, t0);
        p.pin(1, b"other", 10, t0);
        // No timer ran; a request after the limit ends the pin and goes on.
        assert!(p.defer_at(1, b"k", work(1), t0 + PIN_LIMIT).is_err());
        assert!(!p.pinned(1, b"k") && p.pinned(1, b"other"));
        assert_eq!(p.len(), 1);
        assert_eq!(p.deferred_total, 0);
    }

    #[test]
    fn a_client_speaking_ends_pins_past_their_limit() {
        let Some(t0) = Instant::now().checked_sub(PIN_LIMIT * 2) else {
            return;
        };
        let mut p = Pins::default();
        // A quiet client's pin, long past its limit, nothing waiting.
        p.pin(1, b"old", 10, t0);
        p.pin(1, b"new", 11, Instant::now());
        assert!(p.spoke(99).is_empty());
        assert!(!p.pinned(1, b"old") && p.pinned(1, b"new"));
        assert_eq!(p.len(), 1);
    }
}
