//! Cluster membership over real UDP: three hablockd processes on 127.0.0.1-3 form a cluster, one is
//! SIGKILLed and the others notice within deadtime, and a node with the wrong key is never admitted.

mod common;

use common::bin;
use serde_json::Value;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const KEY: &str = "the right shared secret 0123456789";
const WRONG_KEY: &str = "an impostor's secret 9876543210";
const INITDEAD: Duration = Duration::from_millis(1500);

/// A UDP port the kernel just gave us on `ip`.
fn udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

fn ip(i: usize) -> String {
    format!("127.0.0.{}", i + 1)
}

/// A cluster-only file (no [[resource]]) for the three nodes.
fn write_config(dir: &Path, key: &str, ports: &[u16]) -> PathBuf {
    let path = dir.join("hablock.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"[global]
control_dir = "{d}/run"
state_dir = "{d}/state"

[cluster]
name = "testcluster"
nodes = ["alpha", "beta", "gamma"]
authkey = "{key}"
keepalive = "100ms"
warntime = "300ms"
deadtime = "500ms"
initdead = "1500ms"
"#,
        d = dir.display()
    )
    .unwrap();
    for (i, n) in NAMES.iter().enumerate() {
        writeln!(f, "[cluster.on.{n}]\nlinks = [\"{}:{}\"]", ip(i), ports[i]).unwrap();
    }
    path
}

/// One hablockd process we started (killed by PID on drop).
struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    name: String,
    log: PathBuf,
}

impl Daemon {
    fn spawn(config: &Path, name: &str) -> Daemon {
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
        Daemon {
            child: Some(child),
            config: config.to_path_buf(),
            name: name.into(),
            log,
        }
    }

    fn hbcrm(&self, args: &[&str]) -> std::process::Output {
        common::run_tool("hbcrm", &self.config, &self.name, args)
    }

    /// `hbcrm status --json`, or None while the daemon does not answer.
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

    fn text(&self) -> String {
        let out = self.hbcrm(&["status"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
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

fn forged(st: &Value) -> u64 {
    st["dropped"]["forged"].as_u64().unwrap()
}

fn peer_state(st: &Value, id: u64) -> String {
    st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"].as_u64() == Some(id))
        .map(|p| p["state"].as_str().unwrap().to_string())
        .unwrap()
}

/// Polls until `done` holds for the node's status, failing after `limit`.
fn wait_for(d: &mut Daemon, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> (Duration, Value) {
    let start = Instant::now();
    loop {
        let last = d.status();
        if let Some(st) = &last {
            if done(st) {
                return (start.elapsed(), last.unwrap());
            }
        }
        assert!(
            start.elapsed() < limit,
            "{}: {what} not within {limit:?}; last status {last:?}\nlog: {}",
            d.name,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_nodes_detect_a_crash_and_refuse_a_wrong_key() {
    let base = std::env::var("HABLOCK_TEST_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new().prefix("cluster-").tempdir_in(&base).unwrap();
    let ports: Vec<u16> = (0..3).map(|i| udp_port(&ip(i))).collect();
    let config = write_config(dir.path(), KEY, &ports);

    // All three up: everyone Online, one DC, quorum, within initdead + 1 s of the first start.
    let t0 = Instant::now();
    let mut nodes: Vec<Daemon> = NAMES.iter().map(|n| Daemon::spawn(&config, n)).collect();
    let mut dcs = Vec::new();
    for d in nodes.iter_mut() {
        let (_, st) = wait_for(d, Duration::from_secs(20), "a full quorate view with a DC", |st| {
            view(st) == [0, 1, 2] && st["quorate"] == true && st["dc"].is_u64()
        });
        dcs.push(st["dc"].as_u64().unwrap());
    }
    let formed = t0.elapsed();
    eprintln!("cluster of 3 formed in {formed:?}");
    assert!(formed <= INITDEAD + Duration::from_secs(1), "formed in {formed:?}");
    assert!(dcs.iter().all(|d| *d == dcs[0]), "nodes disagree on the DC: {dcs:?}");
    let text = nodes[0].text();
    eprintln!("{text}");
    assert!(text.contains("Cluster Summary:"), "{text}");
    assert!(
        text.contains(&format!("Current DC: {} (version", NAMES[dcs[0] as usize])),
        "{text}"
    );
    assert!(text.contains("partition with quorum"), "{text}");
    assert!(text.contains("3 nodes configured"), "{text}");
    assert!(text.contains("Online: [ alpha beta gamma ]"), "{text}");
    assert!(!text.contains("OFFLINE"), "{text}");

    // SIGKILL gamma: alpha and beta see it OFFLINE within deadtime + keepalive + a margin.
    nodes[2].kill();
    let killed = Instant::now();
    for d in nodes[..2].iter_mut() {
        wait_for(d, Duration::from_secs(10), "gamma gone", |st| view(st) == [0, 1]);
        let took = killed.elapsed();
        eprintln!("{} noticed gamma's death after {took:?}", d.name);
        // A generous bound: deadtime is 500 ms; the figure itself is the failover bench's.
        assert!(took < Duration::from_secs(6), "{}: detection took {took:?}", d.name);
    }
    for d in nodes[..2].iter_mut() {
        // A DC is named again after the hold-off (deadtime) that follows a member leaving.
        let (_, st) = wait_for(d, Duration::from_secs(5), "a DC and quorum again", |st| {
            st["quorate"] == true && st["dc"].is_u64()
        });
        assert_eq!(view(&st), [0, 1], "{st}");
        assert_eq!(peer_state(&st, 2), "dead");
        let text = d.text();
        assert!(text.contains("Online: [ alpha beta ]"), "{text}");
        assert!(text.contains("OFFLINE: [ gamma ]"), "{text}");
        assert!(text.contains("partition with quorum"), "{text}");
    }
    let before = forged(&nodes[0].status().unwrap());

    // gamma comes back with the wrong key: its heartbeats are forged and it is never admitted.
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue_config = write_config(&rogue_dir, WRONG_KEY, &ports);
    let mut rogue = Daemon::spawn(&rogue_config, "gamma");
    wait_for(&mut nodes[0], Duration::from_secs(10), "forged packets counted", |st| {
        forged(st) > before
    });
    let watch_until = Instant::now() + INITDEAD + Duration::from_millis(500);
    while Instant::now() < watch_until {
        for d in nodes[..2].iter_mut() {
            let st = d.status().unwrap();
            assert_eq!(view(&st), [0, 1], "{}: the impostor got in: {st}", d.name);
            assert_eq!(peer_state(&st, 2), "dead", "{st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for d in nodes[..2].iter_mut() {
        let st = d.status().unwrap();
        eprintln!("{}: dropped {}", d.name, st["dropped"]);
        assert!(forged(&st) > 0, "{}: {st}", d.name);
        assert_eq!(st["quorate"], true);
    }
    let st = rogue.status().unwrap();
    assert_eq!(view(&st), [2], "{st}");
    assert_eq!(st["quorate"], false, "{st}");
    assert!(forged(&st) > 0, "{st}");
    let text = rogue.text();
    assert!(text.contains("OFFLINE: [ alpha beta ]"), "{text}");
    assert!(!text.contains("partition with quorum"), "{text}");
    assert!(text.contains("partition WITHOUT quorum"), "{text}");
    rogue.kill();
    for d in nodes.iter_mut() {
        d.kill();
    }
}
