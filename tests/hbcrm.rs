//! `hbcrm` against a real three-node hablockd cluster on loopback (127.0.0.1-3, ports from the
//! kernel). One cluster, one scenario, in order:
//!
//! - the seed's HA MariaDB block (seeds/004, only node names, address and paths changed) loads
//!   with `configure load update`, replicates, shows back in crm syntax, and loads again as
//!   "nothing to change"; an existing id is refused; `configure show ID`; `configure verify`;
//! - `resource move|ban|clear|stop|start|promote|demote|unmanage|manage` write what crm writes;
//! - the status section filled with `RecordOperation`s (no LRM runs agents yet) shows in
//!   `hbcrm status -f` as crm_mon -1 does (promoted/unpromoted clone, started group member,
//!   FAILED resource, Failed Resource Actions, fail counts) and in `resource status`;
//!   `resource cleanup` forgets the failure;
//! - `node standby|online|maintenance|ready`, `node attribute`, `attribute` (transient and
//!   permanent), and the agents' `crm_master`/`crm_attribute` shims;
//! - `configure edit` (with a scripted $EDITOR), `configure delete [--force]`,
//!   `configure load replace`, and bad input (clear errors, nothing changed).

mod common;

use common::{bin, run_timeout, CLIENT_TIMEOUT};
use hablock::cluster::cib::config::Action;
use hablock::cluster::cib::status::{OpRecord, OpStatus};
use hablock::cluster::cib::CibOp;
use hablock::control::{client, Request};
use serde_json::Value;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{cluster_config, FAST_TIMING, NAMES};

fn test_dir() -> tempfile::TempDir {
    let base = std::env::var("HABLOCK_TEST_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("hbcrm-").tempdir_in(&base).unwrap()
}

fn write_config(dir: &Path) -> PathBuf {
    let links: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let ip = format!("127.0.0.{}", i + 1);
            let port = UdpSocket::bind((ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
            vec![format!("{ip}:{port}")]
        })
        .collect();
    // The status section is filled by hand here: nothing may run (the seed has IPaddr2).
    cluster_config(
        dir,
        "crmcluster",
        &links,
        &format!("{FAST_TIMING}resource_manager = false\n"),
    )
}

/// One hablockd we started; killed by its PID on drop.
struct Node {
    child: Child,
    config: PathBuf,
    name: String,
    log: PathBuf,
}

impl Node {
    fn spawn(config: &Path, name: &str) -> Node {
        let log = config.with_file_name(format!("{name}.log"));
        let child = Command::new(bin("hablockd"))
            .arg("--config")
            .arg(config)
            .arg("--node")
            .arg(name)
            .env("HABLOCK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Node {
            child,
            config: config.to_path_buf(),
            name: name.into(),
            log,
        }
    }

    fn hbcrm_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin("hbcrm"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(&self.name)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_timeout(&mut cmd, CLIENT_TIMEOUT)
    }

    fn hbcrm(&self, args: &[&str]) -> Output {
        self.hbcrm_env(args, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.hbcrm(args);
        assert!(
            out.status.success(),
            "{}: hbcrm {args:?} failed ({:?}): {}{}\nlog: {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and expects failure with `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.hbcrm(args);
        assert_eq!(out.status.code(), Some(code), "{}: hbcrm {args:?}: {out:?}", self.name);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn status_json(&self) -> Option<Value> {
        let out = self.hbcrm(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Raw CIB operations through the control socket (what the LRM will send).
    fn cib_change(&self, ops: &[CibOp]) {
        let socket = self
            .config
            .parent()
            .unwrap()
            .join("run")
            .join(format!("{}.sock", self.name));
        let resp = client::call(
            &socket,
            &Request {
                cmd: "cib-change".into(),
                resource: "all".into(),
                force: false,
                cib_ops: Some(serde_json::to_value(ops).unwrap()),
                tgt: None,
            },
            Duration::from_secs(30),
        );
        assert_eq!(resp.code, 0, "{}", resp.error);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn formed(st: &Value) -> bool {
    st["view"] == serde_json::json!([0, 1, 2]) && st["quorate"] == true && st["dc"].is_u64()
}

fn wait_for(n: &mut Node, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(code) = n.child.try_wait().unwrap() {
            panic!("hablockd {} exited ({code})", n.name);
        }
        let st = n.status_json();
        if let Some(st) = &st {
            if done(st) {
                return st.clone();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}: {what}: {st:?}", n.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn op(node: &str, rsc: &str, agent: &str, action: Action, interval_ms: u64, call_id: u64, rc: i32) -> CibOp {
    CibOp::RecordOperation {
        node: node.into(),
        rsc: rsc.into(),
        agent: agent.into(),
        record: OpRecord {
            action,
            interval_ms,
            call_id,
            rc,
            status: OpStatus::Done,
            last_rc_change_unix_ms: 1_795_305_600_000 + call_id * 1000,
            exec_time_ms: 12,
            queue_time_ms: 0,
            transition: None,
            exit_reason: String::new(),
        },
    }
}

/// The seed's block (seeds/004, from `node node1.magedu.com`), with only node names, the
/// address and paths changed.
fn seed() -> String {
    include_str!("../src/cluster/pengine/testdata/seed_mariadb.crm")
        .replace("node1.magedu.com", "alpha")
        .replace("node2.magedu.com", "beta")
        .replace("172.16.100.27", "10.99.0.27")
        .replace("/dev/drbd0", "/dev/hablock0")
        .replace("\"/mydata\"", "\"/srv/mydata\"")
}

#[test]
fn hbcrm_verbs_on_a_loopback_cluster() {
    let dir = test_dir();
    let config = write_config(dir.path());
    let mut nodes: Vec<Node> = NAMES.iter().map(|n| Node::spawn(&config, n)).collect();
    for n in nodes.iter_mut() {
        wait_for(n, "a full quorate view with a DC", formed);
    }
    // The DC adds the cluster file's nodes to the CIB once it has synchronised; every copy
    // must have them before crm text naming them can load.
    for n in &nodes {
        let start = Instant::now();
        loop {
            let cib: Value = serde_json::from_str(&n.ok(&["configure", "show", "--json"])).unwrap();
            if cib["configuration"]["nodes"].as_array().map_or(0, Vec::len) == 3 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: nodes not in the CIB: {cib}",
                n.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (a, b, g) = (&nodes[0], &nodes[1], &nodes[2]);

    // --- configure load update of the seed, on a member that is not the DC.
    let seed_file = dir.path().join("seed.crm");
    std::fs::write(&seed_file, seed()).unwrap();
    let out = g.ok(&["configure", "load", "update", seed_file.to_str().unwrap()]);
    assert!(out.contains("CIB updated to version"), "{out}");
    let show = g.ok(&["configure", "show"]);
    for want in [
        "node 0: alpha \\\n\tattributes standby=off",
        "primitive mydata ocf:heartbeat:Filesystem \\\n\tparams device=/dev/hablock0 directory=/srv/mydata fstype=ext4",
        "primitive myip ocf:heartbeat:IPaddr \\\n\tparams ip=10.99.0.27",
        "primitive myserver lsb:mysqld",
        "\top monitor interval=10s timeout=20s role=Promoted",
        "ms ms_mystor mystor \\\n\tmeta clone-max=2 clone-node-max=1 master-max=1 master-node-max=1 notify=true promotable=true",
        "colocation mydata_with_ms_mystor_master inf: mydata ms_mystor:Promoted",
        "order mydata_after_ms_mystor_master Mandatory: ms_mystor:promote mydata:start",
        "\tcluster-infrastructure=\"classic openais (with plugin)\"",
        "\tdefault-resource-stickiness=50",
    ] {
        assert!(show.contains(want), "missing {want:?} in\n{show}");
    }
    // Replicated: alpha shows the same text once it has caught up.
    let start = Instant::now();
    while a.ok(&["configure", "show"]) != show {
        assert!(start.elapsed() < Duration::from_secs(10), "alpha did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        g.ok(&["configure", "load", "update", seed_file.to_str().unwrap()]),
        "nothing to change\n"
    );
    // What show prints loads back (stdin) as nothing to change.
    let mut child = Command::new(bin("hbcrm"))
        .arg("--config")
        .arg(&config)
        .args(["--node", "alpha", "configure", "load", "replace", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(show.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nothing to change\n");
    let err = g.fails(&["configure", "primitive", "myip", "Dummy"], 1);
    assert!(err.contains("object myip already exists"), "{err}");
    assert_eq!(
        g.ok(&["configure", "show", "myserver", "myserver_after_myip"]),
        "primitive myserver lsb:mysqld \\\n\top monitor interval=20s timeout=20s\norder myserver_after_myip Mandatory: myip:start myserver:start\n"
    );
    let json: Value = serde_json::from_str(&g.ok(&["configure", "show", "--json", "ms_mystor"])).unwrap();
    assert_eq!(json[0]["child"], "mystor");
    g.fails(&["configure", "show", "nope"], 1);
    let out = g.hbcrm(&["configure", "verify"]);
    assert!(out.status.success(), "{out:?}");

    // --- configure object verbs.
    g.ok(&[
        "configure",
        "primitive",
        "web",
        "ocf:heartbeat:Dummy",
        "params",
        "fake=a b",
        "op",
        "monitor",
        "interval=10s",
    ]);
    g.ok(&["configure", "location", "web_not_gamma", "web", "-inf:", "gamma"]);
    g.ok(&["configure", "rsc_defaults", "resource-stickiness=100"]);
    let show = g.ok(&["configure", "show", "web", "web_not_gamma", "rsc_defaults"]);
    assert_eq!(
        show,
        "primitive web ocf:heartbeat:Dummy \\\n\tparams fake=\"a b\" \\\n\top monitor interval=10s\n\
         location web_not_gamma web -inf: gamma\n\
         rsc_defaults rsc-options: \\\n\tresource-stickiness=100\n"
    );
    let err = g.fails(&["configure", "group", "g_bad", "web", "nosuch"], 11);
    assert!(err.contains("nosuch"), "{err}");

    // --- resource verbs.
    a.ok(&["resource", "move", "myip", "beta"]);
    a.ok(&["resource", "ban", "mydata", "gamma"]);
    let show = a.ok(&["configure", "show"]);
    assert!(
        show.contains("location cli-prefer-myip myip role=Started inf: beta"),
        "{show}"
    );
    assert!(
        show.contains("location cli-ban-mydata-on-gamma mydata -inf: gamma"),
        "{show}"
    );
    a.ok(&["resource", "clear", "myip"]);
    a.ok(&["resource", "unmove", "mydata"]);
    let show = a.ok(&["configure", "show"]);
    assert!(!show.contains("cli-"), "{show}");
    assert_eq!(a.ok(&["resource", "clear", "myip"]), "nothing to change\n");
    a.fails(&["resource", "move", "myip", "delta"], 1);
    a.ok(&["resource", "stop", "myserver"]);
    a.ok(&["resource", "demote", "ms_mystor"]);
    a.ok(&["resource", "unmanage", "web"]);
    let show = a.ok(&["configure", "show", "myserver", "ms_mystor", "web"]);
    assert!(show.contains("meta target-role=Stopped"), "{show}");
    assert!(show.contains("target-role=Unpromoted"), "{show}");
    assert!(show.contains("meta is-managed=false"), "{show}");
    a.ok(&["resource", "start", "myserver"]);
    a.ok(&["resource", "promote", "ms_mystor"]);
    a.ok(&["resource", "manage", "web"]);
    a.ok(&["resource", "meta", "myip", "set", "migration-threshold", "3"]);
    a.ok(&["resource", "param", "mydata", "set", "options", "noatime,nodiratime"]);
    assert_eq!(
        a.ok(&["resource", "meta", "myip", "show", "migration-threshold"]),
        "scope=meta  name=migration-threshold value=3\n"
    );
    assert_eq!(
        a.ok(&["resource", "param", "mydata", "show", "options"]),
        "scope=params  name=options value=noatime,nodiratime\n"
    );
    a.ok(&["resource", "meta", "myip", "delete", "migration-threshold"]);
    a.ok(&["resource", "param", "mydata", "delete", "options"]);
    a.fails(&["resource", "meta", "myip", "show", "migration-threshold"], 105);
    let err = a.fails(&["resource", "param", "ms_mystor", "set", "x", "1"], 1);
    assert!(err.contains("not a primitive"), "{err}");
    let err = a.fails(&["resource", "promote", "myip"], 1);
    assert!(err.contains("not a promotable clone"), "{err}");

    // --- status from a status section filled as the LRM will fill it.
    let drbd = "ocf:linbit:drbd";
    a.cib_change(&[
        op("alpha", "mystor:0", drbd, Action::Start, 0, 1, 0),
        op("alpha", "mystor:0", drbd, Action::Promote, 0, 2, 0),
        op("beta", "mystor:1", drbd, Action::Start, 0, 1, 0),
        op("alpha", "mydata", "ocf:heartbeat:Filesystem", Action::Start, 0, 3, 0),
        op("alpha", "myip", "ocf:heartbeat:IPaddr", Action::Start, 0, 4, 0),
        op("alpha", "myip", "ocf:heartbeat:IPaddr", Action::Monitor, 10_000, 5, 7),
        CibOp::SetTransientAttribute {
            node: "alpha".into(),
            name: "fail-count-myip#monitor_10000".into(),
            value: Some("1".into()),
        },
        CibOp::SetTransientAttribute {
            node: "alpha".into(),
            name: "last-failure-myip#monitor_10000".into(),
            value: Some("1795305605000".into()),
        },
    ]);
    let text = a.ok(&["status", "-f"]);
    eprintln!("{text}");
    for want in [
        "Node List:\n  * Online: [ alpha beta gamma ]\n\nFull List of Resources:\n",
        "  * mydata (ocf:heartbeat:Filesystem): Started alpha\n",
        "  * myip (ocf:heartbeat:IPaddr): FAILED alpha\n",
        "  * myserver (lsb:mysqld): Stopped\n",
        "  * Clone Set: ms_mystor [mystor] (promotable):\n    * Promoted: [ alpha ]\n    * Unpromoted: [ beta ]\n    * Stopped: [ gamma ]\n",
        "  * web (ocf:heartbeat:Dummy): Stopped\n",
        "Migration Summary:\n  * Node: alpha:\n    * myip: migration-threshold=1000000 fail-count=1 last-failure='Sun Nov 22 00:00:05 2026'\n",
        "Failed Resource Actions:\n  * myip_monitor_10000 on alpha 'not running' (7): call=5, status='complete', exitreason='', last-rc-change='Sun Nov 22 00:00:05 2026', queued=0ms, exec=12ms\n",
        "  * 6 resource instances configured\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(
        a.ok(&["resource", "status", "ms_mystor"]),
        "resource ms_mystor is running on: alpha Promoted\nresource ms_mystor is running on: beta Unpromoted\n"
    );
    assert_eq!(
        a.ok(&["resource", "status", "myip"]),
        "resource myip is running on: alpha (FAILED)\n"
    );
    let st = a.status_json().unwrap();
    assert_eq!(st["failed_actions"][0]["rsc"], "myip");
    // A running resource is not deleted without --force.
    let err = a.fails(&["configure", "delete", "mydata"], 1);
    assert!(err.contains("running on alpha"), "{err}");
    a.ok(&["resource", "cleanup", "myip"]);
    let st = a.status_json().unwrap();
    assert_eq!(st["failed_actions"], serde_json::json!([]), "{st}");
    assert_eq!(st["fail_counts"], serde_json::json!([]), "{st}");
    let text = a.ok(&["status"]);
    assert!(text.contains("  * myip (ocf:heartbeat:IPaddr): Stopped\n"), "{text}");
    assert!(text.contains("Promoted: [ alpha ]"), "{text}");
    a.ok(&["resource", "cleanup", "--node", "beta"]);
    assert!(a.ok(&["status"]).contains("    * Stopped: [ beta gamma ]\n"));

    // --- nodes and attributes.
    b.ok(&["node", "standby"]);
    assert!(b.ok(&["status"]).contains("  * Node beta: standby\n"));
    b.ok(&["node", "online", "beta"]);
    a.ok(&["node", "maintenance", "gamma"]);
    let text = a.ok(&["status"]);
    assert!(text.contains("  * Node gamma: maintenance\n"), "{text}");
    assert!(text.contains("  * Online: [ alpha beta ]\n"), "{text}");
    a.ok(&["node", "ready", "gamma"]);
    a.ok(&["node", "attribute", "alpha", "set", "rack", "r1"]);
    assert_eq!(
        a.ok(&["node", "attribute", "alpha", "show", "rack"]),
        "scope=nodes  name=rack value=r1\n"
    );
    a.ok(&["node", "attribute", "alpha", "delete", "rack"]);
    a.fails(&["node", "attribute", "alpha", "show", "rack"], 105);
    a.ok(&[
        "attribute",
        "--node",
        "beta",
        "--name",
        "pingd",
        "--update",
        "100",
        "--lifetime",
        "reboot",
    ]);
    assert_eq!(
        a.ok(&["attribute", "-N", "beta", "-n", "pingd", "-G", "-l", "reboot"]),
        "scope=status  name=pingd value=100\n"
    );
    a.ok(&[
        "attribute",
        "--node",
        "beta",
        "--name",
        "pingd",
        "--delete",
        "--lifetime",
        "reboot",
    ]);
    a.fails(
        &[
            "attribute",
            "--node",
            "beta",
            "--name",
            "pingd",
            "--query",
            "--lifetime",
            "reboot",
        ],
        105,
    );

    // --- the agents' shims, run as hablock's LRM will run them (HABLOCK_CONFIG/NODE set).
    let shims = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/bin");
    let shim = |prog: &str, args: &[&str]| {
        let out = run_timeout(
            Command::new(shims.join(prog))
                .args(args)
                .env("HBCRM", bin("hbcrm"))
                .env("HABLOCK_CONFIG", &config)
                .env("HABLOCK_NODE", "beta")
                .env("OCF_RESOURCE_INSTANCE", "mystor:1"),
            CLIENT_TIMEOUT,
        );
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(shim("crm_master", &["-l", "reboot", "-v", "10"]).0, Some(0));
    assert_eq!(
        shim("crm_master", &["-l", "reboot", "-G", "-q"]),
        (Some(0), "10\n".to_string())
    );
    assert_eq!(
        b.ok(&[
            "attribute",
            "--name",
            "master-mystor",
            "--lifetime",
            "reboot",
            "--query",
            "-q"
        ]),
        "10\n"
    );
    assert_eq!(
        shim(
            "crm_attribute",
            &[
                "-N",
                "alpha",
                "-n",
                "master-mystor",
                "-l",
                "reboot",
                "-G",
                "-q",
                "-d",
                "0"
            ]
        ),
        (Some(0), "0\n".to_string())
    );
    // In a globally-unique clone each instance has its own score, master-mystor:1 (the LRM
    // passes OCF_RESKEY_CRM_meta_globally_unique); anonymous instances share master-mystor.
    let unique_shim = |prog: &str, args: &[&str]| {
        let out = run_timeout(
            Command::new(shims.join(prog))
                .args(args)
                .env("HBCRM", bin("hbcrm"))
                .env("HABLOCK_CONFIG", &config)
                .env("HABLOCK_NODE", "beta")
                .env("OCF_RESOURCE_INSTANCE", "mystor:1")
                .env("OCF_RESKEY_CRM_meta_globally_unique", "true"),
            CLIENT_TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let sets: [(&str, &[&str]); 2] = [
        ("crm_master", &["-l", "reboot", "-v", "7"]),
        ("crm_attribute", &["-p", "-v", "7"]),
    ];
    for (prog, set) in sets {
        unique_shim(prog, set);
        let q = [
            "attribute",
            "--name",
            "master-mystor:1",
            "--lifetime",
            "reboot",
            "--query",
            "-q",
        ];
        assert_eq!(b.ok(&q), "7\n", "{prog}");
        unique_shim("crm_master", &["-l", "reboot", "-D"]);
    }
    assert_eq!(shim("crm_master", &["-l", "reboot", "-G", "-q"]).1, "10\n");
    assert_eq!(shim("crm_master", &["-l", "reboot", "-D"]).0, Some(0));
    assert_eq!(shim("crm_master", &["-l", "reboot", "-G", "-q"]).0, Some(105));
    assert_eq!(
        shim(
            "crm_attribute",
            &["--type", "crm_config", "--name", "stonith-enabled", "--query", "-q"]
        ),
        (Some(0), "false\n".to_string())
    );

    // Debian's unmodified Stateful agent: resource-agents' ocf_promotion_score calls
    // ${HA_SBIN_DIR}/crm_attribute -p (crm_feature_set >= 3.10) or crm_master -l reboot.
    let stateful = Path::new("/usr/lib/ocf/resource.d/heartbeat/Stateful");
    if common::require_file(
        "hbcrm_verbs_on_a_loopback_cluster",
        "/usr/lib/ocf/resource.d/heartbeat/Stateful",
        "resource-agents",
    ) {
        let rsctmp = dir.path().join("rsctmp");
        std::fs::create_dir_all(&rsctmp).unwrap();
        let path = format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default());
        for feature_set in ["3.16.2", ""] {
            let run = |action: &str| {
                let out = run_timeout(
                    Command::new(stateful)
                        .arg(action)
                        .env("OCF_ROOT", "/usr/lib/ocf")
                        .env("HA_SBIN_DIR", &shims)
                        .env("PATH", &path)
                        .env("HA_RSCTMP", &rsctmp)
                        .env("OCF_RESKEY_crm_feature_set", feature_set)
                        .env("OCF_RESOURCE_INSTANCE", "st:2")
                        .env("HBCRM", bin("hbcrm"))
                        .env("HABLOCK_CONFIG", &config)
                        .env("HABLOCK_NODE", "gamma"),
                    CLIENT_TIMEOUT,
                );
                out.status.code()
            };
            let score = || {
                let out = g.hbcrm(&["attribute", "-n", "master-st", "-l", "reboot", "-G", "-q"]);
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                )
            };
            assert_eq!(run("start"), Some(0), "feature set {feature_set:?}");
            assert_eq!(score(), (Some(0), "5".to_string()), "feature set {feature_set:?}");
            assert_eq!(run("promote"), Some(0));
            assert_eq!(score(), (Some(0), "10".to_string()), "feature set {feature_set:?}");
            assert_eq!(run("monitor"), Some(8));
            assert_eq!(run("demote"), Some(0));
            assert_eq!(score(), (Some(0), "5".to_string()), "feature set {feature_set:?}");
            assert_eq!(run("stop"), Some(0));
            assert_eq!(score().0, Some(105), "feature set {feature_set:?}");
        }
    }

    // --- configure edit: an $EDITOR that changes the address, then one that changes nothing.
    let editor = dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/ip=10.99.0.27/ip=10.99.0.28/' \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = a.hbcrm_env(
        &["configure", "edit"],
        &[("EDITOR", editor.to_str().unwrap()), ("VISUAL", "")],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(a.ok(&["configure", "show", "myip"]).contains("ip=10.99.0.28"));
    let out = a.hbcrm_env(&["configure", "edit"], &[("EDITOR", "true"), ("VISUAL", "")]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unchanged"), "{out:?}");

    // --- delete and load replace; bad input changes nothing.
    let err = a.fails(&["configure", "delete", "myserver"], 11);
    assert!(err.contains("myserver") && err.contains("--force"), "{err}");
    a.ok(&["configure", "delete", "--force", "myserver"]);
    let show = a.ok(&["configure", "show"]);
    assert!(!show.contains("myserver"), "{show}");
    assert!(show.contains("colocation mydata_with_ms_mystor_master"), "{show}");
    let bad = dir.path().join("bad.crm");
    std::fs::write(&bad, "primitive x Dummy\nprimitive y\n").unwrap();
    let err = a.fails(&["configure", "load", "update", bad.to_str().unwrap()], 1);
    assert!(err.contains("line 2"), "{err}");
    let small = dir.path().join("small.crm");
    std::fs::write(&small, "primitive only Dummy\nproperty stonith-enabled=false\n").unwrap();
    a.ok(&["configure", "load", "replace", small.to_str().unwrap()]);
    let show = a.ok(&["configure", "show"]);
    assert!(show.contains("primitive only ocf:heartbeat:Dummy\n"), "{show}");
    assert!(!show.contains("mystor") && !show.contains("colocation"), "{show}");
    assert!(show.contains("node 1: beta"), "{show}");
    drop(nodes);
}
