//! The resource manager with real daemons, stock OCF agents and fencing, each node in its own
//! network namespace (floating IPs and ARP stay inside the test's namespaces).
//!
//! - `a_group_fails_over_after_its_node_is_fenced`: three nodes; a group of IPaddr2 + Dummy
//!   starts on its preferred node; SIGKILL of that node's hablockd gets it fenced (the test fence
//!   agent kills everything in its namespace and cuts its link) and the group starts on a
//!   survivor, address included; a standby node hands the group over; a Dummy whose monitor
//!   fails is restarted in place, and moved once it reaches migration-threshold.
//!   The group's order holds on the way up (vip, svc) and reverses on the way down.
//! - `mariadb_on_a_shared_filesystem_moves_with_its_address_and_keeps_every_row`: Filesystem
//!   (ext4 on a shared loop device) + IPaddr2 + mysql (mariadbd, datadir on that filesystem) as
//!   one group, loaded with `hbcrm configure load update`, moved with `hbcrm resource move` and
//!   back; every row is there on each side.
//! - `a_partition_without_quorum_stops_its_resources`: a node cut off from the other two stops
//!   its Dummy itself (no-quorum-policy=stop) while the quorate pair starts it; healed, it runs
//!   in exactly one place.
//!
//! Skipped with a message where network namespaces are not permitted.

mod common;

use common::cluster::{configure, netns_cluster, netns_cluster_config, running, wait_cib, Daemon, Netns, NAMES};
use common::{require_file, run_timeout, skip, Missing};
use hablock::cluster::cib::config::{Action, Role};
use hablock::cluster::pengine::state::Observed;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const VIP: &str = "10.77.0.100";

/// Three daemons, each in its own network namespace, formed into a quorate cluster with a DC.
fn three_nodes(test: &str, prefix: &str) -> Option<(Vec<Daemon>, tempfile::TempDir, Netns)> {
    netns_cluster(test, prefix, 3, |dir| netns_cluster_config(dir, "rmcluster", 3))
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

/// The call id of the latest `action` of `rsc` on `node` (call ids grow in the order the node's
/// LRM was asked to run things).
fn call_of(c: &hablock::cluster::cib::Cib, node: &str, rsc: &str, action: Action) -> u64 {
    c.status.nodes[node].resources[rsc]
        .ops
        .iter()
        .filter(|o| o.action == action && o.interval_ms == 0)
        .map(|o| o.call_id)
        .max()
        .unwrap_or_else(|| panic!("no {action:?} of {rsc} on {node}"))
}

fn index_of(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).unwrap()
}

#[test]
fn a_group_fails_over_after_its_node_is_fenced() {
    let Some((mut nodes, dir, net)) = three_nodes("a_group_fails_over_after_its_node_is_fenced", "rm-") else {
        return;
    };
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
    configure(&nodes[0], &crm);
    let took = wait_cib(&nodes[1], Duration::from_secs(20), "g started on alpha", |c| {
        placement(c, &["vip", "svc"]).as_deref() == Some("alpha")
    });
    eprintln!("group started on alpha {took:?} after the configuration");
    // The group's order on the way up: vip, then svc.
    let c = common::cluster::cib(&nodes[1]);
    assert!(call_of(&c, "alpha", "vip", Action::Start) < call_of(&c, "alpha", "svc", Action::Start));
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
    // On the way down the order reverses (svc, then vip); up again it holds (vip, then svc).
    let c = common::cluster::cib(&nodes[other]);
    let (h, o) = (NAMES[home], NAMES[other]);
    assert!(call_of(&c, h, "svc", Action::Stop) < call_of(&c, h, "vip", Action::Stop));
    assert!(call_of(&c, o, "vip", Action::Start) < call_of(&c, o, "svc", Action::Start));
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

/// Runs `sql` through the server's socket as root; returns its output (tab-separated, no headers).
fn sql(sock: &Path, sql: &str) -> Result<String, String> {
    let out = run_timeout(
        Command::new("mariadb")
            .arg(format!("--socket={}", sock.display()))
            .args(["-uroot", "-N", "-B", "-e", sql]),
        Duration::from_secs(60),
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Detaches the loop device it names when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn mariadb_on_a_shared_filesystem_moves_with_its_address_and_keeps_every_row() {
    const TEST: &str = "mariadb_on_a_shared_filesystem_moves_with_its_address_and_keeps_every_row";
    if !require_file(TEST, "/usr/sbin/mariadbd", "mariadb-server")
        || !require_file(TEST, "/usr/lib/ocf/resource.d/heartbeat/mysql", "resource-agents")
    {
        return;
    }
    let Some((nodes, dir, net)) = three_nodes(TEST, "rmdb-") else {
        return;
    };
    let d = dir.path();
    // The shared storage: an ext4 image on a loop device every node sees (the replicated
    // version is the replica agent's business), with a MariaDB data directory made once.
    let img = d.join("shared.img");
    std::fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    let dev = match run_timeout(
        Command::new("losetup").args(["--find", "--show"]).arg(&img),
        Duration::from_secs(30),
    ) {
        out if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        out => {
            return skip(
                TEST,
                Missing::Loop,
                &format!("no loop device: {}", String::from_utf8_lossy(&out.stderr)),
            )
        }
    };
    let _loop = Loop(dev.clone());
    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(Command::new("mount").arg(&dev).arg(&mnt));
    let init = run_timeout(
        Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", mnt.join("data").display())),
        Duration::from_secs(120),
    );
    run_ok(Command::new("umount").arg(&mnt));
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let run = d.join("mysql");
    std::fs::create_dir(&run).unwrap();
    let cnf = d.join("my.cnf");
    // Listens on the floating address, inside whichever namespace holds it. Runs as root (the
    // test's directories are private to root), which mariadbd allows only when told so here.
    std::fs::write(&cnf, "[mysqld]\nuser=root\nbind-address=10.77.0.101\nport=3306\n").unwrap();
    let sock = run.join("mysqld.sock");

    let crm = format!(
        "primitive fs Filesystem params device={dev} directory={mnt} fstype=ext4 op monitor interval=2s timeout=40s
primitive vip IPaddr2 params ip=10.77.0.101 cidr_netmask=24 nic=eth0 op monitor interval=2s timeout=20s
primitive db mysql params binary=/usr/sbin/mariadbd config={cnf} datadir={data} pid={run}/mysqld.pid socket={sock} log={run}/mysqld.log user=root group=root op start timeout=120s op stop timeout=120s op monitor interval=5s timeout=30s
group g fs vip db
location g_prefers_alpha g 100: alpha
location g_not_on_gamma g -inf: gamma
property stonith-enabled=false
rsc_defaults resource-stickiness=100
",
        mnt = mnt.display(),
        cnf = cnf.display(),
        data = mnt.join("data").display(),
        run = run.display(),
        sock = sock.display(),
    );
    nodes[0].hbcrm_ok(&["configure", "load", "update", &{
        let f = d.join("g.crm");
        std::fs::write(&f, &crm).unwrap();
        f.display().to_string()
    }]);
    let on = |node: &'static str| {
        move |c: &hablock::cluster::cib::Cib| placement(c, &["fs", "vip", "db"]).as_deref() == Some(node)
    };
    wait_cib(&nodes[1], Duration::from_secs(120), "g started on alpha", on("alpha"));
    assert!(has_address(&net.nodes[0], "10.77.0.101"));
    sql(
        &sock,
        "CREATE DATABASE shop; USE shop; CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40)); \
         INSERT INTO orders SELECT seq, CONCAT('item-', seq) FROM seq_1_to_1000;",
    )
    .unwrap();
    let check = "SELECT COUNT(*), SUM(id), MD5(GROUP_CONCAT(item ORDER BY id)) FROM shop.orders";
    let before = sql(&sock, check).unwrap();

    // Moved to beta with hbcrm, as crm's `resource move`: everything follows, every row stays.
    nodes[2].hbcrm_ok(&["resource", "move", "g", "beta"]);
    wait_cib(&nodes[2], Duration::from_secs(120), "g moved to beta", on("beta"));
    assert!(has_address(&net.nodes[1], "10.77.0.101") && !has_address(&net.nodes[0], "10.77.0.101"));
    assert_eq!(sql(&sock, check).unwrap(), before, "the rows moved intact");
    sql(&sock, "INSERT INTO shop.orders VALUES (1001, 'written on beta')").unwrap();

    // And back: clear the move, prefer alpha again.
    nodes[2].hbcrm_ok(&["resource", "clear", "g"]);
    nodes[2].hbcrm_ok(&["resource", "move", "g", "alpha"]);
    wait_cib(
        &nodes[2],
        Duration::from_secs(120),
        "g moved back to alpha",
        on("alpha"),
    );
    assert_eq!(
        sql(&sock, "SELECT item FROM shop.orders WHERE id = 1001").unwrap(),
        "written on beta"
    );
    assert_eq!(sql(&sock, "SELECT COUNT(*) FROM shop.orders").unwrap(), "1001");
    let status = nodes[2].hbcrm_ok(&["status"]);
    assert!(status.contains("Resource Group: g"), "{status}");

    // Stopped in order (db, vip, fs) before the daemons go, so nothing is left mounted.
    nodes[2].hbcrm_ok(&["resource", "stop", "g"]);
    wait_cib(&nodes[2], Duration::from_secs(120), "g stopped", |c| {
        ["fs", "vip", "db"].iter().all(|r| running(c, r).is_empty())
    });
    drop(nodes);
    drop(net);
}

#[test]
fn a_partition_without_quorum_stops_its_resources() {
    const TEST: &str = "a_partition_without_quorum_stops_its_resources";
    let Some((nodes, dir, net)) = three_nodes(TEST, "rmq-") else {
        return;
    };
    // Without fencing, so that the cut-off node is not simply killed: it has to stop by itself.
    configure(
        &nodes[0],
        "primitive d Dummy op monitor interval=1s timeout=10s
location d_prefers_gamma d 100: gamma
property stonith-enabled=false no-quorum-policy=stop
",
    );
    wait_cib(&nodes[0], Duration::from_secs(20), "d started on gamma", |c| {
        placement(c, &["d"]).as_deref() == Some("gamma")
    });
    let state = dir.path().join("state/gamma/lrm/rsctmp/Dummy-d.state");
    assert!(state.exists(), "{} missing", state.display());

    // gamma is cut off: alone, without quorum, it stops d; the quorate pair starts it.
    net.set_link(2, 0, false);
    let t = Instant::now();
    while state.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "gamma kept d running without quorum\nlog: {}",
            nodes[2].log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("gamma stopped d {:?} after the cut", t.elapsed());
    assert!(
        nodes[2].log().contains("no-quorum-policy=stop: stopping d here"),
        "{}",
        nodes[2].log()
    );
    wait_cib(
        &nodes[0],
        Duration::from_secs(20),
        "d started in the quorate partition",
        |c| matches!(placement(c, &["d"]).as_deref(), Some("alpha" | "beta")),
    );

    // Healed: gamma rejoins and d ends up in exactly one place (back on gamma, which it prefers).
    net.set_link(2, 0, true);
    for i in [0, 2] {
        wait_cib(
            &nodes[i],
            Duration::from_secs(30),
            "d on gamma alone, everywhere",
            |c| placement(c, &["d"]).as_deref() == Some("gamma"),
        );
    }
    // What actually runs (the agents' state files) settles on one node; a result a node could
    // not record while it had no DC reaches the CIB once it has one again, so allow for that.
    let holders = || {
        NAMES
            .iter()
            .filter(|n| dir.path().join(format!("state/{n}/lrm/rsctmp/Dummy-d.state")).exists())
            .count()
    };
    let t = Instant::now();
    while holders() != 1 && t.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        holders(),
        1,
        "d runs in exactly one place\nlogs: {}{}",
        nodes[0].log(),
        nodes[2].log()
    );
    drop(nodes);
    drop(net);
}

#[test]
fn a_promotable_clone_is_promoted_by_its_agents_score_and_notified() {
    const TEST: &str = "a_promotable_clone_is_promoted_by_its_agents_score_and_notified";
    let Some((nodes, _dir, net)) = three_nodes(TEST, "rmms-") else {
        return;
    };
    // Debian's Stateful sets its promotion score with crm_master/crm_attribute (our shims).
    configure(
        &nodes[0],
        "primitive st Stateful op monitor role=Master interval=1s timeout=10s op monitor role=Slave interval=2s timeout=10s
ms ms_st st meta notify=true clone-max=2 promoted-max=1
location ms_st_not_on_gamma ms_st -inf: gamma
property stonith-enabled=false
",
    );
    let roles = |c: &hablock::cluster::cib::Cib| {
        let mut r: Vec<(String, Observed)> = running(c, "st");
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    wait_cib(
        &nodes[2],
        Duration::from_secs(30),
        "one promoted and one unpromoted instance",
        |c| {
            let r = roles(c);
            r.len() == 2
                && r.iter()
                    .filter(|(_, o)| *o == Observed::Running(Role::Promoted))
                    .count()
                    == 1
                && r.iter().filter(|(_, o)| *o == Observed::Running(Role::Started)).count() == 1
        },
    );
    let c = common::cluster::cib(&nodes[2]);
    for n in ["alpha", "beta"] {
        let st = &c.status.nodes[n];
        assert!(
            st.transient_attributes.contains_key("master-st"),
            "{n}: the agent's promotion score: {:?}",
            st.transient_attributes
        );
        let h = &st.resources["st"];
        assert!(
            // Stateful has no notify action (rc 3, ignored, as Pacemaker does): it was still asked.
            h.ops.iter().any(|o| o.action == Action::Notify),
            "{n} was notified: {:?}",
            h.ops
        );
    }
    assert!(roles(&c).iter().all(|(n, _)| n != "gamma"));
    drop(nodes);
    drop(net);
}

#[test]
fn fencing_that_keeps_failing_is_given_up_and_an_operator_can_confirm_the_node_down() {
    const TEST: &str = "fencing_that_keeps_failing_is_given_up_and_an_operator_can_confirm_the_node_down";
    let Some((mut nodes, _dir, net)) = three_nodes(TEST, "rmfail-") else {
        return;
    };
    // A device that cannot reach alpha: its map names a namespace that does not exist.
    let map = format!(
        "alpha:{}-gone,beta:{},gamma:{}",
        net.nodes[0], net.nodes[1], net.nodes[2]
    );
    configure(
        &nodes[1],
        &format!(
            "primitive fence_ns stonith:fence_hablock_netns params netns_map=\"{map}\" pcmk_host_list=\"alpha beta gamma\"
primitive d Dummy op monitor interval=1s timeout=10s
location d_prefers_alpha d 100: alpha
location fence_not_on_alpha fence_ns -inf: alpha
property stonith-enabled=true stonith-max-attempts=3
"
        ),
    );
    wait_cib(&nodes[1], Duration::from_secs(20), "d on alpha", |c| {
        placement(c, &["d"]).as_deref() == Some("alpha")
    });
    nodes[0].kill();
    let failures =
        |c: &hablock::cluster::cib::Cib| c.status.fencing.iter().filter(|e| e.target == "alpha" && !e.ok).count();
    wait_cib(
        &nodes[1],
        Duration::from_secs(30),
        "three failed attempts to fence alpha",
        |c| failures(c) >= 3,
    );
    // Given up: no fourth attempt, and d is not started anywhere else (alpha may still run it).
    std::thread::sleep(Duration::from_secs(2));
    let c = common::cluster::cib(&nodes[1]);
    assert_eq!(failures(&c), 3, "{:?}", c.status.fencing);
    assert!(
        running(&c, "d").iter().all(|(n, _)| n == "alpha"),
        "d must not start elsewhere while alpha is unclean: {:?}",
        running(&c, "d")
    );
    let status = nodes[1].hbcrm_ok(&["status"]);
    assert!(
        status.contains("Failed Fencing Actions:\n  * reboot of alpha failed: delegate="),
        "{status}"
    );

    // The operator checked that alpha is off: the cluster recovers d.
    let out = nodes[2].hbcrm(&["node", "clearstate", "beta"]);
    assert!(!out.status.success(), "clearstate of a member is refused");
    nodes[2].hbcrm_ok(&["node", "clearstate", "alpha"]);
    wait_cib(&nodes[1], Duration::from_secs(20), "d recovered on a survivor", |c| {
        matches!(placement(c, &["d"]).as_deref(), Some("beta" | "gamma"))
    });
    let history = nodes[1].hbcrm_ok(&["status", "--fence-history"]);
    assert!(
        history.contains("  * alpha confirmed down: delegate=gamma"),
        "{history}"
    );
    assert!(!history.contains("Failed Fencing Actions"), "{history}");
    drop(nodes);
    drop(net);
}
