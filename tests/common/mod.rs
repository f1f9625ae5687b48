//! Test harness: real `hablockd` processes with their own config, ports and files.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one client command may take before the test fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_hablockd")).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace --bins` first (tools/test does)",
        p.display()
    );
    p
}

/// A port the kernel just gave us, so parallel runs cannot collide.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether a client program is installed (tools/setup installs them all).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A command that runs hablockd, inside the network namespace `netns` if one is given
/// (`ip netns exec` execs the program in place: the child's PID is hablockd's).
pub fn hablockd_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("hablockd"));
            c
        }
        None => Command::new(bin("hablockd")),
    }
}

/// Runs a command with a time limit; kills it (by PID) when it overruns.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} took longer than {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs and insists on success, returning stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run_timeout(cmd, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One node's files and configuration, and its daemon while running.
pub struct Node {
    /// Shared by both nodes of a pair (one cluster file, two backing files).
    pub dir: std::sync::Arc<tempfile::TempDir>,
    pub config: PathBuf,
    pub disk: PathBuf,
    pub port: u16,
    /// The NBD listen address's IP (127.0.0.1 for alpha, 127.0.0.2 for beta).
    pub host: String,
    pub name: String,
    /// The NBD export's unix socket, when it has one.
    pub nbd_socket: Option<PathBuf>,
    /// The network namespace the daemon runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    daemon: Option<Child>,
}

pub struct NodeOptions {
    pub size_mib: u64,
    pub external_meta: bool,
    pub unix_nbd: bool,
    /// `cache = "writeback"` (page cache) instead of O_DIRECT.
    pub writeback: bool,
    /// Replication protocol of r0.
    pub protocol: &'static str,
    /// More keys for the [[resource]] table (e.g. resync_rate).
    pub resource_extra: String,
    /// More tables at the end of the cluster file (e.g. `[iscsi.on.alpha]`).
    pub config_extra: String,
    /// Addresses for a pair whose daemons run in network namespaces ([`netns_pair`]):
    /// replication on the namespaces' link ([`cluster::Netns::addr`]), each node's NBD
    /// export on its own unix socket (reachable from outside the namespaces).
    pub in_netns: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            size_mib: 64,
            external_meta: false,
            unix_nbd: false,
            writeback: false,
            protocol: "C",
            resource_extra: String::new(),
            config_extra: String::new(),
            in_netns: false,
        }
    }
}

impl Node {
    /// A node "alpha" of a two-node resource r0 (the peer "beta" is never started).
    pub fn new(opts: NodeOptions) -> Node {
        Self::pair(opts).0
    }

    /// Both nodes of r0 (alpha on 127.0.0.1 and beta on 127.0.0.2), with backing
    /// files of the same size; neither daemon started.
    pub fn pair(opts: NodeOptions) -> (Node, Node) {
        // Backing files live on a real disk (not tmpfs) so O_DIRECT is exercised.
        let base = std::env::var("HABLOCK_TEST_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix("node-").tempdir_in(&base).unwrap();
        let disk = dir.path().join("alpha-r0.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(opts.size_mib << 20)
            .unwrap();
        let beta_disk = dir.path().join("beta-r0.img");
        std::fs::File::create(&beta_disk)
            .unwrap()
            .set_len(opts.size_mib << 20)
            .unwrap();
        let port = free_port();
        let beta_port = free_port();
        let meta = if opts.external_meta {
            let m = dir.path().join("alpha-r0.md");
            std::fs::File::create(&m).unwrap().set_len(8 << 20).unwrap();
            m.display().to_string()
        } else {
            "internal".into()
        };
        let socket = |name: &str| dir.path().join(name);
        let (alpha_socket, beta_socket) = if opts.in_netns {
            (Some(socket("alpha-r0.nbd")), Some(socket("beta-r0.nbd")))
        } else {
            (opts.unix_nbd.then(|| socket("r0.nbd")), None)
        };
        let nbd = |s: &Option<PathBuf>, host: &str, port: u16| match s {
            Some(p) => format!("unix:{}", p.display()),
            None => format!("{host}:{port}"),
        };
        let (alpha_ip, beta_ip) = if opts.in_netns {
            (cluster::Netns::addr(0, 0, false), cluster::Netns::addr(1, 0, false))
        } else {
            ("127.0.0.1".to_string(), "127.0.0.2".to_string())
        };
        let config = dir.path().join("hablock.toml");
        let mut f = std::fs::File::create(&config).unwrap();
        write!(
            f,
            r#"[global]
control_dir = "{d}/run"
state_dir = "{d}/state"

[[resource]]
name = "r0"
protocol = "{protocol}"
{extra}
[resource.on.alpha]
address = "{alpha_ip}:{rport}"
disk = "{disk}"
meta_disk = "{meta}"
nbd = "{alpha_nbd}"
cache = "{cache}"
[resource.on.beta]
address = "{beta_ip}:{rport}"
disk = "{d}/beta-r0.img"
meta_disk = "internal"
nbd = "{beta_nbd}"
cache = "{cache}"
{config_extra}"#,
            d = dir.path().display(),
            disk = disk.display(),
            alpha_nbd = nbd(&alpha_socket, "127.0.0.1", port),
            beta_nbd = nbd(&beta_socket, "127.0.0.2", beta_port),
            rport = free_port(),
            cache = if opts.writeback { "writeback" } else { "none" },
            protocol = opts.protocol,
            extra = opts.resource_extra,
            config_extra = opts.config_extra,
        )
        .unwrap();
        let dir = std::sync::Arc::new(dir);
        let alpha = Node {
            dir: dir.clone(),
            config: config.clone(),
            disk,
            port,
            host: "127.0.0.1".into(),
            name: "alpha".into(),
            nbd_socket: alpha_socket,
            netns: None,
            daemon: None,
        };
        let beta = Node {
            dir,
            config,
            disk: beta_disk,
            port: beta_port,
            host: "127.0.0.2".into(),
            name: "beta".into(),
            nbd_socket: beta_socket,
            netns: None,
            daemon: None,
        };
        (alpha, beta)
    }

    pub fn hbadm(&self, args: &[&str]) -> Output {
        run_tool("hbadm", &self.config, &self.name, args)
    }

    /// hbadm that must succeed; returns stdout.
    pub fn hbadm_ok(&self, args: &[&str]) -> String {
        self.tool_ok("hbadm", args)
    }

    /// One of the admin tools (hbadm, hbtgtadm, hbcrm) as this node, which must succeed;
    /// returns stdout.
    pub fn tool_ok(&self, tool: &str, args: &[&str]) -> String {
        let out = run_tool(tool, &self.config, &self.name, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} on {} failed ({:?}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn uri(&self) -> String {
        match &self.nbd_socket {
            Some(p) => format!("nbd+unix:///r0?socket={}", p.display()),
            None => format!("nbd://{}:{}/r0", self.host, self.port),
        }
    }

    /// Starts the daemon and waits until its admin socket answers.
    pub fn start(&mut self) {
        self.start_env(&[]);
    }

    /// [`start`](Self::start) with more environment variables for hablockd.
    pub fn start_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = hablockd_command(self.netns.as_deref())
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(&self.name)
            .env("HABLOCK_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let start = Instant::now();
        loop {
            if self.hbadm(&["status", "r0"]).status.success() {
                return;
            }
            if let Some(st) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("hablockd exited early ({st}): {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "hablockd did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// SIGTERM and wait (bounded); returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.daemon.take()?;
        // SAFETY: signalling a child we spawned and still own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hablockd did not stop within 30 s of SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the daemon dies without any cleanup.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("hablockd-{}.log", self.name))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A node with metadata created, daemon running and the resource Primary.
    pub fn ready(opts: NodeOptions) -> Node {
        let mut n = Node::new(opts);
        n.hbadm_ok(&["create-md", "r0"]);
        n.start();
        n.hbadm_ok(&["primary", "--force", "r0"]);
        n
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `size` bytes of pseudo-random data from a seed (reproducible, no RNG crate needed).
pub fn random_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v
}

pub fn sha256(path: &Path) -> String {
    let out = ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

/// Copies the whole export to `dest` with nbdcopy and returns its first `len` bytes
/// (bookworm's nbdcopy has no --length).
pub fn nbd_read_prefix(uri: &str, dest: &Path, len: usize) -> Vec<u8> {
    ok(Command::new("nbdcopy").arg(uri).arg(dest));
    let mut all = std::fs::read(dest).unwrap();
    assert!(all.len() >= len, "export shorter than {len}");
    all.truncate(len);
    all
}

/// A byte stream an NBD client can speak over (TCP or a unix socket).
pub trait NbdStream: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> NbdStream for T {}

/// A bare NBD client: fixed-newstyle handshake with EXPORT_NAME, then raw requests.
pub struct RawNbd(Box<dyn NbdStream>);

impl RawNbd {
    pub fn connect(port: u16, export: &str) -> RawNbd {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self::handshake(Box::new(s), export)
    }

    /// [`connect`](Self::connect) to an export on a unix socket.
    pub fn connect_unix(socket: &Path, export: &str) -> RawNbd {
        let s = std::os::unix::net::UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self::handshake(Box::new(s), export)
    }

    /// [`connect`](Self::connect) to a node's export, wherever it listens.
    pub fn to_node(n: &Node) -> RawNbd {
        match &n.nbd_socket {
            Some(p) => Self::connect_unix(p, "r0"),
            None => Self::connect(n.port, "r0"),
        }
    }

    fn handshake(mut s: Box<dyn NbdStream>, export: &str) -> RawNbd {
        use std::io::Read;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
        let mut opt = b"IHAVEOPT".to_vec();
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).unwrap();
        let mut info = [0u8; 10];
        s.read_exact(&mut info).unwrap();
        RawNbd(s)
    }

    /// Sends one request and returns the reply's error code (payload for reads is read and dropped).
    pub fn request(&mut self, typ: u16, handle: u64, offset: u64, len: u32, payload: &[u8]) -> u32 {
        use std::io::Read;
        let mut r = Vec::new();
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.0.write_all(&r).unwrap();
        let mut reply = [0u8; 16];
        self.0.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes());
        assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), handle);
        let err = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        if typ == 0 && err == 0 {
            let mut data = vec![0u8; len as usize];
            self.0.read_exact(&mut data).unwrap();
        }
        err
    }
}

/// What a test needed and did not find. Each has a name that `HABLOCK_ALLOW_SKIP`
/// (comma- or space-separated, or `all`) can allow; a skip that is not allowed fails the
/// test, so a green run means every test ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// ../shared/vm/guest-run, or a guest that cannot be prepared (HABLOCK_SKIP_GUEST set).
    Guest,
    /// Network namespaces (`ip netns add`, needs root and iproute2).
    Netns,
    /// Loop devices (`losetup --find` found none, or the kernel has no loop driver).
    Loop,
    /// A Debian package (its name) that tools/setup installs.
    Package(&'static str),
}

impl Missing {
    /// The name HABLOCK_ALLOW_SKIP takes and the summary prints.
    pub fn name(self) -> &'static str {
        match self {
            Missing::Guest => "guest",
            Missing::Netns => "netns",
            Missing::Loop => "loop",
            Missing::Package(p) => p,
        }
    }
}

/// Whether this run allows skips for `m` (HABLOCK_ALLOW_SKIP names it, or `all`).
pub fn skip_allowed(m: Missing) -> bool {
    std::env::var("HABLOCK_ALLOW_SKIP")
        .map(|v| v.split([',', ' ']).any(|a| a == m.name() || a == "all"))
        .unwrap_or(false)
}

/// A test could not run because `missing` is not here. Says so past libtest's output
/// capture, records it in `$HABLOCK_SKIP_LOG` (tools/test counts and lists them), and
/// fails the test unless this run allows that skip by name. Returns only when allowed:
/// the caller then returns.
pub fn skip(test: &str, missing: Missing, why: &str) {
    let name = missing.name();
    let allowed = skip_allowed(missing);
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test} [{name}]{}: {why}",
        if allowed { "" } else { " (not allowed)" }
    );
    if let Ok(log) = std::env::var("HABLOCK_SKIP_LOG") {
        let first = why.lines().next().unwrap_or("");
        let line = format!(
            "{test}\t{name}\t{}\t{first}\n",
            if allowed { "allowed" } else { "failed" }
        );
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            // One write per line: parallel tests append whole lines.
            let _ = f.write_all(line.as_bytes());
        }
    }
    if !allowed {
        panic!(
            "{test} could not run: {why}\n(missing: {name}; `tools/setup` installs every package; \
             HABLOCK_ALLOW_SKIP={name} lets a run skip it)"
        );
    }
}

/// Each program of `programs` (program, Debian package) is on PATH; otherwise the test
/// skips (fails unless allowed) naming the first missing one's package, and this is false.
pub fn require(test: &str, programs: &[(&str, &'static str)]) -> bool {
    for &(prog, pkg) in programs {
        if !have(prog) {
            skip(
                test,
                Missing::Package(pkg),
                &format!("`{prog}` not found (Debian package {pkg}; tools/setup installs it)"),
            );
            return false;
        }
    }
    true
}

/// Like [`require`] for files (agents, libraries) that are not programs on PATH.
pub fn require_file(test: &str, path: &str, pkg: &'static str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    skip(
        test,
        Missing::Package(pkg),
        &format!("{path} not found (Debian package {pkg}; tools/setup installs it)"),
    );
    false
}

/// The guest runner (../shared/vm/guest-run), prepared; None (after [`skip`]) when guest
/// tests cannot run here or HABLOCK_SKIP_GUEST is set.
pub fn prepared_guest(test: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vm/guest-run");
    if !p.exists() {
        skip(test, Missing::Guest, &format!("{} not found", p.display()));
        return None;
    }
    if std::env::var("HABLOCK_SKIP_GUEST").is_ok() {
        skip(test, Missing::Guest, "HABLOCK_SKIP_GUEST is set");
        return None;
    }
    let prep = run_timeout(Command::new(&p).arg("--prepare"), Duration::from_secs(600));
    assert!(
        prep.status.success(),
        "guest-run --prepare failed ({:?}):\n{}{}",
        prep.status,
        String::from_utf8_lossy(&prep.stdout),
        String::from_utf8_lossy(&prep.stderr)
    );
    Some(p)
}

/// guest-run's exit status when the guest died before the command finished (boot
/// failure or a kernel oops): always a test failure, with the console's last lines.
pub const GUEST_DIED: i32 = 125;

/// Panics when guest-run said the guest died; `text` is its output (console lines last).
pub fn assert_guest_lived(test: &str, out: &Output, text: &str) {
    if out.status.code() == Some(GUEST_DIED) {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{test}: the guest died (guest-run exit 125); last lines:\n{}",
            tail.join("\n")
        );
    }
}

/// Drops the replication port's traffic in both directions on loopback while alive
/// (`None`, after [`skip`], when iptables is missing).
pub struct LinkCut {
    rules: Vec<Vec<String>>,
}

impl LinkCut {
    pub fn new(test: &str, port: u16) -> Option<LinkCut> {
        if !require(test, &[("iptables", "iptables")]) {
            return None;
        }
        // Loopback traffic in either direction passes INPUT once: two rules cut it.
        let p = port.to_string();
        let rules: Vec<Vec<String>> = ["--dport", "--sport"]
            .iter()
            .map(|dir| {
                ["-w", "-I", "INPUT", "-i", "lo", "-p", "tcp", dir, &p, "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .collect();
        for r in &rules {
            let out = Command::new("iptables").args(r).output().unwrap();
            assert!(
                out.status.success(),
                "iptables {r:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(LinkCut { rules })
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        for r in &self.rules {
            let del: Vec<String> = r
                .iter()
                .map(|s| if s == "-I" { "-D".into() } else { s.clone() })
                .collect();
            let _ = Command::new("iptables").args(&del).output();
        }
    }
}

pub fn replication_port(n: &Node) -> u16 {
    let cfg = std::fs::read_to_string(&n.config).unwrap();
    let line = cfg.lines().find(|l| l.starts_with("address = \"127.0.0.2:")).unwrap();
    line.trim_end_matches('"').rsplit(':').next().unwrap().parse().unwrap()
}

/// Runs one of the admin tools (hbadm, hbcrm, hbtgtadm) as `node` of the cluster file
/// `config`, bounded by [`CLIENT_TIMEOUT`].
pub fn run_tool(tool: &str, config: &Path, node: &str, args: &[&str]) -> Output {
    run_timeout(
        Command::new(bin(tool))
            .env("HABLOCK_CONFIG", config)
            .env("HABLOCK_NODE", node)
            .args(args),
        CLIENT_TIMEOUT,
    )
}

/// A node's `hbadm status --json r0`.
pub fn resource_status(n: &Node) -> serde_json::Value {
    serde_json::from_str(&n.hbadm_ok(&["status", "--json", "r0"])).unwrap()
}

/// Waits (bounded) until `f` holds for the node's r0 status; panics with its log.
pub fn wait_status(n: &Node, what: &str, limit: Duration, f: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    loop {
        let st = resource_status(n);
        if f(&st) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{}: {what} not reached in {limit:?}; status {st}\nlog:\n{}",
            n.name,
            n.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first peer of the first resource in a status document.
pub fn peer(st: &serde_json::Value) -> &serde_json::Value {
    &st["resources"][0]["peers"][0]
}

/// Resource timing for pair tests that want a lost peer noticed quickly.
pub const FAST_NET: &str = "ping_interval = \"100ms\"\ntimeout = \"600ms\"\nconnect_interval = \"100ms\"\n";

/// From alpha's view: connected, replicating, the peer UpToDate, nothing out of sync.
pub fn pair_in_sync(st: &serde_json::Value) -> bool {
    let p = peer(st);
    p["connection"] == "Connected"
        && p["replication"] == "Established"
        && p["disk"] == "UpToDate"
        && p["out_of_sync"] == 0
}

/// Both nodes up and connected, alpha made Primary with --force (the initial full sync
/// starts).
pub fn forced_pair(opts: NodeOptions) -> (Node, Node) {
    force_pair(Node::pair(opts))
}

/// [`forced_pair`] for a pair made already (e.g. by [`netns_pair`]).
pub fn force_pair((mut a, mut b): (Node, Node)) -> (Node, Node) {
    a.hbadm_ok(&["create-md", "r0"]);
    b.hbadm_ok(&["create-md", "r0"]);
    a.start();
    b.start();
    wait_status(&a, "connected", Duration::from_secs(20), |st| {
        peer(st)["connection"] == "Connected"
    });
    a.hbadm_ok(&["primary", "--force", "r0"]);
    (a, b)
}

/// [`forced_pair`] with the initial full sync finished on both sides; alpha stays Primary.
pub fn synced_pair(opts: NodeOptions) -> (Node, Node) {
    sync_pair(forced_pair(opts))
}

/// Waits for a [`force_pair`]'s initial full sync to finish on both sides.
pub fn sync_pair((a, b): (Node, Node)) -> (Node, Node) {
    wait_status(&a, "initial sync done", Duration::from_secs(60), pair_in_sync);
    wait_status(&b, "UpToDate", Duration::from_secs(20), |st| {
        st["resources"][0]["disk"] == "UpToDate"
    });
    (a, b)
}

/// A 16 MiB pair on buffered files with [`FAST_NET`] and `extra` in r0's table, synced.
pub fn synced_fast_pair(extra: &str) -> (Node, Node) {
    synced_pair(fast_pair_options(extra))
}

fn fast_pair_options(extra: &str) -> NodeOptions {
    NodeOptions {
        size_mib: 16,
        writeback: true,
        resource_extra: format!("{FAST_NET}{extra}"),
        ..Default::default()
    }
}

/// Both nodes of r0 with each daemon in its own network namespace (two nodes on one
/// link of [`cluster::Netns`]: cut it with `set_link`), NBD on unix sockets; neither
/// daemon started. `None`, after [`skip`], where namespaces are not permitted. The
/// namespaces' drop ends whatever still runs inside them.
pub fn netns_pair(test: &str, mut opts: NodeOptions) -> Option<(Node, Node, cluster::Netns)> {
    let net = match cluster::Netns::create(2, 1) {
        Ok(n) => n,
        Err(e) => {
            skip(test, Missing::Netns, &format!("no network namespaces ({e})"));
            return None;
        }
    };
    opts.in_netns = true;
    let (mut a, mut b) = Node::pair(opts);
    a.netns = Some(net.nodes[0].clone());
    b.netns = Some(net.nodes[1].clone());
    Some((a, b, net))
}

/// [`synced_fast_pair`] in network namespaces ([`netns_pair`]).
pub fn synced_fast_netns_pair(test: &str, extra: &str) -> Option<(Node, Node, cluster::Netns)> {
    let (a, b, net) = netns_pair(test, fast_pair_options(extra))?;
    let (a, b) = sync_pair(force_pair((a, b)));
    Some((a, b, net))
}

pub mod cluster;
pub mod pacemaker;

/// Min, median (the upper one for an even count) and max of a benchmark's figures.
pub fn min_median_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    assert!(!v.is_empty(), "no figures");
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Appends `key median` to the file `BENCH_RESULTS` names, when it is set: how a benchmark
/// test hands its medians to its script.
pub fn bench_record(key: &str, median: f64) {
    if let Some(p) = std::env::var_os("BENCH_RESULTS") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("BENCH_RESULTS {p:?}: {e}"));
        writeln!(f, "{key} {median:.3}").unwrap_or_else(|e| panic!("BENCH_RESULTS {p:?}: {e}"));
    }
}
