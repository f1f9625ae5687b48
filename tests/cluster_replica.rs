//! The whole stack on one host, as DRBD + Pacemaker users run it: a replicated resource under
//! hablock's own resource manager, as a promotable clone of `ocf:hablock:replica`, with a
//! service colocated with its Primary and ordered after the promotion. Three nodes, each in its
//! own network namespace (alpha and beta hold the disk, gamma only votes).
//!
//! - `a_replicated_resource_fails_over_with_its_service_and_keeps_every_write`: the cluster
//!   promotes one copy and starts the service there; data written through the Primary's NBD
//!   export; SIGKILL of the Primary's hablockd gets that node fenced, the other copy promoted
//!   and the service started beside it, and every byte written is read back from the new
//!   Primary. The fenced node, started again, comes back as the Unpromoted copy and resyncs;
//!   putting the Primary's node in standby moves promotion and service back, data intact.
//! - `a_split_two_node_cluster_keeps_one_writer`: the usual DRBD pair, two nodes (`two_node`),
//!   one fence device per node with a delay on the one that fences alpha. Their link is cut
//!   while beta is Primary: both sides keep quorum and try to fence each other; alpha wins the
//!   race, beta is powered off, alpha is promoted and runs the service. Never two Primaries;
//!   every write made on beta before the cut is on alpha.
//!
//! Skipped with a message where network namespaces are not permitted or nbdcopy is missing.

mod common;

use common::cluster::{configure, netns_cluster, netns_cluster_config, running, wait_cib, Daemon, Netns, NAMES};
use common::{ok, random_bytes, require, run_tool};
use hablock::cluster::cib::config::Role;
use hablock::cluster::cib::Cib;
use hablock::cluster::pengine::state::Observed;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TEST: &str = "a_replicated_resource_fails_over_with_its_service_and_keeps_every_write";
const SIZE_MIB: u64 = 16;
const DATA: usize = 4 << 20;

/// The cluster file: `nodes` nodes (the first ones of [`NAMES`]) on one link, and r0 replicated
/// between alpha and beta over the same link, each exported over NBD on a unix socket the test
/// (outside the namespaces) can use.
fn write_config(dir: &Path, nodes: usize) -> PathBuf {
    let path = netns_cluster_config(dir, "replcluster", nodes);
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    write!(
        f,
        "\n[[resource]]\nname = \"r0\"\nprotocol = \"C\"\nping_interval = \"100ms\"\ntimeout = \"600ms\"\n\
         connect_interval = \"100ms\"\n"
    )
    .unwrap();
    for (i, n) in NAMES[..2].iter().enumerate() {
        let disk = dir.join(format!("{n}-r0.img"));
        std::fs::File::create(&disk).unwrap().set_len(SIZE_MIB << 20).unwrap();
        write!(
            f,
            "[resource.on.{n}]\naddress = \"{addr}:7789\"\ndisk = \"{disk}\"\nmeta_disk = \"internal\"\n\
             nbd = \"unix:{d}/{n}-r0.nbd\"\ncache = \"writeback\"\n",
            addr = Netns::addr(i, 0, false),
            disk = disk.display(),
            d = dir.display(),
        )
        .unwrap();
    }
    path
}

fn nbd_uri(dir: &Path, node: &str) -> String {
    format!("nbd+unix:///r0?socket={}/{node}-r0.nbd", dir.display())
}

fn hbadm(config: &Path, node: &str, args: &[&str]) -> String {
    let out = run_tool("hbadm", config, node, args);
    assert!(
        out.status.success(),
        "{node}: hbadm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// r0's status on `node` (hbadm status --json), or None while the daemon does not answer.
fn r0_status(config: &Path, node: &str) -> Option<serde_json::Value> {
    let out = run_tool("hbadm", config, node, &["status", "--json", "r0"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["resources"][0].clone())
}

fn wait_r0(d: &Daemon, what: &str, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    loop {
        let st = r0_status(&d.config, &d.name);
        if st.as_ref().is_some_and(&done) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{}: r0 {what} not within {limit:?}; last {st:?}\nlog: {}",
            d.name,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn in_sync(st: &serde_json::Value) -> bool {
    let p = &st["peers"][0];
    st["disk"] == "UpToDate" && p["connection"] == "Connected" && p["disk"] == "UpToDate" && p["out_of_sync"] == 0
}

/// Where the replica's instances run, by role, and where the service runs.
fn placement(c: &Cib) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut promoted, mut unpromoted) = (Vec::new(), Vec::new());
    for (node, o) in running(c, "p_r0") {
        match o {
            Observed::Running(Role::Promoted) => promoted.push(node),
            _ => unpromoted.push(node),
        }
    }
    let svc = running(c, "svc").into_iter().map(|(n, _)| n).collect();
    promoted.sort();
    unpromoted.sort();
    (promoted, unpromoted, svc)
}

/// The node holding the promoted copy and the service, once exactly that holds.
fn primary_with_service(c: &Cib, unpromoted: usize) -> Option<String> {
    let (p, u, s) = placement(c);
    (p.len() == 1 && s == p && u.len() == unpromoted).then(|| p[0].clone())
}

fn index_of(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).unwrap()
}

/// A running cluster of `count` nodes in their own namespaces, r0's two copies in sync and both
/// Secondary (alpha was declared the good copy once, as with DRBD before the cluster takes
/// over); None (after saying why) where the test cannot run.
fn replica_cluster(test: &str, count: usize) -> Option<(Vec<Daemon>, tempfile::TempDir, Netns, PathBuf)> {
    if !require(test, &[("nbdcopy", "libnbd-bin")]) {
        return None;
    }
    let mut config = PathBuf::new();
    let (nodes, dir, net) = netns_cluster(test, "rmrepl-", count, |dir| {
        config = write_config(dir, count);
        for n in &NAMES[..2] {
            hbadm(&config, n, &["create-md", "r0"]);
        }
        config.clone()
    })?;
    wait_r0(&nodes[0], "connected", Duration::from_secs(20), |st| {
        st["peers"][0]["connection"] == "Connected"
    });
    hbadm(&config, "alpha", &["primary", "--force", "r0"]);
    wait_r0(&nodes[0], "in sync", Duration::from_secs(60), in_sync);
    hbadm(&config, "alpha", &["secondary", "r0"]);
    Some((nodes, dir, net, config))
}

/// The replica as a promotable clone with a Dummy on its Primary (after the promotion), and
/// stonith on; `extra` adds fencing devices and constraints.
fn configure_replica(d: &Daemon, extra: &str) {
    configure(
        d,
        &format!(
            "primitive p_r0 ocf:hablock:replica params resource=r0 op monitor role=Promoted interval=1s timeout=20s op monitor role=Unpromoted interval=2s timeout=20s
ms ms_r0 p_r0 meta promoted-max=1 promoted-node-max=1 clone-max=2 clone-node-max=1 notify=true
primitive svc Dummy op monitor interval=1s timeout=10s
colocation svc_with_r0 inf: svc ms_r0:Promoted
order r0_before_svc Mandatory: ms_r0:promote svc:start
rsc_defaults resource-stickiness=100
property stonith-enabled=true
{extra}"
        ),
    );
}

/// `netns_map` for fence_hablock_netns: every node's name and namespace.
fn netns_map(net: &Netns) -> String {
    NAMES
        .iter()
        .zip(&net.nodes)
        .map(|(n, ns)| format!("{n}:{ns}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_replicated_resource_fails_over_with_its_service_and_keeps_every_write() {
    let Some((mut nodes, dir, net, config)) = replica_cluster(TEST, 3) else {
        return;
    };
    configure_replica(
        &nodes[2],
        &format!(
            "primitive fence_ns stonith:fence_hablock_netns params netns_map=\"{}\" pcmk_host_list=\"alpha beta gamma\"
location fence_on_gamma fence_ns 100: gamma
location ms_r0_not_on_gamma ms_r0 -inf: gamma
",
            netns_map(&net)
        ),
    );
    let took = wait_cib(
        &nodes[2],
        Duration::from_secs(30),
        "one Primary with the service",
        |c| primary_with_service(c, 1).is_some(),
    );
    let c = common::cluster::cib(&nodes[2]);
    let first = primary_with_service(&c, 1).unwrap();
    eprintln!("r0 promoted on {first} and svc started there {took:?} after the configuration");
    let st = r0_status(&config, &first).unwrap();
    assert_eq!(
        st["role"], "Primary",
        "the cluster's Primary is hablock's Primary: {st}"
    );

    // Writes through the Primary's export reach both disks (protocol C).
    let data = random_bytes(7, DATA);
    let src = dir.path().join("data.bin");
    std::fs::write(&src, &data).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(nbd_uri(dir.path(), &first)));
    wait_r0(
        &nodes[index_of(&first)],
        "in sync after the writes",
        Duration::from_secs(20),
        in_sync,
    );

    // SIGKILL the Primary's daemon: its node is fenced, the other copy promoted, the service
    // follows, and the new Primary serves every byte written.
    let killed = Instant::now();
    let home = index_of(&first);
    let other = 1 - home;
    nodes[home].kill();
    wait_cib(
        &nodes[2],
        Duration::from_secs(30),
        "the other copy Primary with the service",
        |c| primary_with_service(c, 0).as_deref() == Some(NAMES[other]),
    );
    eprintln!(
        "r0 and svc on {} {:?} after SIGKILL of {first}",
        NAMES[other],
        killed.elapsed()
    );
    let logs = format!("{}{}", nodes[other].log(), nodes[2].log());
    if std::env::var_os("HABLOCK_SHOW_LOGS").is_some() {
        eprintln!(
            "=== {}\n{}\n=== gamma\n{}",
            NAMES[other],
            nodes[other].log(),
            nodes[2].log()
        );
    }
    assert!(logs.contains(&format!("{first} fenced by fence_ns")), "{logs}");
    let back = dir.path().join("back.bin");
    let read = common::nbd_read_prefix(&nbd_uri(dir.path(), NAMES[other]), &back, DATA);
    assert!(
        read == data,
        "the new Primary serves every byte written before the failover"
    );

    // More writes on the new Primary, then the fenced node comes back: it rejoins as the
    // Unpromoted copy and resyncs what it missed; the service stays (stickiness).
    let data2 = random_bytes(8, DATA);
    std::fs::write(&src, &data2).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(nbd_uri(dir.path(), NAMES[other])));
    // "Power on": the fence agent set the node's links down (its processes are gone).
    for dev in ["lo", "eth0"] {
        common::cluster::ip(&["-n", &net.nodes[home], "link", "set", dev, "up"]).unwrap();
    }
    nodes[home].child = None;
    nodes[home].start();
    wait_cib(
        &nodes[2],
        Duration::from_secs(40),
        "the fenced node back as Unpromoted",
        |c| primary_with_service(c, 1).as_deref() == Some(NAMES[other]),
    );
    wait_r0(
        &nodes[other],
        "in sync with the returned node",
        Duration::from_secs(40),
        in_sync,
    );

    // Standby of the Primary's node: demoted there, promoted on the returned node, service with it.
    nodes[2].hbcrm_ok(&["node", "standby", NAMES[other]]);
    wait_cib(
        &nodes[2],
        Duration::from_secs(40),
        "promotion back on the returned node",
        |c| primary_with_service(c, 0).as_deref() == Some(NAMES[home]),
    );
    let read = common::nbd_read_prefix(&nbd_uri(dir.path(), NAMES[home]), &back, DATA);
    assert!(
        read == data2,
        "the returned node, promoted, serves the writes it resynced"
    );
    drop(nodes);
    drop(net);
}

#[test]
fn a_split_two_node_cluster_keeps_one_writer() {
    const TEST2: &str = "a_split_two_node_cluster_keeps_one_writer";
    let Some((nodes, dir, net, config)) = replica_cluster(TEST2, 2) else {
        return;
    };
    // One device per target, never run by its own target; the one that powers off alpha waits
    // 3 s first (pcmk_delay_base), so in a fence race alpha shoots first and survives.
    let map = netns_map(&net);
    configure_replica(
        &nodes[0],
        &format!(
            "primitive fence_alpha stonith:fence_hablock_netns params netns_map=\"{map}\" pcmk_host_list=alpha pcmk_delay_base=3s
primitive fence_beta stonith:fence_hablock_netns params netns_map=\"{map}\" pcmk_host_list=beta
location fence_alpha_not_on_alpha fence_alpha -inf: alpha
location fence_beta_not_on_beta fence_beta -inf: beta
location r0_promoted_on_beta ms_r0 rule $role=Promoted 200: #uname eq beta
"
        ),
    );
    wait_cib(
        &nodes[0],
        Duration::from_secs(30),
        "beta Primary with the service",
        |c| primary_with_service(c, 1).as_deref() == Some("beta"),
    );
    let data = random_bytes(9, DATA);
    let src = dir.path().join("data.bin");
    std::fs::write(&src, &data).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(nbd_uri(dir.path(), "beta")));
    wait_r0(&nodes[1], "in sync after the writes", Duration::from_secs(20), in_sync);

    // Cut the only link at the switch: both nodes are alive, each keeps quorum (two_node) and
    // wants the other fenced.
    let cut = Instant::now();
    net.set_link(0, 0, false);
    // alpha must end as the only Primary, with the service; beta powered off (its hablockd gone).
    let limit = Duration::from_secs(40);
    loop {
        let alpha = r0_status(&config, "alpha");
        let beta = r0_status(&config, "beta");
        let primaries = [&alpha, &beta]
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| s["role"] == "Primary"))
            .count();
        assert!(primaries <= 1, "two Primaries: alpha {alpha:?}, beta {beta:?}");
        if beta.is_none() && alpha.as_ref().is_some_and(|s| s["role"] == "Primary") {
            break;
        }
        assert!(
            cut.elapsed() < limit,
            "no single Primary on alpha within {limit:?}: alpha {alpha:?}, beta {beta:?}\nalpha log: {}\nbeta log: {}",
            nodes[0].log(),
            nodes[1].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_cib(&nodes[0], Duration::from_secs(20), "the service on alpha", |c| {
        running(c, "svc").iter().map(|(n, _)| n.as_str()).eq(["alpha"])
    });
    eprintln!("alpha Primary with the service {:?} after the cut", cut.elapsed());
    let log = nodes[0].log();
    assert!(log.contains("beta fenced by fence_beta"), "{log}");
    let back = dir.path().join("back.bin");
    let read = common::nbd_read_prefix(&nbd_uri(dir.path(), "alpha"), &back, DATA);
    assert!(read == data, "alpha serves every byte written on beta before the cut");
    drop(nodes);
    drop(net);
}
