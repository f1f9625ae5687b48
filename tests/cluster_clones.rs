//! Clones with several instances per node and interleaved clones, with real daemons and the
//! stock Dummy agent, each node in its own network namespace.
//!
//! - `a_unique_clone_spreads_and_recovers_within_clone_node_max`: three nodes; a
//!   globally-unique Dummy clone (clone-max=4, clone-node-max=2) runs four distinct instances
//!   `u:0`..`u:3`, at most two per node (2+1+1), each with its own Dummy state file (the agent
//!   sees `OCF_RESOURCE_INSTANCE=u:N`); two interleaved anonymous clones (`cb` ordered after
//!   `ca`, `ca` kept off gamma) run `b` only where `a` runs, each `b` started after the local
//!   `a`. A node with instances is killed (SIGKILL, then fenced): its instances restart on the
//!   survivors, still at most two per node (2+2); `hbcrm status` lists every instance; `hbcrm
//!   resource cleanup u:N` forgets that instance only.
//!
//! Skipped with a message where network namespaces are not permitted.

mod common;

use common::cluster::{configure, netns_cluster, netns_cluster_config, wait_cib, Daemon, Netns, NAMES};
use hablock::cluster::cib::config::{Action, Role};
use hablock::cluster::cib::Cib;
use hablock::cluster::pengine::state::{observe, Observed};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Three daemons in their own namespaces, formed into a quorate cluster with a DC.
fn three_nodes(test: &str) -> Option<(Vec<Daemon>, tempfile::TempDir, Netns)> {
    netns_cluster(test, "clones-", 3, |dir| netns_cluster_config(dir, "clonecluster", 3))
}

/// Where each active instance of the unique clone's primitive `prim` runs: `prim:N` -> nodes.
fn unique_instances(c: &Cib, prim: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, st) in &c.status.nodes {
        for (id, h) in &st.resources {
            let inst = id.strip_prefix(prim).and_then(|r| r.strip_prefix(':'));
            if inst.is_some_and(|n| n.parse::<u32>().is_ok()) && observe(h) == Observed::Running(Role::Started) {
                out.entry(id.clone()).or_default().push(node.clone());
            }
        }
    }
    out
}

/// Instances per node (every node listed).
fn per_node(inst: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, usize> {
    let mut m: BTreeMap<String, usize> = NAMES.iter().map(|n| (n.to_string(), 0)).collect();
    for nodes in inst.values() {
        for n in nodes {
            *m.entry(n.clone()).or_default() += 1;
        }
    }
    m
}

/// Four distinct instances, each on one node, none above two per node, and only on `allowed`.
fn spread_ok(c: &Cib, allowed: &[&str]) -> bool {
    let inst = unique_instances(c, "u");
    inst.len() == 4
        && inst.values().all(|n| n.len() == 1 && allowed.contains(&n[0].as_str()))
        && per_node(&inst).values().all(|&k| k <= 2)
}

/// Nodes where the anonymous clone primitive `prim` is Started.
fn anon_nodes(c: &Cib, prim: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .status
        .nodes
        .iter()
        .filter(|(_, st)| {
            st.resources
                .iter()
                .any(|(id, h)| id == prim && observe(h) == Observed::Running(Role::Started))
        })
        .map(|(n, _)| n.clone())
        .collect();
    v.sort();
    v
}

fn start_call(c: &Cib, node: &str, rsc: &str) -> u64 {
    c.status.nodes[node].resources[rsc]
        .ops
        .iter()
        .filter(|o| o.action == Action::Start)
        .map(|o| o.call_id)
        .max()
        .unwrap_or_else(|| panic!("no start of {rsc} on {node}"))
}

#[test]
fn a_unique_clone_spreads_and_recovers_within_clone_node_max() {
    let test = "a_unique_clone_spreads_and_recovers_within_clone_node_max";
    let Some((mut nodes, dir, net)) = three_nodes(test) else {
        return;
    };
    let map: Vec<String> = NAMES
        .iter()
        .zip(&net.nodes)
        .map(|(n, ns)| format!("{n}:{ns}"))
        .collect();
    let crm = format!(
        "primitive fence_ns stonith:fence_hablock_netns params netns_map=\"{map}\" pcmk_host_list=\"alpha beta gamma\"
primitive u Dummy op monitor interval=1s timeout=10s
clone c_u u meta clone-max=4 clone-node-max=2 globally-unique=true
primitive a Dummy
primitive b Dummy
clone ca a meta interleave=true
clone cb b meta interleave=true
order a_then_b Mandatory: ca cb
location a_not_on_gamma ca -inf: gamma
location fence_not_on_alpha fence_ns -inf: alpha
property stonith-enabled=true
",
        map = map.join(",")
    );
    configure(&nodes[0], &crm);
    let took = wait_cib(&nodes[1], Duration::from_secs(30), "4 instances of u, 2+1+1", |c| {
        spread_ok(c, &NAMES) && anon_nodes(c, "b") == ["alpha", "beta"]
    });
    eprintln!("unique clone and interleaved clones up {took:?} after the configuration");
    let c = common::cluster::cib(&nodes[1]);
    let inst = unique_instances(&c, "u");
    let mut counts: Vec<usize> = per_node(&inst).into_values().collect();
    counts.sort();
    assert_eq!(counts, [1, 1, 2], "2+1+1 over three nodes: {inst:?}");

    // Each instance is its own resource to the agent: Dummy keeps a state file per
    // OCF_RESOURCE_INSTANCE, so the node running u:N has Dummy-u:N.state.
    for (id, on) in &inst {
        let f = dir.path().join(format!("state/{}/lrm/rsctmp/Dummy-{id}.state", on[0]));
        assert!(f.exists(), "{} missing", f.display());
    }

    // Interleave: b runs only where a does (a is kept off gamma), and each b started after the
    // a on its own node.
    assert_eq!(anon_nodes(&c, "a"), ["alpha", "beta"]);
    for n in ["alpha", "beta"] {
        assert!(start_call(&c, n, "a") < start_call(&c, n, "b"), "a before b on {n}");
    }

    // hbcrm status shows every instance as crm_mon does.
    let status = nodes[1].hbcrm_ok(&["status"]);
    assert!(status.contains("Clone Set: c_u [u] (unique):"), "{status}");
    for (id, on) in &inst {
        let line = format!("* {id} (ocf:heartbeat:Dummy): Started {}", on[0]);
        assert!(status.contains(&line), "no {line:?} in\n{status}");
    }

    // Kill a node that runs two instances: after fencing, its instances start on the two
    // survivors, two on each (clone-node-max).
    let victim = per_node(&inst)
        .into_iter()
        .find(|(_, k)| *k == 2)
        .map(|(n, _)| n)
        .unwrap();
    let vi = NAMES.iter().position(|n| *n == victim).unwrap();
    let survivors: Vec<&str> = NAMES.iter().copied().filter(|n| *n != victim).collect();
    let watcher = NAMES.iter().position(|n| *n == survivors[0]).unwrap();
    let killed = Instant::now();
    nodes[vi].kill();
    wait_cib(
        &nodes[watcher],
        Duration::from_secs(30),
        "u's four instances on the survivors, 2+2",
        |c| spread_ok(c, &survivors) && !c.status.nodes[&victim].member,
    );
    eprintln!("{victim}'s instances restarted {:?} after SIGKILL", killed.elapsed());
    let c = common::cluster::cib(&nodes[watcher]);
    let after = unique_instances(&c, "u");
    assert!(
        per_node(&after)
            .iter()
            .all(|(n, k)| if *n == victim { *k == 0 } else { *k == 2 }),
        "{after:?}"
    );
    // The instances that did not run on the victim stayed where they were.
    for (id, on) in &inst {
        if on[0] != victim {
            assert_eq!(after[id], *on, "{id} moved");
        }
    }
    let logs = format!("{}{}", nodes[(vi + 1) % 3].log(), nodes[(vi + 2) % 3].log());
    assert!(logs.contains(&format!("{victim} fenced by fence_ns")), "{logs}");

    // Cleanup of one instance forgets that one only: it is probed again and found running
    // (not restarted), while the other instance on its node keeps its history.
    let home = survivors[0].to_string();
    let mine: Vec<&String> = after.iter().filter(|(_, n)| n[0] == home).map(|(i, _)| i).collect();
    let (one, other) = (mine[0].clone(), mine[1].clone());
    nodes[watcher].hbcrm_ok(&["resource", "cleanup", &one]);
    wait_cib(
        &nodes[watcher],
        Duration::from_secs(20),
        "the cleaned instance probed again and running",
        |c| {
            c.status.nodes[&home].resources.get(&one).is_some_and(|h| {
                observe(h) == Observed::Running(Role::Started) && h.ops.iter().all(|o| o.action != Action::Start)
            })
        },
    );
    let c = common::cluster::cib(&nodes[watcher]);
    assert!(
        c.status.nodes[&home].resources[&other]
            .ops
            .iter()
            .any(|o| o.action == Action::Start),
        "{other}'s history was kept"
    );
    assert!(spread_ok(&c, &survivors), "{:?}", unique_instances(&c, "u"));
}
