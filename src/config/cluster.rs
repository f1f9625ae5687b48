//! The `[cluster]` section: who is in the cluster, how heartbeats travel and are
//! authenticated, and the timing and quorum knobs (ha.cf's and corosync's, by name).

use super::ConfigError;
use crate::cluster::quorum::NoQuorumPolicy;
use crate::units::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where the shared heartbeat key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKeySource {
    /// `authkey = "..."` in the cluster file.
    Inline(String),
    /// `authkey_file = "/etc/hablock/authkey"`: the key itself, or Heartbeat's authkeys format.
    File(PathBuf),
}

/// How heartbeats reach the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// To each listed peer address (the default).
    Unicast,
    /// To a multicast group (`mcast_group`), on every link's port.
    Multicast(std::net::Ipv4Addr),
    /// To the link's broadcast address.
    Broadcast,
}

/// An even split's tie-breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TieBreaker {
    None,
    /// The half holding the lowest node id (corosync's auto_tie_breaker).
    Lowest,
    /// The half holding this node.
    Node(String),
}

/// One node's part of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// One address per heartbeat link (ring); every node has the same number.
    pub links: Vec<SocketAddr>,
    pub votes: u32,
}

/// The `[cluster]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSection {
    pub name: String,
    pub nodes: Vec<String>,
    pub authkey: AuthKeySource,
    pub keepalive: Duration,
    pub warntime: Duration,
    pub deadtime: Duration,
    pub initdead: Duration,
    pub transport: Transport,
    pub two_node: bool,
    pub wait_for_all: bool,
    pub expected_votes: Option<u32>,
    pub tie_breaker: TieBreaker,
    pub no_quorum_policy: NoQuorumPolicy,
    /// Run the resource manager (controller, LRM, fencing); false runs membership and the CIB
    /// only, like ha.cf's `crm no`.
    pub resource_manager: bool,
    pub on: BTreeMap<String, ClusterNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    name: Spanned<String>,
    nodes: Spanned<Vec<String>>,
    authkey: Option<Spanned<String>>,
    authkey_file: Option<Spanned<String>>,
    keepalive: Option<Spanned<String>>,
    warntime: Option<Spanned<String>>,
    deadtime: Option<Spanned<String>>,
    initdead: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    mcast_group: Option<Spanned<String>>,
    two_node: Option<bool>,
    wait_for_all: Option<bool>,
    expected_votes: Option<u32>,
    tie_breaker: Option<Spanned<String>>,
    no_quorum_policy: Option<Spanned<String>>,
    resource_manager: Option<bool>,
    #[serde(default)]
    on: BTreeMap<String, RawClusterNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClusterNode {
    links: Spanned<Vec<String>>,
    votes: Option<u32>,
}

type Err<'a> = &'a dyn Fn(Option<Range<usize>>, Option<String>, String) -> ConfigError;

fn duration(v: &Option<Spanned<String>>, key: &str, default: Duration, err: Err) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s.get_ref()).map_err(|m| err(Some(s.span()), Some(format!("cluster.{key}")), m)),
    }
}

impl RawCluster {
    pub(super) fn build(self, err: Err) -> Result<ClusterSection, ConfigError> {
        let key = |k: &str| Some(format!("cluster.{k}"));
        let name = self.name.get_ref().clone();
        if name.is_empty() || !super::valid_name(&name) {
            return Err(err(
                Some(self.name.span()),
                key("name"),
                format!("{name:?} is not a valid cluster name"),
            ));
        }
        let nodes = self.nodes.get_ref().clone();
        let nodes_span = self.nodes.span();
        if nodes.is_empty() {
            return Err(err(Some(nodes_span), key("nodes"), "list at least one node".into()));
        }
        for (i, n) in nodes.iter().enumerate() {
            if !super::valid_name(n) {
                return Err(err(
                    Some(nodes_span.clone()),
                    key("nodes"),
                    format!("{n:?} is not a valid node name"),
                ));
            }
            if nodes[..i].contains(n) {
                return Err(err(
                    Some(nodes_span.clone()),
                    key("nodes"),
                    format!("{n:?} is listed twice"),
                ));
            }
        }
        let authkey = match (self.authkey, self.authkey_file) {
            (Some(k), None) if k.get_ref().len() < 16 => {
                return Err(err(
                    Some(k.span()),
                    key("authkey"),
                    "the key is too short: use at least 16 characters (e.g. from `openssl rand -hex 32`)".into(),
                ))
            }
            (Some(k), None) => AuthKeySource::Inline(k.into_inner()),
            (None, Some(f)) => AuthKeySource::File(PathBuf::from(f.into_inner())),
            (Some(k), Some(_)) => {
                return Err(err(
                    Some(k.span()),
                    key("authkey"),
                    "give authkey or authkey_file, not both".into(),
                ))
            }
            (None, None) => return Err(err(
                Some(self.name.span()),
                key("authkey"),
                "heartbeats must be authenticated: set authkey = \"...\" or authkey_file = \"/etc/hablock/authkey\""
                    .into(),
            )),
        };
        let keepalive = duration(&self.keepalive, "keepalive", Duration::from_secs(1), err)?;
        let warntime = duration(&self.warntime, "warntime", keepalive * 3, err)?;
        let deadtime = duration(&self.deadtime, "deadtime", keepalive * 5, err)?;
        let initdead = duration(&self.initdead, "initdead", deadtime * 3, err)?;
        let order_span = self.deadtime.as_ref().or(self.keepalive.as_ref()).map(|s| s.span());
        if !(keepalive < warntime && warntime <= deadtime && deadtime <= initdead) || keepalive.is_zero() {
            return Err(err(
                order_span,
                key("deadtime"),
                format!(
                    "timings must satisfy 0 < keepalive < warntime <= deadtime <= initdead \
                     (here {keepalive:?}, {warntime:?}, {deadtime:?}, {initdead:?})"
                ),
            ));
        }
        let transport = match self.transport.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
            None | Some(("unicast", _)) => Transport::Unicast,
            Some(("broadcast", _)) => Transport::Broadcast,
            Some(("multicast", span)) => {
                let g = self.mcast_group.as_ref().ok_or_else(|| {
                    err(
                        Some(span.clone()),
                        key("mcast_group"),
                        "multicast needs mcast_group = \"239.x.y.z\"".into(),
                    )
                })?;
                match g.get_ref().parse::<std::net::Ipv4Addr>() {
                    Ok(a) if a.is_multicast() => Transport::Multicast(a),
                    _ => {
                        return Err(err(
                            Some(g.span()),
                            key("mcast_group"),
                            format!("{:?} is not an IPv4 multicast group (224.0.0.0/4)", g.get_ref()),
                        ))
                    }
                }
            }
            Some((other, span)) => {
                return Err(err(
                    Some(span),
                    key("transport"),
                    format!("{other:?}: expected \"unicast\", \"multicast\" or \"broadcast\""),
                ))
            }
        };
        let tie_breaker = match self.tie_breaker.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
            None | Some(("none", _)) => TieBreaker::None,
            Some(("lowest", _)) => TieBreaker::Lowest,
            Some((n, span)) if nodes.iter().any(|x| x == n) => {
                let _ = span;
                TieBreaker::Node(n.to_string())
            }
            Some((other, span)) => {
                return Err(err(
                    Some(span),
                    key("tie_breaker"),
                    format!("{other:?}: expected \"none\", \"lowest\" or a node name"),
                ))
            }
        };
        let no_quorum_policy = match &self.no_quorum_policy {
            None => NoQuorumPolicy::default(),
            Some(p) => p.get_ref().parse().map_err(|_| {
                err(
                    Some(p.span()),
                    key("no_quorum_policy"),
                    format!(
                        "{:?}: expected \"stop\", \"freeze\", \"ignore\" or \"suicide\"",
                        p.get_ref()
                    ),
                )
            })?,
        };
        let two_node = self.two_node.unwrap_or(nodes.len() == 2);
        if two_node && nodes.len() != 2 {
            return Err(err(
                Some(nodes_span),
                key("two_node"),
                "two_node needs exactly two nodes".into(),
            ));
        }
        let mut on = BTreeMap::new();
        let mut links_per_node: Option<usize> = None;
        for n in &nodes {
            let Some(raw) = self.on.get(n) else {
                return Err(err(
                    Some(nodes_span.clone()),
                    Some(format!("cluster.on.{n}")),
                    format!("node {n:?} has no [cluster.on.{n}] section with its links"),
                ));
            };
            let k = Some(format!("cluster.on.{n}.links"));
            let mut links = Vec::new();
            for a in raw.links.get_ref() {
                links.push(a.parse::<SocketAddr>().map_err(|_| {
                    err(
                        Some(raw.links.span()),
                        k.clone(),
                        format!("{a:?} is not an IP:port address"),
                    )
                })?);
            }
            if links.is_empty() || links.len() > crate::cluster::MAX_LINKS {
                return Err(err(
                    Some(raw.links.span()),
                    k,
                    format!("give 1 to {} link addresses", crate::cluster::MAX_LINKS),
                ));
            }
            match links_per_node {
                Some(l) if l != links.len() => {
                    return Err(err(
                        Some(raw.links.span()),
                        k,
                        format!("every node needs the same number of links ({l} on the others)"),
                    ))
                }
                _ => links_per_node = Some(links.len()),
            }
            on.insert(
                n.clone(),
                ClusterNode {
                    links,
                    votes: raw.votes.unwrap_or(1),
                },
            );
        }
        if let Some(extra) = self.on.keys().find(|k| !nodes.contains(k)) {
            return Err(err(
                Some(nodes_span),
                Some(format!("cluster.on.{extra}")),
                format!("[cluster.on.{extra}] names a node missing from cluster.nodes"),
            ));
        }
        Ok(ClusterSection {
            name,
            nodes,
            authkey,
            keepalive,
            warntime,
            deadtime,
            initdead,
            transport,
            two_node,
            wait_for_all: self.wait_for_all.unwrap_or(two_node),
            expected_votes: self.expected_votes,
            tie_breaker,
            no_quorum_policy,
            resource_manager: self.resource_manager.unwrap_or(true),
            on,
        })
    }
}

/// Reads a key file: either the key itself, or Heartbeat's authkeys format
/// (`auth N` then `N sha1|md5 SECRET` lines). Like Heartbeat, refuses a file that
/// others can read.
pub fn read_authkey(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|e| format!("cannot read the authkey file {}: {e}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others: run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let chosen = lines.iter().find_map(|l| l.strip_prefix("auth ").map(str::trim));
    let key = match chosen {
        None => text.trim().to_string(),
        Some(index) => {
            let entry = lines
                .iter()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.first() == Some(&index))
                .ok_or_else(|| {
                    format!(
                        "{}: `auth {index}` names no key line `{index} sha1 SECRET`",
                        path.display()
                    )
                })?;
            match entry.as_slice() {
                [_, "crc"] | [_, "crc", ..] => {
                    return Err(format!(
                        "{}: crc authenticates nothing; use sha1 or md5 with a secret",
                        path.display()
                    ))
                }
                [_, "sha1" | "md5", secret @ ..] if !secret.is_empty() => secret.join(" "),
                _ => {
                    return Err(format!(
                        "{}: key line for {index} should be `{index} sha1 SECRET`",
                        path.display()
                    ))
                }
            }
        }
    };
    if key.len() < 16 {
        return Err(format!(
            "{}: the key is too short: use at least 16 characters",
            path.display()
        ));
    }
    Ok(key.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    const BASE: &str = r#"
[cluster]
name = "hacluster"
nodes = ["alpha", "beta", "gamma"]
authkey = "a long shared secret"
keepalive = "200ms"
warntime = "600ms"
deadtime = "1s"
initdead = "3s"
[cluster.on.alpha]
links = ["127.0.0.1:16940"]
[cluster.on.beta]
links = ["127.0.0.2:16940"]
[cluster.on.gamma]
links = ["127.0.0.3:16940"]
"#;

    fn parse(t: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(Path::new("/etc/hablock/c.toml"), t)
    }

    #[test]
    fn the_issue_s_shape_parses() {
        let c = parse(BASE).unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.name, "hacluster");
        assert_eq!(cl.nodes, vec!["alpha", "beta", "gamma"]);
        assert_eq!(cl.keepalive, Duration::from_millis(200));
        assert_eq!(cl.deadtime, Duration::from_secs(1));
        assert_eq!(cl.initdead, Duration::from_secs(3));
        assert_eq!(cl.authkey, AuthKeySource::Inline("a long shared secret".into()));
        assert_eq!(cl.on["beta"].links, vec!["127.0.0.2:16940".parse().unwrap()]);
        assert!(!cl.two_node);
        assert_eq!(cl.transport, Transport::Unicast);
        assert_eq!(cl.no_quorum_policy, NoQuorumPolicy::Stop);
        // A cluster-only file is a valid file, and its nodes are nodes.
        assert!(c.check_node("gamma").is_ok());
    }

    #[test]
    fn errors_point_at_the_line() {
        let e = parse(&BASE.replace("deadtime = \"1s\"", "deadtime = \"100ms\"")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("keepalive < warntime"), "{e}");
        let e = parse(&BASE.replace("127.0.0.2:16940", "127.0.0.2")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("cluster.on.beta.links"));
        let e = parse(&BASE.replace("authkey = \"a long shared secret\"\n", "")).unwrap_err();
        assert!(e.message.contains("authenticated"), "{e}");
        let e = parse(&BASE.replace("a long shared secret", "short")).unwrap_err();
        assert!(e.message.contains("too short"), "{e}");
        let e = parse(&BASE.replace("[cluster.on.gamma]\nlinks = [\"127.0.0.3:16940\"]\n", "")).unwrap_err();
        assert!(e.message.contains("[cluster.on.gamma]"), "{e}");
        let e = parse(&BASE.replace(
            "[cluster.on.alpha]\nlinks = [\"127.0.0.1:16940\"]",
            "[cluster.on.alpha]\nlinks = [\"127.0.0.1:16940\", \"10.9.0.1:16940\"]",
        ))
        .unwrap_err();
        assert!(e.message.contains("same number of links"), "{e}");
        let e =
            parse(&BASE.replace("initdead = \"3s\"", "initdead = \"3s\"\nno_quorum_policy = \"panic\"")).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("\"freeze\""), "{e}");
        let e = parse(&BASE.replace(
            "keepalive = \"200ms\"",
            "keepalive = \"200ms\"\ntransport = \"multicast\"",
        ))
        .unwrap_err();
        assert!(e.message.contains("mcast_group"), "{e}");
    }

    #[test]
    fn two_nodes_default_to_two_node_mode() {
        let t = BASE
            .replace(
                "nodes = [\"alpha\", \"beta\", \"gamma\"]",
                "nodes = [\"alpha\", \"beta\"]",
            )
            .replace("[cluster.on.gamma]\nlinks = [\"127.0.0.3:16940\"]\n", "");
        let c = parse(&t).unwrap();
        let cl = c.cluster.unwrap();
        assert!(cl.two_node && cl.wait_for_all);
    }

    #[test]
    fn authkeys_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authkeys");
        std::fs::write(&p, "auth 2\n1 crc\n2 sha1 a long shared secret here\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_authkey(&p).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_authkey(&p).unwrap(), b"a long shared secret here");
        std::fs::write(&p, "auth 1\n1 crc\n").unwrap();
        assert!(read_authkey(&p).unwrap_err().contains("crc"));
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_authkey(&p).unwrap(), b"0123456789abcdef0123");
        std::fs::write(&p, "tiny\n").unwrap();
        assert!(read_authkey(&p).unwrap_err().contains("too short"));
    }
}
