//! The `[iscsi]` section: each node's portal, and targets declared in the file.
//!
//! ```toml
//! [iscsi.on.alpha]
//! portal = "127.0.0.1:3260"
//!
//! [[iscsi.target]]
//! name = "iqn.2026-11.com.example:r0"
//! tid = 1                                   # optional; else the next free one
//! initiator_address = ["192.168.1.0/24"]    # default ["ALL"] unless initiator_name is set
//! initiator_name = ["iqn.1994-05.com.redhat:client1"]
//! incoming_user = ["alice:secret1234"]      # USER:PASSWORD
//! outgoing_user = "bob:secret5678"
//! params = { MaxRecvDataSegmentLength = "65536" }
//! [[iscsi.target.lun]]
//! lun = 1
//! resource = "r0"                            # or path = "/srv/disk.img"
//! params = "vendor_id=HABLOCK,readonly=0"    # tgt's --params
//! ```

use super::ConfigError;
use crate::iscsi::target::{valid_acl_address, valid_iscsi_name, TgtRequest};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use toml::Spanned;

type Err<'a> = &'a dyn Fn(Option<Range<usize>>, Option<String>, String) -> ConfigError;

/// One node's iSCSI settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiNode {
    /// Where the target listens.
    pub portal: SocketAddr,
}

/// A logical unit declared in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredLun {
    pub lun: u64,
    /// `bstype hablock` when true (the backing store is a resource name), else `rdwr`.
    pub resource: bool,
    pub backing: String,
    pub params: Option<String>,
}

/// A target declared in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTarget {
    pub name: String,
    pub tid: Option<u32>,
    pub initiator_address: Vec<String>,
    pub initiator_name: Vec<String>,
    pub incoming_user: Vec<(String, String)>,
    pub outgoing_user: Option<(String, String)>,
    pub params: BTreeMap<String, String>,
    pub luns: Vec<DeclaredLun>,
}

/// The `[iscsi]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IscsiSection {
    pub on: BTreeMap<String, IscsiNode>,
    pub targets: Vec<DeclaredTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIscsi {
    #[serde(default)]
    on: BTreeMap<String, RawIscsiNode>,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIscsiNode {
    portal: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    tid: Option<Spanned<u32>>,
    #[serde(default)]
    initiator_address: Vec<Spanned<String>>,
    #[serde(default)]
    initiator_name: Vec<String>,
    #[serde(default)]
    incoming_user: Vec<Spanned<String>>,
    outgoing_user: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    lun: Vec<RawLun>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    lun: Spanned<u64>,
    path: Option<String>,
    resource: Option<String>,
    params: Option<String>,
}

fn user_pass(s: &Spanned<String>, key: Option<String>, err: Err) -> Result<(String, String), ConfigError> {
    match s.get_ref().split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err(err(
            Some(s.span()),
            key,
            format!("{:?}: expected \"USER:PASSWORD\"", s.get_ref()),
        )),
    }
}

impl RawIscsi {
    pub(super) fn build(self, err: Err) -> Result<IscsiSection, ConfigError> {
        let mut on = BTreeMap::new();
        for (node, n) in self.on {
            if !super::valid_name(&node) {
                return Err(err(
                    Some(n.portal.span()),
                    Some(format!("iscsi.on.{node}")),
                    format!("{node:?} is not a valid node name"),
                ));
            }
            let portal = n.portal.get_ref().parse::<SocketAddr>().map_err(|_| {
                err(
                    Some(n.portal.span()),
                    Some(format!("iscsi.on.{node}.portal")),
                    format!(
                        "{:?} is not an IP:port address, e.g. \"127.0.0.1:3260\"",
                        n.portal.get_ref()
                    ),
                )
            })?;
            on.insert(node, IscsiNode { portal });
        }
        let mut targets: Vec<DeclaredTarget> = Vec::new();
        for (i, t) in self.target.into_iter().enumerate() {
            let name = t.name.get_ref().clone();
            let key = |k: &str| Some(format!("iscsi.target[{i}].{k}"));
            if !valid_iscsi_name(&name) {
                return Err(err(
                    Some(t.name.span()),
                    key("name"),
                    format!("{name:?} is not an iSCSI name: expected iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex> or naa.<16|32 hex>"),
                ));
            }
            if targets.iter().any(|x| x.name == name) {
                return Err(err(
                    Some(t.name.span()),
                    key("name"),
                    format!("target {name:?} is declared twice"),
                ));
            }
            let tid = match t.tid {
                Some(s) if *s.get_ref() == 0 => {
                    return Err(err(
                        Some(s.span()),
                        key("tid"),
                        "tid 0 is reserved: use 1 or more".into(),
                    ))
                }
                Some(s) if targets.iter().any(|x| x.tid == Some(*s.get_ref())) => {
                    return Err(err(
                        Some(s.span()),
                        key("tid"),
                        format!("tid {} is used twice", s.get_ref()),
                    ))
                }
                s => s.map(|s| *s.get_ref()),
            };
            for a in &t.initiator_address {
                if !valid_acl_address(a.get_ref()) {
                    return Err(err(
                        Some(a.span()),
                        key("initiator_address"),
                        format!("{:?}: expected \"ALL\", an address or NET/PREFIX", a.get_ref()),
                    ));
                }
            }
            let incoming = t
                .incoming_user
                .iter()
                .map(|s| user_pass(s, key("incoming_user"), err))
                .collect::<Result<Vec<_>, _>>()?;
            let outgoing = match &t.outgoing_user {
                Some(s) => Some(user_pass(s, key("outgoing_user"), err)?),
                None => None,
            };
            let mut params = BTreeMap::new();
            for (k, v) in t.params {
                let text = match v.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Boolean(b) => if *b { "Yes" } else { "No" }.to_string(),
                    _ => {
                        return Err(err(
                            Some(v.span()),
                            key(&format!("params.{k}")),
                            "expected a string, a number or a boolean".into(),
                        ))
                    }
                };
                params.insert(k, text);
            }
            let mut luns: Vec<DeclaredLun> = Vec::new();
            for l in t.lun {
                let n = *l.lun.get_ref();
                let (resource, backing) = match (l.path, l.resource) {
                    (Some(p), None) => (false, p),
                    (None, Some(r)) => (true, r),
                    _ => {
                        return Err(err(
                            Some(l.lun.span()),
                            key("lun"),
                            format!("lun {n}: give exactly one of path = \"/file\" or resource = \"r0\""),
                        ))
                    }
                };
                if n == 0 || luns.iter().any(|x| x.lun == n) {
                    return Err(err(
                        Some(l.lun.span()),
                        key("lun"),
                        format!("lun {n}: LUN 0 is the controller and each LUN appears once"),
                    ));
                }
                luns.push(DeclaredLun {
                    lun: n,
                    resource,
                    backing,
                    params: l.params,
                });
            }
            targets.push(DeclaredTarget {
                name,
                tid,
                initiator_address: t.initiator_address.into_iter().map(|s| s.into_inner()).collect(),
                initiator_name: t.initiator_name,
                incoming_user: incoming,
                outgoing_user: outgoing,
                params,
                luns,
            });
        }
        Ok(IscsiSection { on, targets })
    }
}

impl DeclaredTarget {
    /// The tgtadm commands that make this target with tid `tid`.
    pub fn steps(&self, tid: u32) -> Vec<TgtRequest> {
        let base = |mode: &str, op: &str| TgtRequest {
            lld: Some("iscsi".into()),
            mode: Some(mode.into()),
            op: Some(op.into()),
            tid: Some(tid),
            ..TgtRequest::default()
        };
        let mut v = Vec::new();
        let mut r = base("target", "new");
        r.targetname = Some(self.name.clone());
        v.push(r);
        for l in &self.luns {
            let mut r = base("logicalunit", "new");
            r.lun = Some(l.lun);
            r.backing_store = Some(l.backing.clone());
            r.bstype = Some(if l.resource { "hablock" } else { "rdwr" }.into());
            r.params = l.params.clone();
            v.push(r);
        }
        for (k, val) in &self.params {
            let mut r = base("target", "update");
            r.name = Some(k.clone());
            r.value = Some(val.clone());
            v.push(r);
        }
        for ((u, p), out) in self
            .incoming_user
            .iter()
            .map(|x| (x, false))
            .chain(self.outgoing_user.iter().map(|x| (x, true)))
        {
            let mut r = base("account", "new");
            r.tid = None;
            r.user = Some(u.clone());
            r.password = Some(p.clone());
            v.push(r);
            let mut r = base("account", "bind");
            r.user = Some(u.clone());
            r.outgoing = out;
            v.push(r);
        }
        let addresses = if self.initiator_address.is_empty() {
            vec!["ALL".to_string()]
        } else {
            self.initiator_address.clone()
        };
        for a in addresses {
            let mut r = base("target", "bind");
            r.initiator_address = Some(a);
            v.push(r);
        }
        for q in &self.initiator_name {
            let mut r = base("target", "bind");
            r.initiator_name = Some(q.clone());
            v.push(r);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClusterConfig;
    use std::path::Path;

    const HEAD: &str = "[global]\nstate_dir = \"/tmp/x\"\n";

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        ClusterConfig::parse(Path::new("h.toml"), &format!("{HEAD}{text}")).map_err(|e| e.to_string())
    }

    #[test]
    fn portal_and_declared_targets_parse() {
        let c = parse(
            r#"
[iscsi.on.alpha]
portal = "127.0.0.1:3260"

[[iscsi.target]]
name = "iqn.2026-11.com.example:r0"
tid = 3
initiator_address = ["192.168.1.0/24"]
incoming_user = ["alice:secret1234"]
outgoing_user = "bob:secret5678"
params = { MaxRecvDataSegmentLength = 65536, ImmediateData = false }
[[iscsi.target.lun]]
lun = 1
resource = "r0"
params = "vendor_id=HABLOCK"
"#,
        )
        .unwrap();
        let i = c.iscsi.unwrap();
        assert_eq!(i.on["alpha"].portal.to_string(), "127.0.0.1:3260");
        let t = &i.targets[0];
        assert_eq!(t.tid, Some(3));
        assert_eq!(t.incoming_user, vec![("alice".to_string(), "secret1234".to_string())]);
        assert_eq!(t.params["MaxRecvDataSegmentLength"], "65536");
        assert_eq!(t.params["ImmediateData"], "No");
        assert!(t.luns[0].resource);
    }

    /// The commented example in conf/hablock.toml, uncommented, is valid.
    #[test]
    fn example_in_conf_parses_when_uncommented() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/hablock.toml")).unwrap();
        let (_, tail) = text.split_once("# iSCSI target").expect("the example is there");
        let block: String = tail
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&block).unwrap();
        let i = c.iscsi.unwrap();
        assert_eq!(i.on.len(), 2);
        let t = &i.targets[0];
        assert_eq!(t.outgoing_user, Some(("bob".to_string(), "secret5678".to_string())));
        assert_eq!(t.params["HeaderDigest"], "CRC32C,None");
        assert_eq!(t.luns[0].backing, "r0");
        // The declared target's commands run clean through a registry.
        let mut reg = crate::iscsi::target::TargetRegistry::new(std::sync::Arc::new(crate::iscsi::target::FsProbe {
            resources: [("r0".to_string(), 1u64 << 30)].into(),
            ..Default::default()
        }));
        for req in t.steps(1) {
            let rep = reg.handle(req.clone());
            assert_eq!(rep.code, 0, "{req:?}: {rep:?}");
        }
        let lv = reg.login_view("iqn.2026-11.com.example:r0").unwrap();
        assert!(lv.allows("iqn.1994-05.com.redhat:client1", "192.168.1.9".parse().unwrap()));
        assert!(!lv.allows("iqn.1994-05.com.redhat:other", "192.168.1.9".parse().unwrap()));
        assert_eq!(lv.incoming[0].user, "alice");
    }

    #[test]
    fn errors_name_line_and_key() {
        let cases = [
            (
                "[iscsi.on.alpha]\nportal = \"nowhere\"\n",
                "h.toml:4: iscsi.on.alpha.portal: \"nowhere\" is not an IP:port address",
            ),
            (
                "[[iscsi.target]]\nname = \"bogus\"\n",
                "h.toml:4: iscsi.target[0].name: \"bogus\" is not an iSCSI name",
            ),
            (
                "[[iscsi.target]]\nname = \"iqn.2026-11.a.b:c\"\nincoming_user = [\"alice\"]\n",
                "h.toml:5: iscsi.target[0].incoming_user: \"alice\": expected \"USER:PASSWORD\"",
            ),
            (
                "[[iscsi.target]]\nname = \"iqn.2026-11.a.b:c\"\n[[iscsi.target.lun]]\nlun = 1\n",
                "h.toml:6: iscsi.target[0].lun: lun 1: give exactly one of",
            ),
            (
                "[[iscsi.target]]\nname = \"iqn.2026-11.a.b:c\"\ninitiator_address = [\"x/y\"]\n",
                "h.toml:5: iscsi.target[0].initiator_address: \"x/y\": expected",
            ),
            ("[iscsi]\nportal = 1\n", "h.toml:4: unknown field `portal`"),
            (
                "[iscsi.on.\"a b\"]\nportal = \"127.0.0.1:3260\"\n",
                "h.toml:4: iscsi.on.a b: \"a b\" is not a valid node name",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text}\n got: {e}\nwant: {want}");
        }
    }
}
