//! `hbcrm resource`: crm shell's resource verbs as CIB operations (meta attributes and `cli-*`
//! location constraints, as crm_resource writes them), and `resource status` (where it runs).

use hablock::cluster::cib::config::{Configuration, Constraint, Location, Resource, Role};
use hablock::cluster::cib::{Cib, CibOp, Score, Status};
use hablock::cluster::pengine::instances;
use hablock::cluster::pengine::state::{self, Observed};

fn resource<'a>(cfg: &'a Configuration, rsc: &str) -> Result<&'a Resource, String> {
    cfg.resource(rsc).ok_or_else(|| {
        let ids: Vec<&str> = cfg.resources.iter().map(|r| r.id()).collect();
        if ids.is_empty() {
            format!("resource {rsc} does not exist (no resources are configured)")
        } else {
            format!("resource {rsc} does not exist; configured: {}", ids.join(", "))
        }
    })
}

fn node_known(cfg: &Configuration, node: &str) -> Result<(), String> {
    if cfg.node(node).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    Err(format!("node {node} is not configured; nodes: {}", names.join(", ")))
}

fn meta(rsc: &str, name: &str, value: Option<&str>) -> CibOp {
    CibOp::SetResourceMeta {
        id: rsc.to_string(),
        name: name.to_string(),
        value: value.map(str::to_string),
    }
}

/// `resource start|stop RSC`: `target-role=Started|Stopped` on RSC.
pub fn start_stop(cfg: &Configuration, rsc: &str, start: bool) -> Result<Vec<CibOp>, String> {
    resource(cfg, rsc)?;
    Ok(vec![meta(
        rsc,
        "target-role",
        Some(if start { "Started" } else { "Stopped" }),
    )])
}

/// `resource promote|demote RSC`: `target-role=Promoted|Unpromoted` on a promotable clone.
pub fn promote_demote(cfg: &Configuration, rsc: &str, promote: bool) -> Result<Vec<CibOp>, String> {
    match resource(cfg, rsc)? {
        Resource::Clone(c) if c.is_promotable() => Ok(vec![meta(
            rsc,
            "target-role",
            Some(if promote { "Promoted" } else { "Unpromoted" }),
        )]),
        r => Err(format!(
            "{rsc} is a {}, not a promotable clone (ms); only promotable clones are promoted or demoted",
            r.kind_name()
        )),
    }
}

/// `resource manage|unmanage RSC`: `is-managed=true|false`.
pub fn manage(cfg: &Configuration, rsc: &str, managed: bool) -> Result<Vec<CibOp>, String> {
    resource(cfg, rsc)?;
    Ok(vec![meta(
        rsc,
        "is-managed",
        Some(if managed { "true" } else { "false" }),
    )])
}

/// `resource meta RSC set|delete NAME [VALUE]`: one meta attribute of any resource.
pub fn set_meta(cfg: &Configuration, rsc: &str, name: &str, value: Option<&str>) -> Result<Vec<CibOp>, String> {
    resource(cfg, rsc)?;
    Ok(vec![meta(rsc, name, value)])
}

/// `resource param RSC set|delete NAME [VALUE]`: one instance attribute (agent parameter) of a
/// primitive, as the primitive replaced with the new parameters.
pub fn set_param(cfg: &Configuration, rsc: &str, name: &str, value: Option<&str>) -> Result<Vec<CibOp>, String> {
    let Resource::Primitive(p) = resource(cfg, rsc)? else {
        return Err(format!("{rsc} is not a primitive: only primitives have parameters"));
    };
    let mut p = p.clone();
    match value {
        Some(v) => {
            p.params.insert(name.to_string(), v.to_string());
        }
        None => {
            if p.params.remove(name).is_none() {
                return Ok(Vec::new());
            }
        }
    }
    Ok(vec![CibOp::ReplaceResource { resource: p.into() }])
}

/// `resource meta|param RSC show NAME`: the value, if set.
pub fn get_attr(cfg: &Configuration, rsc: &str, name: &str, param: bool) -> Result<Option<String>, String> {
    let r = resource(cfg, rsc)?;
    let attrs = match (r, param) {
        (Resource::Primitive(p), true) => &p.params,
        (_, true) => return Err(format!("{rsc} is not a primitive: only primitives have parameters")),
        (r, false) => r.meta(),
    };
    Ok(attrs.get(name).cloned())
}

/// The id crm_resource gives a move's constraint.
pub fn prefer_id(rsc: &str) -> String {
    format!("cli-prefer-{rsc}")
}

/// The id crm_resource gives a ban's constraint.
pub fn ban_id(rsc: &str, node: &str) -> String {
    format!("cli-ban-{rsc}-on-{node}")
}

fn put_location(cfg: &Configuration, loc: Location) -> CibOp {
    let constraint = Constraint::Location(loc);
    if cfg.constraint(constraint.id()).is_some() {
        CibOp::ReplaceConstraint { constraint }
    } else {
        CibOp::AddConstraint { constraint }
    }
}

/// `resource move|migrate RSC NODE`: `location cli-prefer-RSC RSC role=Started inf: NODE`
/// (replacing an earlier move of RSC). With `promoted` (crm_resource --promoted), for a
/// promotable clone: `role=Promoted`, moving where it is promoted. A clone runs everywhere and
/// is not moved otherwise (ban it from a node instead), as crm_resource refuses.
pub fn move_to(cfg: &Configuration, rsc: &str, node: &str, promoted: bool) -> Result<Vec<CibOp>, String> {
    let r = resource(cfg, rsc)?;
    node_known(cfg, node)?;
    let promotable = cfg.promotable_ancestor(rsc).is_some();
    let in_clone =
        matches!(r, Resource::Clone(_)) || cfg.parent_of(rsc).is_some_and(|p| matches!(p, Resource::Clone(_)));
    if promoted && !promotable {
        return Err(format!("{rsc} is not a promotable clone: --promoted does not apply"));
    }
    if in_clone && !promoted {
        return Err(format!(
            "{rsc} is a clone and runs on every node it may: ban it from a node (`resource ban {rsc} NODE`){}",
            if promotable {
                ", or move where it is promoted with --promoted"
            } else {
                ""
            }
        ));
    }
    let mut loc = Location::on_node(&prefer_id(rsc), rsc, Score::INFINITY, node);
    loc.role = Some(if promoted { Role::Promoted } else { Role::Started });
    Ok(vec![put_location(cfg, loc)])
}

/// `resource ban RSC NODE`: `location cli-ban-RSC-on-NODE RSC -inf: NODE`.
pub fn ban(cfg: &Configuration, rsc: &str, node: &str) -> Result<Vec<CibOp>, String> {
    resource(cfg, rsc)?;
    node_known(cfg, node)?;
    let loc = Location::on_node(&ban_id(rsc, node), rsc, Score::NEG_INFINITY, node);
    Ok(vec![put_location(cfg, loc)])
}

/// `resource clear|unmove RSC`: deletes RSC's `cli-prefer-` and `cli-ban-` constraints. No
/// such constraints: no operations.
pub fn clear(cfg: &Configuration, rsc: &str) -> Result<Vec<CibOp>, String> {
    resource(cfg, rsc)?;
    let ban_prefix = format!("cli-ban-{rsc}-on-");
    Ok(cfg
        .constraints
        .iter()
        .filter(|c| match c {
            Constraint::Location(l) => {
                l.rsc == rsc
                    && (l.id == prefer_id(rsc) || l.id.strip_prefix(&ban_prefix).is_some_and(|n| !n.is_empty()))
            }
            _ => false,
        })
        .map(|c| CibOp::DeleteConstraint { id: c.id().to_string() })
        .collect())
}

/// Whether a transient attribute is the fail count or last failure of one of `prims`
/// (`fail-count-RSC`, `fail-count-RSC#monitor_10000`, `last-failure-RSC:1#start_0`, ...).
/// With `exact`, `prims` are unique clone instances (`RSC:N`) and only their own count.
fn failure_attr_of(key: &str, prims: &[String], exact: bool) -> bool {
    let Some(rest) = key
        .strip_prefix("fail-count-")
        .or_else(|| key.strip_prefix("last-failure-"))
    else {
        return false;
    };
    let id = rest.split('#').next().unwrap_or(rest);
    names_one_of(id, prims, exact)
}

fn names_one_of(id: &str, prims: &[String], exact: bool) -> bool {
    prims
        .iter()
        .any(|p| if exact { p == id } else { p == state::base_id(id) })
}

/// `resource cleanup [RSC] [--node NODE]`: forgets the operation history of RSC's primitives
/// (every resource in the status section without RSC) on NODE (every node without it), and
/// deletes their `fail-count-*`/`last-failure-*` transient attributes there, so the policy
/// engine probes them again.
pub fn cleanup(cib: &Cib, rsc: Option<&str>, node: Option<&str>) -> Result<Vec<CibOp>, String> {
    let cfg = &cib.configuration;
    if let Some(n) = node {
        node_known(cfg, n)?;
    }
    let status: &Status = &cib.status;
    // `RSC:N`: one instance of a globally-unique clone, its history and fail counts only.
    let exact = rsc.is_some_and(|r| instances::is_unique_instance(cfg, r));
    let prims: Vec<String> = match rsc {
        Some(r) if exact => vec![r.to_string()],
        Some(r) => {
            resource(cfg, r)?;
            cfg.primitives_of(r).iter().map(|p| p.id.clone()).collect()
        }
        None => {
            let mut all: Vec<String> = status
                .nodes
                .values()
                .flat_map(|ns| ns.resources.keys().map(|k| state::base_id(k).to_string()))
                .collect();
            for ns in status.nodes.values() {
                for k in ns.transient_attributes.keys() {
                    if let Some(rest) = k
                        .strip_prefix("fail-count-")
                        .or_else(|| k.strip_prefix("last-failure-"))
                    {
                        all.push(state::base_id(rest.split('#').next().unwrap_or(rest)).to_string());
                    }
                }
            }
            all.sort();
            all.dedup();
            all
        }
    };
    let mut ops = Vec::new();
    let on_node = |n: &str| node.is_none_or(|x| x == n);
    for (n, ns) in &status.nodes {
        if !on_node(n) {
            continue;
        }
        for sid in ns.resources.keys() {
            if names_one_of(sid, &prims, exact) {
                ops.push(CibOp::ClearResourceHistory {
                    rsc: sid.clone(),
                    node: Some(n.clone()),
                });
            }
        }
        for k in ns.transient_attributes.keys() {
            if failure_attr_of(k, &prims, exact) {
                ops.push(CibOp::SetTransientAttribute {
                    node: n.clone(),
                    name: k.clone(),
                    value: None,
                });
            }
        }
    }
    Ok(ops)
}

/// `resource status [RSC]` (crm_resource --locate): one line per resource (every configured
/// one without RSC): `resource RSC is running on: NODE [ROLE]` per active instance, or `resource
/// RSC is NOT running`; failed instances say `(FAILED)`.
pub fn locate(cib: &Cib, rsc: Option<&str>) -> Result<String, String> {
    let cfg = &cib.configuration;
    // `RSC:N`: one instance of a globally-unique clone.
    let exact = rsc.is_some_and(|r| instances::is_unique_instance(cfg, r));
    let ids: Vec<&str> = match rsc {
        Some(r) if exact => vec![r],
        Some(r) => vec![resource(cfg, r)?.id()],
        None => cfg
            .resources
            .iter()
            .filter(|r| cfg.parent_of(r.id()).is_none())
            .map(|r| r.id())
            .collect(),
    };
    let mut out = String::new();
    for id in ids {
        let mut found = Vec::new();
        let prims: Vec<String> = if exact {
            vec![id.to_string()]
        } else {
            cfg.primitives_of(id).iter().map(|p| p.id.clone()).collect()
        };
        for (node, ns) in &cib.status.nodes {
            let mut best: Option<Observed> = None;
            for (sid, h) in &ns.resources {
                if !names_one_of(sid, &prims, exact) {
                    continue;
                }
                let o = state::observe(h);
                best = match (best, o) {
                    (_, Observed::Stopped) => best,
                    (None, o) | (Some(Observed::Running(_)), o @ (Observed::Failed(_) | Observed::StopFailed)) => {
                        Some(o)
                    }
                    (Some(Observed::Running(Role::Started)), o @ Observed::Running(Role::Promoted)) => Some(o),
                    (b, _) => b,
                };
            }
            if let Some(o) = best {
                found.push((node.clone(), o));
            }
        }
        if found.is_empty() {
            out += &format!("resource {id} is NOT running\n");
        }
        for (node, o) in found {
            let suffix = match o {
                Observed::Running(Role::Promoted) => " Promoted",
                Observed::Running(_) if cfg.promotable_ancestor(id).is_some() => " Unpromoted",
                Observed::Failed(_) | Observed::StopFailed => " (FAILED)",
                _ => "",
            };
            out += &format!("resource {id} is running on: {node}{suffix}\n");
        }
    }
    Ok(out)
}

/// Where `rsc` is active, for `ban` without a node.
pub fn active_nodes(cib: &Cib, rsc: &str) -> Vec<String> {
    super::configure::running_nodes(&cib.configuration, &cib.status, rsc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::configure::{load_ops, LoadMode};
    use hablock::cluster::cib::config::{Action, Node};
    use hablock::cluster::cib::status::OpRecord;

    fn cib() -> Cib {
        let mut cfg = Configuration::default();
        for (i, n) in ["alpha", "beta"].iter().enumerate() {
            cfg.nodes.push(Node::new(n, i as u8));
        }
        let mut cib = Cib::with_configuration(cfg).unwrap();
        let text = "primitive d Dummy\nprimitive s ocf:pacemaker:Stateful\nms ms_s s\ngroup g d\n";
        let ops = load_ops(&cib.configuration, text, LoadMode::Update).unwrap();
        cib.apply(&ops).unwrap();
        cib
    }

    fn rec(action: Action, interval_ms: u64, call_id: u64, rc: i32) -> OpRecord {
        OpRecord::done(action, interval_ms, call_id, rc)
    }

    fn record(cib: &mut Cib, node: &str, rsc: &str, r: OpRecord) {
        cib.apply(&[CibOp::RecordOperation {
            node: node.into(),
            rsc: rsc.into(),
            agent: "ocf:heartbeat:Dummy".into(),
            record: r,
        }])
        .unwrap();
    }

    #[test]
    fn cleanup_of_one_unique_clone_instance_or_all_of_them() {
        let mut c = cib();
        let ops = load_ops(
            &c.configuration,
            "primitive u Dummy\nclone c_u u meta clone-max=3 clone-node-max=2 globally-unique=true\n",
            LoadMode::Update,
        )
        .unwrap();
        c.apply(&ops).unwrap();
        record(&mut c, "alpha", "u:0", rec(Action::Start, 0, 1, 0));
        record(&mut c, "alpha", "u:2", rec(Action::Start, 0, 2, 1));
        record(&mut c, "beta", "u:1", rec(Action::Start, 0, 1, 0));
        for (node, name) in [
            ("alpha", "fail-count-u:2#start_0"),
            ("beta", "fail-count-u:1#monitor_10000"),
        ] {
            c.apply(&[CibOp::SetTransientAttribute {
                node: node.into(),
                name: name.into(),
                value: Some("1".into()),
            }])
            .unwrap();
        }
        let touched = |ops: &[CibOp]| -> Vec<String> {
            let mut v: Vec<String> = ops
                .iter()
                .map(|o| match o {
                    CibOp::ClearResourceHistory { rsc, node } => format!("{rsc}@{}", node.clone().unwrap_or_default()),
                    CibOp::SetTransientAttribute { node, name, .. } => format!("{name}@{node}"),
                    o => format!("{o:?}"),
                })
                .collect();
            v.sort();
            v
        };
        let ops = cleanup(&c, Some("u:2"), None).unwrap();
        assert_eq!(touched(&ops), ["fail-count-u:2#start_0@alpha", "u:2@alpha"]);
        let ops = cleanup(&c, Some("c_u"), None).unwrap();
        assert_eq!(
            touched(&ops),
            [
                "fail-count-u:1#monitor_10000@beta",
                "fail-count-u:2#start_0@alpha",
                "u:0@alpha",
                "u:1@beta",
                "u:2@alpha"
            ]
        );
        // An anonymous clone's primitive has no instances by number.
        assert!(cleanup(&c, Some("s:1"), None).is_err());
        assert_eq!(locate(&c, Some("u:1")).unwrap(), "resource u:1 is running on: beta\n");
        assert_eq!(
            locate(&c, Some("u:2")).unwrap(),
            "resource u:2 is running on: alpha (FAILED)\n"
        );
        assert_eq!(
            locate(&c, Some("c_u")).unwrap(),
            "resource c_u is running on: alpha (FAILED)\nresource c_u is running on: beta\n"
        );
    }

    #[test]
    fn move_ban_clear() {
        let mut c = cib();
        let ops = move_to(&c.configuration, "g", "beta", false).unwrap();
        c.apply(&ops).unwrap();
        let shown = hablock::cluster::cib::crmsh::show(&c.configuration);
        assert!(
            shown.contains("location cli-prefer-g g role=Started inf: beta"),
            "{shown}"
        );
        // A second move replaces the first.
        let ops = move_to(&c.configuration, "g", "alpha", false).unwrap();
        assert!(matches!(&ops[0], CibOp::ReplaceConstraint { .. }));
        c.apply(&ops).unwrap();
        c.apply(&ban(&c.configuration, "g", "beta").unwrap()).unwrap();
        c.apply(&ban(&c.configuration, "d", "beta").unwrap()).unwrap();
        let shown = hablock::cluster::cib::crmsh::show(&c.configuration);
        assert!(shown.contains("location cli-ban-g-on-beta g -inf: beta"), "{shown}");
        let ops = clear(&c.configuration, "g").unwrap();
        assert_eq!(ops.len(), 2, "{ops:?}");
        c.apply(&ops).unwrap();
        let left: Vec<&str> = c.configuration.constraints.iter().map(|c| c.id()).collect();
        assert_eq!(left, ["cli-ban-d-on-beta"]);
        assert!(clear(&c.configuration, "g").unwrap().is_empty());
        assert!(move_to(&c.configuration, "g", "delta", false)
            .unwrap_err()
            .contains("delta"));
        assert!(move_to(&c.configuration, "nope", "alpha", false)
            .unwrap_err()
            .contains("nope"));
        // Clones: only a promotable one, only with --promoted.
        assert!(move_to(&c.configuration, "ms_s", "beta", false)
            .unwrap_err()
            .contains("--promoted"));
        assert!(move_to(&c.configuration, "g", "beta", true).is_err());
        c.apply(&move_to(&c.configuration, "ms_s", "beta", true).unwrap())
            .unwrap();
        let shown = hablock::cluster::cib::crmsh::show(&c.configuration);
        assert!(
            shown.contains("location cli-prefer-ms_s ms_s role=Promoted inf: beta"),
            "{shown}"
        );
    }

    #[test]
    fn meta_and_params() {
        let mut c = cib();
        c.apply(&set_meta(&c.configuration, "g", "migration-threshold", Some("3")).unwrap())
            .unwrap();
        c.apply(&set_param(&c.configuration, "d", "fake", Some("x y")).unwrap())
            .unwrap();
        let cfg = &c.configuration;
        assert_eq!(
            get_attr(cfg, "g", "migration-threshold", false).unwrap().as_deref(),
            Some("3")
        );
        assert_eq!(get_attr(cfg, "d", "fake", true).unwrap().as_deref(), Some("x y"));
        assert_eq!(get_attr(cfg, "d", "other", true).unwrap(), None);
        assert!(get_attr(cfg, "g", "fake", true).is_err());
        assert!(set_param(cfg, "g", "fake", Some("1")).is_err());
        assert!(set_param(cfg, "d", "absent", None).unwrap().is_empty());
        let ops = set_param(cfg, "d", "fake", None).unwrap();
        c.apply(&ops).unwrap();
        assert_eq!(get_attr(&c.configuration, "d", "fake", true).unwrap(), None);
        assert!(set_meta(&c.configuration, "nope", "x", None).is_err());
    }

    #[test]
    fn roles_and_management() {
        let mut c = cib();
        c.apply(&start_stop(&c.configuration, "g", false).unwrap()).unwrap();
        c.apply(&promote_demote(&c.configuration, "ms_s", false).unwrap())
            .unwrap();
        c.apply(&manage(&c.configuration, "d", false).unwrap()).unwrap();
        let cfg = &c.configuration;
        assert_eq!(cfg.resource("g").unwrap().target_role(), Role::Stopped);
        assert_eq!(cfg.resource("ms_s").unwrap().target_role(), Role::Unpromoted);
        assert!(!cfg.resource("d").unwrap().is_managed());
        let e = promote_demote(cfg, "g", true).unwrap_err();
        assert!(e.contains("not a promotable clone"), "{e}");
    }

    #[test]
    fn cleanup_forgets_history_and_fail_counts() {
        let mut c = cib();
        record(&mut c, "alpha", "d", rec(Action::Start, 0, 1, 0));
        record(&mut c, "alpha", "d", rec(Action::Monitor, 10_000, 2, 7));
        record(&mut c, "beta", "s:1", rec(Action::Start, 0, 1, 0));
        for (node, name) in [
            ("alpha", "fail-count-d#monitor_10000"),
            ("alpha", "last-failure-d#monitor_10000"),
            ("alpha", "fail-count-dd#monitor_10000"),
            ("beta", "fail-count-s:1#start_0"),
            ("beta", "master-s"),
        ] {
            c.apply(&[CibOp::SetTransientAttribute {
                node: node.into(),
                name: name.into(),
                value: Some("1".into()),
            }])
            .unwrap();
        }
        let ops = cleanup(&c, Some("g"), None).unwrap();
        assert_eq!(ops.len(), 3, "{ops:?}");
        let mut after = c.clone();
        after.apply(&ops).unwrap();
        let a = &after.status.nodes["alpha"];
        assert!(a.resources.is_empty());
        let keys: Vec<&str> = a.transient_attributes.keys().map(String::as_str).collect();
        assert_eq!(keys, ["fail-count-dd#monitor_10000"]);
        // All resources on beta only: the clone instance and its fail count, not master-s.
        let ops = cleanup(&c, None, Some("beta")).unwrap();
        assert_eq!(
            ops,
            vec![
                CibOp::ClearResourceHistory {
                    rsc: "s:1".into(),
                    node: Some("beta".into())
                },
                CibOp::SetTransientAttribute {
                    node: "beta".into(),
                    name: "fail-count-s:1#start_0".into(),
                    value: None
                },
            ]
        );
        assert!(cleanup(&c, None, Some("delta")).is_err());
    }

    #[test]
    fn locate_says_where_and_in_which_role() {
        let mut c = cib();
        assert_eq!(locate(&c, Some("g")).unwrap(), "resource g is NOT running\n");
        record(&mut c, "alpha", "d", rec(Action::Start, 0, 1, 0));
        record(&mut c, "alpha", "s:0", rec(Action::Start, 0, 2, 0));
        record(&mut c, "alpha", "s:0", rec(Action::Promote, 0, 3, 0));
        record(&mut c, "beta", "s:1", rec(Action::Start, 0, 1, 0));
        record(&mut c, "beta", "d", rec(Action::Start, 0, 2, 1));
        assert_eq!(
            locate(&c, None).unwrap(),
            "resource ms_s is running on: alpha Promoted\n\
             resource ms_s is running on: beta Unpromoted\n\
             resource g is running on: alpha\n\
             resource g is running on: beta (FAILED)\n"
        );
        assert!(locate(&c, Some("x")).is_err());
        assert_eq!(active_nodes(&c, "d"), ["alpha", "beta"]);
    }
}
