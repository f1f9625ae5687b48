//! The tokio driver: runs one [`Membership`] over real UDP sockets.
//!
//! One socket per heartbeat link, bound at this node's link address. Datagrams go to
//! [`Membership::receive`], the clock drives [`Membership::tick`] at [`Membership::poll_at`],
//! and `Send` actions go out unicast to the peer's address on the same link. Everything the
//! core reports is logged with `tracing`; the admin API reads [`ClusterDriver::status_json`].
//! Bad packets are the core's business (it counts and drops them); socket errors are logged and
//! never stop the loop.

use super::cib::ops::CibOp;
use super::cib::persist;
use super::cib::replica::{
    initial_cib, ChangeDone, ChangeError, MembershipView, Replica, ReplicaAction, ReplicaConfig,
};
use super::heartbeat::PayloadKind;
use super::membership::{Action, Level, Membership, MembershipConfig, NodeSpec, Timing};
use super::quorum::{QuorumConfig, TieBreaker as QuorumTieBreaker};
use super::{heartbeat::AuthKey, LinkId, Millis, NodeId, NodeSet, MAX_NODES};
use crate::config::cluster::{read_authkey, AuthKeySource, ClusterSection, TieBreaker, Transport};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Builds the core's configuration from the `[cluster]` section, as node `node`.
/// Node ids are positions in `cluster.nodes`.
pub fn membership_config(c: &ClusterSection, node: &str) -> Result<MembershipConfig, String> {
    if c.nodes.len() > MAX_NODES {
        return Err(format!("at most {MAX_NODES} nodes, not {}", c.nodes.len()));
    }
    let id_of = |n: &str| c.nodes.iter().position(|x| x == n).map(|i| NodeId(i as u8));
    let local = id_of(node).ok_or_else(|| format!("node {node:?} is not in cluster.nodes"))?;
    let key = match &c.authkey {
        AuthKeySource::Inline(k) => k.as_bytes().to_vec(),
        AuthKeySource::File(p) => read_authkey(p)?,
    };
    let key = AuthKey::new(key).map_err(str::to_string)?;
    let links = c.on.get(node).map_or(0, |n| n.links.len());
    let ms = |d: Duration| d.as_millis() as Millis;
    let votes = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (NodeId(i as u8), c.on.get(n).map_or(1, |x| x.votes)))
        .collect();
    let tie_breaker = match &c.tie_breaker {
        TieBreaker::None => QuorumTieBreaker::None,
        TieBreaker::Lowest => QuorumTieBreaker::Lowest,
        TieBreaker::Node(n) => {
            QuorumTieBreaker::Node(id_of(n).ok_or_else(|| format!("tie_breaker {n:?}: no such node"))?)
        }
    };
    Ok(MembershipConfig {
        cluster_name: c.name.clone(),
        key,
        local,
        nodes: c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeSpec {
                id: NodeId(i as u8),
                name: n.clone(),
            })
            .collect(),
        links: links as u8,
        timing: Timing {
            keepalive: ms(c.keepalive),
            warntime: ms(c.warntime),
            deadtime: ms(c.deadtime),
            initdead: ms(c.initdead),
        },
        quorum: QuorumConfig {
            votes,
            expected_votes: c.expected_votes,
            two_node: c.two_node,
            wait_for_all: c.wait_for_all,
            tie_breaker,
        },
        no_quorum_policy: c.no_quorum_policy,
    })
}

/// Returns the next incarnation for this node and persists it before it is used: the counter in
/// `<state_dir>/incarnation`, plus one, and never below the wall clock in milliseconds (so a lost
/// state directory still yields a larger number than the previous life's).
pub fn next_incarnation(state_dir: &Path) -> Result<u64, String> {
    let path = state_dir.join("incarnation");
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{}: not a number ({e}); remove it to start over", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let next = old.saturating_add(1).max(wall);
    std::fs::create_dir_all(state_dir).map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let tmp = state_dir.join("incarnation.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(next)
}

/// The two cores and what ties them together, under one lock so that every step sees both
/// in the same state.
struct Core {
    m: Membership,
    cib: Replica,
    state_dir: PathBuf,
    next_req: u64,
    waiters: HashMap<u64, oneshot::Sender<Result<ChangeDone, ChangeError>>>,
}

impl Core {
    fn view(&self) -> MembershipView {
        let dc = self.m.dc();
        MembershipView {
            view: self.m.view(),
            dc,
            quorate: self.m.quorate(),
            dc_version: dc.and_then(|d| self.m.peer_report(d)).map(|(_, v)| v),
        }
    }

    /// Feeds the membership actions' CIB payloads to the replica, lets it observe the membership
    /// and carries out what it asks; returns every membership action (the original ones and the
    /// sends the replica caused) for the I/O side.
    fn pump(&mut self, now: Millis, acts: Vec<Action>) -> Vec<Action> {
        let mut cib_acts = Vec::new();
        for a in &acts {
            match a {
                Action::Payload {
                    from,
                    kind: PayloadKind::Cib,
                    data,
                } => cib_acts.extend(self.cib.receive(now, *from, data)),
                Action::NodeRestarted { node, .. } => self.cib.peer_restarted(*node),
                _ => {}
            }
        }
        let mv = self.view();
        cib_acts.extend(self.cib.observe(now, mv));
        let mut out = acts;
        self.carry_cib(cib_acts, &mut out);
        out
    }

    fn carry_cib(&mut self, acts: Vec<ReplicaAction>, out: &mut Vec<Action>) {
        for a in acts {
            match a {
                ReplicaAction::Send { to, payload } => match self.m.send_payload(to, PayloadKind::Cib, payload) {
                    Ok(sends) => out.extend(sends),
                    Err(e) => tracing::warn!("CIB: cannot send to {}: {e}", self.m.config().name_of(to)),
                },
                ReplicaAction::Persist { cib, origin_quorate } => {
                    // Small and rare: written in place, before anything else goes out.
                    if let Err(e) = persist::save(&self.state_dir, &cib, origin_quorate) {
                        tracing::error!("CIB: {e}");
                    }
                }
                ReplicaAction::Reply { req, result } => {
                    if let Some(w) = self.waiters.remove(&req) {
                        let _ = w.send(result);
                    }
                }
                ReplicaAction::VersionChanged(v) => {
                    tracing::info!("CIB: version is now {v}");
                    self.m.set_cib_version(v);
                }
                ReplicaAction::Log { level, message } => match level {
                    Level::Info => tracing::info!("{message}"),
                    Level::Warn => tracing::warn!("{message}"),
                },
            }
        }
    }
}

/// The transport's name and, per link, where heartbeats go when they are not unicast. Multicast
/// and broadcast need every node to use the same port on a link (the group is shared) and
/// different ports on different links (a datagram's port tells its link); IPv4 only.
fn group_addresses(t: Transport, links: &[Vec<SocketAddr>]) -> Result<(&'static str, Vec<Option<SocketAddr>>), String> {
    let (name, ip) = match t {
        Transport::Unicast => return Ok(("unicast", vec![None; links.first().map_or(0, Vec::len)])),
        Transport::Multicast(g) => ("multicast", std::net::IpAddr::V4(g)),
        Transport::Broadcast => ("broadcast", std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST)),
    };
    let n = links.iter().map(Vec::len).max().unwrap_or(0);
    let mut ports = Vec::new();
    for l in 0..n {
        let p: Vec<u16> = links.iter().filter_map(|x| x.get(l)).map(|a| a.port()).collect();
        if p.iter().any(|x| *x != p[0]) {
            return Err(format!(
                "transport \"{name}\": every node must use the same port on link {l} (found {p:?})"
            ));
        }
        if links.iter().filter_map(|x| x.get(l)).any(|a| !a.is_ipv4()) {
            return Err(format!("transport \"{name}\" is IPv4 only (link {l})"));
        }
        if ports.contains(&p[0]) {
            return Err(format!(
                "transport \"{name}\": links need different ports (link {l} reuses port {})",
                p[0]
            ));
        }
        ports.push(p[0]);
    }
    Ok((name, ports.into_iter().map(|p| Some(SocketAddr::new(ip, p))).collect()))
}

/// How long a tool's CIB change may wait for the DC's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running membership driver.
pub struct ClusterDriver {
    core: Mutex<Core>,
    sockets: Vec<Arc<UdpSocket>>,
    /// Per link, the multicast group or broadcast address heartbeats go to (unicast: none).
    group: Vec<Option<SocketAddr>>,
    request_timeout: Duration,
    clock: Instant,
    links: Vec<Vec<SocketAddr>>,
    transport: &'static str,
    shutdown: Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>,
    /// Bumped whenever the CIB version, the view, the DC, quorum or the DC's readiness changes:
    /// what the controller waits on.
    changes: watch::Sender<u64>,
    last_seen: Mutex<Option<ViewKey>>,
}

/// What the controller reacts to; compared after every step.
type ViewKey = (
    CibVersionKey,
    u64,
    Option<u8>,
    bool,
    bool,
    Vec<(u8, String, Option<u64>)>,
);
type CibVersionKey = (u32, u64, u64);

/// The membership and CIB as the controller needs them, taken under one lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub local: String,
    pub incarnation: u64,
    pub cib: super::cib::Cib,
    /// The DC's name, if there is one.
    pub dc: Option<String>,
    /// This node is the DC and has synchronised the CIB with the members.
    pub dc_ready: bool,
    pub quorate: bool,
    /// Every configured node but this one: its membership state and incarnation.
    pub peers: Vec<(String, super::membership::PeerState, Option<u64>)>,
    /// Names of the nodes in this partition's view (this node included).
    pub view: Vec<String>,
}

/// What one link's receive task hands the loop.
type Datagram = (LinkId, Vec<u8>);

impl ClusterDriver {
    /// Binds the link sockets and starts the loop. `state_dir` is this node's private directory.
    pub async fn start(c: &ClusterSection, node: &str, state_dir: &Path) -> Result<Arc<ClusterDriver>, String> {
        let cfg = membership_config(c, node)?;
        let links: Vec<Vec<SocketAddr>> = c
            .nodes
            .iter()
            .map(|n| c.on.get(n).map(|x| x.links.clone()).unwrap_or_default())
            .collect();
        let local = cfg.local.0 as usize;
        let (transport, group) = group_addresses(c.transport, &links)?;
        let mut sockets = Vec::new();
        for (l, addr) in links[local].iter().enumerate() {
            let s = UdpSocket::bind(addr)
                .await
                .map_err(|e| format!("cannot bind heartbeat link {l} at {addr}: {e}"))?;
            if c.transport == Transport::Broadcast {
                s.set_broadcast(true)
                    .map_err(|e| format!("heartbeat link {l}: cannot enable broadcast: {e}"))?;
            }
            sockets.push(Arc::new(s));
        }
        // Multicast and broadcast heartbeats arrive on a second socket per link, bound to the
        // group (or broadcast) address and the link's port: a socket bound to the node's own
        // address only receives unicast. Sending stays on the first socket: bound to the link's
        // address, it makes Linux pick that address's interface for group destinations.
        let mut group_sockets = Vec::new();
        for (l, g) in group.iter().enumerate() {
            let Some(g) = g else { continue };
            let s = UdpSocket::bind(g)
                .await
                .map_err(|e| format!("cannot bind heartbeat link {l} at {g}: {e}"))?;
            if let (Transport::Multicast(group), std::net::IpAddr::V4(ifaddr)) = (c.transport, links[local][l].ip()) {
                s.join_multicast_v4(group, ifaddr)
                    .map_err(|e| format!("heartbeat link {l}: cannot join {group} on {ifaddr}: {e}"))?;
            }
            group_sockets.push((l, Arc::new(s)));
        }
        let incarnation = next_incarnation(state_dir)?;
        let clock = Instant::now();
        let rcfg = ReplicaConfig {
            local: cfg.local,
            nodes: cfg.nodes.iter().map(|n| (n.id, n.name.clone())).collect(),
            retry: 2 * cfg.timing.keepalive,
            sync_timeout: cfg.timing.deadtime,
            request_timeout: REQUEST_TIMEOUT.as_millis() as Millis,
            first_message_id: incarnation << 16,
        };
        let (cib, origin_quorate) = match persist::load(state_dir) {
            Some(l) => {
                for s in &l.skipped {
                    tracing::warn!("CIB: ignored {s}");
                }
                tracing::info!("CIB: loaded version {} from {}", l.cib.version(), l.path.display());
                (l.cib, l.origin_quorate)
            }
            None => (initial_cib(&rcfg.nodes), false),
        };
        let mut membership = Membership::new(cfg, incarnation, 0)?;
        membership.set_cib_version(cib.version());
        let replica = Replica::new(rcfg, cib, origin_quorate);
        tracing::info!(
            "membership: node {node} (id {local}) of cluster {} starting, incarnation {incarnation}, {} link(s) {}",
            c.name,
            sockets.len(),
            links[local].iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ")
        );
        let (tx, rx) = mpsc::channel::<Datagram>(1024);
        for (l, s) in sockets.iter().enumerate() {
            tokio::spawn(receive_loop(l as LinkId, s.clone(), tx.clone()));
        }
        for (l, s) in &group_sockets {
            tokio::spawn(receive_loop(*l as LinkId, s.clone(), tx.clone()));
        }
        drop(tx);
        let (stop_tx, stop_rx) = oneshot::channel();
        let driver = Arc::new(ClusterDriver {
            core: Mutex::new(Core {
                m: membership,
                cib: replica,
                state_dir: state_dir.to_path_buf(),
                next_req: 1,
                waiters: HashMap::new(),
            }),
            sockets: sockets.clone(),
            group,
            request_timeout: REQUEST_TIMEOUT,
            clock,
            links,
            transport,
            shutdown: Mutex::new(Some(stop_tx)),
            changes: watch::channel(0).0,
            last_seen: Mutex::new(None),
        });
        tokio::spawn(run(driver.clone(), rx, stop_rx));
        Ok(driver)
    }

    fn now(&self) -> Millis {
        self.clock.elapsed().as_millis() as Millis
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a CIB change (through the DC; see `cib::replica`) and waits for the answer,
    /// at most [`REQUEST_TIMEOUT`] and a second.
    pub async fn change(&self, ops: Vec<CibOp>, force: bool) -> Result<ChangeDone, ChangeError> {
        let (tx, rx) = oneshot::channel();
        let acts = {
            let mut c = self.lock();
            let req = c.next_req;
            c.next_req += 1;
            c.waiters.insert(req, tx);
            let now = self.now();
            let r = c.cib.submit(now, req, ops, force);
            let mut out = Vec::new();
            c.carry_cib(r, &mut out);
            out
        };
        carry_out(self, acts).await;
        self.notify_changes();
        let r = match tokio::time::timeout(self.request_timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(ChangeError::Timeout),
        };
        self.notify_changes();
        r
    }

    /// A receiver that wakes whenever [`ClusterDriver::snapshot`] would say something new.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The CIB and the membership facts, consistent with each other.
    pub fn snapshot(&self) -> Snapshot {
        let c = self.lock();
        let cfg = c.m.config();
        let st = c.m.status(self.now());
        Snapshot {
            local: cfg.name_of(cfg.local).to_string(),
            incarnation: c.m.incarnation(),
            cib: c.cib.cib().clone(),
            dc: c.m.dc().map(|d| cfg.name_of(d).to_string()),
            dc_ready: c.m.dc() == Some(cfg.local) && c.cib.dc_ready(),
            quorate: c.m.quorate(),
            peers: st
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.state, p.incarnation))
                .collect(),
            view: c.m.view().iter().map(|n| cfg.name_of(n).to_string()).collect(),
        }
    }

    /// Wakes the subscribers if what they watch changed.
    fn notify_changes(&self) {
        let key = {
            let c = self.lock();
            let v = c.cib.cib().version();
            let st = c.m.status(self.now());
            let peers = st
                .peers
                .iter()
                .map(|p| (p.id, format!("{:?}", p.state), p.incarnation))
                .collect::<Vec<_>>();
            (
                (v.admin_epoch, v.epoch, v.num_updates),
                c.m.view().0,
                c.m.dc().map(|d| d.0),
                c.m.quorate(),
                c.cib.dc_ready(),
                peers,
            )
        };
        let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&key) {
            *last = Some(key);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The CIB document and its replication state, for `cib-show`.
    pub fn cib_json(&self) -> serde_json::Value {
        let c = self.lock();
        let cib = c.cib.cib();
        serde_json::json!({
            "version": cib.version().to_string(),
            "digest": cib.digest(),
            "origin_quorate": c.cib.origin_quorate(),
            "cib": cib,
        })
    }

    /// The membership status for `cluster-status`: the core's snapshot plus names, addresses and
    /// the transport, so a tool can print it without the cluster file.
    pub fn status_json(&self) -> serde_json::Value {
        let (st, cfg, cib) = {
            let c = self.lock();
            let doc = c.cib.cib();
            let standby: Vec<&str> = doc
                .configuration
                .nodes
                .iter()
                .filter(|n| n.standby())
                .map(|n| n.name.as_str())
                .collect();
            let maintenance: Vec<&str> = doc
                .configuration
                .nodes
                .iter()
                .filter(|n| n.maintenance())
                .map(|n| n.name.as_str())
                .collect();
            let cib = serde_json::json!({
                "version": doc.version().to_string(),
                "admin_epoch": doc.admin_epoch,
                "epoch": doc.epoch,
                "num_updates": doc.num_updates,
                "digest": doc.digest(),
                "origin_quorate": c.cib.origin_quorate(),
                "dc_synchronised": c.cib.dc_ready(),
                "standby": standby,
                "maintenance": maintenance,
                "resources": doc.configuration.resources.len(),
                "counters": c.cib.counters(),
            });
            (c.m.status(self.now()), c.m.config().clone(), cib)
        };
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("cib".into(), cib);
            o.insert("cluster".into(), cfg.cluster_name.clone().into());
            o.insert("node".into(), cfg.name_of(cfg.local).into());
            o.insert("transport".into(), self.transport.into());
            o.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            let nodes: Vec<serde_json::Value> = cfg
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "id": n.id.0,
                        "name": n.name,
                        "links": self.links.get(n.id.0 as usize).map(|l| l.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
                    })
                })
                .collect();
            o.insert("nodes".into(), nodes.into());
            o.insert(
                "timing".into(),
                serde_json::json!({
                    "keepalive_ms": cfg.timing.keepalive,
                    "warntime_ms": cfg.timing.warntime,
                    "deadtime_ms": cfg.timing.deadtime,
                    "initdead_ms": cfg.timing.initdead,
                }),
            );
        }
        v
    }

    /// Orderly leave: tells the peers (so they drop this node at once) and stops the loop.
    /// Bounded: gives up after a second.
    pub async fn leave(&self) {
        let tx = self.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), done_rx).await;
            }
        }
    }
}

async fn receive_loop(link: LinkId, sock: Arc<UdpSocket>, tx: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, _from)) => {
                if tx.send((link, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!("heartbeat link {link}: receive error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn run(
    d: Arc<ClusterDriver>,
    mut rx: mpsc::Receiver<Datagram>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        // The replica's timers (retries, sync, request deadlines) need a tick at least this often.
        let retry = d.lock().m.config().timing.keepalive;
        let at = d.lock().m.poll_at().min(d.now() + retry);
        let deadline = tokio::time::Instant::from_std(d.clock + Duration::from_millis(at));
        let actions = tokio::select! {
            done = &mut stop => {
                let actions = d.lock().m.leave(d.now());
                carry_out(&d, actions).await;
                tracing::info!("membership: left the cluster");
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Some((link, bytes)) = rx.recv() => {
                let now = d.now();
                let mut c = d.lock();
                let mut a = c.m.receive(now, link, &bytes);
                if now >= c.m.poll_at() {
                    a.extend(c.m.tick(now));
                }
                c.pump(now, a)
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = d.now();
                let mut c = d.lock();
                let a = c.m.tick(now);
                c.pump(now, a)
            }
        };
        carry_out(&d, actions).await;
        d.notify_changes();
    }
}

async fn carry_out(d: &ClusterDriver, actions: Vec<Action>) {
    if actions.is_empty() {
        return;
    }
    let sockets = &d.sockets;
    let (cfg, view) = {
        let c = d.lock();
        (c.m.config().clone(), c.m.view())
    };
    let names = |s: NodeSet| {
        let v: Vec<&str> = s.iter().map(|n| cfg.name_of(n)).collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    let mut sent_to_group: Vec<(LinkId, Vec<u8>)> = Vec::new();
    for a in actions {
        match a {
            Action::Send { to, link, packet } => {
                // Plain heartbeats (no payload: the same bytes for every peer) go once to the
                // link's group; payloads are for one peer and go to its address.
                if let Some(Some(g)) = d.group.get(link as usize) {
                    if packet.get(61) == Some(&0) {
                        if sent_to_group.contains(&(link, packet.clone())) {
                            continue;
                        }
                        if let Some(sock) = sockets.get(link as usize) {
                            if let Err(e) = sock.send_to(&packet, g).await {
                                tracing::debug!("heartbeat on link {link} to {g}: {e}");
                            }
                        }
                        sent_to_group.push((link, packet));
                        continue;
                    }
                }
                let addr = d.links.get(to.0 as usize).and_then(|l| l.get(link as usize));
                let sock = sockets.get(link as usize);
                if let (Some(addr), Some(sock)) = (addr, sock) {
                    if let Err(e) = sock.send_to(&packet, addr).await {
                        tracing::debug!("heartbeat to {} on link {link} ({addr}): {e}", cfg.name_of(to));
                    }
                }
            }
            Action::ViewChanged { view, joined, left } => tracing::info!(
                "membership: view is now [ {} ] (joined: {}, left: {})",
                names(view),
                names(joined),
                names(left)
            ),
            Action::NodeRestarted { node, incarnation } => {
                tracing::info!(
                    "membership: node {} restarted (incarnation {incarnation})",
                    cfg.name_of(node)
                )
            }
            Action::LinkChanged { node, link, up } => tracing::debug!(
                "membership: link {link} to {} is {}",
                cfg.name_of(node),
                if up { "up" } else { "down" }
            ),
            Action::QuorumChanged { quorate: true } => {
                tracing::info!("membership: partition [ {} ] has quorum", names(view))
            }
            Action::QuorumChanged { quorate: false } => tracing::warn!(
                "membership: partition [ {} ] WITHOUT quorum (no-quorum-policy={})",
                names(view),
                cfg.no_quorum_policy
            ),
            Action::DcChanged { dc: Some(n) } => tracing::info!("membership: DC is {}", cfg.name_of(n)),
            Action::DcChanged { dc: None } => tracing::info!("membership: no DC"),
            Action::Payload { from, kind, data } => tracing::trace!(
                "membership: {:?} payload of {} bytes from {}",
                kind,
                data.len(),
                cfg.name_of(from)
            ),
            // The core also narrates the changes logged above, by node id: keep those quiet.
            Action::Log { message, .. } if restates_an_action(&message) => tracing::debug!("membership: {message}"),
            Action::Log { level, message } => match level {
                Level::Info => tracing::info!("membership: {message}"),
                Level::Warn => tracing::warn!("membership: {message}"),
            },
        }
    }
}

/// Is this core log line one of the view/quorum/DC/restart changes the driver logs itself?
fn restates_an_action(message: &str) -> bool {
    message.starts_with("view is now ")
        || message.starts_with("partition ")
        || message.starts_with("DC is ")
        || message == "no DC"
        || (message.starts_with("node ") && message.contains(" restarted (incarnation "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    const CFG: &str = r#"
[cluster]
name = "hacluster"
nodes = ["alpha", "beta", "gamma"]
authkey = "a long shared secret"
keepalive = "100ms"
warntime = "300ms"
deadtime = "500ms"
initdead = "1500ms"
tie_breaker = "beta"
[cluster.on.alpha]
links = ["127.0.0.1:16940"]
[cluster.on.beta]
links = ["127.0.0.2:16940"]
votes = 2
[cluster.on.gamma]
links = ["127.0.0.3:16940"]
"#;

    #[test]
    fn maps_the_section() {
        let c = ClusterConfig::parse(Path::new("/x.toml"), CFG).unwrap();
        let m = membership_config(c.cluster.as_ref().unwrap(), "gamma").unwrap();
        assert_eq!(m.local, NodeId(2));
        assert_eq!(m.links, 1);
        assert_eq!(m.timing.deadtime, 500);
        assert_eq!(m.quorum.votes, vec![(NodeId(0), 1), (NodeId(1), 2), (NodeId(2), 1)]);
        assert_eq!(m.quorum.tie_breaker, QuorumTieBreaker::Node(NodeId(1)));
        assert!(m.validate().is_ok());
        assert!(membership_config(c.cluster.as_ref().unwrap(), "delta").is_err());
    }

    #[test]
    fn group_transports_need_one_port_per_link() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let links = vec![
            vec![a("10.0.0.1:5000"), a("10.1.0.1:5001")],
            vec![a("10.0.0.2:5000"), a("10.1.0.2:5001")],
        ];
        let g = std::net::Ipv4Addr::new(239, 1, 2, 3);
        let (name, to) = group_addresses(Transport::Multicast(g), &links).unwrap();
        assert_eq!(name, "multicast");
        assert_eq!(to, vec![Some(a("239.1.2.3:5000")), Some(a("239.1.2.3:5001"))]);
        let (_, to) = group_addresses(Transport::Broadcast, &links).unwrap();
        assert_eq!(to[1], Some(a("255.255.255.255:5001")));
        assert_eq!(group_addresses(Transport::Unicast, &links).unwrap().1, vec![None, None]);
        let mixed = vec![vec![a("10.0.0.1:5000")], vec![a("10.0.0.2:5002")]];
        assert!(group_addresses(Transport::Broadcast, &mixed)
            .unwrap_err()
            .contains("same port"));
        let shared = vec![vec![a("10.0.0.1:5000"), a("10.1.0.1:5000")]];
        assert!(group_addresses(Transport::Multicast(g), &shared)
            .unwrap_err()
            .contains("different ports"));
    }

    #[test]
    fn incarnation_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let a = next_incarnation(dir.path()).unwrap();
        let b = next_incarnation(dir.path()).unwrap();
        assert!(b > a);
        std::fs::write(dir.path().join("incarnation"), format!("{}\n", u64::MAX - 5)).unwrap();
        assert_eq!(next_incarnation(dir.path()).unwrap(), u64::MAX - 4);
        std::fs::write(dir.path().join("incarnation"), "junk").unwrap();
        assert!(next_incarnation(dir.path()).is_err());
    }
}
