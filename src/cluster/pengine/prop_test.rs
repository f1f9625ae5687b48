//! Seeded randomized property test: random configurations, histories and liveness; every
//! transition must respect the invariants below and converge.

use super::simulate::record;
use super::table_test::check_invariants;
use super::{schedule, ActionKind, ClusterState, NodeState, Transition};
use crate::cluster::cib::config::{
    Action, CloneSet, Colocation, Constraint, Group, Location, Operation, Order, OrderKind, Primitive, Resource, Role,
};
use crate::cluster::cib::{Configuration, Score, Status};
use crate::cluster::quorum::NoQuorumPolicy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

struct World {
    cfg: Configuration,
    status: Status,
    cluster: ClusterState,
    /// No unmanaged resources, maintenance, freezing or blocked nodes: every placement is the
    /// scheduler's free choice, so colocation and ban invariants must hold exactly.
    clean: bool,
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

fn prim(id: &str, rng: &mut StdRng, promotable: bool) -> Primitive {
    let mut p = Primitive::new(id, if promotable { "ocf:pacemaker:Stateful" } else { "Dummy" }).unwrap();
    if promotable {
        p = p
            .op(Operation::new("monitor", "10s", None)
                .unwrap()
                .with_role(Role::Promoted))
            .op(Operation::new("monitor", "20s", None)
                .unwrap()
                .with_role(Role::Unpromoted));
    } else if rng.gen_bool(0.5) {
        p = p.op(Operation::new("monitor", "10s", None).unwrap());
    }
    if rng.gen_bool(0.3) {
        p = p.meta(
            "resource-stickiness",
            pick::<&str>(rng, &["0", "10", "100", "INFINITY"]),
        );
    }
    if rng.gen_bool(0.2) {
        p = p.meta("migration-threshold", pick::<&str>(rng, &["1", "2", "3"]));
    }
    p
}

fn world(seed: u64) -> World {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_nodes = rng.gen_range(2..=4);
    let nodes: Vec<String> = (1..=n_nodes).map(|i| format!("n{i}")).collect();
    let mut cfg = Configuration::default();
    for (i, n) in nodes.iter().enumerate() {
        cfg.nodes.push(crate::cluster::cib::config::Node::new(n, i as u8));
    }
    let mut clean = true;
    let mut cluster = ClusterState {
        has_quorum: rng.gen_bool(0.85),
        now_unix_ms: 1_000_000,
        ..ClusterState::default()
    };
    let stonith = rng.gen_bool(0.6);
    cfg.properties.insert("stonith-enabled".into(), stonith.to_string());
    let nqp = *pick(
        &mut rng,
        &[
            NoQuorumPolicy::Stop,
            NoQuorumPolicy::Freeze,
            NoQuorumPolicy::Ignore,
            NoQuorumPolicy::Suicide,
        ],
    );
    cfg.properties.insert("no-quorum-policy".into(), nqp.to_string());
    if !cluster.has_quorum && nqp != NoQuorumPolicy::Ignore {
        clean = false;
    }
    if rng.gen_bool(0.3) {
        cfg.properties.insert("default-resource-stickiness".into(), "50".into());
    }
    for n in &nodes {
        let roll: f64 = rng.gen();
        let ns = if roll < 0.6 {
            NodeState::online()
        } else if roll < 0.72 {
            NodeState {
                standby: true,
                ..NodeState::online()
            }
        } else if roll < 0.77 {
            clean = false;
            NodeState {
                maintenance: true,
                ..NodeState::online()
            }
        } else if roll < 0.88 {
            NodeState::offline()
        } else {
            if !stonith {
                clean = false;
            }
            NodeState::unclean()
        };
        cluster.nodes.insert(n.clone(), ns);
    }

    // Resources: 1-3 primitives, maybe a group, a clone, a promotable clone.
    let mut tops: Vec<String> = Vec::new();
    let mut prims: Vec<String> = Vec::new();
    for i in 0..rng.gen_range(1..=3) {
        let id = format!("p{i}");
        let mut p = prim(&id, &mut rng, false);
        if rng.gen_bool(0.1) {
            p = p.meta("target-role", "Stopped");
        }
        if rng.gen_bool(0.07) {
            p = p.meta("is-managed", "false");
            clean = false;
        }
        cfg.resources.push(p.into());
        tops.push(id.clone());
        prims.push(id);
    }
    if rng.gen_bool(0.5) {
        for m in ["g_a", "g_b"] {
            cfg.resources.push(prim(m, &mut rng, false).into());
            prims.push(m.into());
        }
        cfg.resources.push(Group::new("g", &["g_a", "g_b"]).into());
        tops.push("g".into());
    }
    if rng.gen_bool(0.4) {
        cfg.resources.push(prim("cp", &mut rng, false).into());
        let mut c = CloneSet::new("cl", "cp");
        if rng.gen_bool(0.5) {
            c = c.meta("clone-max", &rng.gen_range(1..=3).to_string());
        }
        cfg.resources.push(c.into());
        tops.push("cl".into());
        prims.push("cp".into());
    }
    let mut ms = false;
    if rng.gen_bool(0.6) {
        ms = true;
        cfg.resources.push(prim("d", &mut rng, true).into());
        let mut c = CloneSet::promotable("ms", "d");
        if rng.gen_bool(0.5) {
            c = c.meta("clone-max", &rng.gen_range(1..=3).to_string());
        }
        if rng.gen_bool(0.3) {
            c = c.meta("promoted-max", &rng.gen_range(1..=2).to_string());
        }
        cfg.resources.push(c.into());
        tops.push("ms".into());
        prims.push("d".into());
    }

    // Constraints.
    let scores = [
        Score::NEG_INFINITY,
        Score::new(-50),
        Score::ZERO,
        Score::new(50),
        Score::INFINITY,
    ];
    for i in 0..rng.gen_range(0..=3) {
        let r = pick(&mut rng, &tops).clone();
        let n = pick(&mut rng, &nodes).clone();
        let s = *pick(&mut rng, &scores);
        cfg.constraints
            .push(Constraint::Location(Location::on_node(&format!("loc{i}"), &r, s, &n)));
    }
    for i in 0..rng.gen_range(0..=2) {
        let a = pick(&mut rng, &tops).clone();
        let b = pick(&mut rng, &tops).clone();
        if a == b {
            continue;
        }
        let s = *pick(&mut rng, &[Score::INFINITY, Score::NEG_INFINITY, Score::new(100)]);
        let mut c = Colocation::new(&format!("col{i}"), s, &a, &b);
        if b == "ms" && rng.gen_bool(0.7) {
            c = c.with_role(Role::Promoted);
        }
        cfg.constraints.push(Constraint::Colocation(c));
    }
    for i in 0..rng.gen_range(0..=2) {
        let a = pick(&mut rng, &tops).clone();
        let b = pick(&mut rng, &tops).clone();
        if a == b {
            continue;
        }
        let kind = *pick(&mut rng, &[OrderKind::Mandatory, OrderKind::Optional]);
        let fa = if a == "ms" && rng.gen_bool(0.5) {
            Action::Promote
        } else {
            Action::Start
        };
        cfg.constraints.push(Constraint::Order(Order::new(
            &format!("ord{i}"),
            kind,
            (&a, fa),
            (&b, Action::Start),
        )));
    }

    // History: some instances running (where the history means something), some failed.
    let mut status = Status::default();
    let mut promoted = false;
    for p in &prims {
        let one_node = !(p == "cp" || p == "d");
        let mut placed = 0;
        for n in &nodes {
            if one_node && placed > 0 && rng.gen_bool(0.9) {
                continue;
            }
            if !rng.gen_bool(0.4) {
                continue;
            }
            placed += 1;
            record(&mut status, n, p, Action::Start, 0, 0, 1000);
            // At most one promoted instance to start from (promoted-max is at least 1).
            if p == "d" && !promoted && rng.gen_bool(0.4) {
                promoted = true;
                record(&mut status, n, p, Action::Promote, 0, 0, 1000);
            }
            if rng.gen_bool(0.15) {
                record(&mut status, n, p, Action::Monitor, 10_000, 7, 1000);
                let ns = status.nodes.entry(n.clone()).or_default();
                ns.transient_attributes.insert(
                    format!("fail-count-{p}#monitor_10000"),
                    rng.gen_range(1..=3).to_string(),
                );
            }
        }
    }
    if ms {
        for n in &nodes {
            if rng.gen_bool(0.7) {
                let ns = status.nodes.entry(n.clone()).or_default();
                ns.transient_attributes
                    .insert("master-d".into(), rng.gen_range(0..=3).to_string());
            }
        }
    }
    World {
        cfg,
        status,
        cluster,
        clean,
    }
}

fn check(w: &World, t: &Transition) -> Vec<String> {
    let mut errs = Vec::new();
    let usable = |n: &str| {
        let ns = w.cluster.nodes.get(n).copied().unwrap_or_default();
        ns.online && !ns.standby && !ns.maintenance
    };
    let fenced: BTreeSet<&str> = t
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Fence)
        .map(|a| a.node.as_str())
        .collect();
    let banned = |rsc: &str, node: &str| {
        let top = w
            .cfg
            .parent_of(rsc)
            .map(|p| w.cfg.parent_of(p.id()).unwrap_or(p).id())
            .unwrap_or(rsc);
        w.cfg.constraints.iter().any(|c| match c {
            Constraint::Location(l) => {
                (l.rsc == top || l.rsc == rsc)
                    && matches!(&l.target, crate::cluster::cib::config::LocationTarget::Node { node: n, score }
                        if n == node && score.is_neg_infinity())
            }
            _ => false,
        })
    };
    for a in &t.actions {
        if matches!(a.kind, ActionKind::Start | ActionKind::Promote) {
            if !usable(&a.node) || fenced.contains(a.node.as_str()) {
                errs.push(format!("{a} on a node that may not run resources"));
            }
            if banned(&a.rsc, &a.node) {
                errs.push(format!("{a} on a -INFINITY node"));
            }
        }
    }
    // Promoted-max.
    for r in &w.cfg.resources {
        if let Resource::Clone(c) = r {
            if c.is_promotable() {
                let promoted = t
                    .placement
                    .get(&c.child)
                    .map(|v| v.iter().filter(|(_, r)| *r == Role::Promoted).count())
                    .unwrap_or(0);
                if promoted > c.promoted_max() as usize {
                    errs.push(format!(
                        "{promoted} promoted instances of {} (max {})",
                        c.id,
                        c.promoted_max()
                    ));
                }
            }
        }
    }
    if w.clean {
        let nodes_of = |id: &str, role: Option<Role>| -> BTreeSet<String> {
            w.cfg
                .primitives_of(id)
                .iter()
                .flat_map(|p| t.placement.get(&p.id).cloned().unwrap_or_default())
                .filter(|(_, r)| role != Some(Role::Promoted) || *r == Role::Promoted)
                .map(|(n, _)| n)
                .collect()
        };
        for c in &w.cfg.constraints {
            let Constraint::Colocation(c) = c else { continue };
            let dep = nodes_of(&c.rsc, None);
            let with = nodes_of(&c.with_rsc, c.with_rsc_role);
            if c.score.is_pos_infinity() && !dep.is_subset(&with) {
                errs.push(format!("colocation {} broken: {dep:?} not within {with:?}", c.id));
            }
            if c.score.is_neg_infinity() && !dep.is_disjoint(&with) {
                errs.push(format!("anti-colocation {} broken: {dep:?} meets {with:?}", c.id));
            }
        }
        for (rsc, placed) in &t.placement {
            for (n, _) in placed {
                if !usable(n) || banned(rsc, n) {
                    errs.push(format!("{rsc} placed on {n}, which may not run it"));
                }
            }
        }
    }
    errs
}

/// Seeds whose first transition is a correct but poor answer that the next one improves on.
/// 2284: p0 (stickiness INFINITY) and p1 both run on n2; the clone must be with p0 and never
/// with p1 and p1 must start after the clone, so keeping p0 and p1 where they are leaves the clone
/// nowhere and (by the orders) stops everything; from all-stopped the next transition finds a
/// placement that works. Pacemaker does not search for a better placement either; here the
/// second transition must converge.
const TWO_STEP_SEEDS: &[u64] = &[2284];

#[test]
fn random_clusters_keep_the_invariants_and_converge() {
    let mut failures = Vec::new();
    for seed in 0..2500u64 {
        let mut w = world(seed);
        let mut t = schedule(&w.cfg, &w.status, &w.cluster);
        let mut errs = check(&w, &t);
        if TWO_STEP_SEEDS.contains(&seed) {
            let (st, cl) = super::simulate::apply(&w.status, &w.cluster, &t);
            w.status = st;
            w.cluster = cl;
            t = schedule(&w.cfg, &w.status, &w.cluster);
            errs.extend(check(&w, &t));
        }
        errs.extend(check_invariants(&w.cfg, &w.status, &w.cluster, &t));
        if !errs.is_empty() {
            failures.push(format!(
                "seed {seed}: {}\nconfig: {:?}\ncluster: {:?}\n{}",
                errs.join("; "),
                w.cfg,
                w.cluster,
                t.render()
            ));
        }
        if failures.len() >= 3 {
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A larger cluster (32 nodes, 40 primitives, a 32-instance clone ordered before everything,
/// a 2-group and a promotable clone) is scheduled from scratch and after losing a node, and
/// converges; this also keeps the cost of the graph building in view.
#[test]
fn a_larger_cluster_schedules_and_converges() {
    let mut text = String::new();
    for i in 0..32 {
        text.push_str(&format!("node n{i:02}\n"));
    }
    for i in 0..40 {
        text.push_str(&format!("primitive p{i} Dummy op monitor interval=10s\n"));
        text.push_str(&format!("order o{i} Mandatory: cl p{i}\n"));
    }
    text.push_str("primitive ping Dummy\nclone cl ping\n");
    text.push_str("primitive d Stateful\nms ms d meta clone-max=3\n");
    text.push_str("group g p0 p1\ncolocation g_with_master inf: g ms:Master\n");
    text.push_str("property default-resource-stickiness=10\n");
    let cfg = super::crm_syntax::parse(&text).unwrap();
    let mut cluster = ClusterState {
        has_quorum: true,
        now_unix_ms: 1,
        ..ClusterState::default()
    };
    let mut status = Status::default();
    for n in &cfg.nodes {
        cluster.nodes.insert(n.name.clone(), NodeState::online());
        status
            .nodes
            .entry(n.name.clone())
            .or_default()
            .transient_attributes
            .insert("master-d".into(), "5".into());
    }
    let t = schedule(&cfg, &status, &cluster);
    assert!(check_invariants(&cfg, &status, &cluster, &t).is_empty());
    assert_eq!(t.placement["ping"].len(), 32);
    let promoted: Vec<_> = t.placement["d"].iter().filter(|(_, r)| *r == Role::Promoted).collect();
    assert_eq!(promoted.len(), 1);
    assert_eq!(t.placement["p0"][0].0, promoted[0].0, "the group follows the master");
    // Lose the master's node uncleanly: fence it, promote elsewhere, move the group.
    let (status, mut cluster) = super::simulate::apply(&status, &cluster, &t);
    let lost = promoted[0].0.clone();
    cluster.nodes.insert(lost.clone(), NodeState::unclean());
    let t2 = schedule(&cfg, &status, &cluster);
    assert!(check_invariants(&cfg, &status, &cluster, &t2).is_empty());
    let fence = t2.find(&format!("fence {lost}")).expect("fenced");
    let new_master = t2.placement["d"]
        .iter()
        .find(|(_, r)| *r == Role::Promoted)
        .unwrap()
        .0
        .clone();
    assert_ne!(new_master, lost);
    let promote = t2.find(&format!("promote d on {new_master}")).unwrap();
    assert!(t2.precedes(fence, promote));
    assert_eq!(t2.placement["p1"], vec![(new_master, Role::Started)]);
}
