//! Seeded randomized property test for globally-unique clones: random clone sizes, per-node
//! limits, node states, current instance placements (including ones over the limits), fail
//! counts and promotion scores. Every transition must keep each instance on at most one node,
//! at most `clone-node-max` instances and `promoted-node-max` promoted ones per node, at most
//! `clone-max` instances and `promoted-max` promoted ones in all, nothing on a node that cannot
//! run it, and converge.

use super::simulate::record;
use super::table_test::check_invariants;
use super::{schedule, ClusterState, NodeState};
use crate::cluster::cib::config::{Action, Role};
use crate::cluster::cib::{Configuration, Status};
use crate::cluster::pengine::crm_syntax;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

fn run(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_nodes = rng.gen_range(1..=4);
    let clone_max = rng.gen_range(1..=7);
    let node_max = rng.gen_range(1..=3);
    let promotable = rng.gen_bool(0.4);
    let pmax = rng.gen_range(0..=3);
    let pnode_max = rng.gen_range(1..=2);
    let mut text = String::new();
    if promotable {
        text += "primitive d Stateful op monitor interval=10s role=Master op monitor interval=20s role=Slave\n";
        text += &format!(
            "ms c d meta clone-max={clone_max} clone-node-max={node_max} promoted-max={pmax} \
             promoted-node-max={pnode_max} globally-unique=true\n"
        );
    } else {
        text += "primitive d Dummy op monitor interval=10s\n";
        text += &format!("clone c d meta clone-max={clone_max} clone-node-max={node_max} globally-unique=true\n");
    }
    if rng.gen_bool(0.5) {
        text += &format!("rsc_defaults resource-stickiness={}\n", rng.gen_range(0..=3) * 50);
    }
    if rng.gen_bool(0.3) {
        text += "primitive x Dummy\n";
        text += &format!(
            "colocation x_with_c {}: x c\n",
            if rng.gen_bool(0.5) { "inf" } else { "-inf" }
        );
    }
    let cfg: Configuration = crm_syntax::parse(&text).map_err(|e| e.to_string())?;
    let nodes: Vec<String> = (1..=n_nodes).map(|i| format!("n{i}")).collect();
    let mut cluster = ClusterState {
        has_quorum: true,
        stonith_enabled: Some(true),
        now_unix_ms: 1_000_000,
        ..ClusterState::default()
    };
    for n in &nodes {
        let ns = match rng.gen_range(0..10) {
            0 => NodeState::offline(),
            1 => NodeState::unclean(),
            2 => NodeState {
                standby: true,
                ..NodeState::online()
            },
            _ => NodeState::online(),
        };
        cluster.nodes.insert(n.clone(), ns);
    }
    let mut status = Status::default();
    // Some instances already run somewhere, possibly too many on one node, possibly an
    // instance number beyond clone-max.
    for i in 0..clone_max + 1 {
        if rng.gen_bool(0.5) {
            let n = &nodes[rng.gen_range(0..nodes.len())];
            let id = format!("d:{i}");
            record(&mut status, n, &id, Action::Start, 0, 0, 1);
            if promotable && rng.gen_bool(0.3) {
                record(&mut status, n, &id, Action::Promote, 0, 0, 1);
            }
        }
    }
    for n in &nodes {
        let attrs = &mut status.nodes.entry(n.clone()).or_default().transient_attributes;
        for i in 0..clone_max {
            if promotable && rng.gen_bool(0.6) {
                attrs.insert(format!("master-d:{i}"), rng.gen_range(1..100).to_string());
            }
            if rng.gen_bool(0.1) {
                attrs.insert(format!("fail-count-d:{i}#monitor_10000"), "INFINITY".into());
            }
        }
    }
    let t = schedule(&cfg, &status, &cluster);
    let mut errs = check_invariants(&cfg, &status, &cluster, &t);
    let mut per_node: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut total, mut promoted) = (0, 0);
    for (rsc, placed) in &t.placement {
        let Some(num) = rsc.strip_prefix("d:") else { continue };
        let num: usize = num.parse().map_err(|_| format!("instance {rsc}"))?;
        if num >= clone_max {
            errs.push(format!("{rsc} placed beyond clone-max"));
        }
        if placed.len() > 1 {
            errs.push(format!("{rsc} on several nodes: {placed:?}"));
        }
        for (n, r) in placed {
            let ns = cluster.nodes[n];
            if !ns.online || ns.standby {
                errs.push(format!("{rsc} on {n}, which cannot run it"));
            }
            let banned = status.nodes[n]
                .transient_attributes
                .contains_key(&format!("fail-count-{rsc}#monitor_10000"));
            if banned {
                errs.push(format!("{rsc} on {n}, where its fail count bans it"));
            }
            let e = per_node.entry(n).or_default();
            e.0 += 1;
            total += 1;
            if *r == Role::Promoted {
                e.1 += 1;
                promoted += 1;
            }
        }
    }
    for (n, (k, p)) in &per_node {
        if *k > node_max {
            errs.push(format!("{k} instances on {n} (clone-node-max {node_max})"));
        }
        if *p > pnode_max {
            errs.push(format!("{p} promoted on {n} (promoted-node-max {pnode_max})"));
        }
    }
    if total > clone_max || promoted > pmax {
        errs.push(format!("{total} instances, {promoted} promoted"));
    }
    // As many as can run do run: the usable nodes' capacity, less banned slots, bounds it.
    let usable = cluster.nodes.values().filter(|n| n.online && !n.standby).count();
    let no_bans = status
        .nodes
        .values()
        .all(|s| !s.transient_attributes.keys().any(|k| k.starts_with("fail-count-")));
    if no_bans && !text.contains("-inf") && !text.contains(": x c") && total < clone_max.min(usable * node_max) {
        errs.push(format!("only {total} instances placed"));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{text}\n{}", errs.join("\n"), t.render()))
    }
}

#[test]
fn unique_clones_keep_their_limits_and_converge() {
    let mut failures = Vec::new();
    for seed in 0..1500 {
        if let Err(e) = run(seed) {
            failures.push(format!("--- seed {seed}:\n{e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
}
