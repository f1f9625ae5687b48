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
//!
//! Skipped with a message where network namespaces are not permitted or nbdcopy is missing.

mod common;

use common::cluster::{cluster_config, configure, running, test_dir, view, wait_cib, wait_for, Daemon, Netns, NAMES};
use common::{have, ok, random_bytes, run_tool, skip};
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

/// The cluster file: three nodes on one link, and r0 replicated between alpha and beta over the
/// same link, each exported over NBD on a unix socket the test (outside the namespaces) can use.
fn write_config(dir: &Path) -> PathBuf {
    let links: Vec<Vec<String>> = (0..3)
        .map(|i| vec![format!("{}:16950", Netns::addr(i, 0, false))])
        .collect();
    // Generous for a loaded CI machine: a healthy node declared dead would be fenced.
    let timing = "keepalive = \"200ms\"\nwarntime = \"600ms\"\ndeadtime = \"2s\"\ninitdead = \"4s\"\n";
    let path = cluster_config(dir, "replcluster", &links, timing);
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

#[test]
fn a_replicated_resource_fails_over_with_its_service_and_keeps_every_write() {
    if !have("nbdcopy") {
        skip(TEST, "nbdcopy (libnbd-bin) is not installed");
        return;
    }
    let net = match Netns::create(3, 1) {
        Ok(n) => n,
        Err(e) => {
            skip(TEST, &format!("no network namespaces ({e})"));
            return;
        }
    };
    let dir = test_dir("rmrepl-");
    let config = write_config(dir.path());
    for n in &NAMES[..2] {
        hbadm(&config, n, &["create-md", "r0"]);
    }
    let mut nodes: Vec<Daemon> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::spawn(&config, n, Some(&net.nodes[i])))
        .collect();
    for n in nodes.iter_mut() {
        wait_for(n, Duration::from_secs(20), "a full quorate view with a DC", |st| {
            view(st).len() == 3 && st["quorate"] == true && st["dc"].is_u64()
        });
    }
    // The initial sync, as with DRBD before the cluster takes over: one side is declared the
    // good copy once, then both are Secondary.
    wait_r0(&nodes[0], "connected", Duration::from_secs(20), |st| {
        st["peers"][0]["connection"] == "Connected"
    });
    hbadm(&config, "alpha", &["primary", "--force", "r0"]);
    wait_r0(&nodes[0], "in sync", Duration::from_secs(60), in_sync);
    hbadm(&config, "alpha", &["secondary", "r0"]);

    let map: Vec<String> = NAMES
        .iter()
        .zip(&net.nodes)
        .map(|(n, ns)| format!("{n}:{ns}"))
        .collect();
    configure(
        &nodes[2],
        &format!(
            "primitive fence_ns stonith:fence_hablock_netns params netns_map=\"{map}\" pcmk_host_list=\"alpha beta gamma\"
primitive p_r0 ocf:hablock:replica params resource=r0 op monitor role=Promoted interval=1s timeout=20s op monitor role=Unpromoted interval=2s timeout=20s
ms ms_r0 p_r0 meta promoted-max=1 promoted-node-max=1 clone-max=2 clone-node-max=1 notify=true
location ms_r0_not_on_gamma ms_r0 -inf: gamma
primitive svc Dummy op monitor interval=1s timeout=10s
colocation svc_with_r0 inf: svc ms_r0:Promoted
order r0_before_svc Mandatory: ms_r0:promote svc:start
location fence_on_gamma fence_ns 100: gamma
rsc_defaults resource-stickiness=100
property stonith-enabled=true
",
            map = map.join(",")
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
