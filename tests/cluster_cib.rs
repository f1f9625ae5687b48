//! CIB replication and partitions with real daemons.
//!
//! - `cib_changes_replicate_on_loopback`: three hablockd on 127.0.0.1-3; `hbcrm configure
//!   property` and `hbcrm node standby` on a member reach every node; `configure show` prints
//!   crm syntax; a restarted node keeps its copy.
//! - `partitions_in_network_namespaces`: three hablockd, each in its own network namespace,
//!   with two heartbeat links (two bridges in a fourth "switch" namespace). Cutting one link keeps
//!   the cluster whole and shows the link down; cutting a node off leaves it WITHOUT quorum while
//!   the other two keep quorum and a DC; a property set on the majority during the split wins,
//!   one attempted on the minority is refused (and a forced one loses) when the partition heals.
//!   Skipped with a message where namespaces are not permitted.

mod common;

use common::cluster::{cluster_config, test_dir, view, wait_for, Daemon, Netns, FAST_TIMING, NAMES};
use serde_json::Value;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A cluster-only file; `links[i]` are node i's link addresses.
fn write_config(dir: &Path, links: &[Vec<String>], extra: &str) -> PathBuf {
    cluster_config(dir, "cibcluster", links, &format!("{FAST_TIMING}{extra}"))
}

fn cib_version(st: &Value) -> String {
    st["cib"]["version"].as_str().unwrap_or("").to_string()
}

fn digest(st: &Value) -> String {
    st["cib"]["digest"].as_str().unwrap_or("").to_string()
}

/// Waits until every node in `nodes` has the same CIB digest and version; returns the version.
fn wait_converged(nodes: &mut [&mut Daemon], limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let sts: Vec<Option<Value>> = nodes.iter_mut().map(|d| d.status()).collect();
        if sts.iter().all(Option::is_some) {
            let sts: Vec<Value> = sts.into_iter().map(Option::unwrap).collect();
            let d0 = (cib_version(&sts[0]), digest(&sts[0]));
            if sts.iter().all(|s| (cib_version(s), digest(s)) == d0) {
                return d0.0;
            }
            assert!(
                start.elapsed() < limit,
                "CIBs did not converge within {limit:?}: {:?}",
                sts.iter().map(|s| (cib_version(s), digest(s))).collect::<Vec<_>>()
            );
        } else {
            assert!(start.elapsed() < limit, "a node stopped answering");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn formed(st: &Value) -> bool {
    view(st) == [0, 1, 2] && st["quorate"] == true && st["dc"].is_u64() && st["cib"]["dc_synchronised"].is_boolean()
}

fn property(d: &Daemon, name: &str) -> Option<String> {
    let out = d.hbcrm_ok(&["configure", "show", "--json"]);
    let cib: Value = serde_json::from_str(&out).unwrap();
    cib["configuration"]["properties"][name].as_str().map(str::to_string)
}

#[test]
fn cib_changes_replicate_on_loopback() {
    let dir = test_dir("cib-");
    let links: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let ip = format!("127.0.0.{}", i + 1);
            let port = UdpSocket::bind((ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
            vec![format!("{ip}:{port}")]
        })
        .collect();
    let config = write_config(dir.path(), &links, "");
    let mut nodes: Vec<Daemon> = NAMES.iter().map(|n| Daemon::spawn(&config, n, None)).collect();
    for d in nodes.iter_mut() {
        wait_for(d, Duration::from_secs(20), "a full quorate view with a DC", formed);
    }
    {
        let mut all: Vec<&mut Daemon> = nodes.iter_mut().collect();
        wait_converged(&mut all, Duration::from_secs(10));
    }

    // A change on a member (gamma is never DC: alpha has the lowest id).
    let t = Instant::now();
    let out = nodes[2].hbcrm_ok(&[
        "configure",
        "property",
        "stonith-enabled=false",
        "no-quorum-policy=ignore",
    ]);
    eprintln!("gamma: {out} ({:?})", t.elapsed());
    assert!(out.contains("CIB updated to version"), "{out}");
    // Answered after the DC applied it and gamma has it: visible at once on gamma.
    assert_eq!(property(&nodes[2], "stonith-enabled").as_deref(), Some("false"));
    let out = nodes[1].hbcrm_ok(&["node", "standby", "beta"]);
    assert!(out.contains("CIB updated"), "{out}");
    let version = {
        let mut all: Vec<&mut Daemon> = nodes.iter_mut().collect();
        wait_converged(&mut all, Duration::from_secs(5))
    };
    eprintln!("converged at {version}");
    for d in &nodes {
        assert_eq!(property(d, "no-quorum-policy").as_deref(), Some("ignore"), "{}", d.name);
    }
    let text = nodes[0].hbcrm_ok(&["status"]);
    eprintln!("{text}");
    assert!(text.contains("Node beta: standby"), "{text}");
    assert!(text.contains("Online: [ alpha gamma ]"), "{text}");
    assert!(text.contains(&format!("CIB: version {version}")), "{text}");
    let show = nodes[2].hbcrm_ok(&["configure", "show"]);
    eprintln!("{show}");
    assert!(show.contains("node 1: beta \\\n\tattributes standby=on"), "{show}");
    assert!(show.contains("property cib-bootstrap-options: \\"), "{show}");
    assert!(show.contains("\tstonith-enabled=false"), "{show}");

    // Bad input: a clear error, nothing changes.
    let out = nodes[1].hbcrm(&["configure", "property", "no-quorum-policy=sometimes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-quorum-policy"), "{err}");
    let out = nodes[1].hbcrm(&["node", "standby", "delta"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delta"), "{err}");
    let out = nodes[1].hbcrm(&["configure", "property", "stonith-enabled"]);
    assert!(!out.status.success());

    // Online again; a node restarted keeps the newest copy (and agrees with the others).
    nodes[0].hbcrm_ok(&["node", "online", "beta"]);
    nodes[2].kill();
    nodes[2].start();
    wait_for(&mut nodes[2], Duration::from_secs(20), "rejoined", formed);
    let version = {
        let mut all: Vec<&mut Daemon> = nodes.iter_mut().collect();
        wait_converged(&mut all, Duration::from_secs(5))
    };
    let st = nodes[2].status().unwrap();
    assert_eq!(cib_version(&st), version);
    assert!(nodes[2].log().contains("CIB: loaded version"), "{}", nodes[2].log());
    let text = nodes[2].hbcrm_ok(&["status"]);
    assert!(text.contains("Online: [ alpha beta gamma ]"), "{text}");
}

fn links_up(st: &Value, peer: u64) -> Vec<bool> {
    st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"].as_u64() == Some(peer))
        .map(|p| {
            p["links_up"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect()
        })
        .unwrap()
}

#[test]
fn partitions_in_network_namespaces() {
    const LINKS: usize = 2;
    let net = match Netns::create(3, LINKS) {
        Ok(n) => n,
        Err(e) => {
            return common::skip("partitions_in_network_namespaces", common::Missing::Netns, &e);
        }
    };
    let dir = test_dir("cibns-");
    let links: Vec<Vec<String>> = (0..3)
        .map(|i| {
            (0..LINKS)
                .map(|l| format!("{}:16940", Netns::addr(i, l, false)))
                .collect()
        })
        .collect();
    let config = write_config(dir.path(), &links, "");
    // Declared after `net`: the daemons are killed before the namespaces go.
    let mut nodes: Vec<Daemon> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::spawn(&config, n, Some(&net.nodes[i])))
        .collect();
    for d in nodes.iter_mut() {
        wait_for(d, Duration::from_secs(20), "a full quorate view with a DC", |st| {
            formed(st) && links_up(st, if d_is_alpha(st) { 1 } else { 0 }) == [true, true]
        });
    }
    {
        let mut all: Vec<&mut Daemon> = nodes.iter_mut().collect();
        wait_converged(&mut all, Duration::from_secs(10));
    }

    // One link of gamma cut: the cluster stays whole, the link shows down.
    net.set_link(2, 1, false);
    let t = Instant::now();
    let st = wait_for(&mut nodes[0], Duration::from_secs(5), "gamma's link 1 down", |st| {
        links_up(st, 2) == [true, false]
    });
    eprintln!("alpha saw gamma's link 1 go down after {:?}", t.elapsed());
    assert_eq!(view(&st), [0, 1, 2], "{st}");
    std::thread::sleep(Duration::from_secs(1));
    for d in nodes.iter_mut() {
        let st = d.status().unwrap();
        assert_eq!(view(&st), [0, 1, 2], "{}: {st}", d.name);
        assert_eq!(st["quorate"], true);
    }
    let text = nodes[0].hbcrm_ok(&["status"]);
    eprintln!("{text}");
    assert!(
        text.contains("link 1 (10.78.0.1:16940): degraded - beta up, gamma down"),
        "{text}"
    );
    assert!(text.contains("link 0 (10.77.0.1:16940): healthy"), "{text}");
    assert!(text.contains("Online: [ alpha beta gamma ]"), "{text}");
    net.set_link(2, 1, true);
    wait_for(&mut nodes[0], Duration::from_secs(5), "gamma's link 1 up again", |st| {
        links_up(st, 2) == [true, true]
    });

    // gamma cut off on both links: it loses quorum, alpha and beta keep it and a DC.
    net.set_link(2, 0, false);
    net.set_link(2, 1, false);
    let cut = Instant::now();
    wait_for(
        &mut nodes[2],
        Duration::from_secs(5),
        "gamma alone without quorum",
        |st| view(st) == [2] && st["quorate"] == false,
    );
    eprintln!("gamma lost quorum {:?} after the cut", cut.elapsed());
    for d in nodes[..2].iter_mut() {
        wait_for(d, Duration::from_secs(5), "the pair with quorum and a DC", |st| {
            view(st) == [0, 1] && st["quorate"] == true && st["dc"] == 0 && st["cib"]["dc_synchronised"].is_boolean()
        });
        eprintln!("{} has the pair with quorum after {:?}", d.name, cut.elapsed());
    }
    let text = nodes[2].hbcrm_ok(&["status"]);
    eprintln!("{text}");
    assert!(text.contains("partition WITHOUT quorum"), "{text}");
    assert!(text.contains("OFFLINE: [ alpha beta ]"), "{text}");
    let text = nodes[0].hbcrm_ok(&["status"]);
    assert!(
        text.contains("Current DC: alpha") && text.contains("partition with quorum"),
        "{text}"
    );

    // Changes: on the majority, applied; on the minority, refused; forced there, local only.
    let out = nodes[1].hbcrm_ok(&["configure", "property", "stonith-enabled=false"]);
    assert!(out.contains("CIB updated"), "{out}");
    let out = nodes[2].hbcrm(&["configure", "property", "no-quorum-policy=freeze"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no quorum"), "{out:?}");
    for v in ["true", "false", "true"] {
        let out = nodes[2].hbcrm_ok(&["configure", "property", "--force", &format!("maintenance-mode={v}")]);
        assert!(out.contains("WITHOUT quorum"), "{out}");
    }
    let minority = cib_version(&nodes[2].status().unwrap());
    let majority = cib_version(&nodes[0].status().unwrap());
    eprintln!("during the split: majority at {majority}, minority (forced) at {minority}");
    let text = nodes[2].hbcrm_ok(&["status"]);
    assert!(text.contains("unconfirmed (made or kept without quorum)"), "{text}");

    // Heal: one view again, and every node holds the majority's configuration.
    net.set_link(2, 0, true);
    net.set_link(2, 1, true);
    let healed = Instant::now();
    for d in nodes.iter_mut() {
        wait_for(d, Duration::from_secs(10), "one view again", formed);
    }
    let version = {
        let mut all: Vec<&mut Daemon> = nodes.iter_mut().collect();
        wait_converged(&mut all, Duration::from_secs(10))
    };
    eprintln!("healed and converged at {version} after {:?}", healed.elapsed());
    for d in &nodes {
        assert_eq!(property(d, "stonith-enabled").as_deref(), Some("false"), "{}", d.name);
        assert_eq!(property(d, "maintenance-mode"), None, "{}", d.name);
        assert_eq!(property(d, "no-quorum-policy"), None, "{}", d.name);
    }
    let st = nodes[2].status().unwrap();
    assert_eq!(st["cib"]["origin_quorate"], true, "{st}");

    // SIGKILL gamma: declared dead across the namespaces within deadtime + keepalive (+ polling).
    nodes[2].kill();
    let killed = Instant::now();
    for d in nodes[..2].iter_mut() {
        wait_for(d, Duration::from_secs(5), "gamma gone", |st| view(st) == [0, 1]);
        let took = killed.elapsed();
        eprintln!(
            "{} declared gamma dead {took:?} after SIGKILL (deadtime 500 ms, keepalive 100 ms)",
            d.name
        );
        // A generous bound (the figure itself is benches/failover-bench's): noticed, not timed.
        assert!(took < Duration::from_secs(4), "{}: {took:?}", d.name);
    }
    for d in nodes.iter_mut() {
        d.kill();
    }
    drop(net);
}

/// Multicast and broadcast heartbeats between namespaces: the cluster forms on both links,
/// a cut link shows down while the cluster stays whole, and a CIB change replicates.
#[test]
fn multicast_and_broadcast_in_network_namespaces() {
    for transport in ["multicast", "broadcast"] {
        let net = match Netns::create(3, 2) {
            Ok(n) => n,
            Err(e) => {
                return common::skip(
                    "multicast_and_broadcast_in_network_namespaces",
                    common::Missing::Netns,
                    &e,
                );
            }
        };
        let dir = test_dir("cibmc-");
        // One port per link: the group is shared, the port tells the link.
        let links: Vec<Vec<String>> = (0..3)
            .map(|i| {
                (0..2)
                    .map(|l| format!("{}:{}", Netns::addr(i, l, false), 16940 + l))
                    .collect()
            })
            .collect();
        let extra = match transport {
            "multicast" => "transport = \"multicast\"\nmcast_group = \"239.192.77.1\"",
            _ => "transport = \"broadcast\"",
        };
        let config = write_config(dir.path(), &links, extra);
        let mut nodes: Vec<Daemon> = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| Daemon::spawn(&config, n, Some(&net.nodes[i])))
            .collect();
        let t = Instant::now();
        for d in nodes.iter_mut() {
            wait_for(
                d,
                Duration::from_secs(20),
                "a full quorate view over both links",
                |st| {
                    formed(st)
                        && st["transport"] == transport
                        && links_up(st, if d_is_alpha(st) { 1 } else { 0 }) == [true, true]
                },
            );
        }
        eprintln!("{transport}: cluster formed in {:?}", t.elapsed());
        net.set_link(1, 0, false);
        let st = wait_for(&mut nodes[0], Duration::from_secs(5), "beta's link 0 down", |st| {
            links_up(st, 1) == [false, true]
        });
        assert_eq!(view(&st), [0, 1, 2], "{st}");
        let text = nodes[0].hbcrm_ok(&["status"]);
        assert!(
            text.contains(&format!("Stack: hablock heartbeat ({transport})")),
            "{text}"
        );
        assert!(text.contains("degraded - beta down, gamma up"), "{text}");
        let out = nodes[2].hbcrm_ok(&["node", "standby", "alpha"]);
        assert!(out.contains("CIB updated"), "{out}");
        {
            let mut all: Vec<&mut Daemon> = nodes.iter_mut().collect();
            wait_converged(&mut all, Duration::from_secs(5));
        }
        let text = nodes[1].hbcrm_ok(&["status"]);
        assert!(text.contains("Node alpha: standby"), "{text}");
        for d in nodes.iter_mut() {
            d.kill();
        }
        drop(nodes);
        drop(net);
    }
}

fn d_is_alpha(st: &Value) -> bool {
    st["local"] == 0
}
