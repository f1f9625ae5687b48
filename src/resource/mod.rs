//! A configured resource on this node: bringing it up and down, attaching its disk,
//! exposing it over NBD, and reporting its state.

pub mod activity_log;
pub mod device;
pub mod replica;
pub mod state;

use crate::config::{MetaDisk as MetaDiskCfg, NbdAddr, NodeResource, ResourceConfig};
use crate::control::{exit, BackingStatus, NbdStatus, PeerStatus, ResourceStatus};
use crate::store::backing::Backing;
use crate::store::meta::{MdDiskState, MetaDisk, MetaLocation};
use activity_log::ActivityLog;
use device::Device;
use kernel_shim::nbd;
use kernel_shim::ublk::{UblkConfig, UblkDevice};
use replica::{Replica, ReplicaConfig};
use state::{ConnState, DiskState, Role};
use std::sync::{Arc, RwLock};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// A refused or failed admin operation: an exit code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: i32,
    pub message: String,
}

impl OpError {
    fn refused(message: String) -> OpError {
        OpError {
            code: exit::REFUSED,
            message,
        }
    }
    fn failed(message: String) -> OpError {
        OpError {
            code: exit::FAILED,
            message,
        }
    }
}

fn replica_peer_status(r: &replica::ReplicaStatus) -> PeerStatus {
    let c = &r.core;
    PeerStatus {
        name: r.peer.clone(),
        connection: c.conn.to_string(),
        role: c.peer_role.to_string(),
        disk: c.peer_disk.to_string(),
        out_of_sync: c.out_of_sync_bytes,
        replication: Some(c.repl.to_string()),
        resync: r.resync.map(|p| crate::control::ResyncStatus {
            total: p.total,
            done: p.done,
            speed: p.speed,
            eta_secs: p.eta_secs,
        }),
        problem: r.last_problem.clone(),
    }
}

/// The metadata location a config names.
pub fn meta_location(local: &NodeResource) -> MetaLocation {
    match &local.meta_disk {
        MetaDiskCfg::Internal => MetaLocation::Internal,
        MetaDiskCfg::External(p) => MetaLocation::External(p.clone()),
    }
}

struct NbdExport {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

struct Inner {
    up: bool,
    device: Option<Arc<Device>>,
    nbd: Option<NbdExport>,
    ublk: Option<UblkDevice>,
    /// Why the last up/attach failed, shown in status until the next success.
    problem: String,
}

/// One resource of the cluster file, as this node runs it.
pub struct Resource {
    cfg: ResourceConfig,
    node: String,
    local: NodeResource,
    inner: Mutex<Inner>,
}

impl Resource {
    /// `None` when this node holds no part of the resource.
    pub fn new(cfg: &ResourceConfig, node: &str) -> Option<Resource> {
        let local = cfg.on.get(node)?.clone();
        Some(Resource {
            cfg: cfg.clone(),
            node: node.to_string(),
            local,
            inner: Mutex::new(Inner {
                up: false,
                device: None,
                nbd: None,
                ublk: None,
                problem: String::new(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// `drbdadm up`: attach the disk and start serving (connecting to peers comes with replication).
    pub async fn up(&self) -> Result<String, OpError> {
        let mut inner = self.inner.lock().await;
        if inner.up && inner.device.is_some() {
            return Ok(format!("{}: already up", self.name()));
        }
        inner.up = true;
        match self.attach_locked(&mut inner).await {
            Ok(()) => Ok(format!("{}: up", self.name())),
            Err(e) => {
                // DRBD keeps a resource whose attach failed configured but Diskless.
                inner.problem = e.message.clone();
                Err(e)
            }
        }
    }

    /// `drbdadm down`: stop serving, flush, record a clean stop, release the disk.
    pub async fn down(&self, force: bool) -> Result<String, OpError> {
        let mut inner = self.inner.lock().await;
        if !inner.up {
            return Ok(format!("{}: not up", self.name()));
        }
        self.detach_locked(&mut inner, force).await?;
        inner.up = false;
        inner.problem.clear();
        Ok(format!("{}: down", self.name()))
    }

    /// `drbdadm attach`.
    pub async fn attach(&self) -> Result<String, OpError> {
        let mut inner = self.inner.lock().await;
        if !inner.up {
            return Err(OpError::refused(format!(
                "{}: not up; run `hbadm up {}`",
                self.name(),
                self.name()
            )));
        }
        if inner.device.is_some() {
            return Ok(format!("{}: already attached", self.name()));
        }
        match self.attach_locked(&mut inner).await {
            Ok(()) => Ok(format!("{}: attached", self.name())),
            Err(e) => {
                inner.problem = e.message.clone();
                Err(e)
            }
        }
    }

    /// `drbdadm detach`: the resource stays up, Diskless.
    pub async fn detach(&self, force: bool) -> Result<String, OpError> {
        let mut inner = self.inner.lock().await;
        if inner.device.is_none() {
            return Ok(format!("{}: already Diskless", self.name()));
        }
        self.detach_locked(&mut inner, force).await?;
        Ok(format!("{}: detached", self.name()))
    }

    /// `drbdadm primary [--force]`.
    pub async fn primary(&self, force: bool) -> Result<String, OpError> {
        let inner = self.inner.lock().await;
        let dev = inner.device.as_ref().ok_or_else(|| {
            OpError::refused(format!(
                "{}: no local disk (Diskless); run `hbadm up {}` first",
                self.name(),
                self.name()
            ))
        })?;
        dev.promote(force).await.map_err(OpError::refused)?;
        Ok(format!("{}: Primary", self.name()))
    }

    /// `drbdadm secondary`.
    pub async fn secondary(&self, force: bool) -> Result<String, OpError> {
        let inner = self.inner.lock().await;
        match &inner.device {
            Some(dev) => dev.demote(force).await.map_err(OpError::refused)?,
            None => return Ok(format!("{}: Secondary", self.name())),
        }
        Ok(format!("{}: Secondary", self.name()))
    }

    async fn attach_locked(&self, inner: &mut Inner) -> Result<(), OpError> {
        let loc = meta_location(&self.local);
        let disk = self.local.disk.clone();
        let name = self.name().to_string();
        let meta = tokio::task::spawn_blocking(move || MetaDisk::open(&disk, &loc))
            .await
            .map_err(|e| OpError::failed(e.to_string()))?
            .map_err(|e| OpError {
                code: exit::METADATA,
                message: format!("{name}: {e}"),
            })?;
        let size = meta.data_size();
        let direct = self.local.cache == crate::config::CacheMode::None;
        let backing = Arc::new(Backing::open(&self.local.disk, size, direct).map_err(|e| {
            OpError::failed(format!(
                "{}: cannot open {}: {e}",
                self.name(),
                self.local.disk.display()
            ))
        })?);
        let mut meta = meta;
        let crashed = meta.was_primary_unclean();
        let disk_state = match meta.disk_state() {
            MdDiskState::Inconsistent => DiskState::Inconsistent,
            MdDiskState::Outdated => DiskState::Outdated,
            MdDiskState::UpToDate => DiskState::UpToDate,
        };
        let peer_ids: Vec<u32> = self.cfg.peers(&self.node).map(|p| self.cfg.on[p].node_id).collect();
        let slots: Vec<usize> = peer_ids.iter().filter_map(|&id| meta.assign_peer_slot(id)).collect();
        meta.set_clean(false);
        meta.write_superblock()
            .map_err(|e| OpError::failed(format!("{}: writing metadata failed: {e}", self.name())))?;
        let meta = Arc::new(RwLock::new(meta));
        // A node that crashed as Primary may have written anywhere the activity log
        // names: those extents are out of sync for every peer (made durable before the
        // log is emptied).
        let name = self.name().to_string();
        let peer_slots = slots.clone();
        let (al, recovered) = ActivityLog::open(meta.clone(), |rec| {
            let m = meta.read().expect("meta");
            if crashed {
                tracing::warn!(
                    "{name}: was Primary and not stopped cleanly; {} hot extent(s) of the activity log marked out of sync for peers",
                    rec.hot_extents.len()
                );
                for &e in &rec.hot_extents {
                    let (off, len) = ActivityLog::extent_range(e);
                    for &s in &peer_slots {
                        m.bitmap().set_range(s, off, len.min(size.saturating_sub(off)));
                    }
                }
            }
            m.flush_bitmap()
        })
        .map_err(|e| OpError::failed(format!("{}: reading the activity log failed: {e}", self.name())))?;
        if recovered.bad_blocks > 0 {
            tracing::warn!(
                "{}: {} torn activity-log block(s) ignored",
                self.name(),
                recovered.bad_blocks
            );
        }
        let replica = match self.replica_config()? {
            Some(rc) => {
                let slot = slots[0];
                Some(
                    Replica::start(rc, backing.clone(), meta.clone(), slot, crashed).map_err(|e| {
                        let _ = al.close();
                        OpError::failed(e.to_string())
                    })?,
                )
            }
            None => None,
        };
        // Without replication the device itself marks what absent peers miss.
        let absent_slots = if replica.is_some() { Vec::new() } else { slots };
        let dev = Arc::new(Device::new(
            self.name(),
            backing,
            meta,
            al,
            absent_slots,
            self.cfg.auto_promote,
            disk_state,
            replica,
        ));
        let nbd = match &self.local.nbd {
            Some(addr) => match self.start_nbd(addr, dev.clone()).await {
                Ok(n) => Some(n),
                Err(e) => {
                    let _ = dev.shutdown().await;
                    return Err(e);
                }
            },
            None => None,
        };
        // A ublk device that cannot be created is a problem shown in status, not a
        // failed attach: NBD and replication go on serving.
        let (ublk, ublk_problem) = match self.local.ublk {
            Some(which) => match self.start_ublk(which, dev.clone()).await {
                Ok(u) => (Some(u), None),
                Err(m) => {
                    tracing::error!("{m}");
                    (None, Some(m))
                }
            },
            None => (None, None),
        };
        tracing::info!(
            "{}: attached {} ({} bytes, disk {}, direct I/O {})",
            self.name(),
            self.local.disk.display(),
            size,
            disk_state,
            dev.backing().direct_io()
        );
        inner.device = Some(dev);
        inner.nbd = nbd;
        inner.ublk = ublk;
        inner.problem = ublk_problem.unwrap_or_default();
        Ok(())
    }

    /// How this node replicates the resource: `None` when it has no peer.
    fn replica_config(&self) -> Result<Option<ReplicaConfig>, OpError> {
        let peers: Vec<&str> = self.cfg.peers(&self.node).collect();
        let Some(&peer) = peers.first() else { return Ok(None) };
        if peers.len() > 1 {
            return Err(OpError::failed(format!(
                "{}: {} nodes hold this resource; replication supports two nodes per resource today",
                self.name(),
                peers.len() + 1
            )));
        }
        let p = &self.cfg.on[peer];
        let (Some(local_addr), Some(peer_addr)) = (self.local.address, p.address) else {
            return Err(OpError::failed(format!(
                "{}: both [resource.on.{}] and [resource.on.{peer}] need an `address` to replicate",
                self.name(),
                self.node
            )));
        };
        Ok(Some(ReplicaConfig {
            resource: self.name().to_string(),
            node_name: self.node.clone(),
            peer_name: peer.to_string(),
            node_id: self.local.node_id,
            peer_node_id: p.node_id,
            local_addr,
            peer_addr,
            protocol: self.cfg.protocol,
            net: self.cfg.net.clone(),
            cluster_file: self.cfg.file.clone(),
        }))
    }

    /// `drbdadm connect [--discard-my-data]`.
    pub async fn connect(&self, discard_my_data: bool) -> Result<String, OpError> {
        let inner = self.inner.lock().await;
        let rep = self.replica_of(&inner)?;
        rep.connect(discard_my_data);
        Ok(format!("{}: connecting to {}", self.name(), rep.peer_name()))
    }

    /// `drbdadm disconnect`.
    pub async fn disconnect(&self) -> Result<String, OpError> {
        let inner = self.inner.lock().await;
        let rep = self.replica_of(&inner)?;
        rep.disconnect();
        Ok(format!("{}: StandAlone", self.name()))
    }

    fn replica_of(&self, inner: &Inner) -> Result<Arc<Replica>, OpError> {
        let dev = inner.device.as_ref().ok_or_else(|| {
            OpError::refused(format!(
                "{}: no local disk (Diskless); run `hbadm up {}` first",
                self.name(),
                self.name()
            ))
        })?;
        dev.replica().cloned().ok_or_else(|| {
            OpError::refused(format!(
                "{}: has no peer in the cluster file to connect to",
                self.name()
            ))
        })
    }

    async fn detach_locked(&self, inner: &mut Inner, force: bool) -> Result<(), OpError> {
        let Some(dev) = inner.device.clone() else { return Ok(()) };
        let opens = dev.open_count();
        if opens > 0 && !force {
            return Err(OpError::refused(format!(
                "{}: device is held open by {opens} client(s); disconnect them (or use --force to cut them off)",
                self.name()
            )));
        }
        if let Some(u) = inner.ublk.take() {
            let path = u.block_path();
            match tokio::task::spawn_blocking(move || u.stop()).await {
                Ok(Ok(())) => tracing::info!("{}: {path} removed", self.name()),
                Ok(Err(e)) => tracing::warn!("{}: removing {path}: {e}", self.name()),
                Err(e) => tracing::warn!("{}: removing {path}: {e}", self.name()),
            }
        }
        if let Some(n) = inner.nbd.take() {
            let _ = n.shutdown.send(true);
            match n.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{}: NBD server ended with {e}", self.name()),
                Err(e) => tracing::warn!("{}: NBD server task failed: {e}", self.name()),
            }
            if let Some(NbdAddr::Unix(p)) = &self.local.nbd {
                let _ = std::fs::remove_file(p);
            }
        }
        dev.shutdown()
            .await
            .map_err(|e| OpError::failed(format!("{}: flushing on detach failed: {e}", self.name())))?;
        inner.device = None;
        tracing::info!("{}: detached", self.name());
        Ok(())
    }

    async fn start_nbd(&self, addr: &NbdAddr, dev: Arc<Device>) -> Result<NbdExport, OpError> {
        let listener = match addr {
            NbdAddr::Tcp(a) => nbd::Listener::Tcp(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| OpError::failed(format!("{}: cannot listen for NBD on {a}: {e}", self.name())))?,
            ),
            NbdAddr::Unix(p) => {
                // A socket file left by a killed daemon would make bind fail.
                if std::os::unix::net::UnixStream::connect(p).is_err() {
                    let _ = std::fs::remove_file(p);
                }
                nbd::Listener::Unix(tokio::net::UnixListener::bind(p).map_err(|e| {
                    OpError::failed(format!(
                        "{}: cannot listen for NBD on {}: {e}",
                        self.name(),
                        p.display()
                    ))
                })?)
            }
        };
        let (tx, rx) = watch::channel(false);
        let export = nbd::Export {
            name: self.name().to_string(),
            description: format!("hablock resource {} on {}", self.name(), self.node),
            device: dev,
        };
        let task = tokio::spawn(nbd::serve(listener, export, rx));
        tracing::info!("{}: serving NBD at {}", self.name(), addr.uri(self.name()));
        Ok(NbdExport { shutdown: tx, task })
    }

    /// Creates /dev/ublkbN for the device, or takes over the one a hablockd that died
    /// left for this node's resource (user recovery). Blocking work on a blocking
    /// thread; the requests it cannot serve on its queue threads run on this runtime.
    ///
    /// `HABLOCK_UBLK_DIRECT=0` in the daemon's environment turns off serving reads and
    /// writes on the queue threads, `HABLOCK_UBLK_USER_COPY=0` the single copy through
    /// the mapped backing file (for benchmarks and diagnosis).
    async fn start_ublk(&self, which: crate::config::UblkDev, dev: Arc<Device>) -> Result<UblkDevice, String> {
        let cfg = UblkConfig {
            dev_id: match which {
                crate::config::UblkDev::Auto => None,
                crate::config::UblkDev::Id(n) => Some(n),
            },
            queues: self.local.ublk_queues,
            poll: std::time::Duration::from_micros(self.local.ublk_poll_us as u64),
            owner: kernel_shim::ublk::owner_mark(&["hablock", &self.node, self.name()]),
            direct: std::env::var("HABLOCK_UBLK_DIRECT").map_or(true, |v| v != "0"),
            user_copy: std::env::var("HABLOCK_UBLK_USER_COPY").map_or(true, |v| v != "0"),
            ..UblkConfig::default()
        };
        let rt = tokio::runtime::Handle::current();
        let name = self.name().to_string();
        let u = tokio::task::spawn_blocking(move || UblkDevice::start(dev, cfg, rt))
            .await
            .map_err(|e| format!("{name}: ublk: {e}"))?
            .map_err(|e| format!("{name}: {e}"))?;
        tracing::info!("{}: serving ublk at {}", self.name(), u.block_path());
        Ok(u)
    }

    /// The resource as `hbadm status` shows it.
    pub async fn status(&self) -> ResourceStatus {
        let inner = self.inner.lock().await;
        let peers_absent = |disk_oos: &dyn Fn(u32) -> u64| -> Vec<PeerStatus> {
            self.cfg
                .peers(&self.node)
                .map(|p| PeerStatus {
                    name: p.to_string(),
                    connection: ConnState::StandAlone.to_string(),
                    role: "Unknown".into(),
                    disk: "DUnknown".into(),
                    out_of_sync: disk_oos(self.cfg.on[p].node_id),
                    replication: None,
                    resync: None,
                    problem: String::new(),
                })
                .collect()
        };
        let mut st = ResourceStatus {
            name: self.name().to_string(),
            role: if inner.up { Role::Secondary } else { Role::Unconfigured }.to_string(),
            disk: if inner.up {
                DiskState::Diskless.to_string()
            } else {
                "Unconfigured".into()
            },
            protocol: self.cfg.protocol.to_string(),
            size: 0,
            backing: None,
            nbd: None,
            ublk: inner.ublk.as_ref().map(|u| u.block_path()),
            peers: Vec::new(),
            counters: Default::default(),
            gi: None,
            problem: inner.problem.clone(),
        };
        match &inner.device {
            Some(dev) => {
                let s = dev.states();
                st.role = s.role.to_string();
                st.disk = s.disk.to_string();
                st.size = kernel_shim::BlockDevice::size(dev.as_ref());
                st.backing = Some(BackingStatus {
                    disk: self.local.disk.display().to_string(),
                    meta_disk: self.local.meta_disk.to_string(),
                    direct_io: dev.backing().direct_io(),
                });
                st.nbd = self.local.nbd.as_ref().map(|a| NbdStatus {
                    address: a.to_string(),
                    uri: a.uri(self.name()),
                    clients: dev.open_count(),
                });
                st.counters = dev.counters();
                let meta = dev.meta().read().expect("meta");
                st.gi = Some(meta.gi_string());
                st.peers = match dev.replica() {
                    Some(rep) => vec![replica_peer_status(&rep.status())],
                    None => peers_absent(&|id| {
                        meta.peer_slot(id)
                            .map(|s| meta.bitmap().count_set(s) * 4096)
                            .unwrap_or(0)
                    }),
                };
            }
            None if inner.up => st.peers = peers_absent(&|_| 0),
            None => {}
        }
        st
    }

    /// The data path while the local disk is attached (what an iSCSI LUN with
    /// `--bstype hablock` serves; it answers as standby while the role is not Primary).
    pub async fn device(&self) -> Option<Arc<Device>> {
        self.inner.lock().await.device.clone()
    }

    /// True while the local disk is attached (the metadata is in use).
    pub async fn is_attached(&self) -> bool {
        self.inner.lock().await.device.is_some()
    }
}
