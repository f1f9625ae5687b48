//! `ocf:hablock:replica` under a REAL Pacemaker 2.1 + Corosync 3 (Debian's packages): a
//! two-node cluster on this host (each node in its own network, mount and UTS namespace, see
//! `common::pacemaker`), each node with its own hablockd, and a promotable clone of the agent.
//! Pacemaker starts it on both nodes, promotes exactly one by the promotion scores the agent
//! sets, `crm_mon -1` shows Promoted/Unpromoted, writes on the Primary replicate, and
//! `crm_resource --move --promoted` and standby of the promoted node hand the Primary over with
//! the data intact; the fence-peer handlers' Pacemaker mode bans the peer from the promoted
//! role and lifts the ban. Skipped, with the reason, without Pacemaker or without root.

mod common;
use common::pacemaker::{fence_agents_dir, fence_device_xml, require_pacemaker, PcmkCluster, PcmkOptions, Totem};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn ocf_hablock() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/ocf/resource.d/hablock")
}

/// Both hablock nodes running, in sync, both Secondary; then taken down, so that it is
/// Pacemaker that starts them (`hbadm up` through the agent).
fn synced_then_down() -> (Node, Node) {
    let (a, b) = synced_fast_pair("");
    a.hbadm_ok(&["secondary", "r0"]);
    a.hbadm_ok(&["down", "r0"]);
    b.hbadm_ok(&["down", "r0"]);
    (a, b)
}

/// The promotable clone: one instance per node, promoted-max 1, notifications on, monitors for
/// both roles (different intervals, as Pacemaker requires), hbadm and the cluster file given
/// as parameters; the node name comes from Pacemaker (CRM_meta_on_node).
fn clone_xml(config: &Path, hbadm: &Path) -> String {
    format!(
        r#"<clone id="ms_r0">
  <meta_attributes id="ms_r0-meta">
    <nvpair id="ms_r0-promotable" name="promotable" value="true"/>
    <nvpair id="ms_r0-promoted-max" name="promoted-max" value="1"/>
    <nvpair id="ms_r0-promoted-node-max" name="promoted-node-max" value="1"/>
    <nvpair id="ms_r0-clone-max" name="clone-max" value="2"/>
    <nvpair id="ms_r0-clone-node-max" name="clone-node-max" value="1"/>
    <nvpair id="ms_r0-notify" name="notify" value="true"/>
  </meta_attributes>
  <primitive id="p_r0" class="ocf" provider="hablock" type="replica">
    <instance_attributes id="p_r0-params">
      <nvpair id="p_r0-resource" name="resource" value="r0"/>
      <nvpair id="p_r0-config" name="config" value="{}"/>
      <nvpair id="p_r0-hbadm" name="hbadm" value="{}"/>
    </instance_attributes>
    <operations>
      <op id="p_r0-monitor-promoted" name="monitor" interval="3s" role="Promoted" timeout="20s"/>
      <op id="p_r0-monitor-unpromoted" name="monitor" interval="4s" role="Unpromoted" timeout="20s"/>
      <op id="p_r0-start" name="start" interval="0" timeout="60s"/>
      <op id="p_r0-stop" name="stop" interval="0" timeout="60s"/>
      <op id="p_r0-promote" name="promote" interval="0" timeout="60s"/>
      <op id="p_r0-demote" name="demote" interval="0" timeout="60s"/>
    </operations>
  </primitive>
</clone>"#,
        config.display(),
        hbadm.display()
    )
}

/// The node list of a `crm_mon -1` line such as `    * Promoted: [ alpha ]`.
fn role_nodes(mon: &str, role: &str) -> Vec<String> {
    let key = format!("* {role}: [ ");
    mon.lines()
        .find_map(|l| l.trim().strip_prefix(&key[..]).map(str::to_string))
        .map(|rest| {
            rest.trim_end_matches(']')
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn promoted_on(mon: &str, node: &str) -> bool {
    role_nodes(mon, "Promoted") == [node]
}

fn other(name: &str) -> &'static str {
    if name == "alpha" {
        "beta"
    } else {
        "alpha"
    }
}

/// Pacemaker, Corosync, resource-agents and nbdcopy are here (else the test is skipped).
fn prerequisites(t: &str) -> bool {
    require_pacemaker(t)
        && require_file(t, "/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs", "resource-agents")
        && require(t, &[("nbdcopy", "libnbd-bin")])
}

/// Pacemaker nodes alpha and beta (token 1000 ms, dc-deadtime 2 s), both online; with
/// `fencing`, stonith is on (no startup fencing) and the test fence agents are installed in
/// the nodes. `None` (the test skipped) where network namespaces cannot be made.
fn two_pacemaker_nodes(t: &str, prefix: &str, fencing: bool) -> Option<(tempfile::TempDir, PcmkCluster)> {
    let dir = cluster::test_dir(prefix);
    let stonith = if fencing { "true" } else { "false" };
    let pc = PcmkCluster::start(
        dir.path(),
        &PcmkOptions {
            names: &["alpha", "beta"],
            totem: Totem::token(1000),
            properties: &[
                ("stonith-enabled", stonith),
                ("startup-fencing", "false"),
                ("dc-deadtime", "2s"),
            ],
            ocf_hablock: ocf_hablock(),
            fence_agents: fencing.then(|| fence_agents_dir(dir.path())),
        },
    );
    match pc {
        Ok(pc) => {
            let up = pc.wait_online("alpha", Duration::from_secs(60));
            eprintln!("Pacemaker: DC elected and both nodes online after {up:?}");
            Some((dir, pc))
        }
        Err(e) => {
            skip(
                t,
                Missing::Netns,
                &format!("cannot make network namespaces here (needs root): {e}"),
            );
            None
        }
    }
}

#[test]
fn pacemaker_runs_a_promotable_replica_and_moves_its_primary() {
    const T: &str = "pacemaker_runs_a_promotable_replica_and_moves_its_primary";
    if !prerequisites(T) {
        return;
    }
    let test_start = Instant::now();
    let (a, b) = synced_then_down();
    let hb = |name: &str| if name == "alpha" { &a } else { &b };
    let Some((dir, pc)) = two_pacemaker_nodes(T, "pcmk-", false) else {
        return;
    };

    // Configure the promotable clone with Pacemaker's own tool.
    pc.node("alpha").tool_ok(
        "cibadmin",
        &[
            "--create",
            "-o",
            "resources",
            "--xml-text",
            &clone_xml(&a.config, &bin("hbadm")),
        ],
    );
    let (mon, took) = pc.wait_mon("alpha", Duration::from_secs(60), "one Promoted, one Unpromoted", |t| {
        role_nodes(t, "Promoted").len() == 1 && role_nodes(t, "Unpromoted").len() == 1
    });
    eprintln!("started and promoted {took:?} after configuring:\n{mon}");
    assert!(mon.contains("Clone Set: ms_r0 [p_r0] (promotable)"), "{mon}");
    assert!(!mon.contains("Failed Resource Actions"), "{mon}\n{}", pc.logs());
    let first = role_nodes(&mon, "Promoted")[0].clone();
    let second = other(&first);
    assert_eq!(role_nodes(&mon, "Unpromoted"), [second]);
    // Pacemaker's picture is hablock's: the promoted instance is the Primary.
    assert_eq!(hb(&first).hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");
    assert_eq!(hb(second).hbadm_ok(&["role", "r0"]).trim(), "Secondary/Primary");
    // The scores the agent set went through Pacemaker's own crm_attribute -p into its attrd.
    for n in ["alpha", "beta"] {
        let score = pc.node("alpha").tool_ok(
            "crm_attribute",
            &["-N", n, "-n", "master-p_r0", "-l", "reboot", "-G", "-q"],
        );
        assert_eq!(score.trim(), "10000", "promotion score on {n}");
    }
    // The agent's start ran under Pacemaker (hablock had the resource down).
    let log = std::fs::read_to_string(pc.node(second).dir.join("log-pcmk/pacemaker.log")).unwrap();
    assert!(
        log.contains("Result of start operation for p_r0 on"),
        "no start of p_r0 on {second}"
    );

    // Writes on the Primary reach the Secondary's disk (protocol C).
    let data1 = random_bytes(71, 1 << 20);
    let src = dir.path().join("data1.bin");
    std::fs::write(&src, &data1).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(hb(&first).uri()));

    // Move the promoted role: Pacemaker demotes `first` and promotes `second`.
    let t0 = Instant::now();
    pc.node("alpha").tool_ok(
        "crm_resource",
        &["--move", "-r", "ms_r0", "--promoted", "--node", second],
    );
    let (mon, _) = pc.wait_mon("alpha", Duration::from_secs(60), "the move of the promoted role", |t| {
        promoted_on(t, second) && role_nodes(t, "Unpromoted") == [first.as_str()]
    });
    eprintln!("crm_resource --move: promoted on {second} after {:?}", t0.elapsed());
    assert!(!mon.contains("Failed Resource Actions"), "{mon}\n{}", pc.logs());
    assert_eq!(hb(second).hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");
    assert_eq!(hb(&first).hbadm_ok(&["role", "r0"]).trim(), "Secondary/Primary");
    let back = nbd_read_prefix(&hb(second).uri(), &dir.path().join("read1.bin"), data1.len());
    assert!(back == data1, "the data written on {first} is not what {second} serves");
    let out = pc.node("alpha").tool_ok("crm_resource", &["--clear", "-r", "ms_r0"]);
    assert!(out.contains("cli-prefer-ms_r0"), "{out}");

    // Standby of the promoted node: Pacemaker demotes and stops it there, promotes the other.
    let data2 = random_bytes(72, 1 << 20);
    let src2 = dir.path().join("data2.bin");
    std::fs::write(&src2, &data2).unwrap();
    ok(Command::new("nbdcopy").arg(&src2).arg(hb(second).uri()));
    let t0 = Instant::now();
    pc.node("alpha").tool_ok("crm_standby", &["-N", second, "-v", "on"]);
    let (mon, _) = pc.wait_mon("alpha", Duration::from_secs(60), "standby handing over", |t| {
        promoted_on(t, &first) && role_nodes(t, "Stopped") == [second] && t.contains(&format!("Node {second}: standby"))
    });
    eprintln!("standby: promoted on {first} after {:?}", t0.elapsed());
    assert!(!mon.contains("Failed Resource Actions"), "{mon}\n{}", pc.logs());
    // The agent's stop took the resource down in hablock.
    assert_eq!(hb(second).hbadm_ok(&["role", "r0"]).trim(), "Unconfigured/Unknown");
    assert_eq!(hb(&first).hbadm_ok(&["role", "r0"]).trim(), "Primary/Unknown");
    let back = nbd_read_prefix(&hb(&first).uri(), &dir.path().join("read2.bin"), data2.len());
    assert!(back == data2, "the data written on {second} is not what {first} serves");

    // Back online: started again as Unpromoted (the Primary stays), and resynced.
    pc.node("alpha").tool_ok("crm_standby", &["-N", second, "-v", "off"]);
    let (mon, _) = pc.wait_mon("alpha", Duration::from_secs(60), "the standby node back", |t| {
        promoted_on(t, &first) && role_nodes(t, "Unpromoted") == [second]
    });
    assert!(!mon.contains("Failed Resource Actions"), "{mon}\n{}", pc.logs());
    wait_status(hb(&first), "peer resynced", Duration::from_secs(30), |st| {
        peer(st)["disk"] == "UpToDate" && peer(st)["out_of_sync"] == 0
    });

    // Resource-level fencing through Pacemaker's CIB: the fence_peer handler in its Pacemaker
    // mode, run inside the Primary's node with the environment hablockd gives it when the
    // Primary loses its peer, bans the peer from the promoted role...
    let handler = |on: &str, script: &str, me: &str, other: &str| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/bin").join(script);
        pc.node(on).tool(
            "env",
            &[
                "HABLOCK_RESOURCE=r0",
                &format!("HABLOCK_NODE={me}"),
                &format!("HABLOCK_PEER={other}"),
                "sh",
                script.to_str().unwrap(),
                "--pacemaker",
            ],
        )
    };
    let out = handler(&first, "hablock-fence-peer", &first, second);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("placed hablock-fence-by-handler-r0-ms_r0"), "{said}");
    let constraints = pc.node("alpha").tool_ok("cibadmin", &["-Q", "-o", "constraints"]);
    assert!(
        constraints.contains("hablock-fence-by-handler-r0-ms_r0")
            && constraints.contains(&format!("value=\"{first}\"")),
        "{constraints}"
    );
    // ...so Pacemaker does not carry out a move of the promoted role to it...
    pc.node("alpha").tool_ok(
        "crm_resource",
        &["--move", "-r", "ms_r0", "--promoted", "--node", second],
    );
    std::thread::sleep(Duration::from_secs(2));
    pc.wait_idle("alpha", Duration::from_secs(30));
    let mon = pc.node("alpha").crm_mon();
    assert!(
        promoted_on(&mon, &first),
        "promoted despite the fencing constraint:\n{mon}"
    );
    assert_eq!(hb(&first).hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");
    // ...until the after_resync_target handler on the peer lifts the ban: then it does.
    let out = handler(second, "hablock-unfence-peer", second, &first);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("removed hablock-fence-by-handler-r0-ms_r0"), "{said}");
    pc.wait_mon(
        "alpha",
        Duration::from_secs(60),
        "the move once the ban is lifted",
        |t| promoted_on(t, second),
    );
    pc.node("alpha").tool_ok("crm_resource", &["--clear", "-r", "ms_r0"]);
    eprintln!("whole test: {:?}", test_start.elapsed());
}

/// A hablockd running inside a Pacemaker node's namespaces (killed by PID on drop).
struct InNode {
    child: Option<std::process::Child>,
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
}

impl InNode {
    fn spawn(pc: &PcmkCluster, name: &'static str, config: &Path) -> InNode {
        let log = config.with_file_name(format!("hablockd-{name}.log"));
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // nsenter execs hablockd (no PID namespace is entered): the child's PID is hablockd's.
        let child = Command::new("nsenter")
            .args(["-t", &pc.node(name).pid().to_string(), "-n", "-m", "-u", "-r", "--"])
            .arg(bin("hablockd"))
            .arg("--config")
            .arg(config)
            .arg("--node")
            .arg(name)
            .env("HABLOCK_LOG", "info")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut n = InNode {
            child: Some(child),
            name,
            config: config.to_path_buf(),
            log,
        };
        let start = Instant::now();
        while !n.hbadm(&["status", "r0"]).status.success() {
            if let Some(st) = n.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hablockd {name} exited ({st}): {}", n.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "hablockd {name} did not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    fn hbadm(&self, args: &[&str]) -> std::process::Output {
        run_tool("hbadm", &self.config, self.name, args)
    }

    fn hbadm_ok(&self, args: &[&str]) -> String {
        let out = self.hbadm(args);
        assert!(
            out.status.success(),
            "{}: hbadm {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `hbadm status --json r0`'s first peer until `f` holds.
    fn wait_peer(&self, what: &str, limit: Duration, f: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        loop {
            let st: serde_json::Value = serde_json::from_str(&self.hbadm_ok(&["status", "--json", "r0"])).unwrap();
            if f(peer(&st)) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{}: {what} not within {limit:?}: {st}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for InNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// r0 between the Pacemaker nodes' own addresses, NBD on Unix sockets, with resource-level
/// fencing through the handlers' Pacemaker mode.
fn fenced_config(dir: &Path) -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/bin");
    for n in ["alpha", "beta"] {
        std::fs::File::create(dir.join(format!("{n}-r0.img")))
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
    }
    let port = free_port();
    let text = format!(
        r#"[global]
control_dir = "{d}/run"
state_dir = "{d}/state"

[[resource]]
name = "r0"
protocol = "C"
fencing = "resource-only"
{FAST_NET}
[resource.handlers]
fence_peer = "sh {b}/hablock-fence-peer --pacemaker"
after_resync_target = "sh {b}/hablock-unfence-peer --pacemaker"
timeout = "30s"
[resource.on.alpha]
address = "{a0}:{port}"
disk = "{d}/alpha-r0.img"
meta_disk = "internal"
nbd = "unix:{d}/alpha-r0.nbd"
cache = "writeback"
[resource.on.beta]
address = "{a1}:{port}"
disk = "{d}/beta-r0.img"
meta_disk = "internal"
nbd = "unix:{d}/beta-r0.nbd"
cache = "writeback"
"#,
        d = dir.display(),
        b = bin_dir.display(),
        a0 = common::pacemaker::ring_addr(0),
        a1 = common::pacemaker::ring_addr(1),
    );
    let path = dir.join("hablock.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The fencing constraint hablock-fence-peer places for r0, if any, and the node it keeps the
/// promoted role on.
fn fence_constraint(pc: &PcmkCluster, on: &str) -> Option<String> {
    let c = pc.node(on).tool_ok("cibadmin", &["-Q", "-o", "constraints"]);
    if !c.contains("id=\"hablock-fence-by-handler-r0-ms_r0\"") {
        return None;
    }
    let v = c.split("operation=\"ne\" value=\"").nth(1)?;
    Some(v.split('"').next()?.to_string())
}

/// Both hablockds started inside their Pacemaker nodes, connected and in sync, both Secondary.
fn synced_pair_in_nodes(pc: &PcmkCluster, dir: &Path) -> (PathBuf, InNode, InNode) {
    let config = fenced_config(dir);
    for n in ["alpha", "beta"] {
        ok(Command::new(bin("hbadm"))
            .args(["--config"])
            .arg(&config)
            .args(["--node", n, "create-md", "r0"]));
    }
    let alpha = InNode::spawn(pc, "alpha", &config);
    let beta = InNode::spawn(pc, "beta", &config);
    alpha.wait_peer("connected", Duration::from_secs(20), |p| p["connection"] == "Connected");
    alpha.hbadm_ok(&["primary", "--force", "r0"]);
    alpha.wait_peer("initial sync", Duration::from_secs(60), |p| {
        p["disk"] == "UpToDate" && p["out_of_sync"] == 0
    });
    alpha.hbadm_ok(&["secondary", "r0"]);
    (config, alpha, beta)
}

fn nbd_unix_uri(dir: &Path, node: &str) -> String {
    format!("nbd+unix:///r0?socket={}/{node}-r0.nbd", dir.display())
}

#[test]
fn hablockd_fences_its_lost_peer_through_pacemakers_cib() {
    const T: &str = "hablockd_fences_its_lost_peer_through_pacemakers_cib";
    if !prerequisites(T) {
        return;
    }
    let Some((dir, pc)) = two_pacemaker_nodes(T, "pcmk-fence-", false) else {
        return;
    };

    // Each hablockd inside its Pacemaker node, replicating over the nodes' veth addresses, so
    // that its fence_peer handler's cibadmin reaches that node's CIB.
    let (config, alpha, mut beta) = synced_pair_in_nodes(&pc, dir.path());

    pc.node("alpha").tool_ok(
        "cibadmin",
        &[
            "--create",
            "-o",
            "resources",
            "--xml-text",
            &clone_xml(&config, &bin("hbadm")),
        ],
    );
    let (mon, _) = pc.wait_mon("alpha", Duration::from_secs(60), "one Promoted, one Unpromoted", |t| {
        role_nodes(t, "Promoted").len() == 1 && role_nodes(t, "Unpromoted").len() == 1
    });
    let promoted = role_nodes(&mon, "Promoted")[0].clone();
    assert_eq!(fence_constraint(&pc, "alpha"), None, "no fencing while connected");
    // Move the Primary to alpha, so that it is beta's daemon that dies below.
    if promoted != "alpha" {
        pc.node("alpha").tool_ok(
            "crm_resource",
            &["--move", "-r", "ms_r0", "--promoted", "--node", "alpha"],
        );
        pc.wait_mon("alpha", Duration::from_secs(60), "the Primary on alpha", |t| {
            promoted_on(t, "alpha")
        });
        pc.node("alpha").tool_ok("crm_resource", &["--clear", "-r", "ms_r0"]);
    }
    assert_eq!(alpha.hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");

    // beta's hablockd dies: the Primary's hablockd runs fence_peer, which bans beta from the
    // promoted role in Pacemaker's CIB.
    beta.kill();
    let start = Instant::now();
    while fence_constraint(&pc, "alpha").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no fencing constraint after the peer was lost\n{}",
            alpha.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("fence_peer placed the constraint {:?} after the kill", start.elapsed());
    assert_eq!(fence_constraint(&pc, "alpha").as_deref(), Some("alpha"));
    // Pacemaker keeps alpha promoted (beta's instance fails and stops).
    pc.wait_mon("alpha", Duration::from_secs(60), "beta's instance stopped", |t| {
        promoted_on(t, "alpha") && role_nodes(t, "Stopped") == ["beta"]
    });
    // And its recovery finished: a stop still pending on beta would otherwise reach the
    // restarted hablockd below, take r0 down, and make alpha fence beta a second time.
    std::thread::sleep(Duration::from_secs(1));
    pc.wait_idle("alpha", Duration::from_secs(30));

    // Writes while beta is away (so it has something to resync: after a reconnection that
    // needs no resync, no after_resync_target runs and the ban stays).
    let src = dir.path().join("while-away.bin");
    std::fs::write(&src, random_bytes(73, 1 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(nbd_unix_uri(dir.path(), "alpha")));
    // beta comes back: its hablockd brings r0 up, resyncs as SyncTarget and runs
    // after_resync_target, which lifts the ban; Pacemaker, cleaned up, adopts it Unpromoted.
    beta = InNode::spawn(&pc, "beta", &config);
    alpha.wait_peer("resync", Duration::from_secs(60), |p| {
        p["disk"] == "UpToDate" && p["out_of_sync"] == 0
    });
    let start = Instant::now();
    while fence_constraint(&pc, "alpha").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the fencing constraint stayed after the resync\n{}",
            beta.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pc.node("alpha").tool_ok("crm_resource", &["--cleanup", "-r", "ms_r0"]);
    pc.wait_mon("alpha", Duration::from_secs(60), "beta back as Unpromoted", |t| {
        promoted_on(t, "alpha") && role_nodes(t, "Unpromoted") == ["beta"]
    });
}

#[test]
fn a_killed_primary_node_is_fenced_and_the_survivor_promoted() {
    const T: &str = "a_killed_primary_node_is_fenced_and_the_survivor_promoted";
    if !prerequisites(T) {
        return;
    }
    let Some((dir, mut pc)) = two_pacemaker_nodes(T, "pcmk-stonith-", true) else {
        return;
    };
    let (config, alpha, beta) = synced_pair_in_nodes(&pc, dir.path());
    let hbn = |n: &str| if n == "alpha" { &alpha } else { &beta };
    pc.node("alpha").tool_ok(
        "cibadmin",
        &["--create", "-o", "resources", "--xml-text", &fence_device_xml(&pc)],
    );
    pc.node("alpha").tool_ok(
        "cibadmin",
        &[
            "--create",
            "-o",
            "resources",
            "--xml-text",
            &clone_xml(&config, &bin("hbadm")),
        ],
    );
    let (mon, _) = pc.wait_mon(
        "alpha",
        Duration::from_secs(60),
        "promoted, and the fence device started",
        |t| {
            role_nodes(t, "Promoted").len() == 1
                && role_nodes(t, "Unpromoted").len() == 1
                && t.lines()
                    .any(|l| l.contains("(stonith:fence_hablock_netns):") && l.contains("Started"))
        },
    );
    let victim = role_nodes(&mon, "Promoted")[0].clone();
    let survivor = other(&victim);
    let data = random_bytes(74, 1 << 20);
    let src = dir.path().join("before-kill.bin");
    std::fs::write(&src, &data).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(nbd_unix_uri(dir.path(), &victim)));
    pc.wait_idle(survivor, Duration::from_secs(30));

    // The Primary's whole node loses power: Pacemaker on the survivor fences it, then promotes
    // its own instance, whose hablockd first runs fence_peer (the peer's disk is unknown).
    let killed = Instant::now();
    pc.kill_node(if victim == "alpha" { 0 } else { 1 });
    let (mon, _) = pc.wait_mon(survivor, Duration::from_secs(60), "promotion on the survivor", |t| {
        promoted_on(t, survivor)
    });
    eprintln!(
        "SIGKILL of {victim}'s node -> Promoted on {survivor}: {:?}",
        killed.elapsed()
    );
    assert!(mon.contains(&format!("OFFLINE: [ {victim} ]")), "{mon}");
    let history = pc.node(survivor).tool_ok("stonith_admin", &["--history", &victim]);
    assert!(
        history.contains("successful"),
        "no successful fencing of {victim}: {history}"
    );
    assert_eq!(hbn(survivor).hbadm_ok(&["role", "r0"]).trim(), "Primary/Unknown");
    assert_eq!(fence_constraint(&pc, survivor).as_deref(), Some(survivor));
    let back = nbd_read_prefix(
        &nbd_unix_uri(dir.path(), survivor),
        &dir.path().join("after-kill.bin"),
        data.len(),
    );
    assert!(
        back == data,
        "the data written on {victim} is not what {survivor} serves"
    );
}
