//! The cluster file: one TOML document describing every node, DRBD style.
//!
//! A node picks its own sections by name (`--node`, `HABLOCK_NODE`, or the hostname),
//! so one file serves the whole cluster. Every error names the file, the line and the
//! key, and says what was expected.

pub mod cluster;
pub mod iscsi;

pub use cluster::ClusterSection;
pub use iscsi::IscsiSection;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where tools look when neither `--config` nor `HABLOCK_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/hablock/hablock.toml";

/// A configuration error with its location, printed as `FILE:LINE: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Replication protocol (DRBD's A, B, C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Protocol {
    A,
    B,
    C,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
        })
    }
}

/// Where a resource's metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaDisk {
    Internal,
    External(PathBuf),
}

/// How the backing store is accessed (qemu's names for the same choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// O_DIRECT: no page cache; a write is on the device when it completes.
    None,
    /// The page cache absorbs writes; FLUSH/FUA make them durable (fdatasync/RWF_DSYNC).
    Writeback,
}

impl fmt::Display for MetaDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaDisk::Internal => f.write_str("internal"),
            MetaDisk::External(p) => write!(f, "{}", p.display()),
        }
    }
}

/// An NBD listen address: TCP `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl NbdAddr {
    /// The URI a client passes to nbdinfo/nbdcopy/qemu for `export`.
    pub fn uri(&self, export: &str) -> String {
        match self {
            NbdAddr::Tcp(a) => format!("nbd://{a}/{export}"),
            NbdAddr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
        }
    }
}

impl fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddr::Tcp(a) => write!(f, "{a}"),
            NbdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub control_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// One node's part of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeResource {
    pub address: Option<SocketAddr>,
    pub disk: PathBuf,
    pub meta_disk: MetaDisk,
    pub nbd: Option<NbdAddr>,
    pub node_id: u32,
    pub cache: CacheMode,
    /// Export the resource as a ublk block device on this node (`ublk = true` or `ublk = N`).
    pub ublk: Option<UblkDev>,
    /// Most ublk queues (one thread each); the kernel gets min(this, CPUs). Default 4.
    pub ublk_queues: u16,
    /// How long (µs) a ublk queue thread keeps looking for requests after serving some,
    /// before it sleeps; 0 sleeps at once. Default 200.
    pub ublk_poll_us: u32,
}

/// Which /dev/ublkbN a resource gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UblkDev {
    /// The kernel picks the next free number (`ublk = true`).
    Auto,
    /// A fixed number (`ublk = N`).
    Id(u32),
}

/// Highest ublk device number the kernel hands out (UBLK_MAX_UBLKS is 1 << 20).
pub const UBLK_MAX_ID: u32 = (1 << 20) - 1;

fn parse_ublk(v: &toml::Value) -> Result<Option<UblkDev>, String> {
    match v {
        toml::Value::Boolean(true) => Ok(Some(UblkDev::Auto)),
        toml::Value::Boolean(false) => Ok(None),
        toml::Value::Integer(n) if (0..=UBLK_MAX_ID as i64).contains(n) => Ok(Some(UblkDev::Id(*n as u32))),
        other => Err(format!(
            "{other}: expected true (the kernel picks /dev/ublkbN), false, or a device number 0..={UBLK_MAX_ID}"
        )),
    }
}

/// A replicated resource and its per-node sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    pub name: String,
    pub protocol: Protocol,
    /// Open the device for writing promotes it (DRBD 9's `auto-promote yes`).
    pub auto_promote: bool,
    /// How the nodes of this resource talk to each other (DRBD's `net` and resync options).
    pub net: NetOptions,
    pub on: BTreeMap<String, NodeResource>,
    /// The cluster file this came from (handlers get it as `HABLOCK_CONFIG`).
    pub file: PathBuf,
}

/// Replication link options of a resource, named after DRBD's `net {}` / `disk {}` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// `shared-secret` for the HMAC challenge/response; `None`: no authentication.
    pub shared_secret: Option<String>,
    pub after_sb: crate::replication::policy::AfterSbPolicy,
    /// `data-integrity-alg crc32c`: a checksum with every replicated block.
    pub data_integrity: bool,
    /// `csums-alg`: resync compares block digests and sends only blocks that differ.
    pub csums: bool,
    /// `resync-rate` in bytes per second (0: unlimited).
    pub resync_rate: u64,
    /// `ping-int`: a keep-alive after this much silence.
    pub ping_interval: std::time::Duration,
    /// `timeout` (DRBD's ping-timeout folded in): drop a peer silent this long.
    pub timeout: std::time::Duration,
    /// `connect-int`: how often to retry connecting.
    pub connect_interval: std::time::Duration,
    /// `fencing`: what a Primary does when it loses its peer.
    pub fencing: Fencing,
    /// `[resource.handlers]`: commands run on replication events.
    pub handlers: Handlers,
}

/// DRBD's `fencing` policy: how a Primary that lost its peer makes sure the peer is not
/// promoted with stale data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fencing {
    /// Nothing (the default).
    #[default]
    DontCare,
    /// Run the `fence_peer` handler (it outdates the peer or bans it from the promoted
    /// role); writes go on meanwhile.
    ResourceOnly,
    /// Run the `fence_peer` handler and hold every write's acknowledgement until it
    /// returns (the cluster is expected to STONITH the peer).
    ResourceAndStonith,
}

impl fmt::Display for Fencing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fencing::DontCare => "dont-care",
            Fencing::ResourceOnly => "resource-only",
            Fencing::ResourceAndStonith => "resource-and-stonith",
        })
    }
}

impl std::str::FromStr for Fencing {
    type Err = ();
    fn from_str(s: &str) -> Result<Fencing, ()> {
        match s {
            "dont-care" => Ok(Fencing::DontCare),
            "resource-only" => Ok(Fencing::ResourceOnly),
            "resource-and-stonith" => Ok(Fencing::ResourceAndStonith),
            _ => Err(()),
        }
    }
}

/// Commands run (with `sh -c`) on replication events, DRBD's `handlers {}` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handlers {
    /// `fence-peer`: a Primary lost its peer and `fencing` is not dont-care. Its exit code
    /// follows DRBD's (3..7, see docs/ocf-replica.md).
    pub fence_peer: Option<String>,
    /// `after-resync-target`: this node finished a resync as target (now UpToDate).
    pub after_resync_target: Option<String>,
    /// `unfence-peer` (DRBD 9): the peer this node fenced is back and UpToDate (connected
    /// with nothing to sync, or this node finished resyncing it): undo the fencing.
    pub unfence_peer: Option<String>,
    /// How long a handler may run before it is killed.
    pub timeout: std::time::Duration,
}

impl Default for Handlers {
    fn default() -> Self {
        Handlers {
            fence_peer: None,
            after_resync_target: None,
            unfence_peer: None,
            timeout: std::time::Duration::from_secs(60),
        }
    }
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            shared_secret: None,
            after_sb: Default::default(),
            data_integrity: false,
            csums: false,
            resync_rate: 100 << 20,
            ping_interval: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(6),
            connect_interval: std::time::Duration::from_millis(500),
            fencing: Fencing::DontCare,
            handlers: Handlers::default(),
        }
    }
}

impl ResourceConfig {
    /// Names of the nodes other than `node` that hold this resource.
    pub fn peers<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.on.keys().map(String::as_str).filter(move |n| *n != node)
    }
}

/// The whole cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub path: PathBuf,
    pub global: Global,
    pub resources: Vec<ResourceConfig>,
    /// Membership and quorum (`[cluster]`), when the file has it.
    pub cluster: Option<ClusterSection>,
    /// Portals and declared targets (`[iscsi]`), when the file has it.
    pub iscsi: Option<IscsiSection>,
}

impl ClusterConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read the cluster file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path` (the path only labels errors).
    pub fn parse(path: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
        let err = |span: Option<Range<usize>>, key: Option<String>, message: String| ConfigError {
            file: path.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            key,
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            err(
                e.span(),
                None,
                e.message().trim().replace('\n', " ") + " (see conf/hablock.toml for the expected shape)",
            )
        })?;
        let g = raw.global.unwrap_or_default();
        let global = Global {
            control_dir: g
                .control_dir
                .map(PathBuf::from)
                .unwrap_or_else(|| "/run/hablock".into()),
            state_dir: g
                .state_dir
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/lib/hablock".into()),
        };
        let mut resources: Vec<ResourceConfig> = Vec::new();
        for (ri, r) in raw.resource.into_iter().enumerate() {
            let name = r.name.get_ref().clone();
            if !valid_name(&name) {
                return Err(err(
                    Some(r.name.span()),
                    Some(format!("resource[{ri}].name")),
                    format!("{name:?} is not a valid resource name: use letters, digits, '-', '_' or '.', at most 64"),
                ));
            }
            if resources.iter().any(|x| x.name == name) {
                return Err(err(
                    Some(r.name.span()),
                    Some(format!("resource[{ri}].name")),
                    format!("resource {name:?} is defined twice"),
                ));
            }
            let protocol = match r.protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
                None => Protocol::C,
                Some(("A" | "a", _)) => Protocol::A,
                Some(("B" | "b", _)) => Protocol::B,
                Some(("C" | "c", _)) => Protocol::C,
                Some((other, span)) => {
                    return Err(err(
                        Some(span),
                        Some(format!("resource.{name}.protocol")),
                        format!("{other:?} is not a replication protocol: expected \"A\", \"B\" or \"C\""),
                    ))
                }
            };
            let net = parse_net(&name, &r, &err)?;
            if r.on.is_empty() {
                return Err(err(
                    Some(r.name.span()),
                    Some(format!("resource.{name}.on")),
                    "no [resource.on.NODE] sections: every resource needs one per node holding it".into(),
                ));
            }
            let mut on = BTreeMap::new();
            for (idx, (node, n)) in r.on.into_iter().enumerate() {
                let key = |k: &str| Some(format!("resource.{name}.on.{node}.{k}"));
                if !valid_name(&node) {
                    return Err(err(None, key(""), format!("{node:?} is not a valid node name")));
                }
                let address = match n.address {
                    None => None,
                    Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                        err(
                            Some(a.span()),
                            key("address"),
                            format!("{:?} is not an IP:port address, e.g. \"127.0.0.1:7789\"", a.get_ref()),
                        )
                    })?),
                };
                let disk = PathBuf::from(n.disk.get_ref());
                if !disk.is_absolute() {
                    return Err(err(
                        Some(n.disk.span()),
                        key("disk"),
                        format!(
                            "{:?} must be an absolute path to a file or block device",
                            n.disk.get_ref()
                        ),
                    ));
                }
                let meta_disk = match n.meta_disk {
                    None => MetaDisk::Internal,
                    Some(m) if m.get_ref() == "internal" => MetaDisk::Internal,
                    Some(m) => {
                        let p = PathBuf::from(m.get_ref());
                        if !p.is_absolute() {
                            return Err(err(
                                Some(m.span()),
                                key("meta_disk"),
                                format!("{:?}: expected \"internal\" or an absolute path", m.get_ref()),
                            ));
                        }
                        MetaDisk::External(p)
                    }
                };
                let nbd = match n.nbd {
                    None => None,
                    Some(a) => Some(parse_nbd_addr(a.get_ref()).map_err(|m| err(Some(a.span()), key("nbd"), m))?),
                };
                let ublk = match &n.ublk {
                    None => None,
                    Some(v) => parse_ublk(v.get_ref()).map_err(|m| err(Some(v.span()), key("ublk"), m))?,
                };
                let ublk_queues = match n.ublk_queues {
                    None => 4,
                    Some(q) if (1..=64).contains(q.get_ref()) => *q.get_ref() as u16,
                    Some(q) => {
                        return Err(err(
                            Some(q.span()),
                            key("ublk_queues"),
                            format!(
                                "{}: expected 1..=64 (queues beyond the CPU count are not used)",
                                q.get_ref()
                            ),
                        ))
                    }
                };
                let ublk_poll_us = match n.ublk_poll_us {
                    None => kernel_shim::ublk::DEFAULT_POLL.as_micros() as u32,
                    Some(p) if (0..=10_000).contains(p.get_ref()) => *p.get_ref() as u32,
                    Some(p) => {
                        return Err(err(
                            Some(p.span()),
                            key("ublk_poll_us"),
                            format!("{}: expected 0..=10000 (microseconds; 0 = never poll)", p.get_ref()),
                        ))
                    }
                };
                let node_id = n.node_id.unwrap_or(idx as u32);
                let cache = match n.cache.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
                    None | Some(("none", _)) => CacheMode::None,
                    Some(("writeback", _)) => CacheMode::Writeback,
                    Some((other, span)) => {
                        return Err(err(
                            Some(span),
                            key("cache"),
                            format!(
                                "{other:?}: expected \"none\" (O_DIRECT, the default) or \"writeback\" (page cache)"
                            ),
                        ))
                    }
                };
                on.insert(
                    node.clone(),
                    NodeResource {
                        address,
                        disk,
                        meta_disk,
                        nbd,
                        node_id,
                        cache,
                        ublk,
                        ublk_queues,
                        ublk_poll_us,
                    },
                );
            }
            // Node ids key the per-peer bitmap slots, so they must be unique.
            let mut ids: Vec<u32> = on.values().map(|n| n.node_id).collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w[0] == w[1]) {
                return Err(err(
                    Some(r.name.span()),
                    Some(format!("resource.{name}.on")),
                    "two nodes share a node_id: give each [resource.on.NODE] a distinct node_id".into(),
                ));
            }
            resources.push(ResourceConfig {
                name,
                protocol,
                auto_promote: r.auto_promote.unwrap_or(true),
                net,
                on,
                file: path.to_path_buf(),
            });
        }
        // Two resources of one node cannot share an NBD listener or a backing disk.
        for (i, a) in resources.iter().enumerate() {
            for b in &resources[..i] {
                for (node, na) in &a.on {
                    let Some(nb) = b.on.get(node) else { continue };
                    let clash = if na.nbd.is_some() && na.nbd == nb.nbd {
                        Some(("nbd", na.nbd.as_ref().map(|x| x.to_string()).unwrap_or_default()))
                    } else if let (Some(UblkDev::Id(x)), Some(UblkDev::Id(y))) = (na.ublk, nb.ublk) {
                        (x == y).then(|| ("ublk", format!("/dev/ublkb{x}")))
                    } else if na.disk == nb.disk {
                        Some(("disk", na.disk.display().to_string()))
                    } else {
                        None
                    };
                    if let Some((k, v)) = clash {
                        return Err(err(
                            None,
                            Some(format!("resource.{}.on.{node}.{k}", a.name)),
                            format!(
                                "{v} is already used by resource {:?} on node {node}; give each resource its own",
                                b.name
                            ),
                        ));
                    }
                }
            }
        }
        let cluster = match raw.cluster {
            Some(c) => Some(c.build(&err)?),
            None => None,
        };
        let iscsi = match raw.iscsi {
            Some(i) => Some(i.build(&err)?),
            None => None,
        };
        Ok(ClusterConfig {
            path: path.to_path_buf(),
            global,
            resources,
            cluster,
            iscsi,
        })
    }

    /// Every node named anywhere in the file.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.resources.iter().flat_map(|r| r.on.keys().cloned()).collect();
        v.extend(self.cluster.iter().flat_map(|c| c.nodes.iter().cloned()));
        v.sort();
        v.dedup();
        v
    }

    pub fn resource(&self, name: &str) -> Option<&ResourceConfig> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The admin socket of `node`.
    pub fn control_socket(&self, node: &str) -> PathBuf {
        self.global.control_dir.join(format!("{node}.sock"))
    }

    /// The private state directory of `node`.
    pub fn state_dir(&self, node: &str) -> PathBuf {
        self.global.state_dir.join(node)
    }

    /// Checks that `node` is named in the file, with a message that helps fix it.
    pub fn check_node(&self, node: &str) -> Result<(), ConfigError> {
        let nodes = self.nodes();
        if nodes.iter().any(|n| n == node) {
            return Ok(());
        }
        Err(ConfigError {
            file: self.path.clone(),
            line: None,
            key: None,
            message: format!(
                "node {node:?} has no [resource.on.{node}] section (nodes here: {}); pass --node NAME or set HABLOCK_NODE",
                if nodes.is_empty() { "none".to_string() } else { nodes.join(", ") }
            ),
        })
    }
}

/// The file and node a tool or daemon works as: flags, then environment, then defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub config: PathBuf,
    pub node: String,
}

impl Identity {
    /// `--config`/`--node` win over `HABLOCK_CONFIG`/`HABLOCK_NODE`, which win over
    /// [`DEFAULT_CONFIG`] and the hostname.
    pub fn resolve(config: Option<PathBuf>, node: Option<String>) -> Identity {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let config = config
            .or_else(|| env("HABLOCK_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| DEFAULT_CONFIG.into());
        let node = node.or_else(|| env("HABLOCK_NODE")).unwrap_or_else(hostname);
        Identity { config, node }
    }

    /// Loads the file and checks the node is in it.
    pub fn load(&self) -> Result<ClusterConfig, ConfigError> {
        let cfg = ClusterConfig::load(&self.config)?;
        cfg.check_node(&self.node)?;
        Ok(cfg)
    }
}

/// The short host name (`uname -n` up to the first dot), as DRBD matches `on` sections.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let full = String::from_utf8_lossy(&buf[..end]).into_owned();
    full.split('.').next().unwrap_or("localhost").to_string()
}

fn parse_nbd_addr(s: &str) -> Result<NbdAddr, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        let path = PathBuf::from(p);
        if !path.is_absolute() {
            return Err(format!(
                "{s:?}: a Unix socket must be an absolute path, e.g. \"unix:/run/hablock/r0.nbd\""
            ));
        }
        return Ok(NbdAddr::Unix(path));
    }
    s.parse::<SocketAddr>()
        .map(NbdAddr::Tcp)
        .map_err(|_| format!("{s:?} is not an NBD listen address: expected \"IP:port\" or \"unix:/path\""))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    control_dir: Option<String>,
    state_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    global: Option<RawGlobal>,
    cluster: Option<cluster::RawCluster>,
    iscsi: Option<iscsi::RawIscsi>,
    #[serde(default)]
    resource: Vec<RawResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: Spanned<String>,
    protocol: Option<Spanned<String>>,
    auto_promote: Option<bool>,
    shared_secret: Option<Spanned<String>>,
    after_sb_0pri: Option<Spanned<String>>,
    after_sb_1pri: Option<Spanned<String>>,
    after_sb_2pri: Option<Spanned<String>>,
    always_asbp: Option<bool>,
    data_integrity: Option<bool>,
    csums: Option<bool>,
    resync_rate: Option<Spanned<String>>,
    ping_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    connect_interval: Option<Spanned<String>>,
    fencing: Option<Spanned<String>>,
    handlers: Option<Spanned<RawHandlers>>,
    #[serde(default)]
    on: BTreeMap<String, RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandlers {
    fence_peer: Option<Spanned<String>>,
    after_resync_target: Option<Spanned<String>>,
    unfence_peer: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// The resource's replication options, each checked with its key and line.
fn parse_net(
    name: &str,
    r: &RawResource,
    err: &dyn Fn(Option<Range<usize>>, Option<String>, String) -> ConfigError,
) -> Result<NetOptions, ConfigError> {
    let key = |k: &str| Some(format!("resource.{name}.{k}"));
    let mut net = NetOptions::default();
    if let Some(s) = &r.shared_secret {
        if s.get_ref().is_empty() || s.get_ref().len() > 64 {
            return Err(err(
                Some(s.span()),
                key("shared_secret"),
                "must be 1 to 64 characters (DRBD's limit); both nodes use the same".into(),
            ));
        }
        net.shared_secret = Some(s.get_ref().clone());
    }
    fn policy<T: std::str::FromStr>(
        v: &Option<Spanned<String>>,
        k: Option<String>,
        expected: &str,
        err: &dyn Fn(Option<Range<usize>>, Option<String>, String) -> ConfigError,
    ) -> Result<Option<T>, ConfigError> {
        match v {
            None => Ok(None),
            Some(v) => v.get_ref().parse::<T>().map(Some).map_err(|_| {
                err(
                    Some(v.span()),
                    k,
                    format!("{:?} is not a policy here: expected {expected}", v.get_ref()),
                )
            }),
        }
    }
    if let Some(p) = policy(
        &r.after_sb_0pri,
        key("after_sb_0pri"),
        "disconnect, discard-younger-primary, discard-older-primary, discard-zero-changes, discard-least-changes or discard-node-NAME",
        err,
    )? {
        net.after_sb.pri0 = p;
    }
    if let Some(p) = policy(
        &r.after_sb_1pri,
        key("after_sb_1pri"),
        "disconnect, consensus, discard-secondary or call-pri-lost-after-sb",
        err,
    )? {
        net.after_sb.pri1 = p;
    }
    if let Some(p) = policy(
        &r.after_sb_2pri,
        key("after_sb_2pri"),
        "disconnect or call-pri-lost-after-sb",
        err,
    )? {
        net.after_sb.pri2 = p;
    }
    net.after_sb.always_asbp = r.always_asbp.unwrap_or(false);
    net.data_integrity = r.data_integrity.unwrap_or(false);
    net.csums = r.csums.unwrap_or(false);
    if let Some(v) = &r.resync_rate {
        let s = v.get_ref().trim_end_matches("/s");
        net.resync_rate = crate::units::parse_size(s).map_err(|m| {
            err(
                Some(v.span()),
                key("resync_rate"),
                format!("{m}; e.g. \"100M\" (bytes per second) or \"0\" for unlimited"),
            )
        })?;
    }
    let dur =
        |v: &Option<Spanned<String>>, k: &str, min_ms: u128| -> Result<Option<std::time::Duration>, ConfigError> {
            match v {
                None => Ok(None),
                Some(v) => match crate::units::parse_duration(v.get_ref()) {
                    Ok(d) if d.as_millis() >= min_ms => Ok(Some(d)),
                    Ok(_) => Err(err(Some(v.span()), key(k), format!("must be at least {min_ms}ms"))),
                    Err(m) => Err(err(Some(v.span()), key(k), format!("{m}; e.g. \"2s\" or \"500ms\""))),
                },
            }
        };
    if let Some(d) = dur(&r.ping_interval, "ping_interval", 10)? {
        net.ping_interval = d;
    }
    if let Some(d) = dur(&r.timeout, "timeout", 50)? {
        net.timeout = d;
    }
    if let Some(d) = dur(&r.connect_interval, "connect_interval", 10)? {
        net.connect_interval = d;
    }
    if let Some(h) = &r.handlers {
        let hk = |k: &str| key(&format!("handlers.{k}"));
        let cmd = |v: &Option<Spanned<String>>, k: &str| -> Result<Option<String>, ConfigError> {
            match v {
                None => Ok(None),
                Some(v) if v.get_ref().trim().is_empty() => Err(err(
                    Some(v.span()),
                    hk(k),
                    "an empty command: give a shell command line, or leave the key out".into(),
                )),
                Some(v) => Ok(Some(v.get_ref().clone())),
            }
        };
        let raw = h.get_ref();
        net.handlers.fence_peer = cmd(&raw.fence_peer, "fence_peer")?;
        net.handlers.after_resync_target = cmd(&raw.after_resync_target, "after_resync_target")?;
        net.handlers.unfence_peer = cmd(&raw.unfence_peer, "unfence_peer")?;
        if let Some(v) = &raw.timeout {
            net.handlers.timeout = match crate::units::parse_duration(v.get_ref()) {
                Ok(d) if d.as_millis() >= 100 => d,
                Ok(_) => return Err(err(Some(v.span()), hk("timeout"), "must be at least 100ms".into())),
                Err(m) => return Err(err(Some(v.span()), hk("timeout"), format!("{m}; e.g. \"60s\""))),
            };
        }
    }
    if let Some(f) = &r.fencing {
        net.fencing = f.get_ref().parse().map_err(|()| {
            err(
                Some(f.span()),
                key("fencing"),
                format!(
                    "{:?} is not a fencing policy: expected \"dont-care\", \"resource-only\" or \"resource-and-stonith\"",
                    f.get_ref()
                ),
            )
        })?;
        if net.fencing != Fencing::DontCare && net.handlers.fence_peer.is_none() {
            return Err(err(
                Some(f.span()),
                key("fencing"),
                format!(
                    "fencing = \"{}\" needs a fence_peer command in [resource.handlers], e.g. \"/usr/lib/hablock/hablock-fence-peer\"",
                    net.fencing
                ),
            ));
        }
    }
    if net.timeout <= net.ping_interval {
        let span = r.timeout.as_ref().or(r.ping_interval.as_ref()).map(|v| v.span());
        return Err(err(
            span,
            key("timeout"),
            format!(
                "timeout ({:?}) must be longer than ping_interval ({:?}), or every quiet link drops",
                net.timeout, net.ping_interval
            ),
        ));
    }
    Ok(net)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    address: Option<Spanned<String>>,
    disk: Spanned<String>,
    meta_disk: Option<Spanned<String>>,
    nbd: Option<Spanned<String>>,
    node_id: Option<u32>,
    cache: Option<Spanned<String>>,
    ublk: Option<Spanned<toml::Value>>,
    ublk_queues: Option<Spanned<i64>>,
    ublk_poll_us: Option<Spanned<i64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[global]
control_dir = "/run/hablock"
state_dir = "/var/lib/hablock"

[[resource]]
name = "r0"
protocol = "C"
[resource.on.alpha]
address = "127.0.0.1:7789"
disk = "/srv/alpha-r0.img"
meta_disk = "internal"
nbd = "127.0.0.1:10809"
[resource.on.beta]
address = "127.0.0.2:7789"
disk = "/srv/beta-r0.img"
meta_disk = "/srv/beta-r0.md"
nbd = "unix:/run/hablock/beta-r0.nbd"
"#;

    fn parse(t: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(Path::new("/etc/hablock/test.toml"), t)
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.global.control_dir, PathBuf::from("/run/hablock"));
        assert_eq!(c.nodes(), vec!["alpha", "beta"]);
        let r = c.resource("r0").unwrap();
        assert_eq!(r.protocol, Protocol::C);
        let a = &r.on["alpha"];
        assert_eq!(a.meta_disk, MetaDisk::Internal);
        assert_eq!(a.nbd.as_ref().unwrap().uri("r0"), "nbd://127.0.0.1:10809/r0");
        assert_eq!(a.node_id, 0);
        let b = &r.on["beta"];
        assert_eq!(b.meta_disk, MetaDisk::External("/srv/beta-r0.md".into()));
        assert_eq!(b.nbd, Some(NbdAddr::Unix("/run/hablock/beta-r0.nbd".into())));
        assert_eq!(b.node_id, 1);
        assert_eq!(r.peers("alpha").collect::<Vec<_>>(), vec!["beta"]);
        assert_eq!(c.control_socket("alpha"), PathBuf::from("/run/hablock/alpha.sock"));
        assert_eq!(c.state_dir("beta"), PathBuf::from("/var/lib/hablock/beta"));
        assert!(c.check_node("alpha").is_ok());
        let e = c.check_node("gamma").unwrap_err().to_string();
        assert!(e.contains("gamma") && e.contains("alpha, beta"), "{e}");
    }

    #[test]
    fn ublk_key_takes_true_false_or_a_device_number() {
        let c = parse(&GOOD.replace("nbd = \"127.0.0.1:10809\"", "nbd = \"127.0.0.1:10809\"\nublk = true")).unwrap();
        assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk, Some(UblkDev::Auto));
        assert_eq!(c.resource("r0").unwrap().on["beta"].ublk, None);
        let c = parse(&GOOD.replace("nbd = \"127.0.0.1:10809\"", "nbd = \"127.0.0.1:10809\"\nublk = 3")).unwrap();
        assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk, Some(UblkDev::Id(3)));
        let c = parse(&GOOD.replace("nbd = \"127.0.0.1:10809\"", "nbd = \"127.0.0.1:10809\"\nublk = false")).unwrap();
        assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk, None);
        for bad in ["-1", "\"yes\"", "1048576", "1.5"] {
            let t = GOOD.replace(
                "nbd = \"127.0.0.1:10809\"",
                &format!("nbd = \"127.0.0.1:10809\"\nublk = {bad}"),
            );
            let e = parse(&t).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("resource.r0.on.alpha.ublk"), "{bad}");
            assert_eq!(e.line, Some(14), "{bad}");
            assert!(e.to_string().contains("expected true"), "{e}");
        }
        assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk_queues, 4);
        let c = parse(&GOOD.replace(
            "nbd = \"127.0.0.1:10809\"",
            "nbd = \"127.0.0.1:10809\"\nublk_queues = 2",
        ))
        .unwrap();
        assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk_queues, 2);
        for bad in ["0", "65", "-3"] {
            let t = GOOD.replace(
                "nbd = \"127.0.0.1:10809\"",
                &format!("nbd = \"127.0.0.1:10809\"\nublk_queues = {bad}"),
            );
            let e = parse(&t).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("resource.r0.on.alpha.ublk_queues"), "{bad}");
            assert!(e.to_string().contains("expected 1..=64"), "{e}");
        }
        assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk_poll_us, 200);
        for (text, want) in [("0", Ok(0)), ("200", Ok(200)), ("10001", Err(())), ("-1", Err(()))] {
            let t = GOOD.replace(
                "nbd = \"127.0.0.1:10809\"",
                &format!("nbd = \"127.0.0.1:10809\"\nublk_poll_us = {text}"),
            );
            match (parse(&t), want) {
                (Ok(c), Ok(us)) => assert_eq!(c.resource("r0").unwrap().on["alpha"].ublk_poll_us, us),
                (Err(e), Err(())) => {
                    assert_eq!(e.key.as_deref(), Some("resource.r0.on.alpha.ublk_poll_us"), "{text}");
                    assert!(e.to_string().contains("expected 0..=10000"), "{e}");
                }
                (got, _) => panic!("ublk_poll_us = {text}: {got:?}"),
            }
        }
        // Two resources of one node cannot ask for the same fixed device.
        let two = format!(
            "{}\n[[resource]]\nname = \"r1\"\n[resource.on.alpha]\ndisk = \"/x\"\nublk = 0\n",
            GOOD.replace("nbd = \"127.0.0.1:10809\"", "nbd = \"127.0.0.1:10809\"\nublk = 0")
        );
        let e = parse(&two).unwrap_err().to_string();
        assert!(
            e.contains("resource.r1.on.alpha.ublk") && e.contains("/dev/ublkb0"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("protocol = \"C\"", "protocol = \"D\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(8));
        assert_eq!(e.key.as_deref(), Some("resource.r0.protocol"));
        let s = e.to_string();
        assert!(s.starts_with("/etc/hablock/test.toml:8: resource.r0.protocol:"), "{s}");
        assert!(s.contains("\"A\", \"B\" or \"C\""), "{s}");

        let bad = GOOD.replace("127.0.0.2:7789", "127.0.0.2");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(15));
        assert_eq!(e.key.as_deref(), Some("resource.r0.on.beta.address"));

        let bad = GOOD.replace("nbd = \"127.0.0.1:10809\"", "nbd = \"localhost\"");
        assert_eq!(parse(&bad).unwrap_err().line, Some(13));

        let bad = GOOD.replace("disk = \"/srv/alpha-r0.img\"", "disk = \"alpha.img\"");
        assert!(parse(&bad).unwrap_err().to_string().contains("absolute"));

        // A typo'd key is caught by name, with its line.
        let bad = GOOD.replace("meta_disk = \"internal\"", "metadisk = \"internal\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.message.contains("metadisk"), "{e}");

        // Broken TOML syntax.
        let e = parse("[global\n").unwrap_err();
        assert_eq!(e.line, Some(1));

        let bad = GOOD.replace("name = \"r0\"", "name = \"r 0\"");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("not a valid resource name"));
    }

    #[test]
    fn replication_options_parse_and_bad_ones_name_their_line() {
        let net = "protocol = \"B\"\nshared_secret = \"s3cret\"\nafter_sb_0pri = \"discard-zero-changes\"\n\
                   after_sb_1pri = \"discard-secondary\"\nresync_rate = \"40M/s\"\nping_interval = \"1s\"\n\
                   timeout = \"3s\"\ndata_integrity = true\ncsums = true";
        let c = parse(&GOOD.replace("protocol = \"C\"", net)).unwrap();
        let r = c.resource("r0").unwrap();
        assert_eq!(r.protocol, Protocol::B);
        assert_eq!(r.net.shared_secret.as_deref(), Some("s3cret"));
        assert_eq!(r.net.after_sb.pri0.to_string(), "discard-zero-changes");
        assert_eq!(r.net.after_sb.pri1.to_string(), "discard-secondary");
        assert_eq!(r.net.resync_rate, 40 << 20);
        assert_eq!(r.net.timeout, std::time::Duration::from_secs(3));
        assert!(r.net.data_integrity && r.net.csums);
        assert_eq!(parse(GOOD).unwrap().resource("r0").unwrap().net, NetOptions::default());

        let e = parse(&GOOD.replace("protocol = \"C\"", "after_sb_2pri = \"discard-secondary\"")).unwrap_err();
        assert_eq!(e.line, Some(8));
        assert_eq!(e.key.as_deref(), Some("resource.r0.after_sb_2pri"));
        assert!(e.message.contains("call-pri-lost-after-sb"), "{e}");
        let e = parse(&GOOD.replace("protocol = \"C\"", "ping_interval = \"5s\"\ntimeout = \"2s\"")).unwrap_err();
        assert!(e.to_string().contains("must be longer than ping_interval"), "{e}");
        let e = parse(&GOOD.replace("protocol = \"C\"", "resync_rate = \"fast\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resource.r0.resync_rate"));
        let e = parse(&GOOD.replace("protocol = \"C\"", "shared_secret = \"\"")).unwrap_err();
        assert!(e.to_string().contains("1 to 64"), "{e}");
    }

    #[test]
    fn fencing_and_handlers_parse_and_bad_ones_name_their_line() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.resource("r0").unwrap().net.fencing, Fencing::DontCare);
        assert_eq!(c.resource("r0").unwrap().file, PathBuf::from("/etc/hablock/test.toml"));
        let with = |fencing: &str, handlers: &str| {
            GOOD.replace("protocol = \"C\"", &format!("protocol = \"C\"\n{fencing}"))
                .replace("[resource.on.alpha]", &format!("{handlers}[resource.on.alpha]"))
        };
        let h = "[resource.handlers]\nfence_peer = \"/usr/lib/hablock/hablock-fence-peer\"\n\
                 after_resync_target = \"/usr/lib/hablock/hablock-unfence-peer\"\ntimeout = \"5s\"\n";
        for (text, want) in [
            ("fencing = \"resource-only\"", Fencing::ResourceOnly),
            ("fencing = \"resource-and-stonith\"", Fencing::ResourceAndStonith),
            ("fencing = \"dont-care\"", Fencing::DontCare),
        ] {
            let c = parse(&with(text, h)).unwrap();
            let net = &c.resource("r0").unwrap().net;
            assert_eq!(net.fencing, want);
            assert_eq!(net.fencing.to_string().parse::<Fencing>(), Ok(want));
            assert_eq!(
                net.handlers.fence_peer.as_deref(),
                Some("/usr/lib/hablock/hablock-fence-peer")
            );
            assert_eq!(
                net.handlers.after_resync_target.as_deref(),
                Some("/usr/lib/hablock/hablock-unfence-peer")
            );
            assert_eq!(net.handlers.timeout, std::time::Duration::from_secs(5));
        }
        // A bad policy: file, line and key.
        let e = parse(&with("fencing = \"stonith\"", h)).unwrap_err();
        assert_eq!(e.line, Some(9), "{e}");
        assert_eq!(e.key.as_deref(), Some("resource.r0.fencing"));
        assert!(e.message.contains("resource-and-stonith"), "{e}");
        // Fencing without a handler to do it.
        let e = parse(&with("fencing = \"resource-only\"", "")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resource.r0.fencing"));
        assert!(e.message.contains("fence_peer"), "{e}");
        // A typo'd handler key, an empty command, a bad timeout.
        let e = parse(&with("", "[resource.handlers]\nfence-peer = \"x\"\n")).unwrap_err();
        assert!(e.message.contains("fence-peer"), "{e}");
        assert_eq!(e.line, Some(11), "{e}");
        let e = parse(&with("", "[resource.handlers]\nfence_peer = \" \"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resource.r0.handlers.fence_peer"));
        assert_eq!(e.line, Some(11), "{e}");
        let e = parse(&with(
            "",
            "[resource.handlers]\nfence_peer = \"x\"\ntimeout = \"soon\"\n",
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("resource.r0.handlers.timeout"));
        assert_eq!(e.line, Some(12), "{e}");
    }

    #[test]
    fn duplicate_names_and_ids_are_refused() {
        let twice = format!("{GOOD}\n[[resource]]\nname = \"r0\"\n[resource.on.alpha]\ndisk = \"/x\"\n");
        assert!(parse(&twice).unwrap_err().to_string().contains("defined twice"));
        let shared = format!(
            "{GOOD}\n[[resource]]\nname = \"r1\"\n[resource.on.alpha]\ndisk = \"/x\"\nnbd = \"127.0.0.1:10809\"\n"
        );
        let e = parse(&shared).unwrap_err().to_string();
        assert!(
            e.contains("resource.r1.on.alpha.nbd") && e.contains("already used by resource \"r0\""),
            "{e}"
        );
        let shared =
            format!("{GOOD}\n[[resource]]\nname = \"r1\"\n[resource.on.alpha]\ndisk = \"/srv/alpha-r0.img\"\n");
        assert!(parse(&shared).unwrap_err().to_string().contains(".disk"));
        let ids = GOOD.replace("nbd = \"127.0.0.1:10809\"", "nbd = \"127.0.0.1:10809\"\nnode_id = 1");
        assert!(parse(&ids).unwrap_err().to_string().contains("node_id"));
    }

    #[test]
    fn defaults() {
        let c = parse("[[resource]]\nname = \"r1\"\n[resource.on.n1]\ndisk = \"/d\"\n").unwrap();
        assert_eq!(c.global.state_dir, PathBuf::from("/var/lib/hablock"));
        let r = &c.resources[0];
        assert_eq!(r.protocol, Protocol::C);
        assert!(r.auto_promote);
        assert_eq!(r.on["n1"].meta_disk, MetaDisk::Internal);
        assert_eq!(r.on["n1"].nbd, None);
        assert_eq!(r.on["n1"].cache, CacheMode::None);
        let wb =
            parse("[[resource]]\nname = \"r1\"\n[resource.on.n1]\ndisk = \"/d\"\ncache = \"writeback\"\n").unwrap();
        assert_eq!(wb.resources[0].on["n1"].cache, CacheMode::Writeback);
        let e =
            parse("[[resource]]\nname = \"r1\"\n[resource.on.n1]\ndisk = \"/d\"\ncache = \"unsafe\"\n").unwrap_err();
        assert_eq!(e.line, Some(5));
    }

    #[test]
    fn the_shipped_example_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/hablock.toml");
        let c = ClusterConfig::load(&p).unwrap();
        assert_eq!(c.nodes(), vec!["alpha", "beta"]);
        assert_eq!(
            c.resources[0].on["alpha"].nbd,
            Some(NbdAddr::Tcp("127.0.0.1:10809".parse().unwrap()))
        );
    }

    #[test]
    fn identity_order() {
        let id = Identity::resolve(Some("/a.toml".into()), Some("n".into()));
        assert_eq!(
            id,
            Identity {
                config: "/a.toml".into(),
                node: "n".into()
            }
        );
    }
}
