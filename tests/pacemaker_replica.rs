//! `ocf:hablock:replica` under a REAL Pacemaker 2.1 + Corosync 3 (Debian's packages): a
//! two-node cluster on this host (each node in its own network, mount and UTS namespace, see
//! `common::pacemaker`), each node with its own hablockd, and a promotable clone of the agent.
//! Pacemaker starts it on both nodes, promotes exactly one by the promotion scores the agent
//! sets, `crm_mon -1` shows Promoted/Unpromoted, writes on the Primary replicate, and
//! `crm_resource --move --promoted` and standby of the promoted node hand the Primary over with
//! the data intact; the fence-peer handlers' Pacemaker mode bans the peer from the promoted
//! role and lifts the ban. Skipped, with the reason, without Pacemaker or without root.

mod common;
use common::pacemaker::{missing_programs, PcmkCluster, PcmkOptions};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FAST_NET: &str = "ping_interval = \"100ms\"\ntimeout = \"600ms\"\nconnect_interval = \"100ms\"\n";

fn ocf_hablock() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/ocf/resource.d/hablock")
}

/// Both hablock nodes running, in sync, both Secondary; then taken down, so that it is
/// Pacemaker that starts them (`hbadm up` through the agent).
fn synced_then_down() -> (Node, Node) {
    let (mut a, mut b) = Node::pair(NodeOptions {
        size_mib: 16,
        writeback: true,
        resource_extra: FAST_NET.into(),
        ..Default::default()
    });
    a.hbadm_ok(&["create-md", "r0"]);
    b.hbadm_ok(&["create-md", "r0"]);
    a.start();
    b.start();
    wait_status(&a, "connected", Duration::from_secs(20), |st| {
        peer(st)["connection"] == "Connected"
    });
    a.hbadm_ok(&["primary", "--force", "r0"]);
    wait_status(&a, "initial sync done", Duration::from_secs(60), |st| {
        peer(st)["replication"] == "Established" && peer(st)["disk"] == "UpToDate" && peer(st)["out_of_sync"] == 0
    });
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

#[test]
fn pacemaker_runs_a_promotable_replica_and_moves_its_primary() {
    const T: &str = "pacemaker_runs_a_promotable_replica_and_moves_its_primary";
    if let Some(p) = missing_programs() {
        skip(
            T,
            &format!("{p} not installed (tools/setup installs pacemaker and corosync)"),
        );
        return;
    }
    if !Path::new("/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs").exists() || !have("nbdcopy") {
        skip(T, "resource-agents or nbdcopy missing (tools/setup installs them)");
        return;
    }
    let test_start = Instant::now();
    let (a, b) = synced_then_down();
    let hb = |name: &str| if name == "alpha" { &a } else { &b };

    let dir = cluster::test_dir("pcmk-");
    let pc = match PcmkCluster::start(
        dir.path(),
        &PcmkOptions {
            names: &["alpha", "beta"],
            token_ms: 1000,
            properties: &[("stonith-enabled", "false"), ("dc-deadtime", "2s")],
            ocf_hablock: ocf_hablock(),
            fence_agents: None,
        },
    ) {
        Ok(pc) => pc,
        Err(e) => {
            skip(T, &format!("cannot make network namespaces here (needs root): {e}"));
            return;
        }
    };
    let up = pc.wait_online("alpha", Duration::from_secs(60));
    eprintln!("Pacemaker: DC elected and both nodes online after {up:?}");

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
    let dc = mon
        .lines()
        .find_map(|l| l.trim().strip_prefix("* Current DC: "))
        .and_then(|r| r.split_whitespace().next())
        .expect("a DC")
        .to_string();
    let idle = Instant::now();
    while !String::from_utf8_lossy(&pc.node(&dc).tool("crmadmin", &["-S", &dc]).stdout).contains("S_IDLE") {
        assert!(idle.elapsed() < Duration::from_secs(30), "the DC never went idle");
        std::thread::sleep(Duration::from_millis(100));
    }
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
