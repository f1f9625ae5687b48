//! Resource-level fencing: a Primary hablockd that loses its peer runs the `fence_peer`
//! handler with DRBD's environment (resource-only: writes go on; resource-and-stonith:
//! write acknowledgements wait for the handler), the resynced peer runs
//! `after_resync_target`; and the `agents/bin/hablock-fence-peer` / `hablock-unfence-peer`
//! scripts place and remove the location constraint through hbcrm (a fake hbcrm here).

mod common;
use common::*;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn wait_file(p: &Path, limit: Duration, logs: &dyn Fn() -> String) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{} not written within {limit:?}\n{}",
            p.display(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory for handler scripts and what they record.
fn scratch() -> tempfile::TempDir {
    let base = std::env::var("HABLOCK_TEST_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("fence-").tempdir_in(base).unwrap()
}

fn env_map(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn losing_the_peer_runs_fence_peer_and_the_resynced_peer_runs_after_resync_target() {
    let dir = scratch();
    let handler = dir.path().join("handler");
    // Records its environment per handler and node; fence-peer answers "peer outdated".
    write_script(
        &handler,
        &format!(
            "f={d}/$HABLOCK_HANDLER-$HABLOCK_NODE.env\nenv | grep -E '^(HABLOCK|DRBD)_' | sort > $f.tmp\nmv $f.tmp $f\n\
             [ \"$HABLOCK_HANDLER\" = fence-peer ] && exit 4\nexit 0\n",
            d = dir.path().display()
        ),
    );
    let extra = format!(
        "fencing = \"resource-only\"\n[resource.handlers]\nfence_peer = \"{h}\"\nafter_resync_target = \"{h}\"\ntimeout = \"10s\"\n",
        h = handler.display()
    );
    let (a, b) = synced_fast_pair(&extra);
    // The initial sync made beta a resync target: its after-resync-target ran already.
    let first = dir.path().join("after-resync-target-beta.env");
    wait_file(&first, Duration::from_secs(10), &|| b.log());
    std::fs::remove_file(&first).unwrap();
    assert!(
        !dir.path().join("fence-peer-alpha.env").exists(),
        "fenced while connected"
    );
    let Some(cut) = LinkCut::new(
        "losing_the_peer_runs_fence_peer_and_the_resynced_peer_runs_after_resync_target",
        replication_port(&a),
    ) else {
        return;
    };
    let env = env_map(&wait_file(
        &dir.path().join("fence-peer-alpha.env"),
        Duration::from_secs(10),
        &|| a.log(),
    ));
    let want = [
        ("HABLOCK_HANDLER", "fence-peer"),
        ("HABLOCK_RESOURCE", "r0"),
        ("HABLOCK_NODE", "alpha"),
        ("HABLOCK_PEER", "beta"),
        ("HABLOCK_PEER_ADDRESS", "127.0.0.2"),
        ("HABLOCK_FENCING", "resource-only"),
        ("DRBD_RESOURCE", "r0"),
        ("DRBD_PEER", "beta"),
        ("DRBD_PEER_ADDRESS", "127.0.0.2"),
        ("DRBD_PEER_AF", "ipv4"),
        ("DRBD_MY_ADDRESS", "127.0.0.1"),
        ("DRBD_PEER_NODE_ID", "1"),
        ("DRBD_NODE_ID_1", "beta"),
    ];
    for (k, v) in want {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k} in {env:?}");
    }
    assert_eq!(env.get("HABLOCK_CONFIG"), Some(&a.config.display().to_string()));
    // The Secondary lost its peer too, but only a Primary fences.
    assert!(!dir.path().join("fence-peer-beta.env").exists());
    let start = Instant::now();
    while !a.log().contains("peer outdated") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "exit 4 not logged:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // resource-only: writes go on while the peer is away.
    let mut nbd = RawNbd::connect(a.port, "r0");
    assert_eq!(nbd.request(1, 1, 0, 4096, &[7u8; 4096]), 0);
    drop(cut);
    // Healing resyncs beta, which then runs after-resync-target.
    let env = env_map(&wait_file(
        &dir.path().join("after-resync-target-beta.env"),
        Duration::from_secs(30),
        &|| b.log(),
    ));
    assert_eq!(env.get("HABLOCK_PEER").map(String::as_str), Some("alpha"));
    assert_eq!(env.get("DRBD_RESOURCE").map(String::as_str), Some("r0"));
}

#[test]
fn with_resource_and_stonith_writes_are_acknowledged_only_after_the_handler_returns() {
    let dir = scratch();
    let handler = dir.path().join("handler");
    write_script(
        &handler,
        &format!(
            "[ \"$HABLOCK_HANDLER\" = fence-peer ] || exit 0\ntouch {d}/started\nsleep 2\ntouch {d}/done\nexit 7\n",
            d = dir.path().display()
        ),
    );
    let extra = format!(
        "fencing = \"resource-and-stonith\"\n[resource.handlers]\nfence_peer = \"{h}\"\ntimeout = \"20s\"\n",
        h = handler.display()
    );
    let (a, _b) = synced_fast_pair(&extra);
    let mut nbd = RawNbd::connect(a.port, "r0");
    assert_eq!(nbd.request(1, 1, 0, 4096, &[1u8; 4096]), 0);
    let Some(_cut) = LinkCut::new(
        "with_resource_and_stonith_writes_are_acknowledged_only_after_the_handler_returns",
        replication_port(&a),
    ) else {
        return;
    };
    // Under protocol C this write waits for the peer; when the loss is noticed (600 ms)
    // it would complete locally, but the handler (2 s) must return first.
    let t = Instant::now();
    assert_eq!(nbd.request(1, 2, 4096, 4096, &[2u8; 4096]), 0);
    let took = t.elapsed();
    assert!(
        dir.path().join("started").exists() && dir.path().join("done").exists(),
        "write acknowledged after {took:?}, before the fence-peer handler returned\n{}",
        a.log()
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // Afterwards writes complete at once (locally, the peer is gone).
    let t = Instant::now();
    assert_eq!(nbd.request(1, 3, 8192, 4096, &[3u8; 4096]), 0);
    // Well under the 2 s handler above, so it did not wait for another one.
    assert!(t.elapsed() < Duration::from_millis(1900), "{:?}", t.elapsed());
    assert!(a.log().contains("peer fenced (STONITH)"), "{}", a.log());
}

/// A fake hbcrm: `configure show` prints $dir/cib.crm, `configure load update FILE` and
/// `configure delete ID` are appended to $dir/hbcrm.log (the loaded file's text too).
fn fake_hbcrm(dir: &Path, cib: &str) -> PathBuf {
    std::fs::write(dir.join("cib.crm"), cib).unwrap();
    let p = dir.join("hbcrm");
    write_script(
        &p,
        &format!(
            "d={d}\ncase \"$1 $2\" in\n\
             'configure show') cat $d/cib.crm ;;\n\
             'configure load') echo \"load $3 $(cat $4)\" >> $d/hbcrm.log ;;\n\
             'configure delete') echo \"delete $3\" >> $d/hbcrm.log ;;\n\
             *) echo \"unexpected: $*\" >> $d/hbcrm.log; exit 1 ;;\nesac\n",
            d = dir.display()
        ),
    );
    p
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/bin").join(name)
}

#[test]
fn fence_and_unfence_scripts_place_and_remove_the_constraint() {
    let dir = scratch();
    let cib = "primitive p_web ocf:heartbeat:Dummy\n\
               primitive p_r0 ocf:hablock:replica \\\n    params resource=r0 config=/etc/hablock/hablock.toml \\\n    op monitor interval=10s role=Promoted\n\
               primitive p_r1 ocf:hablock:replica params resource=r1\n\
               ms ms_r1 p_r1 meta notify=true\n\
               ms ms_r0 p_r0 meta promoted-max=1 notify=true\n";
    let hbcrm = fake_hbcrm(dir.path(), cib);
    let run = |name: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(script(name));
        c.args(args)
            .env("HBCRM", &hbcrm)
            .env("HABLOCK_RESOURCE", "r0")
            .env("HABLOCK_NODE", "alpha")
            .env("HABLOCK_PEER", "beta")
            .env_remove("HABLOCK_MS_ID");
        for (k, v) in env {
            c.env(k, v);
        }
        run_timeout(&mut c, Duration::from_secs(30))
    };
    let log = || std::fs::read_to_string(dir.path().join("hbcrm.log")).unwrap_or_default();
    // The ms id found from the configuration; exit 4 ("peer outdated").
    let out = run("hablock-fence-peer", &[], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let line = log();
    assert!(line.starts_with("load update "), "{line}");
    assert!(
        line.trim_end()
            .ends_with("location hablock-fence-by-handler-r0-ms_r0 ms_r0 rule $role=Promoted -inf: #uname ne alpha"),
        "{line}"
    );
    // An explicit ms id wins; DRBD's names work too.
    std::fs::remove_file(dir.path().join("hbcrm.log")).unwrap();
    let out = run(
        "hablock-fence-peer",
        &["--ms-id", "other"],
        &[("HABLOCK_RESOURCE", ""), ("DRBD_RESOURCE", "r0")],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        log().contains("location hablock-fence-by-handler-r0-other other rule"),
        "{}",
        log()
    );
    // No promotable clone for the resource: a clear failure, not a wrong constraint.
    std::fs::remove_file(dir.path().join("hbcrm.log")).unwrap();
    let out = run("hablock-fence-peer", &[], &[("HABLOCK_RESOURCE", "r9")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ms-id"));
    assert_eq!(log(), "");
    // hbcrm refusing the change (e.g. no quorum) is a failure too.
    let out = run(
        "hablock-fence-peer",
        &[],
        &[("HBCRM", dir.path().join("missing-hbcrm").to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    // Unfence: nothing to remove is fine; a placed constraint is deleted.
    let out = run("hablock-unfence-peer", &[], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(log(), "");
    std::fs::write(
        dir.path().join("cib.crm"),
        format!(
            "{cib}location hablock-fence-by-handler-r0-ms_r0 ms_r0 rule $role=Promoted -inf: #uname ne alpha\n\
             location hablock-fence-by-handler-r1-ms_r1 ms_r1 rule $role=Promoted -inf: #uname ne beta\n"
        ),
    )
    .unwrap();
    let out = run("hablock-unfence-peer", &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(log(), "delete hablock-fence-by-handler-r0-ms_r0\n");
}

#[test]
fn a_disconnected_secondary_is_promoted_only_after_fencing_its_peer() {
    let dir = scratch();
    let handler = dir.path().join("handler");
    // Records its environment; exits with the code in rc-NODE (default 4).
    write_script(
        &handler,
        &format!(
            "d={d}\n[ \"$HABLOCK_HANDLER\" = fence-peer ] || exit 0\n\
             env | grep -E '^(HABLOCK|DRBD)_' | sort > $d/fence-$HABLOCK_NODE.env\n\
             rc=$(cat $d/rc-$HABLOCK_NODE 2>/dev/null || echo 4)\nexit $rc\n",
            d = dir.path().display()
        ),
    );
    let extra = format!(
        "fencing = \"resource-only\"\n[resource.handlers]\nfence_peer = \"{h}\"\ntimeout = \"10s\"\n",
        h = handler.display()
    );
    let (mut a, b) = synced_fast_pair(&extra);
    let env_file = dir.path().join("fence-beta.env");
    // The Primary dies; beta (Secondary) loses it without fencing anyone.
    a.kill();
    wait_status(&b, "peer lost", Duration::from_secs(10), |st| {
        peer(st)["connection"] != "Connected"
    });
    assert!(!env_file.exists());
    // "Peer is Primary" (6): promotion refused, beta stays Secondary.
    std::fs::write(dir.path().join("rc-beta"), "6").unwrap();
    let out = b.hbadm(&["primary", "r0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "promoted although fence-peer said the peer is Primary"
    );
    assert!(err.contains("fence-peer") && err.contains("peer is Primary"), "{err}");
    assert_eq!(b.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    let env = env_map(&std::fs::read_to_string(&env_file).unwrap());
    assert_eq!(env.get("HABLOCK_PEER").map(String::as_str), Some("alpha"));
    assert_eq!(env.get("DRBD_PEER").map(String::as_str), Some("alpha"));
    // "Peer fenced" (7): promoted.
    std::fs::remove_file(&env_file).unwrap();
    std::fs::write(dir.path().join("rc-beta"), "7").unwrap();
    b.hbadm_ok(&["primary", "r0"]);
    assert!(env_file.exists());
    assert_eq!(b.hbadm_ok(&["role", "r0"]).trim(), "Primary/Unknown");
    // The peer stays fenced until it is seen again: no second run to switch roles.
    std::fs::remove_file(&env_file).unwrap();
    b.hbadm_ok(&["secondary", "r0"]);
    b.hbadm_ok(&["primary", "r0"]);
    assert!(!env_file.exists());
    assert!(b.log().contains("peer fenced (STONITH)"), "{}", b.log());
}

/// DRBD 9's unfence-peer: the Primary that fenced its peer undoes it once the peer is back
/// and UpToDate, whether or not a resync was needed (after-resync-target alone misses a peer
/// that comes back with nothing to sync, and its ban would stay).
#[test]
fn the_fencing_node_runs_unfence_peer_when_its_peer_is_back_up_to_date() {
    const TEST: &str = "the_fencing_node_runs_unfence_peer_when_its_peer_is_back_up_to_date";
    let dir = scratch();
    let handler = dir.path().join("handler");
    // Counts each handler's runs per node; fence-peer answers "peer outdated".
    write_script(
        &handler,
        &format!(
            "echo x >> {d}/$HABLOCK_HANDLER-$HABLOCK_NODE.count\n[ \"$HABLOCK_HANDLER\" = fence-peer ] && exit 4\nexit 0\n",
            d = dir.path().display()
        ),
    );
    let extra = format!(
        "fencing = \"resource-only\"\n[resource.handlers]\nfence_peer = \"{h}\"\nunfence_peer = \"{h}\"\ntimeout = \"10s\"\n",
        h = handler.display()
    );
    let (a, _b) = synced_fast_pair(&extra);
    let count = |name: &str| {
        std::fs::read_to_string(dir.path().join(format!("{name}.count")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let wait_count = |name: &str, n: usize| {
        let start = Instant::now();
        while count(name) < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} did not run {n} time(s)\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(count("unfence-peer-alpha"), 0, "nothing was fenced yet");
    for (round, write) in [(1, false), (2, true)] {
        let Some(cut) = LinkCut::new(TEST, replication_port(&a)) else {
            return;
        };
        wait_count("fence-peer-alpha", round);
        if write {
            // Something to resync: unfence waits for the resync to finish.
            let mut nbd = RawNbd::connect(a.port, "r0");
            assert_eq!(nbd.request(1, 1, 0, 4096, &[7u8; 4096]), 0);
        }
        assert_eq!(
            count("unfence-peer-alpha"),
            round - 1,
            "round {round}: not before the peer is back"
        );
        drop(cut);
        wait_count("unfence-peer-alpha", round);
        wait_status(&a, "in sync again", Duration::from_secs(30), |st| {
            peer(st)["disk"] == "UpToDate" && peer(st)["out_of_sync"] == 0
        });
    }
    assert_eq!(count("unfence-peer-beta"), 0, "only the node that fenced unfences");
    // Both ways back were taken: nothing to sync, then a resync from alpha.
    let log = a.log();
    assert!(
        log.contains("connected to beta (NoSync)") && log.contains("connected to beta (BitmapSource)"),
        "{log}"
    );
}
