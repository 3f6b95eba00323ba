//! Typed wrappers for the controls tools and helpers use, so a caller gets
//! a node map rather than a reply to pick apart.

use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply, ControlRequest, Opcode};

use crate::connection::Client;
use crate::error::{ClientError, Result};

/// Extracts a control's typed reply data, or reports a reply of the wrong
/// shape.
macro_rules! reply_data {
    ($reply:expr, $variant:ident) => {
        match $reply.data {
            Some(ControlReply::$variant(v)) => Ok(v),
            _ => Err(ClientError::UnexpectedReply(Opcode::$variant)),
        }
    };
}

/// Declares getters for controls that take no data and return one value.
macro_rules! getters {
    ($($(#[$doc:meta])* $fn:ident => $variant:ident : $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $fn(&self, dest: u32) -> Result<$ty> {
                let r = self.control(dest, ControlRequest::$variant).await?;
                reply_data!(r, $variant)
            }
        )*
    };
}

/// Declares setters for controls that take one value and return nothing.
macro_rules! setters {
    ($($(#[$doc:meta])* $fn:ident => $variant:ident ( $ty:ty );)*) => {
        $(
            $(#[$doc])*
            pub async fn $fn(&self, dest: u32, v: $ty) -> Result<()> {
                self.control(dest, ControlRequest::$variant(v)).await.map(drop)
            }
        )*
    };
}

/// Declares actions for controls with neither data nor reply.
macro_rules! actions {
    ($($(#[$doc:meta])* $fn:ident => $variant:ident;)*) => {
        $(
            $(#[$doc])*
            pub async fn $fn(&self, dest: u32) -> Result<()> {
                self.control(dest, ControlRequest::$variant).await.map(drop)
            }
        )*
    };
}

impl Client {
    getters! {
        /// The daemon's statistics.
        statistics => Statistics: Box<Statistics>;
        /// The vnn map (generation and lmaster of each hash bucket).
        get_vnnmap => GetVnnMap: VnnMap;
        /// The debug level.
        get_debug => GetDebug: u32;
        /// The attached databases.
        get_dbmap => GetDbMap: DbidMap;
        /// The node map with every node's flags, as this node sees it.
        get_nodemap => GetNodemap: NodeMap;
        /// The nodes file as the daemon read it.
        get_nodes_file => GetNodesFile: NodeMap;
        /// Every tunable's value.
        get_all_tunables => GetAllTunables: Box<TunableList>;
        /// The tunables' names.
        list_tunables => ListTunables: VarList;
        /// Uptime and recovery times.
        uptime => Uptime: Uptime;
        /// The node's capabilities.
        get_capabilities => GetCapabilities: u32;
        /// The cluster lock setting.
        get_reclock_file => GetReclockFile: Option<String>;
        /// The node's ban state.
        get_ban_state => GetBanState: BanState;
        /// The node's run state.
        get_runstate => GetRunstate: Runstate;
        /// Network interfaces.
        get_ifaces => GetIfaces: IfaceList;
        /// Public addresses.
        get_public_ips => GetPublicIps: PublicIpList;
        /// Statistics history.
        get_stat_history => GetStatHistory: StatisticsList;
        /// A memory usage dump.
        dump_memory => DumpMemory: String;
    }

    setters! {
        /// Sets the debug level.
        set_debug => SetDebug(u32);
        /// Sets the recovery mode.
        set_recmode => SetRecmode(u32);
        /// Installs a vnn map.
        set_vnnmap => SetVnnMap(VnnMap);
        /// Sets a tunable.
        set_tunable => SetTunable(Tunable);
        /// Changes a node's flags.
        modify_flags => ModifyFlags(NodeFlagChange);
        /// Bans (or unbans, with time 0) a node.
        set_ban_state => SetBanState(BanState);
        /// Sets the lmaster role.
        set_lmasterrole => SetLmasterRole(u32);
        /// Sets the leader (recmaster) role.
        set_recmasterrole => SetRecmasterRole(u32);
        /// Freezes a database.
        db_freeze => DbFreeze(u32);
        /// Thaws a database.
        db_thaw => DbThaw(u32);
        /// Starts a recovery transaction on a database.
        db_transaction_start => DbTransactionStart(TransDb);
        /// Commits a recovery transaction.
        db_transaction_commit => DbTransactionCommit(TransDb);
        /// Cancels a recovery transaction.
        db_transaction_cancel => DbTransactionCancel(u32);
        /// Starts pushing records into a database.
        db_push_start => DbPushStart(PullDbExt);
        /// Wipes a database within a recovery transaction.
        wipe_database => WipeDatabase(TransDb);
        /// Marks a database healthy.
        db_set_healthy => DbSetHealthy(u32);
        /// Makes a database read-only capable.
        set_db_readonly => SetDbReadonly(u32);
        /// Makes a database sticky.
        set_db_sticky => SetDbSticky(u32);
        /// Detaches a database.
        db_detach => DbDetach(u32);
        /// Applies a persistent transaction's changes.
        trans3_commit => Trans3Commit(RecBuffer);
        /// Applies record updates.
        update_record => UpdateRecord(RecBuffer);
        /// Sets an interface's link state.
        set_iface_link_state => SetIfaceLinkState(Iface);
        /// Adds a public address.
        add_public_ip => AddPublicIp(AddrInfo);
        /// Deletes a public address.
        del_public_ip => DelPublicIp(AddrInfo);
        /// Releases a public address.
        release_ip => ReleaseIp(PublicIp);
        /// Takes over a public address.
        takeover_ip => TakeoverIp(PublicIp);
        /// Sends a gratuitous ARP.
        send_gratuitous_arp => SendGratuitousArp(AddrInfo);
        /// Records a TCP connection to tickle.
        tcp_add_delayed_update => TcpAddDelayedUpdate(Connection);
        /// Removes a TCP connection.
        tcp_remove => TcpRemove(Connection);
        /// Sets the tickle list of an address.
        set_tcp_tickle_list => SetTcpTickleList(TickleList);
    }

    actions! {
        /// Resets the statistics.
        statistics_reset => StatisticsReset;
        /// Stops the daemon.
        shutdown => Shutdown;
        /// Starts a recovery (recovery daemon side).
        start_recovery => StartRecovery;
        /// Ends a recovery.
        end_recovery => EndRecovery;
        /// Re-reads the nodes file.
        reload_nodes_file => ReloadNodesFile;
        /// Stops the node.
        stop_node => StopNode;
        /// Continues a stopped node.
        continue_node => ContinueNode;
        /// Disables the node.
        disable_node => DisableNode;
        /// Enables the node.
        enable_node => EnableNode;
        /// Re-reads public addresses.
        reload_public_ips => ReloadPublicIps;
        /// Runs the ipreallocated event.
        ipreallocated => Ipreallocated;
    }

    /// Checks the daemon answers; returns its number of connected clients.
    pub async fn ping(&self, dest: u32) -> Result<u32> {
        Ok(self.control_status(dest, ControlRequest::Ping).await? as u32)
    }

    /// The node number of `dest`.
    pub async fn get_pnn(&self, dest: u32) -> Result<u32> {
        Ok(self.control_status(dest, ControlRequest::GetPnn).await? as u32)
    }

    /// The process id of the daemon on `dest`.
    pub async fn get_pid(&self, dest: u32) -> Result<i32> {
        self.control_status(dest, ControlRequest::GetPid).await
    }

    /// The recovery mode of `dest` (`CTDB_RECOVERY_NORMAL` or `_ACTIVE`).
    pub async fn get_recmode(&self, dest: u32) -> Result<u32> {
        Ok(self
            .control_status(dest, ControlRequest::GetRecmode)
            .await? as u32)
    }

    /// Whether process `pid` exists on `dest`.
    pub async fn process_exists(&self, dest: u32, pid: i32) -> Result<bool> {
        let r = self
            .control_raw(
                dest,
                ctdb_protocol::ReqControl::new(ControlRequest::ProcessExists(pid)),
            )
            .await?;
        Ok(r.status == 0)
    }

    /// Whether process `pid` exists on `dest` and has registered `srvid`.
    pub async fn check_pid_srvid(&self, dest: u32, pid: i32, srvid: u64) -> Result<bool> {
        let r = self
            .control_raw(
                dest,
                ctdb_protocol::ReqControl::new(ControlRequest::CheckPidSrvid(PidSrvid {
                    pid,
                    srvid,
                })),
            )
            .await?;
        Ok(r.status == 0)
    }

    /// A tunable's value.
    pub async fn get_tunable(&self, dest: u32, name: &str) -> Result<u32> {
        let r = self
            .control(
                dest,
                ControlRequest::GetTunable(ctdb_protocol::control::TunableName(name.to_owned())),
            )
            .await?;
        reply_data!(r, GetTunable)
    }

    /// The path of a database's file on `dest`.
    pub async fn getdbpath(&self, dest: u32, db_id: u32) -> Result<String> {
        let r = self.control(dest, ControlRequest::GetDbPath(db_id)).await?;
        reply_data!(r, GetDbPath)
    }

    /// A database's name.
    pub async fn get_dbname(&self, dest: u32, db_id: u32) -> Result<String> {
        let r = self.control(dest, ControlRequest::GetDbName(db_id)).await?;
        reply_data!(r, GetDbName)
    }

    /// A database's health: `None` when healthy, else the reason.
    pub async fn db_get_health(&self, dest: u32, db_id: u32) -> Result<Option<String>> {
        let r = self
            .control(dest, ControlRequest::DbGetHealth(db_id))
            .await?;
        reply_data!(r, DbGetHealth)
    }

    /// A database's sequence number.
    pub async fn get_db_seqnum(&self, dest: u32, db_id: u32) -> Result<u64> {
        let r = self
            .control(dest, ControlRequest::GetDbSeqnum(DbSeqnumRequest { db_id }))
            .await?;
        reply_data!(r, GetDbSeqnum)
    }

    /// A database's statistics.
    pub async fn get_db_statistics(&self, dest: u32, db_id: u32) -> Result<Box<DbStatistics>> {
        let r = self
            .control(dest, ControlRequest::GetDbStatistics(db_id))
            .await?;
        reply_data!(r, GetDbStatistics)
    }

    /// The tdb open flags of a database.
    pub async fn db_open_flags(&self, dest: u32, db_id: u32) -> Result<i32> {
        let r = self
            .control(dest, ControlRequest::DbOpenFlags(db_id))
            .await?;
        reply_data!(r, DbOpenFlags)
    }

    /// Information about one public address.
    pub async fn get_public_ip_info(&self, dest: u32, addr: SockAddr) -> Result<PublicIpInfo> {
        let r = self
            .control(dest, ControlRequest::GetPublicIpInfo(addr))
            .await?;
        reply_data!(r, GetPublicIpInfo)
    }

    /// The tickle list of an address.
    pub async fn get_tcp_tickle_list(&self, dest: u32, addr: SockAddr) -> Result<TickleList> {
        let r = self
            .control(dest, ControlRequest::GetTcpTickleList(addr))
            .await?;
        reply_data!(r, GetTcpTickleList)
    }

    /// Starts pulling a database's records as messages to `pulldb.srvid`;
    /// returns how many records were sent.
    pub async fn db_pull(&self, dest: u32, pulldb: PullDbExt) -> Result<u32> {
        let r = self.control(dest, ControlRequest::DbPull(pulldb)).await?;
        reply_data!(r, DbPull)
    }

    /// Finishes a push; returns how many records the node received.
    pub async fn db_push_confirm(&self, dest: u32, db_id: u32) -> Result<u32> {
        let r = self
            .control(dest, ControlRequest::DbPushConfirm(db_id))
            .await?;
        reply_data!(r, DbPushConfirm)
    }

    /// Attaches a database by name on `dest`; returns its id.
    pub async fn db_attach(
        &self,
        dest: u32,
        name: &str,
        kind: crate::DbKind,
        flags: u32,
    ) -> Result<u32> {
        let req = match kind {
            crate::DbKind::Volatile => ControlRequest::DbAttach(name.to_owned()),
            crate::DbKind::Persistent => ControlRequest::DbAttachPersistent(name.to_owned()),
            crate::DbKind::Replicated => ControlRequest::DbAttachReplicated(name.to_owned()),
            k @ (crate::DbKind::InMemory
            | crate::DbKind::Keyed
            | crate::DbKind::PartiallyReplicated) => {
                ControlRequest::DbAttachExt(ctdb_protocol::types::DbAttachExt {
                    flags: u32::from(k.flags()),
                    probe: false,
                    name: name.to_owned(),
                })
            }
        };
        let r = self.control_flags(dest, req, flags).await?;
        match r.data {
            Some(ControlReply::DbAttach(id))
            | Some(ControlReply::DbAttachPersistent(id))
            | Some(ControlReply::DbAttachReplicated(id))
            | Some(ControlReply::DbAttachExt(id)) => Ok(id),
            _ => Err(ClientError::UnexpectedReply(Opcode::DbAttach)),
        }
    }

    /// Echoes data back after `timeout` milliseconds.
    pub async fn echo_data(&self, dest: u32, data: EchoData) -> Result<EchoData> {
        let r = self.control(dest, ControlRequest::EchoData(data)).await?;
        reply_data!(r, EchoData)
    }
}
