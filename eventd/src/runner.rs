//! Components and their events: running an event's scripts in order, the
//! per-component queue, monitor cancellation, timeouts and the debug hook,
//! and the last result of every event — CTDB 4.17's rules.
//!
//! * A component is `ETCDIR/events/<name>`; it must be a directory when
//!   first used (`ENOENT`/`ENOTDIR` otherwise).
//! * Events of one component run one at a time, in arrival order. A new
//!   event cancels a running `monitor` (which replies `ECANCELED`, its
//!   script killed, its result not kept); a `monitor` that arrives while
//!   another event runs is refused at once with `ECANCELED`.
//! * The timeout counts from the request's arrival and covers the whole
//!   event. A script still running at the deadline is left running, the
//!   debug program (`[event] debug script`) is run with its pid and the
//!   event name, and its process group gets SIGTERM when that finishes.
//! * Every script of the directory is run, in name order, with
//!   `argv = [name, event, args split on spaces...]`; a disabled one is
//!   "run" as a failure to execute (`-ENOEXEC`). The first real failure
//!   stops the event (unless `RUN_ALL`), and the status lists the scripts up
//!   to it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use ctdb_protocol::event::{EventScript, RUN_ALL, RunRequest, StatusReply, errno};
use ctdb_protocol::types::Timeval;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, error, info};

use crate::proc;

/// The running event of a component.
struct Running {
    id: u64,
    is_monitor: bool,
    cancel: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct ComponentState {
    running: Option<Running>,
    results: HashMap<String, StatusReply>,
    debug_running: bool,
}

/// One `events/<name>` directory.
pub struct Component {
    path: PathBuf,
    turn: tokio::sync::Mutex<()>,
    state: RefCell<ComponentState>,
}

/// Clears the component's running event when the run ends, however it ends.
struct RunningGuard<'a> {
    comp: &'a Component,
    id: u64,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.comp.state.borrow_mut();
        if st.running.as_ref().is_some_and(|r| r.id == self.id) {
            st.running = None;
        }
    }
}

/// The daemon's state: components, their results, the debug program.
pub struct EventContext {
    script_dir: PathBuf,
    debug_prog: RefCell<Option<PathBuf>>,
    components: RefCell<HashMap<String, Rc<Component>>>,
    next_id: Cell<u64>,
}

/// Splits arguments as CTDB does (`strtok` on spaces: empty tokens vanish).
pub fn split_args(args: Option<&str>) -> Vec<String> {
    args.map(|a| {
        a.split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn log_output(prefix: &str, output: &[u8]) {
    for line in String::from_utf8_lossy(output).split('\n') {
        if !line.is_empty() {
            error!("{prefix}: {line}");
        }
    }
}

impl EventContext {
    pub fn new(script_dir: PathBuf, debug_prog: Option<PathBuf>) -> Rc<Self> {
        Rc::new(EventContext {
            script_dir,
            debug_prog: RefCell::new(debug_prog),
            components: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        })
    }

    /// Replaces the debug program (configuration reload).
    pub fn set_debug_prog(&self, p: Option<PathBuf>) {
        *self.debug_prog.borrow_mut() = p;
    }

    /// The component `name`, set up on first use.
    fn component(&self, name: Option<&str>) -> Result<Rc<Component>, i32> {
        let name = name.ok_or(errno::EINVAL)?;
        if let Some(c) = self.components.borrow().get(name) {
            return Ok(c.clone());
        }
        let path = self.script_dir.join(name);
        let md = std::fs::metadata(&path).map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))?;
        if !md.is_dir() {
            return Err(libc::ENOTDIR);
        }
        let c = Rc::new(Component {
            path,
            turn: tokio::sync::Mutex::new(()),
            state: RefCell::new(ComponentState::default()),
        });
        self.components
            .borrow_mut()
            .insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// `STATUS`: the last completed run of `event`.
    pub fn status(&self, component: Option<&str>, event: Option<&str>) -> Result<StatusReply, i32> {
        let comp = self.component(component)?;
        let event = event.ok_or(errno::EINVAL)?;
        let st = comp.state.borrow();
        st.results.get(event).cloned().ok_or(errno::EINVAL)
    }

    /// `SCRIPT`: enable or disable a script.
    pub fn set_script(
        &self,
        component: Option<&str>,
        script: Option<&str>,
        enable: bool,
    ) -> Result<(), i32> {
        let comp = self.component(component)?;
        let script = script.ok_or(errno::EINVAL)?;
        crate::scripts::set_enabled(&comp.path, script, enable)
    }

    /// `RUN`: runs an event; returns the reply's result.
    pub async fn run(self: &Rc<Self>, req: RunRequest) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(u64::from(req.timeout));
        let comp = match self.component(req.component.as_deref()) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let Some(event) = req.event.clone() else {
            return errno::EINVAL;
        };
        let is_monitor = event == "monitor";
        {
            let mut st = comp.state.borrow_mut();
            if let Some(cur) = st.running.as_mut() {
                if cur.is_monitor {
                    if let Some(c) = cur.cancel.take() {
                        let _ = c.send(());
                    }
                } else if is_monitor {
                    return errno::ECANCELED;
                }
            }
        }
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let _turn = comp.turn.lock().await;
        debug!(
            "Running event {event} with args \"{}\"",
            req.args.as_deref().unwrap_or("(null)")
        );
        let list = match crate::scripts::list(&comp.path) {
            Ok(l) => l,
            Err(e) => {
                error!("get_script_list() failed, ret={e}");
                return e;
            }
        };
        if list.is_empty() {
            comp.state
                .borrow_mut()
                .results
                .insert(event, StatusReply::default());
            return 0;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        comp.state.borrow_mut().running = Some(Running {
            id,
            is_monitor,
            cancel: Some(cancel_tx),
        });
        let _running = RunningGuard { comp: &comp, id };

        let args = split_args(req.args.as_deref());
        let run_all = req.flags & RUN_ALL != 0;
        let scripts = self.run_scripts(&comp, &event, &list, &args, deadline, run_all);
        let outcome = tokio::select! {
            r = scripts => r,
            // Cancelled by a newer event: the script is killed with the
            // dropped run, and nothing is kept.
            _ = cancel_rx => return errno::ECANCELED,
        };
        let (reply, hung) = match outcome {
            Ok(r) => r,
            Err(e) => return e,
        };
        if let Some(pid) = hung {
            self.debug_hung(&comp, &event, pid);
        }
        let summary = reply.summary;
        comp.state.borrow_mut().results.insert(event, reply);
        if summary == -errno::ETIMEDOUT {
            errno::ETIMEDOUT
        } else if summary != 0 {
            errno::ENOEXEC
        } else {
            0
        }
    }

    /// Runs the scripts in order; returns the status and, for a script left
    /// running at the deadline, its pid.
    async fn run_scripts(
        &self,
        comp: &Component,
        event: &str,
        list: &[crate::scripts::Script],
        args: &[String],
        deadline: Instant,
        run_all: bool,
    ) -> Result<(StatusReply, Option<i32>), i32> {
        let mut reply = StatusReply::default();
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(event.to_owned());
        argv.extend_from_slice(args);
        for s in list {
            let path = comp.path.join(format!("{}.script", s.name));
            let begin = Timeval::now();
            debug!(
                "Running {} with args \"{} {event}\"",
                path.display(),
                s.name
            );
            let out = proc::run(&path, &s.name, &argv, Some(deadline))
                .await
                .inspect_err(|e| error!("run_proc failed for {}, ret={e}", s.name))?;
            let end = Timeval::now();
            if let Some(o) = &out.output {
                log_output(&s.name, o);
            }
            debug!(
                "Script {} finished sig={}, err={}, status={}",
                s.name, out.result.sig, out.result.err, out.result.status
            );
            let result = out.result.summary();
            reply.scripts.push(EventScript {
                name: Some(s.name.clone()),
                begin,
                end,
                result,
                output: out.output,
            });
            if result != 0 && result != -errno::ENOEXEC {
                reply.summary = result;
                if !run_all {
                    let timed_out = result == -errno::ETIMEDOUT;
                    info!(
                        "{event} event {}",
                        if timed_out { "timed out" } else { "failed" }
                    );
                    return Ok((reply, if timed_out { out.pid } else { None }));
                }
            }
        }
        Ok((reply, None))
    }

    /// Runs the debug program on a hung script (one at a time per
    /// component), logs its output, then sends SIGTERM to the script's
    /// process group.
    fn debug_hung(self: &Rc<Self>, comp: &Rc<Component>, event: &str, pid: i32) {
        let Some(prog) = self.debug_prog.borrow().clone() else {
            return;
        };
        {
            let mut st = comp.state.borrow_mut();
            if st.debug_running {
                return;
            }
            st.debug_running = true;
        }
        let comp = comp.clone();
        let event = event.to_owned();
        tokio::task::spawn_local(async move {
            debug!(
                "Running debug {} with args \"{pid} {event}\"",
                prog.display()
            );
            let argv0 = prog.to_string_lossy().into_owned();
            let r = proc::run(&prog, &argv0, &[pid.to_string(), event], None).await;
            comp.state.borrow_mut().debug_running = false;
            match r {
                Ok(o) => {
                    if let Some(out) = o.output {
                        log_output("event_debug", &out);
                    }
                }
                Err(e) => error!("Running debug failed, ret={e}"),
            }
            proc::signal_group(pid, Signal::SIGTERM);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_split_like_strtok() {
        assert_eq!(split_args(Some(" a  b c ")), ["a", "b", "c"]);
        assert!(split_args(None).is_empty());
        assert!(split_args(Some("   ")).is_empty());
    }
}
