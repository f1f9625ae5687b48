//! Clone instances: which clones are globally unique, how many instances they have, and the
//! names their instances go by in the status section, in actions and in agents'
//! `OCF_RESOURCE_INSTANCE`.
//!
//! As in Pacemaker, an anonymous clone's instances are interchangeable: each node runs at most
//! one and it is known by the primitive's own id (`p`). A globally-unique clone
//! (`globally-unique=true`) has `clone-max` distinct instances `p:0` .. `p:N-1`, each with its
//! own history, fail counts and placement, up to `clone-node-max` of them per node. Only OCF
//! agents can be unique (Pacemaker forces clones of other classes to be anonymous), and an
//! anonymous clone never runs more than one instance per node (`clone-node-max` is ignored).
//!
//! Everything here is shared by the scheduler, the controller (probes, fail counts, the agent's
//! environment) and `hbcrm`, so that all of them name instances the same way.

use super::state::base_id;
use crate::cluster::cib::config::{CloneSet, Resource, ResourceClass};
use crate::cluster::cib::Configuration;

/// The clone a primitive is cloned by (directly, or as a member of a cloned group).
pub fn clone_of<'a>(cfg: &'a Configuration, prim: &str) -> Option<&'a CloneSet> {
    let mut id = prim;
    for _ in 0..2 {
        match cfg.parent_of(id)? {
            Resource::Clone(c) => return Some(c),
            Resource::Group(g) => id = &g.id,
            Resource::Primitive(_) => return None,
        }
    }
    None
}

/// Whether clone `c` is globally unique in effect: `globally-unique=true` and every primitive
/// in it an OCF resource.
pub fn is_unique(cfg: &Configuration, c: &CloneSet) -> bool {
    c.globally_unique()
        && cfg
            .primitives_of(&c.id)
            .iter()
            .all(|p| p.agent.class == ResourceClass::Ocf)
}

/// The most instances a clone may have (`clone-max` above it is rejected by validation): a
/// globally-unique clone's instances are each scheduled, probed and listed.
pub const MAX_INSTANCES: usize = 1024;

/// How many instances clone `c` has: `clone-max`, else one per node (`node_count`); never more
/// than [`MAX_INSTANCES`].
pub fn clone_max(c: &CloneSet, node_count: usize) -> usize {
    c.clone_max()
        .map(|m| m as usize)
        .unwrap_or(node_count)
        .min(MAX_INSTANCES)
}

/// How many instances of clone `c` one node may run: `clone-node-max` for a unique clone
/// (at least 1), always 1 for an anonymous one.
pub fn node_max(cfg: &Configuration, c: &CloneSet) -> usize {
    if is_unique(cfg, c) {
        (c.clone_node_max() as usize).max(1)
    } else {
        1
    }
}

/// The unique clone `prim` (a configured primitive id) belongs to, with its instance count.
pub fn unique_clone<'a>(cfg: &'a Configuration, prim: &str, node_count: usize) -> Option<(&'a CloneSet, usize)> {
    let c = clone_of(cfg, prim)?;
    is_unique(cfg, c).then(|| (c, clone_max(c, node_count)))
}

/// `p:N`.
pub fn instance_id(prim: &str, n: usize) -> String {
    format!("{prim}:{n}")
}

/// The instance number of `p:N`.
pub fn instance_number(id: &str) -> Option<usize> {
    let (b, n) = id.rsplit_once(':')?;
    if b.is_empty() || n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The names a configured primitive's instances go by: `p:0` .. `p:N-1` in a unique clone,
/// else `p` alone.
pub fn instance_ids(cfg: &Configuration, prim: &str, node_count: usize) -> Vec<String> {
    match unique_clone(cfg, prim, node_count) {
        Some((_, max)) => (0..max).map(|n| instance_id(prim, n)).collect(),
        None => vec![prim.to_string()],
    }
}

/// The name a status entry or action id (`p`, `p:N`) is kept under: the instance itself when
/// `p` is in a unique clone (its own history and fail counts), else the primitive (`p:N` of an
/// anonymous clone is just `p`).
pub fn history_id(cfg: &Configuration, id: &str) -> String {
    let base = base_id(id);
    if base != id && clone_of(cfg, base).is_some_and(|c| is_unique(cfg, c)) {
        id.to_string()
    } else {
        base.to_string()
    }
}

/// Whether `id` names an instance of a unique clone (`p:N`, `p` in a unique clone).
pub fn is_unique_instance(cfg: &Configuration, id: &str) -> bool {
    let base = base_id(id);
    base != id && clone_of(cfg, base).is_some_and(|c| is_unique(cfg, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pengine::crm_syntax;

    #[test]
    fn names_instances_of_unique_clones_only() {
        let cfg = crm_syntax::parse(
            "primitive ip IPaddr2 params ip=10.0.0.9\n\
             primitive d Dummy\n\
             primitive l lsb:foo\n\
             primitive a Dummy\n\
             primitive b Dummy\n\
             group g a b\n\
             clone c_ip ip meta clone-max=4 clone-node-max=2 globally-unique=true\n\
             clone c_d d meta clone-node-max=3\n\
             clone c_l l meta globally-unique=true clone-node-max=2\n\
             clone c_g g meta globally-unique=true clone-max=2\n",
        )
        .unwrap();
        assert_eq!(instance_ids(&cfg, "ip", 3), ["ip:0", "ip:1", "ip:2", "ip:3"]);
        assert_eq!(instance_ids(&cfg, "d", 3), ["d"]);
        // Non-OCF resources can only be anonymous.
        assert_eq!(instance_ids(&cfg, "l", 3), ["l"]);
        assert_eq!(node_max(&cfg, cfg_clone(&cfg, "c_l")), 1);
        assert_eq!(node_max(&cfg, cfg_clone(&cfg, "c_d")), 1);
        assert_eq!(node_max(&cfg, cfg_clone(&cfg, "c_ip")), 2);
        assert_eq!(instance_ids(&cfg, "b", 3), ["b:0", "b:1"]);
        assert_eq!(history_id(&cfg, "ip:3"), "ip:3");
        assert_eq!(history_id(&cfg, "d:1"), "d");
        assert_eq!(history_id(&cfg, "ip"), "ip");
        assert!(is_unique_instance(&cfg, "a:1"));
        assert!(!is_unique_instance(&cfg, "d:1"));
        assert_eq!(instance_number("ip:12"), Some(12));
        assert_eq!(instance_number("ip"), None);
        assert_eq!(instance_number(":1"), None);
        let huge =
            crm_syntax::parse("primitive d Dummy\nclone c d meta clone-max=4000000000 globally-unique=true\n").unwrap();
        assert_eq!(instance_ids(&huge, "d", 3).len(), MAX_INSTANCES);
        let validate = |c: &Configuration| crate::cluster::cib::validate::validate(c, &Default::default());
        let errs = validate(&huge).unwrap_err();
        assert!(format!("{errs:?}").contains("clone-max"), "{errs:?}");
        let fine =
            crm_syntax::parse("primitive d Dummy\nclone c d meta clone-max=1024 globally-unique=true\n").unwrap();
        assert!(validate(&fine).is_ok());
    }

    #[test]
    fn the_crm_syntax_of_a_unique_clone_round_trips() {
        let text = "primitive ip IPaddr2 params ip=10.0.0.9 clusterip_hash=sourceip-sourceport\n\
                    clone c_ip ip meta clone-max=4 clone-node-max=2 globally-unique=true interleave=true\n";
        let cfg = crm_syntax::parse(text).unwrap();
        let printed = crm_syntax::print(&cfg);
        assert!(
            printed
                .contains("clone c_ip ip \\\n\tmeta clone-max=4 clone-node-max=2 globally-unique=true interleave=true"),
            "{printed}"
        );
        assert_eq!(crm_syntax::parse(&printed).unwrap(), cfg);
        let shown = crate::cluster::cib::crmsh::show(&cfg);
        assert!(shown.contains("globally-unique=true"), "{shown}");
        assert_eq!(crm_syntax::parse(&shown).unwrap(), cfg, "{shown}");
        let c = cfg_clone(&cfg, "c_ip");
        assert!(c.globally_unique() && c.interleave() && c.clone_node_max() == 2);
    }

    fn cfg_clone<'a>(cfg: &'a Configuration, id: &str) -> &'a CloneSet {
        match cfg.resource(id) {
            Some(Resource::Clone(c)) => c,
            _ => panic!("{id} is not a clone"),
        }
    }
}
