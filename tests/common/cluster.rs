//! Clusters of real hablockd processes for tests: daemons (optionally inside network
//! namespaces) driven with hbcrm, and the namespaces themselves.

use super::{run_timeout, CLIENT_TIMEOUT};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The three node names every cluster test uses.
pub const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

/// ha.cf-style timing for loopback tests on an idle machine.
pub const FAST_TIMING: &str =
    "keepalive = \"100ms\"\nwarntime = \"300ms\"\ndeadtime = \"500ms\"\ninitdead = \"1500ms\"\n";

/// A cluster-only file for the three nodes of [`NAMES`]: `links[i]` are node i's link addresses;
/// `cluster_extra` goes into `[cluster]` and must give the timing (e.g. [`FAST_TIMING`]).
pub fn cluster_config(dir: &Path, name: &str, links: &[Vec<String>], cluster_extra: &str) -> PathBuf {
    cluster_config_of(dir, name, &NAMES, links, cluster_extra)
}

/// [`cluster_config`] for the nodes `names` (two of them make a `two_node` cluster).
pub fn cluster_config_of(
    dir: &Path,
    name: &str,
    names: &[&str],
    links: &[Vec<String>],
    cluster_extra: &str,
) -> PathBuf {
    use std::io::Write;
    let path = dir.join("hablock.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    write!(
        f,
        "[global]\ncontrol_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n\n[cluster]\nname = \"{name}\"\n\
         nodes = [{nodes}]\nauthkey = \"the right shared secret 0123456789\"\n{cluster_extra}\n",
        d = dir.display(),
        nodes = quoted.join(", ")
    )
    .unwrap();
    for (i, n) in names.iter().enumerate() {
        let l: Vec<String> = links[i].iter().map(|a| format!("\"{a}\"")).collect();
        writeln!(f, "[cluster.on.{n}]\nlinks = [{}]", l.join(", ")).unwrap();
    }
    path
}

/// Heartbeat timing for clusters in network namespaces, generous for a loaded CI machine: a
/// healthy node declared dead would be fenced.
pub const NETNS_TIMING: &str = "keepalive = \"200ms\"\nwarntime = \"600ms\"\ndeadtime = \"2s\"\ninitdead = \"4s\"\n";

/// The cluster file for the first `count` nodes of [`NAMES`], one link each on the test's
/// namespaces (port 16950), with [`NETNS_TIMING`].
pub fn netns_cluster_config(dir: &Path, name: &str, count: usize) -> PathBuf {
    let links: Vec<Vec<String>> = (0..count)
        .map(|i| vec![format!("{}:16950", Netns::addr(i, 0, false))])
        .collect();
    cluster_config_of(dir, name, &NAMES[..count], &links, NETNS_TIMING)
}

/// A cluster of the first `count` nodes of [`NAMES`], each hablockd in its own network
/// namespace: `write_config` writes the cluster file into the test directory (and may prepare
/// disks) before the daemons start; returns once every node sees a full quorate view with a
/// DC. `None` (after saying why) where namespaces are not permitted. The namespaces' drop ends
/// whatever still runs in them, so the order the returned values drop in does not matter.
pub fn netns_cluster(
    test: &str,
    prefix: &str,
    count: usize,
    write_config: impl FnOnce(&Path) -> PathBuf,
) -> Option<(Vec<Daemon>, tempfile::TempDir, Netns)> {
    let net = match Netns::create(count, 1) {
        Ok(n) => n,
        Err(e) => {
            super::skip(test, super::Missing::Netns, &format!("no network namespaces ({e})"));
            return None;
        }
    };
    let dir = test_dir(prefix);
    let config = write_config(dir.path());
    let mut nodes: Vec<Daemon> = NAMES[..count]
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::spawn(&config, n, Some(&net.nodes[i])))
        .collect();
    for n in nodes.iter_mut() {
        wait_for(n, Duration::from_secs(20), "a full quorate view with a DC", |st| {
            view(st).len() == count && st["quorate"] == true && st["dc"].is_u64()
        });
    }
    Some((nodes, dir, net))
}

pub fn test_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var("HABLOCK_TEST_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix(prefix).tempdir_in(&base).unwrap()
}

/// One hablockd we started (killed by PID on drop), optionally inside a network namespace.
pub struct Daemon {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub name: String,
    pub netns: Option<String>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(config: &Path, name: &str, netns: Option<&str>) -> Daemon {
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

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = super::hablockd_command(self.netns.as_deref());
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

    pub fn hbcrm(&self, args: &[&str]) -> Output {
        super::run_tool("hbcrm", &self.config, &self.name, args)
    }

    pub fn hbcrm_ok(&self, args: &[&str]) -> String {
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

    pub fn status(&mut self) -> Option<Value> {
        if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("hablockd {} exited ({st}): {}", self.name, self.log());
        }
        let out = self.hbcrm(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn view(st: &Value) -> Vec<u64> {
    st["view"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Polls until `done` holds for the node's status, failing after `limit`.
pub fn wait_for(d: &mut Daemon, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
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

/// Network namespaces for one test run: a "switch" namespace with one bridge per heartbeat link,
/// and one namespace per node whose `eth<L>` is a veth to the switch's `v<N><L>` on bridge
/// `br<L>`. Names carry the test's PID and a random suffix; everything is deleted on drop
/// (deleting a namespace deletes its veths), even when the test fails.
pub struct Netns {
    pub switch: String,
    pub nodes: Vec<String>,
    pub created: Vec<String>,
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = run_timeout(Command::new("ip").args(args), Duration::from_secs(10));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    pub fn create(nodes: usize, links: usize) -> Result<Netns, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!("{}{:04x}", std::process::id(), (nanos ^ (nanos >> 16)) & 0xffff);
        let mut n = Netns {
            switch: format!("hbsw{tag}"),
            nodes: (0..nodes).map(|i| format!("hbn{tag}x{i}")).collect(),
            created: Vec::new(),
        };
        for name in std::iter::once(n.switch.clone()).chain(n.nodes.clone()) {
            ip(&["netns", "add", &name])?;
            n.created.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let sw = n.switch.clone();
        for l in 0..links {
            let br = format!("br{l}");
            ip(&["-n", &sw, "link", "add", &br, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", &br, "up"])?;
            for (i, ns) in n.nodes.iter().enumerate() {
                let (outer, inner) = (format!("v{i}{l}"), format!("eth{l}"));
                ip(&[
                    "-n", &sw, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns,
                ])?;
                ip(&["-n", &sw, "link", "set", &outer, "master", &br, "up"])?;
                ip(&["-n", ns, "addr", "add", &Netns::addr(i, l, true), "dev", &inner])?;
                ip(&["-n", ns, "link", "set", &inner, "up"])?;
            }
        }
        Ok(n)
    }

    /// Node `i`'s address on link `l` (with the prefix length, or without).
    pub fn addr(i: usize, l: usize, prefix: bool) -> String {
        format!("10.{}.0.{}{}", 77 + l, i + 1, if prefix { "/24" } else { "" })
    }

    /// Cuts (or restores) node `i`'s link `l` at the switch.
    pub fn set_link(&self, i: usize, l: usize, up: bool) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("v{i}{l}"),
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs inside the namespaces was started there by the test's daemons or
        // their agents (a killed hablockd leaves e.g. mariadbd behind): end it first.
        // Repeated until they are empty (bounded): a supervisor killed in one pass may have
        // respawned a child meanwhile.
        for _ in 0..20 {
            let mut any = false;
            for name in &self.created {
                let out = run_timeout(
                    Command::new("ip").args(["netns", "pids", name]),
                    Duration::from_secs(10),
                );
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        any = true;
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
            }
            if !any {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for name in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Sends CIB operations to a node's hablockd (the `cib-change` admin command), as hbcrm does.
pub fn cib_change(d: &Daemon, ops: &[hablock::cluster::cib::ops::CibOp]) -> Result<(), String> {
    let cfg = hablock::config::ClusterConfig::load(&d.config).map_err(|e| e.to_string())?;
    let req = hablock::control::Request {
        cmd: "cib-change".into(),
        resource: "all".into(),
        force: false,
        cib_ops: Some(serde_json::to_value(ops).unwrap()),
        tgt: None,
    };
    let resp = hablock::control::client::call(&cfg.control_socket(&d.name), &req, CLIENT_TIMEOUT);
    if resp.code == 0 {
        Ok(())
    } else {
        Err(resp.error)
    }
}

/// Adds what a crm shell text configures (properties, defaults, resources, constraints).
pub fn configure(d: &Daemon, crm: &str) {
    use hablock::cluster::cib::ops::CibOp;
    let c = hablock::cluster::pengine::crm_syntax::parse(crm).unwrap_or_else(|e| panic!("{crm}: {e}"));
    let mut ops = Vec::new();
    for (name, value) in c.properties {
        ops.push(CibOp::SetProperty {
            name,
            value: Some(value),
        });
    }
    for (name, value) in c.rsc_defaults {
        ops.push(CibOp::SetRscDefault {
            name,
            value: Some(value),
        });
    }
    for (name, value) in c.op_defaults {
        ops.push(CibOp::SetOpDefault {
            name,
            value: Some(value),
        });
    }
    ops.extend(c.resources.into_iter().map(|resource| CibOp::AddResource { resource }));
    ops.extend(
        c.constraints
            .into_iter()
            .map(|constraint| CibOp::AddConstraint { constraint }),
    );
    cib_change(d, &ops).unwrap_or_else(|e| panic!("{}: configure failed: {e}\nlog: {}", d.name, d.log()));
}

/// The node's copy of the whole CIB.
pub fn cib(d: &Daemon) -> hablock::cluster::cib::Cib {
    let out = d.hbcrm_ok(&["configure", "show", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("CIB JSON: {e}: {out}"))
}

/// Where the node's CIB says `rsc` is active, with its state.
pub fn running(
    cib: &hablock::cluster::cib::Cib,
    rsc: &str,
) -> Vec<(String, hablock::cluster::pengine::state::Observed)> {
    use hablock::cluster::pengine::state::{base_id, observe};
    let mut out = Vec::new();
    for (node, st) in &cib.status.nodes {
        for (id, h) in &st.resources {
            let o = observe(h);
            if base_id(id) == rsc && o.is_active() {
                out.push((node.clone(), o));
            }
        }
    }
    out
}

/// Polls the node's CIB until `done` holds, failing after `limit`; returns how long it took.
pub fn wait_cib(
    d: &Daemon,
    limit: Duration,
    what: &str,
    done: impl Fn(&hablock::cluster::cib::Cib) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let c = cib(d);
        if done(&c) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{}: {what} not within {limit:?}; status: {}\nlog: {}",
            d.name,
            serde_json::to_string_pretty(&c.status).unwrap(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
