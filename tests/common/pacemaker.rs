//! A real Pacemaker + Corosync cluster on this one host, for tests that check hablock's agents
//! (and timings) against the stack they imitate.
//!
//! Each node is a network namespace of [`Netns`] (so Corosync's knet links and libqb's abstract
//! Unix sockets are its own) with its own mount and UTS namespace (`unshare -m -u`): a private
//! directory is bind-mounted over every path Pacemaker and Corosync hardcode (`/etc/corosync`,
//! `/var/lib/pacemaker`, `/var/lib/corosync`, `/var/log/pacemaker`, `/run`, `/dev/shm` for
//! libqb's shared-memory rings), and over `/usr/lib/ocf/resource.d` a tree that holds the stock
//! providers plus `hablock` (this checkout's agents), since Pacemaker 2.1 reads agents only from
//! its built-in OCF root. Nothing on the host is changed. Pacemaker's own tools run inside a
//! node through `nsenter` into its pacemakerd.

use super::cluster::Netns;
use super::run_timeout;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The programs a Pacemaker test needs, with their Debian packages.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("pacemakerd", "pacemaker"),
    ("corosync", "corosync"),
    ("corosync-cmapctl", "corosync"),
    ("crm_mon", "pacemaker-cli-utils"),
    ("cibadmin", "pacemaker-cli-utils"),
    ("crm_resource", "pacemaker-cli-utils"),
    ("crm_attribute", "pacemaker-cli-utils"),
    ("crm_standby", "pacemaker-cli-utils"),
    ("crmadmin", "pacemaker-cli-utils"),
    ("stonith_admin", "pacemaker-cli-utils"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
];

/// Every program in [`PROGRAMS`] is here; otherwise `test` skips (a failure unless allowed).
pub fn require_pacemaker(test: &str) -> bool {
    super::require(test, PROGRAMS)
}

/// Brings one node up inside its namespaces: $1 node name, $2 its private directory, $3 the
/// directory with this checkout's OCF agents (provider `hablock`), $4 empty or a directory of
/// fence agents to add to /usr/sbin (where Pacemaker looks for them; an overlay, so the host's
/// /usr/sbin is untouched), which also makes the host's /run/netns visible inside so that a
/// fence agent can reach the other nodes' namespaces. Ends by exec'ing pacemakerd, so the PID
/// the test holds is pacemakerd's.
const NODE_SH: &str = r#"set -eu
name=$1 d=$2 hab=$3 sbin=$4
hostname "$name"
for sub in run shm lib-pcmk/cib lib-pcmk/pengine lib-pcmk/blackbox lib-pcmk/cores lib-corosync log-pcmk ocf; do
    mkdir -p "$d/$sub"
done
chown -R hacluster:haclient "$d/lib-pcmk" "$d/log-pcmk"
chmod 1777 "$d/shm"
if [ -n "$sbin" ]; then
    mount -t overlay overlay -o "lowerdir=$sbin:/usr/sbin" /usr/sbin
    mkdir -p "$d/run/netns"
    mount --rbind /run/netns "$d/run/netns"
fi
mount --rbind "$d/run" /run
mount --bind "$d/shm" /dev/shm
mount --bind "$d/lib-pcmk" /var/lib/pacemaker
mount --bind "$d/lib-corosync" /var/lib/corosync
mount --bind "$d/log-pcmk" /var/log/pacemaker
mount --bind "$d/etc-corosync" /etc/corosync
for e in /usr/lib/ocf/resource.d/*; do
    b=${e##*/}
    [ "$b" = hablock ] && continue
    mkdir -p "$d/ocf/$b"
    mount --bind "$e" "$d/ocf/$b"
done
mkdir -p "$d/ocf/hablock"
mount --bind "$hab" "$d/ocf/hablock"
mount --rbind "$d/ocf" /usr/lib/ocf/resource.d
corosync -f -c /etc/corosync/corosync.conf >"$d/corosync.out" 2>&1 &
i=0
until corosync-cmapctl totem.cluster_name >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 200 ]; then
        echo "corosync did not answer within 20 s" >&2
        exit 1
    fi
    sleep 0.1
done
exec pacemakerd
"#;

/// One Pacemaker node: pacemakerd (our child, inside the node's namespaces) and its files.
pub struct PcmkNode {
    pub name: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl PcmkNode {
    /// pacemakerd's PID: the process whose namespaces the tools enter.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// Runs a Pacemaker/Corosync tool inside this node, bounded in time.
    pub fn tool(&self, program: &str, args: &[&str]) -> Output {
        run_timeout(
            // -r: entering a mount namespace resets the root to that namespace's own, which
            // in a chroot (tools/fresh-check) is not the node's; take pacemakerd's root too.
            Command::new("nsenter")
                .args(["-t", &self.pid().to_string(), "-n", "-m", "-u", "-r", "--", program])
                .args(args)
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            Duration::from_secs(60),
        )
    }

    /// A tool that must succeed; returns its stdout.
    pub fn tool_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.tool(program, args);
        assert!(
            out.status.success(),
            "{}: {program} {args:?} failed ({:?}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `crm_mon -1` as text (empty when it fails, e.g. before the daemons answer).
    pub fn crm_mon(&self) -> String {
        let out = self.tool("crm_mon", &["-1", "-r"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The tail of this node's pacemaker.log and corosync.log, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |p: PathBuf| {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = t
                .lines()
                .filter(|l| !l.contains("(debug)") && !l.contains("trace"))
                .collect();
            let from = lines.len().saturating_sub(80);
            format!("--- {}\n{}", p.display(), lines[from..].join("\n"))
        };
        format!(
            "{}\n{}",
            tail(self.dir.join("log-pcmk/pacemaker.log")),
            tail(self.dir.join("corosync.log"))
        )
    }

    /// SIGKILL of pacemakerd alone (the rest of the node keeps running).
    fn kill_pacemakerd(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory holding this checkout's test fence agent (fence_hablock_netns), for
/// [`PcmkOptions::fence_agents`].
pub fn fence_agents_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.join("fence-agents");
    std::fs::create_dir_all(&d).unwrap();
    let agent = d.join("fence_hablock_netns");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fence/fence_hablock_netns"),
        &agent,
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The stonith device for fence_hablock_netns on every node of the cluster, as CIB XML.
pub fn fence_device_xml(pc: &PcmkCluster) -> String {
    let names: Vec<&str> = pc.nodes.iter().map(|n| n.name.as_str()).collect();
    let map: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}:{}", pc.netns(i)))
        .collect();
    format!(
        r#"<primitive id="fence_ns" class="stonith" type="fence_hablock_netns">
  <instance_attributes id="fence_ns-ia">
    <nvpair id="fence_ns-map" name="netns_map" value="{}"/>
    <nvpair id="fence_ns-hosts" name="pcmk_host_list" value="{}"/>
  </instance_attributes>
  <operations><op id="fence_ns-mon" name="monitor" interval="60s"/></operations>
</primitive>"#,
        map.join(","),
        names.join(" ")
    )
}

/// Node `i`'s Corosync ring address (link 0 of [`Netns`]).
pub fn ring_addr(i: usize) -> String {
    Netns::addr(i, 0, false)
}

/// Corosync's totem timeouts (ms); `None` leaves one out of corosync.conf, at Corosync's
/// default (token 3000, token_coefficient 650, consensus 1.2 x the effective token).
#[derive(Clone, Copy, Debug, Default)]
pub struct Totem {
    pub token_ms: Option<u32>,
    pub token_coefficient_ms: Option<u32>,
    pub consensus_ms: Option<u32>,
}

impl Totem {
    /// `token` only, the rest at Corosync's defaults.
    pub fn token(ms: u32) -> Totem {
        Totem {
            token_ms: Some(ms),
            ..Totem::default()
        }
    }

    /// The `totem` section's lines for the timeouts that are set.
    fn lines(&self) -> String {
        [
            ("token", self.token_ms),
            ("token_coefficient", self.token_coefficient_ms),
            ("consensus", self.consensus_ms),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("  {k}: {v}\n")))
        .collect()
    }
}

/// A corosync.conf for `names` (node ids 1..), knet on the namespaces' link 0, two_node when
/// there are two, `totem`'s timeouts, logging to `log`.
pub fn corosync_conf(names: &[&str], totem: &Totem, log: &Path) -> String {
    let mut nodes = String::new();
    for (i, n) in names.iter().enumerate() {
        nodes.push_str(&format!(
            "  node {{\n    name: {n}\n    nodeid: {}\n    ring0_addr: {}\n  }}\n",
            i + 1,
            ring_addr(i)
        ));
    }
    let two_node = if names.len() == 2 { "  two_node: 1\n" } else { "" };
    format!(
        "totem {{\n  version: 2\n  cluster_name: hbpcmk\n  transport: knet\n  crypto_cipher: none\n  \
         crypto_hash: none\n{}}}\nnodelist {{\n{nodes}}}\nquorum {{\n  \
         provider: corosync_votequorum\n{two_node}}}\nlogging {{\n  to_logfile: yes\n  logfile: {}\n  \
         to_stderr: no\n  to_syslog: no\n  timestamp: on\n}}\n",
        totem.lines(),
        log.display()
    )
}

/// The CIB every node starts from: cluster properties only (`name=value` pairs), so that the
/// first DC election already uses them (dc-deadtime in particular: Pacemaker's default of 20 s
/// is read before any tool could change it).
pub fn seed_cib(properties: &[(&str, &str)]) -> String {
    let mut nv = String::new();
    for (k, v) in properties {
        nv.push_str(&format!(
            "        <nvpair id=\"opt-{k}\" name=\"{k}\" value=\"{v}\"/>\n"
        ));
    }
    format!(
        "<cib validate-with=\"pacemaker-3.8\" epoch=\"1\" num_updates=\"0\" admin_epoch=\"0\">\n  \
         <configuration>\n    <crm_config>\n      <cluster_property_set id=\"cib-bootstrap-options\">\n{nv}      \
         </cluster_property_set>\n    </crm_config>\n    <nodes/>\n    <resources/>\n    <constraints/>\n  \
         </configuration>\n  <status/>\n</cib>\n"
    )
}

/// A Pacemaker + Corosync cluster of [`Netns`] nodes. Dropping it kills every process inside
/// its namespaces (all of them started by it) until none is left, then deletes the namespaces.
pub struct PcmkCluster {
    pub nodes: Vec<PcmkNode>,
    net: Netns,
}

pub struct PcmkOptions<'a> {
    pub names: &'a [&'a str],
    /// Corosync's totem timeouts.
    pub totem: Totem,
    /// Cluster properties in the seed CIB.
    pub properties: &'a [(&'a str, &'a str)],
    /// Directory mounted as OCF provider `hablock`.
    pub ocf_hablock: PathBuf,
    /// Fence agents to add to /usr/sbin inside the nodes (see the node script).
    pub fence_agents: Option<PathBuf>,
}

impl PcmkCluster {
    /// Creates the namespaces and starts corosync + pacemakerd on every node (not waiting for
    /// them). Err: namespaces cannot be made here (not root), said so the caller can skip.
    pub fn start(dir: &Path, opts: &PcmkOptions) -> Result<PcmkCluster, String> {
        let net = Netns::create(opts.names.len(), 1)?;
        let script = dir.join("pcmk-node.sh");
        std::fs::write(&script, NODE_SH).unwrap();
        let mut c = PcmkCluster { nodes: Vec::new(), net };
        for (i, name) in opts.names.iter().enumerate() {
            let nd = dir.join(format!("pcmk-{name}"));
            let cib_dir = nd.join("lib-pcmk/cib");
            std::fs::create_dir_all(&cib_dir).unwrap();
            std::fs::create_dir_all(nd.join("etc-corosync")).unwrap();
            std::fs::write(
                nd.join("etc-corosync/corosync.conf"),
                corosync_conf(opts.names, &opts.totem, &nd.join("corosync.log")),
            )
            .unwrap();
            std::fs::write(cib_dir.join("cib.xml"), seed_cib(opts.properties)).unwrap();
            let out = std::fs::File::create(nd.join("node.out")).unwrap();
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &c.net.nodes[i],
                    "unshare",
                    "-m",
                    "-u",
                    "--propagation",
                    "private",
                ])
                .arg("sh")
                .arg(&script)
                .arg(name)
                .arg(&nd)
                .arg(&opts.ocf_hablock)
                .arg(opts.fence_agents.as_deref().unwrap_or(Path::new("")))
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                // No syslog: everything goes to the node's private /var/log/pacemaker.
                .env("PCMK_logfacility", "none")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .map_err(|e| format!("spawn ip netns exec: {e}"))?;
            c.nodes.push(PcmkNode {
                name: name.to_string(),
                dir: nd,
                child: Some(child),
            });
        }
        Ok(c)
    }

    /// The network namespace of node `i` (for a fence agent's map).
    pub fn netns(&self, i: usize) -> &str {
        &self.net.nodes[i]
    }

    pub fn node(&self, name: &str) -> &PcmkNode {
        self.nodes.iter().find(|n| n.name == name).expect("no such node")
    }

    /// Every node's log tails.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(PcmkNode::logs).collect::<Vec<_>>().join("\n")
    }

    /// Polls `crm_mon -1` on `on` until `done` holds for its text; returns the text and how long
    /// it took, failing (with every node's logs) after `limit`.
    pub fn wait_mon(&self, on: &str, limit: Duration, what: &str, done: impl Fn(&str) -> bool) -> (String, Duration) {
        let start = Instant::now();
        let node = self.node(on);
        loop {
            let text = node.crm_mon();
            if done(&text) {
                return (text, start.elapsed());
            }
            if start.elapsed() > limit {
                panic!(
                    "{on}: {what} not within {limit:?}\ncrm_mon -1:\n{text}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `on` sees a DC and every node online; returns how long that took.
    pub fn wait_online(&self, on: &str, limit: Duration) -> Duration {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let want = format!("Online: [ {} ]", names.join(" "));
        self.wait_mon(on, limit, "a DC and all nodes online", |t| {
            t.contains("Current DC: ") && !t.contains("Current DC: NONE") && t.contains(&want)
        })
        .1
    }

    /// A key of Corosync's runtime configuration on `on` (e.g. `runtime.config.totem.token`,
    /// the effective token timeout), as a number.
    pub fn cmap_u64(&self, on: &str, key: &str) -> u64 {
        let out = self.node(on).tool_ok("corosync-cmapctl", &["-g", key]);
        // "runtime.config.totem.token (u32) = 1650"
        out.rsplit(" = ")
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{on}: corosync-cmapctl -g {key}: unexpected answer {out:?}"))
    }

    /// The DC's name as `on` sees it.
    pub fn dc(&self, on: &str) -> Option<String> {
        let mon = self.node(on).crm_mon();
        mon.lines()
            .find_map(|l| l.trim().strip_prefix("* Current DC: "))
            .and_then(|r| r.split_whitespace().next())
            .filter(|n| *n != "NONE")
            .map(str::to_string)
    }

    /// Waits until the DC (as `on` sees it) is idle, S_IDLE: no transition in flight. Call it
    /// a moment after a change, since a DC that has not yet noticed the change is idle too.
    pub fn wait_idle(&self, on: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(dc) = self.dc(on) {
                let out = self.node(&dc).tool("crmadmin", &["-S", &dc]);
                if String::from_utf8_lossy(&out.stdout).contains("S_IDLE") {
                    return;
                }
            }
            if start.elapsed() > limit {
                panic!("the DC was not idle within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of every process of node `i` at once (a node "losing power"), by PID, repeated
    /// until none is left.
    pub fn kill_node(&mut self, i: usize) {
        kill_all_in(&self.net.nodes[i]);
        self.nodes[i].kill_pacemakerd();
    }
}

/// Kills (SIGKILL) every process in the network namespace, again and again until it is empty
/// (bounded): pacemakerd respawns its children, so one pass can miss one forked meanwhile.
fn kill_all_in(ns: &str) {
    let start = Instant::now();
    loop {
        let out = run_timeout(Command::new("ip").args(["netns", "pids", ns]), Duration::from_secs(10));
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(10) {
            if !pids.is_empty() {
                eprintln!("cleanup: processes {pids:?} still in {ns}");
            }
            return;
        }
        for pid in pids {
            // SAFETY: signalling a process inside a namespace this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for PcmkCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill_pacemakerd();
        }
        for ns in &self.net.nodes {
            kill_all_in(ns);
        }
    }
}
