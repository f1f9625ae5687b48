//! [`Lrm`]: the tokio-based executor. It keeps the per-resource queues ([`Queues`]) and the
//! recurring operations, starts agent processes through [`exec::run`] and sends every result
//! down the channel the controller gave it.

use super::env::{self, Refusal};
use super::exec::{self, Spawn};
use super::queue::Queues;
use super::rules::{self, ocf_rc_name};
use super::{rc, LrmConfig, OpRequest, OpResult};
use crate::cluster::cib::config::{Action, Agent, Attrs, ResourceClass};
use crate::cluster::cib::status::OpStatus;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedSender;

/// A recurring operation is known by resource, action and interval (as in Pacemaker).
type RecKey = (String, Action, u64);

enum JobKind {
    Once { req: Box<OpRequest>, call_id: u64 },
    Recurring { key: RecKey, generation: u64 },
}

struct Job {
    rsc: String,
    kind: JobKind,
    submitted: Instant,
}

struct Recurring {
    req: OpRequest,
    /// The call id of the latest report (the first report uses the id `execute` returned).
    call_id: u64,
    /// Tells a run of a replaced or cancelled registration from the current one.
    generation: u64,
    last_reported: Option<(OpStatus, i32)>,
    last_run: Option<(OpStatus, i32)>,
    /// A run waiting in the queue or running.
    job: Option<u64>,
    timer: Option<tokio::task::AbortHandle>,
}

struct RunningInfo {
    rsc: String,
    action: Action,
    interval_ms: u64,
    call_id: u64,
    started: Instant,
}

#[derive(Default)]
struct Inner {
    queues: Queues,
    jobs: HashMap<u64, Job>,
    running: BTreeMap<u64, RunningInfo>,
    recurring: BTreeMap<RecKey, Recurring>,
    next_job: u64,
    next_generation: u64,
    shutting_down: bool,
}

/// One node's local resource manager.
pub struct Lrm {
    cfg: LrmConfig,
    tx: UnboundedSender<OpResult>,
    next_call: AtomicU64,
    inner: Mutex<Inner>,
    rt: tokio::runtime::Handle,
    me: Weak<Lrm>,
    /// Distinguishes the temporary files of concurrent `meta-data`/`validate-all` calls.
    next_tmp: AtomicU64,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Empties `HA_RSCTMP` and `HA_VARRUN` when the host rebooted since the last start (see
/// [`rules::stale_after_reboot`]) and records the current boot id.
fn clean_after_reboot(cfg: &LrmConfig) -> Result<(), String> {
    let marker = cfg.state_dir.join("boot_id");
    let saved = std::fs::read_to_string(&marker).ok();
    let current = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
    if rules::stale_after_reboot(saved.as_deref(), current.as_deref()) {
        for d in [cfg.rsctmp_dir(), cfg.varrun_dir()] {
            tracing::info!("LRM: the host rebooted: emptying {}", d.display());
            std::fs::remove_dir_all(&d).map_err(|e| format!("cannot empty {}: {e}", d.display()))?;
            std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
    }
    if let Some(c) = current {
        std::fs::write(&marker, c).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    }
    Ok(())
}

/// A resource id as part of a file name.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What running one request gave.
struct Outcome {
    status: OpStatus,
    rc: i32,
    output: String,
    exec_time: Duration,
}

impl Outcome {
    fn refused(r: Refusal) -> Outcome {
        Outcome {
            status: r.status,
            rc: r.rc,
            output: r.message,
            exec_time: Duration::ZERO,
        }
    }
}

impl Lrm {
    /// Creates the state directories and the LRM. Must be called inside a tokio runtime (the
    /// operations run on it).
    pub fn new(cfg: LrmConfig, results: UnboundedSender<OpResult>) -> Result<Arc<Lrm>, String> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| "the local resource manager must be created inside a tokio runtime".to_string())?;
        if cfg.node.is_empty() {
            return Err("the local resource manager needs this node's name".into());
        }
        for p in &cfg.path_prepend {
            if p.to_string_lossy().contains(':') {
                return Err(format!("{} cannot be in PATH: it contains ':'", p.display()));
            }
        }
        for d in [
            cfg.state_dir.clone(),
            cfg.rsctmp_dir(),
            cfg.varrun_dir(),
            cfg.varlock_dir(),
            cfg.varlib_dir(),
            cfg.output_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        clean_after_reboot(&cfg)?;
        let first = cfg.first_call_id;
        Ok(Arc::new_cyclic(|me| Lrm {
            cfg,
            tx: results,
            next_call: AtomicU64::new(first),
            inner: Mutex::new(Inner::default()),
            rt,
            me: me.clone(),
            next_tmp: AtomicU64::new(0),
        }))
    }

    pub fn config(&self) -> &LrmConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_call_id(&self) -> u64 {
        self.next_call.fetch_add(1, Ordering::Relaxed)
    }

    /// The call id the next operation will get (the caller persists it across restarts).
    pub fn next_call_id(&self) -> u64 {
        self.next_call.load(Ordering::Relaxed)
    }

    fn send(&self, r: OpResult) {
        let expected = matches!(r.status, OpStatus::Done | OpStatus::Cancelled);
        if expected {
            tracing::info!(
                "LRM: {} {}{} (call {}): rc {} ({}) {:?}",
                r.rsc,
                r.action,
                if r.interval_ms > 0 {
                    format!("_{}", r.interval_ms)
                } else {
                    String::new()
                },
                r.call_id,
                r.rc,
                ocf_rc_name(r.rc),
                r.status
            );
        } else {
            tracing::warn!(
                "LRM: {} {} (call {}): {:?}, rc {} ({}): {}",
                r.rsc,
                r.action,
                r.call_id,
                r.status,
                r.rc,
                ocf_rc_name(r.rc),
                r.output.lines().last().unwrap_or("")
            );
        }
        let _ = self.tx.send(r);
    }

    fn result(&self, req: &OpRequest, call_id: u64, status: OpStatus, rc: i32, output: String) -> OpResult {
        OpResult {
            rsc: req.rsc.clone(),
            agent: req.agent.clone(),
            action: req.action,
            interval_ms: req.interval_ms,
            call_id,
            rc,
            status,
            exec_time_ms: 0,
            queue_time_ms: 0,
            output,
            transition: req.transition.clone(),
            finished_unix_ms: now_unix_ms(),
        }
    }

    /// Queues `req`; returns its call id at once. The result comes through the channel. A
    /// recurring request (`interval_ms > 0`) replaces an earlier one with the same resource,
    /// action and interval, runs now and then every interval, and reports its first result and
    /// then each change. A `stop` cancels the resource's recurring operations first.
    pub fn execute(&self, req: OpRequest) -> u64 {
        let call_id = self.take_call_id();
        let mut inner = self.lock();
        if inner.shutting_down {
            drop(inner);
            let r = self.result(
                &req,
                call_id,
                OpStatus::Error,
                rc::ERR_GENERIC,
                "the local resource manager is shutting down".into(),
            );
            self.send(r);
            return call_id;
        }
        if req.interval_ms > 0 {
            let key: RecKey = (req.rsc.clone(), req.action, req.interval_ms);
            if let Some(old) = inner.recurring.remove(&key) {
                self.drop_recurring(&mut inner, &key, old);
            }
            inner.next_generation += 1;
            let generation = inner.next_generation;
            inner.recurring.insert(
                key.clone(),
                Recurring {
                    req,
                    call_id,
                    generation,
                    last_reported: None,
                    last_run: None,
                    job: None,
                    timer: None,
                },
            );
            self.submit_recurring_run(&mut inner, &key);
        } else {
            if req.action == Action::Stop {
                self.cancel_all_locked(&mut inner, &req.rsc);
            }
            let rsc = req.rsc.clone();
            let kind = JobKind::Once {
                req: Box::new(req),
                call_id,
            };
            self.submit(&mut inner, rsc, kind);
        }
        call_id
    }

    fn submit(&self, inner: &mut Inner, rsc: String, kind: JobKind) -> u64 {
        inner.next_job += 1;
        let id = inner.next_job;
        let start = inner.queues.submit(&rsc, id);
        inner.jobs.insert(
            id,
            Job {
                rsc,
                kind,
                submitted: Instant::now(),
            },
        );
        if start {
            self.start_job(inner, id);
        }
        id
    }

    fn submit_recurring_run(&self, inner: &mut Inner, key: &RecKey) {
        let Some(r) = inner.recurring.get(key) else {
            return;
        };
        if r.job.is_some() {
            return;
        }
        let generation = r.generation;
        let id = self.submit(
            inner,
            key.0.clone(),
            JobKind::Recurring {
                key: key.clone(),
                generation,
            },
        );
        if let Some(r) = inner.recurring.get_mut(key) {
            r.job = Some(id);
        }
    }

    /// Marks job `id` running and spawns it. A job that can no longer run (its recurring
    /// registration is gone) is taken out of the queue and the next one of its resource tried,
    /// so a queue never waits for a job nobody runs.
    fn start_job(&self, inner: &mut Inner, mut id: u64) {
        loop {
            let Some(job) = inner.jobs.get(&id) else {
                debug_assert!(false, "queued job {id} has no entry");
                return;
            };
            let runnable = match &job.kind {
                JobKind::Once { req, call_id } => Some(((**req).clone(), *call_id)),
                JobKind::Recurring { key, generation } => inner
                    .recurring
                    .get(key)
                    .filter(|r| r.generation == *generation)
                    .map(|r| (r.req.clone(), r.call_id)),
            };
            let Some((req, call_id)) = runnable else {
                let rsc = job.rsc.clone();
                inner.jobs.remove(&id);
                match inner.queues.finish(&rsc, id) {
                    Some(next) => {
                        id = next;
                        continue;
                    }
                    None => return,
                }
            };
            inner.running.insert(
                id,
                RunningInfo {
                    rsc: req.rsc.clone(),
                    action: req.action,
                    interval_ms: req.interval_ms,
                    call_id,
                    started: Instant::now(),
                },
            );
            let Some(me) = self.me.upgrade() else {
                return;
            };
            self.rt.spawn(async move {
                let out = me.run_request(&req).await;
                me.finish_job(id, &req, out);
            });
            return;
        }
    }

    /// Runs one request's agent (or refuses to) and maps the result.
    async fn run_request(&self, req: &OpRequest) -> Outcome {
        let path = match env::resolve_agent(&self.cfg, &req.agent, is_executable) {
            Ok(p) => p,
            Err(r) => return Outcome::refused(r),
        };
        if req.agent.class == ResourceClass::Lsb && !env::lsb_supports(req.action) {
            return Outcome::refused(Refusal {
                status: OpStatus::NotSupported,
                rc: rc::ERR_UNIMPLEMENTED,
                message: format!("LSB scripts have no {} action", req.action),
            });
        }
        let arg = env::action_arg(req.agent.class, req.action);
        let envv = match env::build_env(&self.cfg, req, req.action.as_str()) {
            Ok(e) => e,
            Err(e) => {
                return Outcome::refused(Refusal {
                    status: OpStatus::Error,
                    rc: rc::ERR_ARGS,
                    message: e,
                })
            }
        };
        let (program, args) = env::command_line(&self.cfg, &path, arg);
        let output = self.cfg.output_dir().join(format!(
            "{}.{}_{}.log",
            file_part(&req.rsc),
            req.action.as_str(),
            req.interval_ms
        ));
        let timeout = Duration::from_millis(req.effective_timeout_ms());
        let ran = exec::run(Spawn {
            program,
            args,
            env: envv,
            output,
            stderr: None,
            timeout,
        })
        .await;
        let (status, rc) = rules::outcome(req.agent.class, req.action, ran.exit);
        let mut output = ran.output;
        match ran.exit {
            rules::Exit::TimedOut => output.push_str(&format!(
                "\nhablock-lrm: killed after {} ms (timeout)\n",
                timeout.as_millis()
            )),
            rules::Exit::Signal(s) => output.push_str(&format!("\nhablock-lrm: killed by signal {s}\n")),
            _ => {}
        }
        Outcome {
            status,
            rc,
            output,
            exec_time: ran.elapsed,
        }
    }

    fn finish_job(&self, id: u64, req: &OpRequest, out: Outcome) {
        let mut inner = self.lock();
        let running = inner.running.remove(&id);
        let Some(job) = inner.jobs.remove(&id) else {
            return;
        };
        let started = running.map(|r| r.started).unwrap_or(job.submitted);
        let queue_time_ms = ms(started.saturating_duration_since(job.submitted));
        let mk = |call_id: u64, out: &Outcome| OpResult {
            rsc: req.rsc.clone(),
            agent: req.agent.clone(),
            action: req.action,
            interval_ms: req.interval_ms,
            call_id,
            rc: out.rc,
            status: out.status,
            exec_time_ms: ms(out.exec_time),
            queue_time_ms,
            output: out.output.clone(),
            transition: req.transition.clone(),
            finished_unix_ms: now_unix_ms(),
        };
        let mut to_send = None;
        match job.kind {
            JobKind::Once { call_id, .. } => to_send = Some(mk(call_id, &out)),
            JobKind::Recurring { key, generation } => {
                let shutting_down = inner.shutting_down;
                let next_call = || self.take_call_id();
                if let Some(r) = inner.recurring.get_mut(&key).filter(|r| r.generation == generation) {
                    r.job = None;
                    let now = (out.status, out.rc);
                    if rules::should_report(r.last_reported, now) {
                        if r.last_reported.is_some() {
                            r.call_id = next_call();
                        }
                        r.last_reported = Some(now);
                        if !rules::is_expected(r.req.expected_rc, now) {
                            tracing::warn!(
                                "LRM: recurring {} {}_{} now returns {} ({})",
                                key.0,
                                key.1,
                                key.2,
                                out.rc,
                                ocf_rc_name(out.rc)
                            );
                        }
                        to_send = Some(mk(r.call_id, &out));
                    }
                    r.last_run = Some(now);
                    if !shutting_down {
                        if let Some(me) = self.me.upgrade() {
                            let interval = Duration::from_millis(key.2);
                            let k = key.clone();
                            let h = self.rt.spawn(async move {
                                tokio::time::sleep(interval).await;
                                me.timer_fired(&k, generation);
                            });
                            r.timer = Some(h.abort_handle());
                        }
                    }
                }
                // Otherwise the registration was cancelled or replaced while this ran: its
                // result is dropped, as Pacemaker drops a cancelled op's result.
            }
        }
        if let Some(next) = inner.queues.finish(&job.rsc, id) {
            self.start_job(&mut inner, next);
        }
        drop(inner);
        if let Some(r) = to_send {
            self.send(r);
        }
    }

    fn timer_fired(&self, key: &RecKey, generation: u64) {
        let mut inner = self.lock();
        if inner.shutting_down {
            return;
        }
        if let Some(r) = inner.recurring.get_mut(key).filter(|r| r.generation == generation) {
            r.timer = None;
            self.submit_recurring_run(&mut inner, key);
        }
    }

    /// Tears down a registration already taken out of `inner.recurring` and reports it
    /// `Cancelled`. A run of it still waiting is removed; a running one finishes unreported.
    fn drop_recurring(&self, inner: &mut Inner, key: &RecKey, r: Recurring) {
        if let Some(t) = &r.timer {
            t.abort();
        }
        if let Some(j) = r.job {
            if inner.queues.remove_waiting(&key.0, j) {
                inner.jobs.remove(&j);
            }
        }
        let rc = r.last_reported.map(|(_, rc)| rc).unwrap_or(rc::OK);
        let res = self.result(&r.req, r.call_id, OpStatus::Cancelled, rc, String::new());
        self.send(res);
    }

    fn cancel_all_locked(&self, inner: &mut Inner, rsc: &str) -> usize {
        let keys: Vec<RecKey> = inner.recurring.keys().filter(|k| k.0 == rsc).cloned().collect();
        for k in &keys {
            if let Some(r) = inner.recurring.remove(k) {
                self.drop_recurring(inner, k, r);
            }
        }
        keys.len()
    }

    /// Stops a recurring operation; it is reported with status `Cancelled`. False if there is
    /// no such recurring operation.
    pub fn cancel(&self, rsc: &str, action: Action, interval_ms: u64) -> bool {
        let key: RecKey = (rsc.to_string(), action, interval_ms);
        let mut inner = self.lock();
        match inner.recurring.remove(&key) {
            Some(r) => {
                self.drop_recurring(&mut inner, &key, r);
                true
            }
            None => false,
        }
    }

    /// Cancels every recurring operation of `rsc`.
    pub fn cancel_all(&self, rsc: &str) {
        let mut inner = self.lock();
        self.cancel_all_locked(&mut inner, rsc);
    }

    /// Cancels the recurring operations and the operations that have not started (all reported
    /// `Cancelled`), refuses new ones, and waits for the running ones (each ends by its own
    /// timeout at the latest, after which it is killed).
    pub async fn shutdown(&self) {
        let deadline = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            let keys: Vec<RecKey> = inner.recurring.keys().cloned().collect();
            for k in &keys {
                if let Some(r) = inner.recurring.remove(k) {
                    self.drop_recurring(&mut inner, k, r);
                }
            }
            let waiting: Vec<u64> = inner
                .jobs
                .keys()
                .filter(|j| !inner.running.contains_key(j))
                .copied()
                .collect();
            for j in waiting {
                let rsc = inner.jobs[&j].rsc.clone();
                if inner.queues.remove_waiting(&rsc, j) {
                    if let Some(Job {
                        kind: JobKind::Once { req, call_id },
                        ..
                    }) = inner.jobs.remove(&j)
                    {
                        let res = self.result(&req, call_id, OpStatus::Cancelled, rc::ERR_GENERIC, String::new());
                        self.send(res);
                    }
                }
            }
            // Every running op ends by its timeout; allow a little for the kill and the reaping.
            let longest = inner
                .running
                .keys()
                .filter_map(|j| inner.jobs.get(j))
                .map(|j| match &j.kind {
                    JobKind::Once { req, .. } => req.effective_timeout_ms(),
                    JobKind::Recurring { .. } => super::DEFAULT_TIMEOUT_MS,
                })
                .max()
                .unwrap_or(0);
            Instant::now() + Duration::from_millis(longest) + Duration::from_secs(5)
        };
        while Instant::now() < deadline {
            if self.lock().queues.is_idle() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("LRM: shutdown gave up waiting for running operations");
    }

    /// Running, waiting and recurring operations, for status output.
    pub fn status_json(&self) -> serde_json::Value {
        let inner = self.lock();
        let running: Vec<_> = inner
            .running
            .values()
            .map(|r| {
                json!({
                    "rsc": r.rsc,
                    "action": r.action.as_str(),
                    "interval_ms": r.interval_ms,
                    "call_id": r.call_id,
                    "running_ms": ms(r.started.elapsed()),
                })
            })
            .collect();
        let waiting = inner.jobs.len() - inner.running.len();
        let recurring: Vec<_> = inner
            .recurring
            .iter()
            .map(|(k, r)| {
                let last = r.last_run.map(
                    |(s, rc)| json!({"rc": rc, "rc_name": ocf_rc_name(rc), "status": format!("{s:?}").to_lowercase()}),
                );
                json!({
                    "rsc": k.0,
                    "action": k.1.as_str(),
                    "interval_ms": k.2,
                    "call_id": r.call_id,
                    "last": last,
                    "as_expected": r.last_run.map(|now| rules::is_expected(r.req.expected_rc, now)),
                })
            })
            .collect();
        json!({
            "node": self.cfg.node,
            "next_call_id": self.next_call_id(),
            "running": running,
            "waiting": waiting,
            "recurring": recurring,
            "shutting_down": inner.shutting_down,
        })
    }

    fn tmp_paths(&self, what: &str) -> (PathBuf, PathBuf) {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let dir = self.cfg.output_dir();
        (dir.join(format!("{what}.{n}.out")), dir.join(format!("{what}.{n}.err")))
    }

    /// Runs `action_name` of `agent` outside the per-resource queues (for actions without side
    /// effects). Returns `(status, rc, stdout, stderr)`.
    async fn run_aside(
        &self,
        rsc: &str,
        agent: &Agent,
        params: &Attrs,
        action_name: &str,
        timeout_ms: u64,
    ) -> (OpStatus, i32, String, String) {
        let path = match env::resolve_agent(&self.cfg, agent, is_executable) {
            Ok(p) => p,
            Err(r) => return (r.status, r.rc, String::new(), r.message),
        };
        if agent.class != ResourceClass::Ocf {
            return (
                OpStatus::NotSupported,
                rc::ERR_UNIMPLEMENTED,
                String::new(),
                format!("{agent} has no {action_name} action"),
            );
        }
        let mut req = OpRequest::new(rsc, agent.clone(), Action::Monitor);
        req.params = params.clone();
        req.timeout_ms = timeout_ms;
        let envv = match env::build_env(&self.cfg, &req, action_name) {
            Ok(e) => e,
            Err(e) => return (OpStatus::Error, rc::ERR_ARGS, String::new(), e),
        };
        let (program, args) = env::command_line(&self.cfg, &path, action_name);
        let (out, err) = self.tmp_paths(action_name);
        let ran = exec::run(Spawn {
            program,
            args,
            env: envv,
            output: out.clone(),
            stderr: Some(err.clone()),
            timeout: Duration::from_millis(req.effective_timeout_ms()),
        })
        .await;
        let stdout = exec::read_head(&out, 1 << 20);
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        let (status, rc) = rules::outcome(agent.class, Action::Monitor, ran.exit);
        (status, rc, stdout, ran.stderr)
    }

    /// The agent's `meta-data` (its XML description).
    pub async fn metadata(&self, agent: &Agent) -> Result<String, String> {
        let (status, rc, stdout, stderr) = self
            .run_aside(&agent.kind, agent, &Attrs::new(), "meta-data", 30_000)
            .await;
        if status == OpStatus::Done && rc == rc::OK {
            Ok(stdout)
        } else {
            Err(format!(
                "{agent} meta-data failed: {status:?}, rc {rc} ({}): {}",
                ocf_rc_name(rc),
                stderr.trim()
            ))
        }
    }

    /// The agent's `validate-all` with `params`: `(status, rc, output)`.
    pub async fn validate_all(
        &self,
        rsc: &str,
        agent: &Agent,
        params: &Attrs,
        timeout_ms: u64,
    ) -> (OpStatus, i32, String) {
        let (status, rc, stdout, stderr) = self.run_aside(rsc, agent, params, "validate-all", timeout_ms).await;
        (status, rc, format!("{stdout}{stderr}"))
    }
}
