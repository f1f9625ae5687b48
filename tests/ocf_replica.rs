//! `ocf:hablock:replica` (agents/ocf/resource.d/hablock/replica) against real hablockd
//! processes: resource-agents' `ocf-tester` passes, the agent drives a resource through
//! start/promote/demote/stop with the OCF exit codes, refuses to promote a disk that is not
//! UpToDate, and sets the promotion score through `crm_master` (a fake one in PATH that
//! logs its arguments). `ocf:linbit:drbd` (agents/ocf/resource.d/linbit/drbd), its alias under
//! DRBD's parameter names, drives the same resource.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/ocf/resource.d/hablock/replica")
}

fn ocf_root() -> Option<PathBuf> {
    let root = PathBuf::from("/usr/lib/ocf");
    root.join("lib/heartbeat/ocf-shellfuncs").exists().then_some(root)
}

/// Both nodes up, connected and in sync, both Secondary (alpha was made the good copy).
fn synced_secondaries() -> (Node, Node) {
    let (a, b) = synced_fast_pair("");
    a.hbadm_ok(&["secondary", "r0"]);
    (a, b)
}

/// A directory holding a fake `crm_master` that appends its arguments (and the instance
/// it runs for) to `crm_master.log` in the same directory.
fn fake_crm_master(n: &Node) -> PathBuf {
    let dir = n.path(&format!("fakebin-{}", n.name));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("crm_master");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$OCF_RESOURCE_INSTANCE $*\" >> {}/crm_master.log\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn crm_log(fake: &Path) -> Vec<String> {
    std::fs::read_to_string(fake.join("crm_master.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// PATH with `first` (if any) and the directory of the built hbadm ahead of the rest.
fn path_with(first: Option<&Path>) -> String {
    let hbadm_dir = bin("hbadm").parent().unwrap().to_path_buf();
    let mut parts: Vec<String> = first.map(|p| p.display().to_string()).into_iter().collect();
    parts.push(hbadm_dir.display().to_string());
    parts.push(std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
    parts.join(":")
}

/// Runs one action of the agent at `path` the way the cluster's LRM does: OCF_ROOT,
/// OCF_RESKEY_* (`extra` last, so it can override), OCF_RESOURCE_INSTANCE (a clone instance),
/// the action as the argument.
fn run_agent(path: &Path, n: &Node, root: &Path, fake: Option<&Path>, action: &str, extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(path);
    cmd.arg(action)
        .env_clear()
        .env("PATH", path_with(fake))
        .env("OCF_ROOT", root)
        .env("OCF_RESOURCE_INSTANCE", "rep_r0:1")
        .env("OCF_RESKEY_config", &n.config)
        .env("OCF_RESKEY_node", &n.name)
        .env("OCF_RESKEY_CRM_meta_timeout", "30000")
        .env("OCF_RESKEY_connect_wait", "10");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    run_timeout(&mut cmd, Duration::from_secs(60))
}

/// One action of ocf:hablock:replica on resource r0.
fn ra(n: &Node, root: &Path, fake: Option<&Path>, action: &str, extra: &[(&str, &str)]) -> Output {
    run_agent(
        &agent(),
        n,
        root,
        fake,
        action,
        &[&[("OCF_RESKEY_resource", "r0")], extra].concat(),
    )
}

/// Asserts the action's exit code, with its output when it is not the one wanted.
fn assert_rc(out: Output, want: i32, n: &Node, action: &str) -> Output {
    assert_eq!(
        out.status.code(),
        Some(want),
        "{action} on {}: stdout {} stderr {}\nlog:\n{}",
        n.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        n.log()
    );
    out
}

/// The action's exit code, with its output on failure of the expectation.
fn ra_expect(n: &Node, root: &Path, fake: Option<&Path>, action: &str, want: i32) -> Output {
    assert_rc(ra(n, root, fake, action, &[]), want, n, action)
}

fn prerequisites(test: &str) -> Option<PathBuf> {
    let Some(root) = ocf_root() else {
        require_file(test, "/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs", "resource-agents");
        return None;
    };
    Some(root)
}

#[test]
fn ocf_tester_passes() {
    let Some(root) = prerequisites("ocf_tester_passes") else {
        return;
    };
    if !require(
        "ocf_tester_passes",
        &[("ocf-tester", "resource-agents"), ("xmllint", "libxml2-utils")],
    ) {
        return;
    }
    let (a, _b) = synced_secondaries();
    // Run as root, ocf-tester checks that user nobody can run the agent: use a copy in a
    // world-readable place, whatever the checkout's own permissions are.
    let copy = tempfile::tempdir().unwrap();
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tested = copy.path().join("replica");
    std::fs::copy(agent(), &tested).unwrap();
    std::fs::set_permissions(&tested, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_timeout(
        Command::new("ocf-tester")
            .env("PATH", path_with(None))
            .env("OCF_ROOT", &root)
            .args(["-n", "test", "-o", "resource=r0"])
            .arg("-o")
            .arg(format!("config={}", a.config.display()))
            .args(["-o", "node=alpha"])
            .arg(&tested),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ocf-tester failed ({:?}):\n{stdout}\n{}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    assert!(stdout.contains("passed all tests"), "{stdout}");
    // Promotion was exercised (meta-data advertises promote/demote), not skipped.
    assert!(!stdout.contains("does not support the promote"), "{stdout}");
    assert!(!stdout.contains("partially supports"), "{stdout}");
    // The tester ends with the resource stopped.
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Unconfigured/Unknown");
}

#[test]
fn meta_data_is_valid_and_advertises_a_promotable_agent() {
    let Some(root) = prerequisites("meta_data_is_valid_and_advertises_a_promotable_agent") else {
        return;
    };
    let out = ok(Command::new(agent()).arg("meta-data").env("OCF_ROOT", &root));
    for want in [
        "<version>1.1</version>",
        "name=\"promote\"",
        "name=\"demote\"",
        "name=\"notify\"",
        "role=\"Promoted\"",
        "role=\"Unpromoted\"",
        "<parameter name=\"resource\" unique=\"1\" required=\"1\">",
    ] {
        assert!(out.contains(want), "meta-data lacks {want}:\n{out}");
    }
    assert_valid_meta_data("meta_data_is_valid_and_advertises_a_promotable_agent", &out);
}

/// Validates an agent's meta-data against resource-agents' DTD with xmllint (false: skipped).
fn assert_valid_meta_data(test: &str, meta: &str) -> bool {
    let dtd = "/usr/share/resource-agents/ra-api-1.dtd";
    if !require(test, &[("xmllint", "libxml2-utils")]) || !require_file(test, dtd, "resource-agents") {
        return false;
    }
    let f = std::env::temp_dir().join(format!("{test}-{}.xml", std::process::id()));
    std::fs::write(&f, meta).unwrap();
    let v = run_timeout(
        Command::new("xmllint")
            .arg("--noout")
            .arg("--dtdvalid")
            .arg(dtd)
            .arg(&f),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_file(&f);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    true
}

#[test]
fn the_agent_walks_the_resource_through_its_roles_and_sets_scores() {
    let Some(root) = prerequisites("the_agent_walks_the_resource_through_its_roles_and_sets_scores") else {
        return;
    };
    let (a, b) = synced_secondaries();
    let fake = fake_crm_master(&a);
    let f = Some(fake.as_path());
    // hablockd brought the resource up itself: running, Secondary.
    ra_expect(&a, &root, f, "monitor", 0);
    ra_expect(&a, &root, f, "stop", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Unconfigured/Unknown");
    ra_expect(&a, &root, f, "monitor", 7);
    // Stopping a stopped resource succeeds.
    ra_expect(&a, &root, f, "stop", 0);
    let before = crm_log(&fake).len();
    ra_expect(&a, &root, f, "start", 0);
    // Start waited for the peer: connected, and the score is the UpToDate one.
    assert_eq!(a.hbadm_ok(&["cstate", "r0"]).trim(), "Connected");
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Secondary");
    let log = crm_log(&fake);
    assert_eq!(
        log.get(before).map(String::as_str),
        Some("rep_r0:1 -l reboot -v 10000"),
        "{log:?}"
    );
    ra_expect(&a, &root, f, "monitor", 0);
    ra_expect(&a, &root, f, "promote", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");
    ra_expect(&a, &root, f, "monitor", 8);
    // Promoting a promoted resource succeeds.
    ra_expect(&a, &root, f, "promote", 0);
    // The peer's instance sees a Primary peer and stays Secondary (0).
    ra_expect(&b, &root, Some(&fake_crm_master(&b)), "monitor", 0);
    let notify = ra(
        &b,
        &root,
        None,
        "notify",
        &[
            ("OCF_RESKEY_CRM_meta_notify_type", "post"),
            ("OCF_RESKEY_CRM_meta_notify_operation", "promote"),
        ],
    );
    assert_eq!(notify.status.code(), Some(0));
    ra_expect(&a, &root, f, "demote", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Secondary");
    ra_expect(&a, &root, f, "monitor", 0);
    ra_expect(&a, &root, f, "demote", 0);
    // Stop from Primary demotes first.
    ra_expect(&a, &root, f, "promote", 0);
    let before = crm_log(&fake).len();
    ra_expect(&a, &root, f, "stop", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Unconfigured/Unknown");
    ra_expect(&a, &root, f, "monitor", 7);
    // The score is withdrawn on stop.
    let log = crm_log(&fake);
    assert!(log[before..].iter().any(|l| l == "rep_r0:1 -l reboot -D"), "{log:?}");
    // Every monitor of a running UpToDate resource (re)set the score; nothing else was set.
    assert!(
        log.iter()
            .all(|l| l == "rep_r0:1 -l reboot -v 10000" || l == "rep_r0:1 -l reboot -D"),
        "{log:?}"
    );
    // Without crm_master in PATH the agent still works.
    ra_expect(&a, &root, None, "start", 0);
    ra_expect(&a, &root, None, "monitor", 0);
}

#[test]
fn promotion_of_an_inconsistent_disk_is_refused_and_its_score_withdrawn() {
    let Some(root) = prerequisites("promotion_of_an_inconsistent_disk_is_refused_and_its_score_withdrawn") else {
        return;
    };
    // A fresh resource: new metadata, the peer never started, the disk Inconsistent.
    let mut a = Node::new(NodeOptions {
        size_mib: 16,
        writeback: true,
        resource_extra: FAST_NET.into(),
        ..Default::default()
    });
    a.hbadm_ok(&["create-md", "r0"]);
    a.start();
    assert_eq!(a.hbadm_ok(&["dstate", "r0"]).trim(), "Inconsistent/DUnknown");
    // A resource hablockd does not hold here: a configuration error for validate-all,
    // "cannot run here" (5) for a monitor.
    let r9 = [("OCF_RESKEY_resource", "r9")];
    assert_eq!(ra(&a, &root, None, "validate-all", &r9).status.code(), Some(6));
    assert_eq!(ra(&a, &root, None, "monitor", &r9).status.code(), Some(5));
    assert_eq!(ra(&a, &root, None, "validate-all", &[]).status.code(), Some(0));
    let fake = fake_crm_master(&a);
    let f = Some(fake.as_path());
    ra_expect(&a, &root, f, "monitor", 0);
    let out = ra_expect(&a, &root, f, "promote", 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Inconsistent, not UpToDate"), "{err}");
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    ra_expect(&a, &root, f, "monitor", 0);
    let log = crm_log(&fake);
    assert!(
        !log.is_empty() && log.iter().all(|l| l == "rep_r0:1 -l reboot -D"),
        "{log:?}"
    );
    // The operator's --force makes it the good copy; then the agent promotes.
    a.hbadm_ok(&["primary", "--force", "r0"]);
    a.hbadm_ok(&["secondary", "r0"]);
    ra_expect(&a, &root, f, "promote", 0);
    ra_expect(&a, &root, f, "monitor", 8);
    assert_eq!(
        crm_log(&fake).last().map(String::as_str),
        Some("rep_r0:1 -l reboot -v 10000")
    );
}

#[test]
fn a_node_without_hablockd_probes_as_not_running() {
    let Some(root) = prerequisites("a_node_without_hablockd_probes_as_not_running") else {
        return;
    };
    let a = Node::new(NodeOptions::default());
    // The daemon never started: probes say "not running", stop succeeds, start fails.
    let probe = ra(&a, &root, None, "monitor", &[("OCF_RESKEY_CRM_meta_interval", "0")]);
    assert_eq!(probe.status.code(), Some(7));
    assert_eq!(ra(&a, &root, None, "stop", &[]).status.code(), Some(0));
    assert_eq!(ra(&a, &root, None, "start", &[]).status.code(), Some(1));
    // A demote there (a Primary whose hablockd died) is "safely stopped", not a failure.
    let demote = ra(&a, &root, None, "demote", &[]);
    assert_eq!(demote.status.code(), Some(7));
    assert!(
        String::from_utf8_lossy(&demote.stderr).contains("hablockd is not running"),
        "{}",
        String::from_utf8_lossy(&demote.stderr)
    );
    // An unknown resource name is a configuration error.
    let bad = ra(&a, &root, None, "validate-all", &[("OCF_RESKEY_resource", "")]);
    assert_eq!(bad.status.code(), Some(6));
}

/// `ocf:linbit:drbd`, the alias a DRBD crm configuration names: `drbd_resource=` instead of
/// `resource=`, the same roles and exit codes, and meta-data valid under DRBD's names.
#[test]
fn the_linbit_drbd_alias_takes_drbd_resource_and_drives_the_same_resource() {
    const T: &str = "the_linbit_drbd_alias_takes_drbd_resource_and_drives_the_same_resource";
    let Some(root) = prerequisites(T) else {
        return;
    };
    let alias = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/ocf/resource.d/linbit/drbd");
    let meta = ok(Command::new(&alias).arg("meta-data").env("OCF_ROOT", &root));
    for want in [
        "<resource-agent name=\"drbd\"",
        "<parameter name=\"drbd_resource\" unique=\"1\" required=\"1\">",
        "name=\"promote\"",
    ] {
        assert!(meta.contains(want), "meta-data lacks {want}:\n{meta}");
    }
    assert!(!meta.contains("<parameter name=\"resource\""), "{meta}");
    if !assert_valid_meta_data(T, &meta) {
        return;
    }

    let (a, _b) = synced_secondaries();
    let run = |action: &str, want: i32| {
        let out = run_agent(&alias, &a, &root, None, action, &[("OCF_RESKEY_drbd_resource", "r0")]);
        assert_rc(out, want, &a, action);
    };
    run("monitor", 0);
    run("promote", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");
    run("monitor", 8);
    run("demote", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Secondary");
    run("stop", 0);
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Unconfigured/Unknown");
    run("monitor", 7);
}
