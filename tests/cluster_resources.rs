//! The resource manager with real daemons, stock OCF agents and fencing, each node in its own
//! network namespace (floating IPs and ARP stay inside the test's namespaces).
//!
//! - `a_group_fails_over_after_its_node_is_fenced`: three nodes; a group of IPaddr2 + Dummy
//!   starts on its preferred node; SIGKILL of that node's hablockd gets it fenced (the test fence
//!   agent kills everything in its namespace and cuts its link) and the group starts on a
//!   survivor, address included; a standby node hands the group over; a Dummy whose monitor
//!   fails is restarted in place, and moved once it reaches migration-threshold.
//!
//! Skipped with a message where network namespaces are not permitted.

mod common;

use common::cluster::{configure, running, test_dir, view, wait_cib, wait_for, Daemon, Netns};
use common::{run_timeout, skip};
use hablock::cluster::cib::config::Role;
use hablock::cluster::pengine::state::Observed;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const VIP: &str = "10.77.0.100";

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("hablock.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"[global]
control_dir = "{d}/run"
state_dir = "{d}/state"

[cluster]
name = "rmcluster"
nodes = ["alpha", "beta", "gamma"]
authkey = "a resource manager test key 0123"
keepalive = "100ms"
warntime = "300ms"
deadtime = "500ms"
initdead = "1500ms"
"#,
        d = dir.display()
    )
    .unwrap();
    for (i, n) in NAMES.iter().enumerate() {
        writeln!(f, "[cluster.on.{n}]\nlinks = [\"{}:16950\"]", Netns::addr(i, 0, false)).unwrap();
    }
    path
}

/// Whether `addr` is configured inside namespace `ns`.
fn has_address(ns: &str, addr: &str) -> bool {
    let out = run_timeout(
        Command::new("ip").args(["-n", ns, "-4", "addr", "show"]),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/"))
}

/// The single node where every one of `rscs` runs (Started), if they all run on one.
fn placement(c: &hablock::cluster::cib::Cib, rscs: &[&str]) -> Option<String> {
    let mut node = None;
    for r in rscs {
        match &running(c, r)[..] {
            [(n, Observed::Running(Role::Started))] if node.as_ref().is_none_or(|x| x == n) => node = Some(n.clone()),
            _ => return None,
        }
    }
    node
}

fn index_of(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).unwrap()
}

#[test]
fn a_group_fails_over_after_its_node_is_fenced() {
    let net = match Netns::create(3, 1) {
        Ok(n) => n,
        Err(e) => {
            return skip(
                "a_group_fails_over_after_its_node_is_fenced",
                &format!("no network namespaces ({e})"),
            )
        }
    };
    let dir = test_dir("rm-");
    let config = write_config(dir.path());
    let mut nodes: Vec<Daemon> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::spawn(&config, n, Some(&net.nodes[i])))
        .collect();
    let map: Vec<String> = NAMES
        .iter()
        .zip(&net.nodes)
        .map(|(n, ns)| format!("{n}:{ns}"))
        .collect();
    let crm = format!(
        "primitive fence_ns stonith:fence_hablock_netns params netns_map=\"{map}\" pcmk_host_list=\"alpha beta gamma\"
primitive vip IPaddr2 params ip={VIP} cidr_netmask=24 nic=eth0 op monitor interval=1s timeout=10s
primitive svc Dummy op monitor interval=500ms timeout=10s
primitive lone Dummy meta migration-threshold=2 op monitor interval=500ms timeout=10s
location lone_prefers_gamma lone 200: gamma
rsc_defaults resource-stickiness=100
group g vip svc
location g_prefers_alpha g 100: alpha
location fence_not_on_alpha fence_ns -inf: alpha
property stonith-enabled=true
",
        map = map.join(",")
    );
    // The cluster forms, then takes the configuration.
    for d in nodes.iter_mut() {
        wait_for(d, Duration::from_secs(20), "a full quorate view with a DC", |st| {
            view(st).len() == 3 && st["quorate"] == true && st["dc"].is_u64()
        });
    }
    configure(&nodes[0], &crm);
    let took = wait_cib(&nodes[1], Duration::from_secs(20), "g started on alpha", |c| {
        placement(c, &["vip", "svc"]).as_deref() == Some("alpha")
    });
    eprintln!("group started on alpha {took:?} after the configuration");
    assert!(has_address(&net.nodes[0], VIP), "the address is on alpha");
    assert!(!has_address(&net.nodes[1], VIP) && !has_address(&net.nodes[2], VIP));

    // SIGKILL alpha: fenced, then the group runs on a survivor.
    let killed = Instant::now();
    nodes[0].kill();
    let survivor = &nodes[1];
    wait_cib(survivor, Duration::from_secs(20), "g started on a survivor", |c| {
        matches!(placement(c, &["vip", "svc"]).as_deref(), Some("beta" | "gamma"))
    });
    let failover = killed.elapsed();
    let c = common::cluster::cib(survivor);
    let new_home = placement(&c, &["vip", "svc"]).unwrap();
    eprintln!("failover to {new_home} {failover:?} after SIGKILL");
    if std::env::var_os("HABLOCK_SHOW_LOGS").is_some() {
        eprintln!("=== beta\n{}\n=== gamma\n{}", nodes[1].log(), nodes[2].log());
    }
    assert!(
        !c.status.nodes["alpha"].member,
        "alpha was fenced and is no longer a member"
    );
    let logs = format!("{}{}", nodes[1].log(), nodes[2].log());
    assert!(logs.contains("alpha fenced by fence_ns"), "{logs}");
    assert!(has_address(&net.nodes[index_of(&new_home)], VIP), "the address moved");

    // Standby hands the group over to the remaining node.
    let home = index_of(&new_home);
    let other = if home == 1 { 2 } else { 1 };
    nodes[other].hbcrm_ok(&["node", "standby", NAMES[home]]);
    wait_cib(
        &nodes[other],
        Duration::from_secs(20),
        "g moved off the standby node",
        |c| placement(c, &["vip", "svc"]).as_deref() == Some(NAMES[other]),
    );
    assert!(has_address(&net.nodes[other], VIP) && !has_address(&net.nodes[home], VIP));
    nodes[other].hbcrm_ok(&["node", "online", NAMES[home]]);

    // A failing monitor: restarted in place once, moved at the second failure
    // (migration-threshold=2).
    let lone_home = |c: &hablock::cluster::cib::Cib| placement(c, &["lone"]);
    wait_cib(&nodes[2], Duration::from_secs(20), "lone runs on gamma", |c| {
        lone_home(c).as_deref() == Some("gamma")
    });
    let state_file = dir.path().join("state/gamma/lrm/rsctmp/Dummy-lone.state");
    for round in 1..=2 {
        let t = Instant::now();
        while !state_file.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} missing",
                state_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(&state_file).unwrap();
        let key = "fail-count-lone#monitor_500";
        let round = round.to_string();
        wait_cib(
            &nodes[2],
            Duration::from_secs(20),
            "the failure counted and lone recovered",
            |c| c.status.nodes["gamma"].transient_attributes.get(key) == Some(&round) && lone_home(c).is_some(),
        );
    }
    let c = common::cluster::cib(&nodes[2]);
    assert_eq!(
        lone_home(&c).as_deref(),
        Some("beta"),
        "two failures reach migration-threshold=2: lone moves"
    );
    drop(nodes);
    drop(net);
}
