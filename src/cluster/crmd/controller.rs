//! The controller's tokio side: the node task (runs requests addressed to this node through the
//! LRM and records the results), the DC task (transitions) and orderly shutdown. The decisions
//! are in [`super::plan`] and [`super::te`]; this file only moves facts between them, the
//! cluster driver, the LRM and the fencer.

use super::notify::NotifyEnvs;
use super::plan::{self, cluster_state, failure_ops, fenced_ops, membership_ops, probes, request, resolve};
use super::te::Run;
use crate::cluster::cib::config::{Action, ResourceClass, Role};
use crate::cluster::cib::ops::CibOp;
use crate::cluster::cib::status::{ActionRequest, FenceEvent, OpStatus};
use crate::cluster::driver::{ClusterDriver, Snapshot};
use crate::cluster::fencing;
use crate::cluster::lrm::{Lrm, LrmConfig, OpRequest, OpResult};
use crate::cluster::pengine::state::{observe, OCF_RUNNING_PROMOTED, OCF_SUCCESS};
use crate::cluster::pengine::{schedule_cib, ActionKind, Transition};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where the controller finds things and what it tells agents.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node: String,
    pub state_dir: PathBuf,
    /// The cluster file (agents' `HABLOCK_CONFIG`, for the hbcrm shims).
    pub config_path: PathBuf,
    /// The repository's (or installed) `agents` directory: `ocf/resource.d`, `bin`, `fence`.
    pub agents_dir: Option<PathBuf>,
    /// How long an orderly shutdown waits for the cluster to move this node's resources away.
    pub shutdown_timeout: Duration,
}

/// Finds the `agents` directory: `$HABLOCK_AGENTS_DIR`, the source tree this binary was built
/// from, or `/usr/lib/hablock/agents`.
pub fn default_agents_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("HABLOCK_AGENTS_DIR").map(PathBuf::from),
        Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/agents"))),
        Some(PathBuf::from("/usr/lib/hablock/agents")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the node task remembers about operations it started.
#[derive(Default)]
struct NodeSide {
    /// Request keys already handed to the LRM (a request is run once).
    started: HashSet<String>,
    /// The expected role per resource and interval, for judging results.
    role_of: HashMap<(String, u64), Option<Role>>,
    /// Results someone awaits (shutdown's local stops), by call id.
    waiters: HashMap<u64, tokio::sync::oneshot::Sender<OpResult>>,
}

/// The DC's transition in progress, for status.
#[derive(Default, Clone, serde::Serialize)]
struct DcStatus {
    transition: Option<String>,
    actions: usize,
    done: usize,
    failed: usize,
    last_transition: Option<String>,
    last_result: Option<String>,
    transitions: u64,
}

pub struct Controller {
    cfg: ControllerConfig,
    driver: Arc<ClusterDriver>,
    lrm: Arc<Lrm>,
    node_side: Mutex<NodeSide>,
    dc_status: Mutex<DcStatus>,
    /// Call ids for results recorded without the LRM (fencing devices, unknown agents).
    own_calls: std::sync::atomic::AtomicU64,
}

impl Controller {
    /// Starts the LRM and the controller's tasks.
    pub fn start(driver: Arc<ClusterDriver>, cfg: ControllerConfig) -> Result<Arc<Controller>, String> {
        let snap = driver.snapshot();
        let mut lcfg = LrmConfig::new(cfg.node.clone(), cfg.state_dir.join("lrm"));
        // Call ids grow across restarts: the incarnation does.
        lcfg.first_call_id = snap.incarnation.saturating_mul(1000).max(1);
        if let Some(a) = &cfg.agents_dir {
            lcfg.extra_provider_dirs.push(a.join("ocf/resource.d"));
            lcfg.path_prepend.push(a.join("bin"));
            // resource-agents call `${HA_SBIN_DIR}/crm_attribute` by absolute path: point it at
            // the shims that map Pacemaker's tools to hbcrm.
            lcfg.extra_env
                .push(("HA_SBIN_DIR".into(), a.join("bin").display().to_string()));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                // hbcrm and hbadm next to hablockd, for the agents and shims.
                lcfg.path_prepend.push(dir.to_path_buf());
            }
        }
        lcfg.extra_env
            .push(("HABLOCK_CONFIG".into(), cfg.config_path.display().to_string()));
        lcfg.extra_env.push(("HABLOCK_NODE".into(), cfg.node.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let first_call = lcfg.first_call_id;
        let lrm = Lrm::new(lcfg, tx)?;
        let c = Arc::new(Controller {
            cfg,
            driver,
            lrm,
            node_side: Mutex::new(NodeSide::default()),
            dc_status: Mutex::new(DcStatus::default()),
            // Only for resources the LRM never runs, so they cannot clash with its ids.
            own_calls: std::sync::atomic::AtomicU64::new(first_call + 500),
        });
        tokio::spawn(c.clone().node_task());
        tokio::spawn(c.clone().result_task(rx));
        tokio::spawn(c.clone().dc_task());
        Ok(c)
    }

    fn side(&self) -> std::sync::MutexGuard<'_, NodeSide> {
        self.node_side.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For `hbcrm status --json` and `cluster-status`: the LRM's operations and the DC's run.
    pub fn status_json(&self) -> serde_json::Value {
        let dc = self.dc_status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::json!({ "lrm": self.lrm.status_json(), "transition": dc })
    }

    // ---------------------------------------------------------------- node side

    /// Runs every request addressed to this node, once.
    async fn node_task(self: Arc<Self>) {
        let mut changes = self.driver.subscribe();
        let mut was_quorate = false;
        loop {
            let snap = self.driver.snapshot();
            if was_quorate && !snap.quorate {
                self.clone().lost_quorum(&snap);
            }
            was_quorate = snap.quorate;
            let pending: Vec<ActionRequest> = snap
                .cib
                .status
                .nodes
                .get(&self.cfg.node)
                .map(|n| n.pending.clone())
                .unwrap_or_default();
            // Keys leave `pending` for good once their result is recorded: forget them too.
            self.side().started.retain(|k| pending.iter().any(|r| &r.key == k));
            for req in pending {
                if !self.side().started.insert(req.key.clone()) {
                    continue;
                }
                self.launch(&snap, req);
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// This node's partition lost quorum. A partition without quorum has no DC to schedule
    /// for it, so each node applies `no-quorum-policy` to itself: `stop` (the default) and
    /// `suicide` stop everything active here, in reverse start order; `freeze` and `ignore`
    /// keep it running (nothing new starts without a DC).
    fn lost_quorum(self: Arc<Self>, snap: &Snapshot) {
        use crate::cluster::quorum::NoQuorumPolicy;
        let policy = snap.cib.configuration.no_quorum_policy();
        let active = self.active_here(snap);
        if active.is_empty() || !matches!(policy, NoQuorumPolicy::Stop | NoQuorumPolicy::Suicide) {
            if !active.is_empty() {
                tracing::warn!(
                    "controller: quorum lost; no-quorum-policy={policy}: leaving {} as it is",
                    active.join(" ")
                );
            }
            return;
        }
        tracing::warn!(
            "controller: quorum lost; no-quorum-policy={policy}: stopping {} here",
            active.join(" ")
        );
        tokio::spawn(async move {
            for rsc in active.iter().rev() {
                self.stop_locally(rsc).await;
            }
        });
    }

    fn launch(&self, snap: &Snapshot, req: ActionRequest) {
        let node = &self.cfg.node;
        let (agent, params, meta) = match resolve(&snap.cib, node, &req.rsc) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("controller: cannot run {} {}: {e}", req.action.as_str(), req.rsc);
                return self.record_without_agent(&req, String::new(), 5, OpStatus::NotInstalled, e);
            }
        };
        if agent.class == ResourceClass::Stonith {
            // Fencing devices are the fencer's (on the DC): "started" only means the DC may use
            // them, and nothing runs here.
            let text = format!("{agent} is a fencing device: used by the DC when it fences");
            return self.record_without_agent(&req, agent.to_string(), 0, OpStatus::Done, text);
        }
        if req.action == Action::Monitor && req.interval_ms > 0 {
            // A monitor for another role (or interval) replaces the old one.
            for (rsc, interval) in self.recurring_of(&req.rsc) {
                if interval != req.interval_ms {
                    self.lrm.cancel(&rsc, Action::Monitor, interval);
                }
            }
        }
        {
            let mut s = self.side();
            s.role_of.insert((req.rsc.clone(), req.interval_ms), req.role);
        }
        let mut op = OpRequest::new(req.rsc.clone(), agent, req.action);
        op.interval_ms = req.interval_ms;
        op.timeout_ms = req.timeout_ms;
        op.params = params;
        op.meta = meta;
        if let Some(Role::Promoted) = req.role {
            op.meta.insert("role".into(), "Promoted".into());
        }
        op.extra_env = req.env.clone();
        op.transition = Some(req.key.clone());
        op.expected_rc = Some(if req.role == Some(Role::Promoted) {
            OCF_RUNNING_PROMOTED
        } else {
            OCF_SUCCESS
        });
        tracing::info!(
            "controller: running {} {}{} ({})",
            req.action.as_str(),
            req.rsc,
            if req.interval_ms > 0 {
                format!(" every {} ms", req.interval_ms)
            } else {
                String::new()
            },
            req.key
        );
        self.lrm.execute(op);
    }

    /// Records a result the LRM did not produce (no agent to run), so the DC is not left waiting.
    fn record_without_agent(&self, req: &ActionRequest, agent: String, rc: i32, status: OpStatus, output: String) {
        let call_id = self.own_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let now = unix_ms();
        let record = crate::cluster::cib::status::OpRecord {
            status,
            last_rc_change_unix_ms: now,
            transition: Some(req.key.clone()),
            exit_reason: crate::cluster::lrm::cut_reason(&output),
            ..crate::cluster::cib::status::OpRecord::done(req.action, req.interval_ms, call_id, rc)
        };
        let mut ops = vec![CibOp::RecordOperation {
            node: self.cfg.node.clone(),
            rsc: req.rsc.clone(),
            agent,
            record,
        }];
        if !plan::result_ok(req.action, req.interval_ms, req.role, rc, status) {
            tracing::warn!("controller: {} {}: {output}", req.action.as_str(), req.rsc);
            let snap = self.driver.snapshot();
            ops.extend(failure_ops(
                &snap.cib,
                &self.cfg.node,
                &req.rsc,
                req.action,
                req.interval_ms,
                now,
            ));
        }
        tokio::spawn(record_with_retry(self.driver.clone(), ops));
    }

    fn recurring_of(&self, rsc: &str) -> Vec<(String, u64)> {
        self.side()
            .role_of
            .keys()
            .filter(|(r, i)| r == rsc && *i > 0)
            .cloned()
            .collect()
    }

    /// Records every result in the CIB (through the DC), with fail counts on failure.
    async fn result_task(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<OpResult>) {
        while let Some(r) = rx.recv().await {
            let (agent, role, waiter) = {
                let mut s = self.side();
                (
                    r.agent.to_string(),
                    s.role_of.get(&(r.rsc.clone(), r.interval_ms)).copied().flatten(),
                    s.waiters.remove(&r.call_id),
                )
            };
            if r.status == OpStatus::Cancelled {
                if let Some(w) = waiter {
                    let _ = w.send(r);
                }
                continue;
            }
            let ok = plan::result_ok(r.action, r.interval_ms, role, r.rc, r.status);
            let level_ok = format!(
                "controller: {} {}{} on {}: rc {} ({}), {:?}, {} ms",
                r.action.as_str(),
                r.rsc,
                if r.interval_ms > 0 {
                    format!("_{}", r.interval_ms)
                } else {
                    String::new()
                },
                self.cfg.node,
                r.rc,
                crate::cluster::lrm::ocf_rc_name(r.rc),
                r.status,
                r.exec_time_ms
            );
            if ok {
                tracing::info!("{level_ok}");
            } else {
                tracing::warn!("{level_ok}: {}", r.output.trim_end().lines().last().unwrap_or(""));
            }
            let mut ops = vec![CibOp::RecordOperation {
                node: self.cfg.node.clone(),
                rsc: r.rsc.clone(),
                agent,
                record: r.to_record(),
            }];
            if !ok {
                let snap = self.driver.snapshot();
                ops.extend(failure_ops(
                    &snap.cib,
                    &self.cfg.node,
                    &r.rsc,
                    r.action,
                    r.interval_ms,
                    r.finished_unix_ms,
                ));
            }
            self.record(ops).await;
            if let Some(w) = waiter {
                let _ = w.send(r);
            }
        }
    }

    async fn record(&self, ops: Vec<CibOp>) {
        record_with_retry(self.driver.clone(), ops).await
    }

    // ---------------------------------------------------------------- DC side

    async fn dc_task(self: Arc<Self>) {
        let mut changes = self.driver.subscribe();
        let (fence_tx, mut fence_rx) = mpsc::unbounded_channel::<FenceDone>();
        let mut run: Option<ActiveRun> = None;
        let mut was_dc = false;
        // The view this DC last scheduled for: a node that comes back into it (a healed
        // partition, same incarnation) has an unknown history and is probed again.
        let mut last_view: Option<Vec<String>> = None;
        let mut counter = 0u64;
        let mut quiet_until = Instant::now();
        loop {
            let snap = self.driver.snapshot();
            if !snap.dc_ready {
                if was_dc {
                    tracing::info!("controller: no longer the DC");
                }
                was_dc = false;
                run = None;
                last_view = None;
            } else {
                if !was_dc {
                    was_dc = true;
                    tracing::info!("controller: this node is the DC");
                    // Requests an earlier DC left behind are forgotten; history says what ran.
                    let stale: Vec<CibOp> = snap
                        .cib
                        .status
                        .nodes
                        .iter()
                        .filter(|(_, n)| !n.pending.is_empty())
                        .map(|(name, _)| CibOp::ResetNode {
                            node: name.clone(),
                            history: false,
                        })
                        .collect();
                    if !stale.is_empty() {
                        let _ = self.driver.change(stale, false).await;
                        continue;
                    }
                }
                let now = unix_ms();
                let mut facts = membership_ops(&snap, now);
                if let Some(prev) = &last_view {
                    for n in snap.view.iter().filter(|n| !prev.contains(n) && **n != snap.local) {
                        tracing::info!("controller: {n} rejoined: its history is probed again");
                        facts.push(CibOp::ResetNode {
                            node: n.clone(),
                            history: true,
                        });
                    }
                }
                last_view = Some(snap.view.clone());
                if !facts.is_empty() {
                    if let Err(e) = self.driver.change(facts, false).await {
                        tracing::warn!("controller: recording membership: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
                if let Some(r) = run.as_mut() {
                    self.progress(&snap, r, &fence_tx).await;
                    if r.run.finished() {
                        let (done, failed, total) = r.run.counts();
                        let result = match r.run.aborted() {
                            Some(why) => format!("aborted ({why}): {done} of {total} done, {failed} failed"),
                            None => format!("complete: {total} actions"),
                        };
                        tracing::info!("controller: transition {} {result}", r.run.id);
                        if r.run.aborted().is_some() {
                            quiet_until = Instant::now() + Duration::from_millis(250);
                        }
                        self.set_dc_status(None, Some(result));
                        run = None;
                    }
                }
                if run.is_none() && Instant::now() >= quiet_until {
                    if let Some((t, envs)) = self.next_transition(&snap, now) {
                        counter += 1;
                        let id = format!("T{}-{counter}", snap.incarnation);
                        tracing::info!(
                            "controller: transition {id}: {} action(s)\n{}",
                            t.actions.len(),
                            t.render().trim_end()
                        );
                        for w in &t.warnings {
                            tracing::warn!("controller: {w}");
                        }
                        run = Some(ActiveRun {
                            run: Run::new(id, t),
                            view: snap.view.clone(),
                            sent: BTreeMap::new(),
                            envs,
                        });
                        self.set_dc_status(run.as_ref(), None);
                        continue;
                    }
                }
            }
            self.set_dc_status(run.as_ref(), None);
            let tick = if run.is_some() || Instant::now() < quiet_until {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                Some(done) = fence_rx.recv() => self.fence_done(run.as_mut(), done).await,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Probes first; then the scheduler's transition (with clone notifications and their
    /// environment), if it has anything to do.
    fn next_transition(&self, snap: &Snapshot, now: u64) -> Option<(Transition, NotifyEnvs)> {
        let cs = cluster_state(snap, now);
        let online: Vec<String> = cs
            .nodes
            .iter()
            .filter(|(_, n)| n.online)
            .map(|(name, _)| name.clone())
            .collect();
        let p = probes(&snap.cib, &online);
        if !p.is_empty() {
            let t = Transition {
                actions: p,
                ..Transition::default()
            };
            return Some((t, BTreeMap::new()));
        }
        let mut t = schedule_cib(&snap.cib, &cs);
        if t.is_empty() {
            return None;
        }
        let envs = super::notify::add_notifications(&mut t, &snap.cib, &cs);
        Some((t, envs))
    }

    /// Confirms what finished, fails what cannot finish, aborts on membership changes and sends
    /// out what became ready.
    async fn progress(&self, snap: &Snapshot, r: &mut ActiveRun, fence_tx: &mpsc::UnboundedSender<FenceDone>) {
        if snap.view != r.view {
            r.run.abort("membership changed");
        }
        let in_flight: Vec<usize> = r.run.in_flight().collect();
        for i in in_flight {
            let a = r.run.transition.actions[i].clone();
            if a.kind == ActionKind::Fence {
                continue;
            }
            let key = r.run.key(i);
            if let Some(ok) = plan::outcome(&snap.cib, &a.node, &a, &key) {
                r.run.confirm(i, ok);
            } else if !snap.view.contains(&a.node) {
                tracing::warn!("controller: {a} lost: {} left", a.node);
                r.run.confirm(i, false);
            } else if r.sent.get(&i).is_some_and(|(t, timeout)| t.elapsed() > *timeout) {
                tracing::warn!("controller: {a} timed out waiting for its result");
                r.run.confirm(i, false);
            }
        }
        let ready = r.run.take_ready();
        let mut per_node: BTreeMap<String, Vec<ActionRequest>> = BTreeMap::new();
        for i in ready {
            let a = r.run.transition.actions[i].clone();
            let key = r.run.key(i);
            if a.kind == ActionKind::Fence {
                self.spawn_fence(snap, &r.run.id, i, &a.node, fence_tx.clone());
                continue;
            }
            if let Some(mut req) = request(&a, key) {
                req.env = r.envs.get(&i).cloned().unwrap_or_default();
                let timeout = Duration::from_millis(req.timeout_ms) + Duration::from_secs(10);
                r.sent.insert(i, (Instant::now(), timeout));
                per_node.entry(a.node.clone()).or_default().push(req);
            }
        }
        if !per_node.is_empty() {
            let ops: Vec<CibOp> = per_node
                .into_iter()
                .map(|(node, requests)| CibOp::RequestActions { node, requests })
                .collect();
            if let Err(e) = self.driver.change(ops, false).await {
                tracing::warn!("controller: sending requests: {e}");
                r.run.abort("requests could not be sent");
                let out: Vec<usize> = r.run.in_flight().collect();
                for i in out {
                    if r.run.transition.actions[i].kind != ActionKind::Fence {
                        r.run.confirm(i, false);
                    }
                }
            }
        }
    }

    fn spawn_fence(
        &self,
        snap: &Snapshot,
        run_id: &str,
        idx: usize,
        target: &str,
        tx: mpsc::UnboundedSender<FenceDone>,
    ) {
        let cfg = &snap.cib.configuration;
        let action = fencing::FenceAction::from_config(cfg);
        let mut done = FenceDone {
            run_id: run_id.to_string(),
            idx,
            event: FenceEvent {
                target: target.to_string(),
                action: action.as_str().to_string(),
                ok: false,
                device: None,
                delegate: self.cfg.node.clone(),
                detail: String::new(),
                completed_unix_ms: 0,
            },
            elapsed_ms: 0,
        };
        if target == self.cfg.node {
            done.event.detail = "the DC does not fence itself".into();
            done.event.completed_unix_ms = unix_ms();
            let _ = tx.send(done);
            return;
        }
        tracing::warn!("controller: fencing {target}");
        let plan = fencing::plan(cfg, target, action);
        let opts = fencing::FenceOptions {
            agent_dirs: self
                .cfg
                .agents_dir
                .iter()
                .map(|a| a.join("fence"))
                .chain([PathBuf::from("/usr/sbin")])
                .collect(),
            output_dir: self.cfg.state_dir.join("fencing"),
            timeout: Duration::from_millis(fencing::stonith_timeout_ms(cfg)),
        };
        tokio::spawn(async move {
            match plan {
                Err(e) => done.event.detail = e,
                Ok(plan) => {
                    let o = fencing::execute(&plan, &opts).await;
                    done.event.ok = o.ok;
                    done.elapsed_ms = o.elapsed_ms;
                    if o.ok {
                        done.event.device = o.device;
                    } else {
                        done.event.detail = o.detail;
                    }
                }
            }
            done.event.completed_unix_ms = unix_ms();
            let _ = tx.send(done);
        });
    }

    /// Records a fencing result in the CIB (the history, and for a success the node's reset
    /// state) and confirms the transition's action.
    async fn fence_done(&self, run: Option<&mut ActiveRun>, mut done: FenceDone) {
        let target = done.event.target.clone();
        let ok = done.event.ok;
        let mut ops = Vec::new();
        if ok {
            tracing::warn!(
                "controller: {target} fenced by {} in {} ms",
                done.event.device.as_deref().unwrap_or("?"),
                done.elapsed_ms
            );
            ops.extend(fenced_ops(&self.driver.snapshot(), &target));
        } else {
            tracing::error!("controller: fencing {target} failed: {}", done.event.detail);
            done.event.detail = crate::cluster::lrm::cut_reason(&done.event.detail);
        }
        let (run_id, idx) = (done.run_id, done.idx);
        ops.push(CibOp::RecordFencing { event: done.event });
        self.record(ops).await;
        if let Some(r) = run {
            if r.run.id == run_id {
                r.run.confirm(idx, ok);
            }
        }
    }

    fn set_dc_status(&self, run: Option<&ActiveRun>, result: Option<String>) {
        let mut s = self.dc_status.lock().unwrap_or_else(|e| e.into_inner());
        match run {
            Some(r) => {
                if s.transition.as_deref() != Some(&r.run.id) {
                    s.transitions += 1;
                }
                let (done, failed, total) = r.run.counts();
                s.transition = Some(r.run.id.clone());
                s.actions = total;
                s.done = done;
                s.failed = failed;
            }
            None => {
                if let Some(t) = s.transition.take() {
                    s.last_transition = Some(t);
                }
                if result.is_some() {
                    s.last_result = result;
                }
            }
        }
    }

    // ---------------------------------------------------------------- shutdown

    /// Orderly shutdown, as Pacemaker's: this node says it is shutting down (a transient
    /// `shutdown` attribute the scheduler reads as standby), waits until the DC has moved its
    /// resources away (or stopped them), and stops what is still active itself if the cluster
    /// cannot (no DC, no quorum, or the time is up).
    pub async fn shutdown(&self) {
        let node = self.cfg.node.clone();
        let mark = vec![CibOp::SetTransientAttribute {
            node: node.clone(),
            name: "shutdown".into(),
            value: Some(unix_ms().to_string()),
        }];
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        let marked = tokio::time::timeout(Duration::from_secs(3), self.driver.change(mark, false))
            .await
            .is_ok_and(|r| r.is_ok());
        let mut changes = self.driver.subscribe();
        while marked && Instant::now() < deadline {
            if self.active_here(&self.driver.snapshot()).is_empty() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
        }
        let left = self.active_here(&self.driver.snapshot());
        if !left.is_empty() {
            tracing::warn!(
                "controller: stopping {} here without the cluster: {}",
                left.len(),
                left.join(" ")
            );
            for rsc in left.iter().rev() {
                self.stop_locally(rsc).await;
            }
        }
        self.lrm.shutdown().await;
    }

    /// Resources this node's history says are active, in the order they were started.
    fn active_here(&self, snap: &Snapshot) -> Vec<String> {
        let Some(n) = snap.cib.status.nodes.get(&self.cfg.node) else {
            return Vec::new();
        };
        let mut active: Vec<(u64, String)> = n
            .resources
            .iter()
            .filter(|(_, h)| observe(h).is_active())
            .map(|(id, h)| {
                let started = h
                    .ops
                    .iter()
                    .filter(|o| o.action == Action::Start)
                    .map(|o| o.call_id)
                    .max()
                    .unwrap_or(0);
                (started, id.clone())
            })
            .collect();
        active.sort();
        active.into_iter().map(|(_, id)| id).collect()
    }

    async fn stop_locally(&self, rsc: &str) {
        let snap = self.driver.snapshot();
        let Ok((agent, params, meta)) = resolve(&snap.cib, &self.cfg.node, rsc) else {
            return;
        };
        if agent.class == ResourceClass::Stonith {
            return;
        }
        self.lrm.cancel_all(rsc);
        let prim_timeout = match snap
            .cib
            .configuration
            .resource(crate::cluster::pengine::state::base_id(rsc))
        {
            Some(crate::cluster::cib::config::Resource::Primitive(p)) => plan::op_timeout(p, Action::Stop, 0),
            _ => plan::DEFAULT_TIMEOUT_MS,
        };
        let demote_first = matches!(
            snap.cib
                .status
                .nodes
                .get(&self.cfg.node)
                .and_then(|n| n.resources.get(rsc))
                .map(observe),
            Some(crate::cluster::pengine::state::Observed::Running(Role::Promoted))
        );
        let actions: &[Action] = if demote_first {
            &[Action::Demote, Action::Stop]
        } else {
            &[Action::Stop]
        };
        for &action in actions {
            let mut op = OpRequest::new(rsc.to_string(), agent.clone(), action);
            op.params = params.clone();
            op.meta = meta.clone();
            op.timeout_ms = prim_timeout;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let call = self.lrm.execute(op);
            self.side().waiters.insert(call, tx);
            let wait = Duration::from_millis(prim_timeout) + Duration::from_secs(5);
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(r)) => tracing::info!("controller: local {} {rsc}: rc {}", action.as_str(), r.rc),
                _ => tracing::error!("controller: local {} {rsc}: no result", action.as_str()),
            }
        }
    }
}

/// Submits status changes, retrying while there is no DC to take them (bounded).
async fn record_with_retry(driver: Arc<ClusterDriver>, ops: Vec<CibOp>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match driver.change(ops.clone(), false).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("controller: recording a result: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::error!("controller: could not record a result: {e}");
                return;
            }
        }
    }
}

/// The DC's run plus what only the driver needs: the view it was computed for and when each
/// request went out.
/// What a fencing task reports back to the DC loop.
struct FenceDone {
    run_id: String,
    idx: usize,
    event: FenceEvent,
    elapsed_ms: u64,
}

struct ActiveRun {
    run: Run,
    view: Vec<String>,
    sent: BTreeMap<usize, (Instant, Duration)>,
    /// Clone notifications' environment, by action index.
    envs: NotifyEnvs,
}
