//! The command table: every command of CTDB 4.17's tool, whether it needs
//! the daemon, whether it may run for another node (`-n`), and its usage
//! line; and the dispatch from a command name to its implementation.

use crate::ctx::Ctx;
use crate::options::Options;
use crate::{cmd_db, cmd_ip, cmd_misc, cmd_node, cmd_rec};

/// One command.
pub struct Command {
    pub name: &'static str,
    /// Runs without connecting to the daemon.
    pub without_daemon: bool,
    /// May run on behalf of another node.
    pub remote: bool,
    pub msg: &'static str,
    pub args: &'static str,
}

macro_rules! table {
    ($($name:literal, $wd:literal, $remote:literal, $msg:literal, $args:literal;)*) => {
        /// Every command, in the order the usage text lists them.
        pub const COMMANDS: &[Command] = &[
            $(Command { name: $name, without_daemon: $wd, remote: $remote, msg: $msg, args: $args },)*
        ];
    };
}

table! {
    "version", true, false, "show version of ctdb", "";
    "status", false, true, "show node status", "";
    "uptime", false, true, "show node uptime", "";
    "ping", false, true, "ping a node", "";
    "runstate", false, true, "get/check runstate of a node", "[setup|first_recovery|startup|running]";
    "getvar", false, true, "get a tunable variable", "<name>";
    "setvar", false, true, "set a tunable variable", "<name> <value>";
    "listvars", false, true, "list tunable variables", "";
    "statistics", false, true, "show ctdb statistics", "";
    "statisticsreset", false, true, "reset ctdb statistics", "";
    "stats", false, true, "show rolling statistics", "[count]";
    "ip", false, true, "show public ips", "[all]";
    "ipinfo", false, true, "show public ip details", "<ip>";
    "ifaces", false, true, "show interfaces", "";
    "setifacelink", false, true, "set interface link status", "<iface> up|down";
    "process-exists", false, true, "check if a process exists on a node", "<pid> [<srvid>]";
    "getdbmap", false, true, "show attached databases", "";
    "getdbstatus", false, true, "show database status", "<dbname|dbid>";
    "catdb", false, false, "dump cluster-wide ctdb database", "<dbname|dbid>";
    "cattdb", false, false, "dump local ctdb database", "<dbname|dbid>";
    "getcapabilities", false, true, "show node capabilities", "";
    "pnn", false, false, "show the pnn of the currnet node", "";
    "lvs", false, false, "show lvs configuration", "leader|list|status";
    "setdebug", false, true, "set debug level", "ERROR|WARNING|NOTICE|INFO|DEBUG";
    "getdebug", false, true, "get debug level", "";
    "attach", false, false, "attach a database", "<dbname> [persistent|replicated]";
    "detach", false, false, "detach database(s)", "<dbname|dbid> ...";
    "dumpmemory", false, true, "dump ctdbd memory map", "";
    "rddumpmemory", false, true, "dump recoverd memory map", "";
    "getpid", false, true, "get ctdbd process ID", "";
    "disable", false, true, "disable a node", "";
    "enable", false, true, "enable a node", "";
    "stop", false, true, "stop a node", "";
    "continue", false, true, "continue a stopped node", "";
    "ban", false, true, "ban a node", "<bantime>";
    "unban", false, true, "unban a node", "";
    "shutdown", false, true, "shutdown ctdb daemon", "";
    "recover", false, true, "force recovery", "";
    "sync", false, true, "run ip reallocation (deprecated)", "";
    "ipreallocate", false, true, "run ip reallocation", "";
    "gratarp", false, true, "send a gratuitous arp", "<ip> <interface>";
    "tickle", true, false, "send a tcp tickle ack", "<srcip:port> <dstip:port>";
    "gettickles", false, true, "get the list of tickles", "<ip> [<port>]";
    "addtickle", false, true, "add a tickle", "<ip>:<port> <ip>:<port>";
    "deltickle", false, true, "delete a tickle", "<ip>:<port> <ip>:<port>";
    "listnodes", true, true, "list nodes in the cluster", "";
    "reloadnodes", false, false, "reload the nodes file all nodes", "";
    "moveip", false, false, "move an ip address to another node", "<ip> <node>";
    "addip", false, true, "add an ip address to a node", "<ip/mask> <iface>";
    "delip", false, true, "delete an ip address from a node", "<ip>";
    "backupdb", false, false, "backup a database into a file", "<dbname|dbid> <file>";
    "restoredb", false, false, "restore a database from a file", "<file> [dbname]";
    "dumpdbbackup", true, false, "dump database from a backup file", "<file>";
    "wipedb", false, false, "wipe the contents of a database.", "<dbname|dbid>";
    "leader", false, true, "show the pnn of the leader", "";
    "event", true, false, "event and event script commands", "";
    "scriptstatus", true, false, "show event script status", "[init|setup|startup|monitor|takeip|releaseip|ipreallocated]";
    "natgw", false, false, "show natgw configuration", "leader|list|status";
    "getreclock", false, true, "get recovery lock file", "";
    "setlmasterrole", false, true, "set LMASTER role", "on|off";
    "setleaderrole", false, true, "set LEADER role", "on|off";
    "setdbreadonly", false, true, "enable readonly records", "<dbname|dbid>";
    "setdbsticky", false, true, "enable sticky records", "<dbname|dbid>";
    "pfetch", false, false, "fetch record from persistent database", "<dbname|dbid> <key>";
    "pstore", false, false, "write record to persistent database", "<dbname|dbid> <key> <value>";
    "pdelete", false, false, "delete record from persistent database", "<dbname|dbid> <key>";
    "ptrans", false, false, "update a persistent database (from file or stdin)", "<dbname|dbid> [<file>]";
    "tfetch", false, true, "fetch a record", "<tdb-file> <key> [<file>]";
    "tstore", false, true, "store a record", "<tdb-file> <key> <data> [<rsn> <dmaster> <flags>]";
    "readkey", false, false, "read value of a database key", "<dbname|dbid> <key> [readonly]";
    "writekey", false, false, "write value for a database key", "<dbname|dbid> <key> <value>";
    "deletekey", false, false, "delete a database key", "<dbname|dbid> <key>";
    "checktcpport", true, false, "check if a service is bound to a specific tcp port or not", "<port>";
    "getdbseqnum", false, false, "get database sequence number", "<dbname|dbid>";
    "nodestatus", false, true, "show and return node status", "[all|<pnn-list>]";
    "dbstatistics", false, true, "show database statistics", "<dbname|dbid>";
    "reloadips", false, false, "reload the public addresses file", "[all|<pnn-list>]";
}

/// ctdb-rs commands CTDB 4.17 does not have: found and run like the
/// others, left out of the usage text (which is CTDB's), documented in the
/// tool's README.
pub const EXTENSIONS: &[Command] = &[
    Command {
        name: "dblog",
        without_daemon: false,
        remote: true,
        msg: "show the change log of persistent databases (ctdb-rs)",
        args: "[<dbname|dbid>]",
    },
    Command {
        name: "waitseqnum",
        without_daemon: false,
        remote: true,
        msg: "wait until a persistent database reaches a sequence number or generation (ctdb-rs)",
        args: "<dbname|dbid> <seqnum>|gen:<generation> [<timeout>]",
    },
];

/// The command called `name` (exact match).
pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().chain(EXTENSIONS).find(|c| c.name == name)
}

/// A command's line in the usage text.
pub fn usage_line(c: &Command) -> String {
    format!("  {:<15} {:<27}  {}", c.name, c.args, c.msg)
}

/// Runs a command that needs no daemon.
pub fn run_local(opts: &Options, name: &str, args: &[String]) -> i32 {
    match name {
        "version" => cmd_misc::version(),
        "tickle" => cmd_ip::tickle(args),
        "listnodes" => cmd_node::listnodes(opts, args),
        "dumpdbbackup" => cmd_rec::dumpdbbackup(args),
        "event" => cmd_misc::event(args),
        "scriptstatus" => cmd_misc::scriptstatus(args),
        "checktcpport" => cmd_misc::checktcpport(args),
        _ => unreachable!("{name} needs the daemon"),
    }
}

/// Runs a command against the daemon.
pub async fn run(ctx: &mut Ctx, name: &str, args: &[String]) -> i32 {
    match name {
        "status" => cmd_node::status(ctx, args).await,
        "uptime" => cmd_node::uptime(ctx, args).await,
        "ping" => cmd_node::ping(ctx, args).await,
        "runstate" => cmd_node::runstate(ctx, args).await,
        "getvar" => cmd_misc::getvar(ctx, args).await,
        "setvar" => cmd_misc::setvar(ctx, args).await,
        "listvars" => cmd_misc::listvars(ctx, args).await,
        "statistics" => cmd_misc::statistics(ctx, args).await,
        "statisticsreset" => cmd_misc::statistics_reset(ctx, args).await,
        "stats" => cmd_misc::stats(ctx, args).await,
        "ip" => cmd_ip::ip(ctx, args).await,
        "ipinfo" => cmd_ip::ipinfo(ctx, args).await,
        "ifaces" => cmd_ip::ifaces(ctx, args).await,
        "setifacelink" => cmd_ip::setifacelink(ctx, args).await,
        "process-exists" => cmd_node::process_exists(ctx, args).await,
        "getdbmap" => cmd_db::getdbmap(ctx, args).await,
        "getdbstatus" => cmd_db::getdbstatus(ctx, args).await,
        "catdb" => cmd_db::catdb(ctx, args).await,
        "cattdb" => cmd_db::cattdb(ctx, args).await,
        "getcapabilities" => cmd_node::getcapabilities(ctx, args).await,
        "pnn" => cmd_node::pnn(ctx, args).await,
        "lvs" => cmd_misc::helper(args, "lvs", "LVS helper", "CTDB_LVS_HELPER", "ctdb_lvs"),
        "setdebug" => cmd_misc::setdebug(ctx, args).await,
        "getdebug" => cmd_misc::getdebug(ctx, args).await,
        "attach" => cmd_db::attach(ctx, args).await,
        "detach" => cmd_db::detach(ctx, args).await,
        "dumpmemory" => cmd_misc::dumpmemory(ctx, args).await,
        "rddumpmemory" => cmd_misc::rddumpmemory(ctx, args).await,
        "getpid" => cmd_node::getpid(ctx, args).await,
        "disable" => cmd_node::disable(ctx, args).await,
        "enable" => cmd_node::enable(ctx, args).await,
        "stop" => cmd_node::stop(ctx, args).await,
        "continue" => cmd_node::cont(ctx, args).await,
        "ban" => cmd_node::ban(ctx, args).await,
        "unban" => cmd_node::unban(ctx, args).await,
        "shutdown" => cmd_node::shutdown(ctx, args).await,
        "recover" => cmd_node::recover(ctx, args).await,
        "sync" | "ipreallocate" => cmd_node::ipreallocate_cmd(ctx, args, name).await,
        "gratarp" => cmd_ip::gratarp(ctx, args).await,
        "gettickles" => cmd_ip::gettickles(ctx, args).await,
        "addtickle" => cmd_ip::addtickle(ctx, args, true).await,
        "deltickle" => cmd_ip::addtickle(ctx, args, false).await,
        "reloadnodes" => cmd_node::reloadnodes(ctx, args).await,
        "moveip" => cmd_ip::moveip(ctx, args).await,
        "addip" => cmd_ip::addip(ctx, args).await,
        "delip" => cmd_ip::delip(ctx, args).await,
        "backupdb" => cmd_rec::backupdb(ctx, args).await,
        "restoredb" => cmd_rec::restoredb(ctx, args).await,
        "wipedb" => cmd_db::wipedb(ctx, args).await,
        "leader" => cmd_node::leader(ctx, args).await,
        "natgw" => cmd_misc::helper(
            args,
            "natgw",
            "NAT gateway helper",
            "CTDB_NATGW_HELPER",
            "ctdb_natgw",
        ),
        "getreclock" => cmd_node::getreclock(ctx, args).await,
        "setlmasterrole" => cmd_node::setrole(ctx, args, "setlmasterrole").await,
        "setleaderrole" => cmd_node::setrole(ctx, args, "setleaderrole").await,
        "setdbreadonly" => cmd_db::setdbflag(ctx, args, true).await,
        "setdbsticky" => cmd_db::setdbflag(ctx, args, false).await,
        "pfetch" => cmd_rec::pfetch(ctx, args).await,
        "pstore" => cmd_rec::pstore(ctx, args).await,
        "pdelete" => cmd_rec::pdelete(ctx, args).await,
        "ptrans" => cmd_rec::ptrans(ctx, args).await,
        "tfetch" => cmd_rec::tfetch(args),
        "tstore" => cmd_rec::tstore(args),
        "readkey" => cmd_rec::readkey(ctx, args).await,
        "writekey" => cmd_rec::writekey(ctx, args).await,
        "deletekey" => cmd_rec::deletekey(ctx, args).await,
        "getdbseqnum" => cmd_db::getdbseqnum(ctx, args).await,
        "nodestatus" => cmd_node::nodestatus(ctx, args).await,
        "dbstatistics" => cmd_db::dbstatistics(ctx, args).await,
        "reloadips" => cmd_ip::reloadips(ctx, args).await,
        "dblog" => crate::cmd_dblog::dblog(ctx, args).await,
        "waitseqnum" => crate::cmd_waitseqnum::waitseqnum(ctx, args).await,
        _ => unreachable!("{name} runs without the daemon"),
    }
}
