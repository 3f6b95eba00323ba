//! The statistics family: `ctdb statistics` (and its reset), the
//! statistics history (`ctdb stats`) and `ctdb dumpmemory`.

use ctdb_protocol::{ControlReply, ControlRequest, ReqControl};

use super::{Core, Outcome};
use crate::db::Databases;

impl Core {
    /// A statistics control, or `None` when `req` is not one. `dbs`, when
    /// given, adds the database layer's part (the frozen flag, its memory).
    pub(super) fn stats_control(
        &mut self,
        req: &ReqControl,
        dbs: Option<&Databases>,
    ) -> Option<Outcome> {
        use ControlRequest as Rq;
        Some(match &req.data {
            Rq::Statistics => {
                let mut s = (self.stats).snapshot(self.num_clients(), self.node.in_recovery());
                s.frozen = u32::from(dbs.is_some_and(Databases::all_frozen));
                Outcome::ok(ControlReply::Statistics(Box::new(s)))
            }
            Rq::StatisticsReset => {
                self.stats.reset();
                Outcome::ok(ControlReply::StatisticsReset)
            }
            Rq::GetStatHistory => Outcome::ok(ControlReply::GetStatHistory(self.stats.history())),
            Rq::DumpMemory => {
                Outcome::ok(ControlReply::DumpMemory(crate::memory::report(self, dbs)))
            }
            _ => return None,
        })
    }
}
