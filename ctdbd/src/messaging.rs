//! The srvid registry: which local clients want messages sent to which
//! srvids. A client registered for [`srvid::ALL`] gets every message.

use std::collections::{BTreeSet, HashMap};

use ctdb_protocol::message::srvid;

/// A client connection's id (CTDB's client id).
pub type ClientId = u32;

/// Registrations by srvid.
#[derive(Debug, Default)]
pub struct SrvidRegistry {
    by_srvid: HashMap<u64, BTreeSet<ClientId>>,
}

impl SrvidRegistry {
    /// Registrations (a srvid registered by two clients counts twice).
    pub fn len(&self) -> usize {
        self.by_srvid.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_srvid.is_empty()
    }

    pub fn register(&mut self, id: u64, client: ClientId) {
        self.by_srvid.entry(id).or_default().insert(client);
    }

    /// Returns false if `client` had not registered `id`.
    pub fn deregister(&mut self, id: u64, client: ClientId) -> bool {
        let Some(set) = self.by_srvid.get_mut(&id) else {
            return false;
        };
        let had = set.remove(&client);
        if set.is_empty() {
            self.by_srvid.remove(&id);
        }
        had
    }

    /// Drops every registration of a client that went away.
    pub fn remove_client(&mut self, client: ClientId) {
        self.by_srvid.retain(|_, set| {
            set.remove(&client);
            !set.is_empty()
        });
    }

    pub fn is_registered(&self, id: u64, client: ClientId) -> bool {
        self.by_srvid.get(&id).is_some_and(|s| s.contains(&client))
    }

    /// The clients a message to `id` goes to (each once).
    pub fn recipients(&self, id: u64) -> BTreeSet<ClientId> {
        let mut out = BTreeSet::new();
        if let Some(s) = self.by_srvid.get(&id) {
            out.extend(s.iter().copied());
        }
        if id != srvid::ALL
            && let Some(s) = self.by_srvid.get(&srvid::ALL)
        {
            out.extend(s.iter().copied());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_deliver_deregister() {
        let mut r = SrvidRegistry::default();
        r.register(7, 1);
        r.register(7, 2);
        r.register(srvid::ALL, 3);
        assert_eq!(
            r.recipients(7).into_iter().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(r.recipients(8).into_iter().collect::<Vec<_>>(), vec![3]);
        assert!(r.deregister(7, 1));
        assert!(!r.deregister(7, 1));
        r.remove_client(2);
        assert_eq!(r.recipients(7).into_iter().collect::<Vec<_>>(), vec![3]);
        assert!(!r.is_registered(7, 2));
    }
}
