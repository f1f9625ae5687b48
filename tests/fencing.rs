//! Fencing through real agents: the fence-agents stdin interface, timeouts that kill the whole
//! process group, and the test power switch `agents/fence/fence_hablock_netns` turning a node in
//! a network namespace off while a first, failing level falls through to it.

mod common;

use common::run_timeout;
use hablock::cluster::cib::config::{FencingLevel, Node, Primitive};
use hablock::cluster::cib::Configuration;
use hablock::cluster::fencing::{self, FenceAction, FenceOptions};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_agents() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fence")
}

fn write_agent(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn opts(dir: &Path, timeout: Duration) -> FenceOptions {
    FenceOptions {
        agent_dirs: vec![dir.to_path_buf(), repo_agents()],
        output_dir: dir.join("out"),
        timeout,
    }
}

fn pid_alive(pid: u32) -> bool {
    // A zombie has no /proc/PID/cmdline contents; a gone process has no directory.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

#[tokio::test]
async fn agents_get_stdin_and_overrunning_ones_lose_their_process_group() {
    let dir = tempfile::tempdir().unwrap();
    // Echoes its stdin to a file and exits 0.
    write_agent(
        dir.path(),
        "fence_echo",
        &format!("cat > {}/stdin.txt; echo done", dir.path().display()),
    );
    let exe = fencing::find_agent("fence_echo", &[dir.path().to_path_buf()]).unwrap();
    let lines = vec!["action=off".to_string(), "plug=n1".to_string()];
    let run = fencing::run_agent(&exe, &lines, &dir.path().join("out/echo"), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(run.success(), "{run:?}");
    assert_eq!(run.stdout, "done\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdin.txt")).unwrap(),
        "action=off\nplug=n1\n"
    );
    assert_eq!(std::fs::read_to_string(&run.stdout_file).unwrap(), "done\n");

    // Leaves a grandchild behind and hangs: both are killed at the timeout.
    write_agent(
        dir.path(),
        "fence_hang",
        &format!(
            "sleep 300 & echo $! > {}/grandchild.pid; echo hanging >&2; wait",
            dir.path().display()
        ),
    );
    let exe = fencing::find_agent("fence_hang", &[dir.path().to_path_buf()]).unwrap();
    let t = Instant::now();
    let run = fencing::run_agent(&exe, &lines, &dir.path().join("out/hang"), Duration::from_millis(1000))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(run.timed_out && run.rc.is_none() && run.signal == Some(9), "{run:?}");
    assert!(run.summary().starts_with("timed out after"), "{}", run.summary());
    assert!(run.summary().ends_with(": hanging"), "{}", run.summary());
    let gc: u32 = std::fs::read_to_string(dir.path().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(gc)),
        "the agent's background child {gc} survived the timeout"
    );

    // A caller's own timeout (the future dropped mid-run) kills the group too.
    std::fs::remove_file(dir.path().join("grandchild.pid")).unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(1000),
        fencing::run_agent(&exe, &lines, &dir.path().join("out/hang2"), Duration::from_secs(60)),
    )
    .await;
    assert!(cancelled.is_err(), "{cancelled:?}");
    let pid_file = dir.path().join("grandchild.pid");
    assert!(wait_until(Duration::from_secs(5), || pid_file.exists()));
    let gc: u32 = std::fs::read_to_string(dir.path().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(gc)),
        "the agent's background child {gc} survived the cancelled run"
    );

    // Missing agents and non-zero exits are clear errors.
    let e = fencing::find_agent("fence_nosuch", &[dir.path().to_path_buf()]).unwrap_err();
    assert!(e.contains("fence agent fence_nosuch not found (looked in"), "{e}");
    assert!(fencing::find_agent("../bin/sh", &[]).is_err());

    // The repository's test agent speaks the protocol without any namespace: metadata, list,
    // and errors for an unknown node.
    let exe = fencing::find_agent("fence_hablock_netns", &[repo_agents()]).unwrap();
    let meta = fencing::run_agent(
        &exe,
        &["action=metadata".into()],
        &dir.path().join("out/meta"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(meta.success(), "{meta:?}");
    assert!(
        meta.stdout.contains("<resource-agent name=\"fence_hablock_netns\""),
        "{}",
        meta.stdout
    );
    assert!(meta.stdout.contains("<action name=\"status\""), "{}", meta.stdout);
    let list = fencing::run_agent(
        &exe,
        &["action=list".into(), "netns_map=n1:nsa,n2:nsb".into()],
        &dir.path().join("out/list"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(list.success(), "{list:?}");
    assert_eq!(list.stdout, "n1,nsa\nn2,nsb\n");
    assert!(fencing::list_names(&list.stdout, "n2") && !fencing::list_names(&list.stdout, "n3"));
    let unknown = fencing::run_agent(
        &exe,
        &["action=off".into(), "plug=n3".into(), "netns_map=n1:nsa,n2:nsb".into()],
        &dir.path().join("out/unknown"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(unknown.rc, Some(1), "{unknown:?}");
    assert!(
        unknown.summary().contains("node 'n3' is not in netns_map"),
        "{}",
        unknown.summary()
    );
}

/// Three namespaces: a switch with a bridge and two nodes, each with `eth0` on the bridge.
/// Deleted on drop, with the processes the test started in them killed by PID first.
struct Lab {
    switch: String,
    nodes: [String; 2],
    created: Vec<String>,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = run_timeout(Command::new("ip").args(args), Duration::from_secs(10));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    fn create() -> Result<Lab, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!("{}{:04x}", std::process::id(), (nanos ^ (nanos >> 16)) & 0xffff);
        let mut lab = Lab {
            switch: format!("hbfsw{tag}"),
            nodes: [format!("hbf{tag}a"), format!("hbf{tag}b")],
            created: Vec::new(),
            children: Vec::new(),
        };
        for name in std::iter::once(lab.switch.clone()).chain(lab.nodes.clone()) {
            ip(&["netns", "add", &name])?;
            lab.created.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let sw = lab.switch.clone();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, ns) in lab.nodes.clone().iter().enumerate() {
            let outer = format!("v{i}");
            ip(&[
                "-n", &sw, "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("10.79.0.{}/24", i + 1), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// A `sleep 300` inside node `i`'s namespace (`ip netns exec` execs it: same PID).
    fn spawn_sleep(&mut self, i: usize) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i], "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        let ns = self.nodes[i].clone();
        assert!(
            wait_until(Duration::from_secs(5), || ip(&["netns", "pids", &ns])
                .unwrap()
                .split_whitespace()
                .any(|p| p == pid.to_string())),
            "sleep {pid} never showed up in {ns}"
        );
        pid
    }

    /// Whether child `pid` (one of ours) has ended, reaping it.
    fn ended(&mut self, pid: u32) -> bool {
        let c = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        c.try_wait().unwrap().is_some()
    }

    /// The links of node `i` that are up, by name.
    fn links_up(&self, i: usize) -> Vec<String> {
        ip(&["-n", &self.nodes[i], "-o", "link", "show", "up"])
            .unwrap()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect()
    }

    fn processes(&self, i: usize) -> Vec<String> {
        ip(&["netns", "pids", &self.nodes[i]])
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for name in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn skip(why: String) {
    common::skip(
        "fencing_a_node_in_a_namespace_falls_back_to_the_next_level",
        common::Missing::Netns,
        &why,
    );
}

fn lab_config(lab: &Lab) -> Configuration {
    let mut cfg = Configuration::default();
    cfg.nodes.push(Node::new("n1", 1));
    cfg.nodes.push(Node::new("n2", 2));
    // A first-level device that always fails, as a dead IPMI board would.
    cfg.resources.push(
        Primitive::new("ipmi", "stonith:fence_always_fails")
            .unwrap()
            .param("ip", "192.0.2.1")
            .param("pcmk_host_list", "n1 n2")
            .into(),
    );
    // The power switch; no host list, so without topology its `list` says whom it can fence.
    cfg.resources.push(
        Primitive::new("switch", "stonith:fence_hablock_netns")
            .unwrap()
            .param("netns_map", &format!("n1:{},n2:{}", lab.nodes[0], lab.nodes[1]))
            .into(),
    );
    cfg
}

#[tokio::test]
async fn fencing_a_node_in_a_namespace_falls_back_to_the_next_level() {
    let mut lab = match Lab::create() {
        Ok(l) => l,
        Err(e) => return skip(e),
    };
    let dir = tempfile::tempdir().unwrap();
    write_agent(
        dir.path(),
        "fence_always_fails",
        "cat >/dev/null; echo 'Failed: unable to connect to 192.0.2.1' >&2; exit 1",
    );
    let o = opts(dir.path(), Duration::from_secs(20));
    let a = lab.spawn_sleep(0);
    let b = lab.spawn_sleep(1);
    assert_eq!(lab.links_up(0), ["lo", "eth0"]);

    let mut cfg = lab_config(&lab);
    cfg.fencing_topology = vec![
        FencingLevel::new("n1", 1, &["ipmi"]),
        FencingLevel::new("n1", 2, &["switch"]),
    ];
    hablock::cluster::cib::validate::validate(&cfg, &Default::default()).unwrap();
    fencing::monitor_device(&cfg, "switch", &o).await.unwrap();
    let e = fencing::monitor_device(&cfg, "ipmi", &o).await.unwrap_err();
    assert!(e.contains("exited 1: Failed: unable to connect"), "{e}");

    let plan = fencing::plan(&cfg, "n1", FenceAction::Off).unwrap();
    let out = fencing::execute(&plan, &o).await;
    eprintln!("{out:?}");
    assert!(out.ok, "{out:?}");
    assert_eq!(out.device.as_deref(), Some("switch"));
    assert!(
        out.detail
            .contains("level 1 failed: ipmi: fence_always_fails off of plug n1 exited 1: Failed: unable to connect"),
        "{}",
        out.detail
    );
    assert!(out.elapsed_ms < 20_000);

    // n1 is off: its sleep is dead, nothing runs in it, no link is up.
    assert!(
        wait_until(Duration::from_secs(5), || lab.ended(a)),
        "n1's process survived"
    );
    assert!(lab.processes(0).is_empty(), "{:?}", lab.processes(0));
    assert!(lab.links_up(0).is_empty(), "{:?}", lab.links_up(0));
    // n2 is untouched.
    assert!(!lab.ended(b), "n2's process was killed");
    assert_eq!(lab.links_up(1), ["lo", "eth0"]);
    assert_eq!(lab.processes(1), [b.to_string()]);
    let st = |plug: &'static str| {
        let cfg = cfg.clone();
        let o = o.clone();
        async move {
            fencing::device_action(&cfg, "switch", "status", Some(plug), &o)
                .await
                .unwrap()
                .rc
        }
    };
    assert_eq!(st("n1").await, Some(2), "status of a fenced node is off");
    assert_eq!(st("n2").await, Some(0));

    // Unfencing brings n1's links back.
    let on = fencing::plan(&cfg, "n1", FenceAction::On).unwrap();
    let out = fencing::execute(&on, &o).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(lab.links_up(0), ["lo", "eth0"]);
    assert_eq!(st("n1").await, Some(0));

    // Without topology: the failing device is tried first (its host list names n2), then the
    // switch, whose `list` (dynamic-list) names n2.
    cfg.fencing_topology.clear();
    let plan = fencing::plan(&cfg, "n2", FenceAction::Off).unwrap();
    assert_eq!(plan.levels.len(), 2);
    let out = fencing::execute(&plan, &o).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.device.as_deref(), Some("switch"));
    assert!(
        wait_until(Duration::from_secs(5), || lab.ended(b)),
        "n2's process survived"
    );
    assert!(lab.links_up(1).is_empty());
    // n1 was not touched by fencing n2.
    assert_eq!(lab.links_up(0), ["lo", "eth0"]);

    // When every level fails the outcome says why, level by level.
    let mut broken = cfg.clone();
    broken.fencing_topology = vec![FencingLevel::new("n1", 1, &["ipmi"])];
    let out = fencing::execute(&fencing::plan(&broken, "n1", FenceAction::Off).unwrap(), &o).await;
    assert!(!out.ok && out.device.is_none(), "{out:?}");
    assert!(
        out.detail
            .starts_with("could not fence n1 (off): level 1 failed: ipmi:"),
        "{}",
        out.detail
    );

    // The switch refuses to power off the namespace it runs in (for a real host that would be
    // the host's processes, the cluster's included). Run inside n2's namespace and pointed at
    // it, it must leave it alone; were that check broken, only the lab would suffer.
    let b2 = lab.spawn_sleep(1);
    let agent = repo_agents().join("fence_hablock_netns");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.nodes[1]]).arg(&agent).args([
        "-o",
        "off",
        "-n",
        "n2",
        &format!("--netns-map=n2:{}", lab.nodes[1]),
    ]);
    let res = run_timeout(&mut cmd, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(err.contains("is the agent's own; refusing to touch it"), "{err}");
    assert!(!lab.ended(b2), "the agent killed processes of its own namespace");
}

/// A recording agent: appends `TAG ACTION PLUG` to `log` for each run; params `fail=` and
/// `hang=` list actions that exit 1 or hang, `list=` the nodes its `list` prints; `status` of
/// plug `down` answers off (2), of `broken` an error (1).
fn recording_agent(dir: &Path) -> PathBuf {
    let log = dir.join("calls.log");
    write_agent(
        dir,
        "fence_rec",
        &format!(
            r#"action=; plug=; tag=; fail=; list=; hang=
while IFS= read -r line; do
  case "$line" in
    action=*) action="${{line#action=}}" ;;
    plug=*) plug="${{line#plug=}}" ;;
    tag=*) tag="${{line#tag=}}" ;;
    fail=*) fail="${{line#fail=}}" ;;
    list=*) list="${{line#list=}}" ;;
    hang=*) hang="${{line#hang=}}" ;;
  esac
done
echo "$tag $action $plug" >> {log}
case ",$hang," in *",$action,"*) sleep 30 ;; esac
case ",$fail," in *",$action,"*) echo "$tag: $action failed" >&2; exit 1 ;; esac
case "$action" in
  list) for n in $list; do echo "$n,alias-$n"; done ;;
  status) [ "$plug" = down ] && exit 2; [ "$plug" = broken ] && exit 1 ;;
esac
exit 0"#,
            log = log.display()
        ),
    );
    log
}

fn rec(id: &str, params: &[(&str, &str)]) -> hablock::cluster::cib::config::Resource {
    let mut p = Primitive::new(id, "stonith:fence_rec").unwrap().param("tag", id);
    for (k, v) in params {
        p = p.param(k, v);
    }
    p.into()
}

fn take_log(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn host_checks_multi_device_reboot_timeouts_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let log = recording_agent(dir.path());
    let o = opts(dir.path(), Duration::from_secs(20));
    let mut cfg = Configuration::default();
    for (i, n) in ["n1", "n2", "down", "broken"].iter().enumerate() {
        cfg.nodes.push(Node::new(n, i as u8));
    }

    // pcmk_host_check=status: the status of the plug is asked first; a delay is waited out.
    cfg.resources = vec![
        rec("st", &[("pcmk_host_check", "status"), ("pcmk_delay_base", "200ms")]),
        // Disabled: never run, but named when fencing fails.
        Primitive::new("idle", "stonith:fence_rec")
            .unwrap()
            .meta("target-role", "Stopped")
            .into(),
    ];
    let t = Instant::now();
    let out = fencing::fence(&cfg, "n1", &o).await;
    assert!(out.ok, "{out:?}");
    assert!(t.elapsed() >= Duration::from_millis(200), "{:?}", t.elapsed());
    assert_eq!(
        take_log(&log),
        ["st status n1", "st reboot n1"],
        "stonith-action defaults to reboot"
    );
    // A plug whose status is off can still be fenced; an erroring one cannot.
    cfg.properties.insert("stonith-action".into(), "off".into());
    assert!(fencing::fence(&cfg, "down", &o).await.ok);
    let out = fencing::fence(&cfg, "broken", &o).await;
    assert!(!out.ok, "{out:?}");
    assert!(
        out.detail
            .contains("fence_rec status of plug broken (pcmk_host_check=status) exited 1")
            && out
                .detail
                .ends_with(" (not used: idle: disabled (target-role=Stopped))"),
        "{}",
        out.detail
    );
    take_log(&log);

    // dynamic-list (no host list): a device whose list lacks the node is passed over.
    cfg.resources = vec![rec("d1", &[("list", "n2 down")]), rec("d2", &[("list", "n1 n2")])];
    let out = fencing::fence(&cfg, "n1", &o).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.device.as_deref(), Some("d2"));
    assert!(
        out.detail
            .contains("level 1 failed: d1: fence_rec list does not name n1"),
        "{}",
        out.detail
    );
    assert_eq!(take_log(&log), ["d1 list ", "d2 list ", "d2 off n1"]);

    // A node with two power supplies: reboot is both off, then both on; a failing `on` does
    // not undo the fencing but is reported.
    cfg.resources = vec![
        rec("psu1", &[("fail", "on"), ("pcmk_host_map", "n2:1")]),
        rec("psu2", &[("pcmk_host_map", "n2:2")]),
    ];
    cfg.fencing_topology = vec![FencingLevel::new("n2", 1, &["psu1", "psu2"])];
    let plan = fencing::plan(&cfg, "n2", FenceAction::Reboot).unwrap();
    let out = fencing::execute(&plan, &o).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.device.as_deref(), Some("psu1,psu2"));
    assert!(
        out.detail
            .contains("but psu1 on (not required): fence_rec on of plug 1 exited 1: psu1: on failed"),
        "{}",
        out.detail
    );
    assert_eq!(take_log(&log), ["psu1 off 1", "psu2 off 2", "psu1 on 1", "psu2 on 2"]);
    // A failing `off` fails the level at once.
    cfg.resources[1] = rec("psu2", &[("fail", "off"), ("pcmk_host_map", "n2:2")]);
    let out = fencing::execute(&fencing::plan(&cfg, "n2", FenceAction::Reboot).unwrap(), &o).await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(take_log(&log), ["psu1 off 1", "psu2 off 2"]);

    // A hanging device is killed at its pcmk_off_timeout and the next level runs.
    cfg.resources = vec![
        rec(
            "hang",
            &[("hang", "off"), ("pcmk_off_timeout", "1s"), ("pcmk_host_list", "n1")],
        ),
        rec("good", &[("pcmk_host_list", "n1")]),
    ];
    cfg.fencing_topology = vec![
        FencingLevel::new("n1", 1, &["hang"]),
        FencingLevel::new("n1", 2, &["good"]),
    ];
    hablock::cluster::cib::validate::validate(&cfg, &Default::default()).unwrap();
    let t = Instant::now();
    let out = fencing::fence(&cfg, "n1", &o).await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail.contains("fence_rec off of plug n1 timed out after"),
        "{}",
        out.detail
    );
    assert_eq!(take_log(&log), ["hang off n1", "good off n1"]);

    // Nothing can fence a node no device lists: the outcome says so without running anything.
    cfg.fencing_topology.clear();
    let out = fencing::fence(&cfg, "n2", &o).await;
    assert!(
        !out.ok && out.detail.contains("no fencing device can fence it"),
        "{out:?}"
    );
    assert!(take_log(&log).is_empty());

    // An agent that is not installed fails its level with a message saying so.
    cfg.resources.insert(
        0,
        Primitive::new("ghost", "stonith:fence_not_installed")
            .unwrap()
            .param("pcmk_host_list", "n1")
            .into(),
    );
    let out = fencing::fence(&cfg, "n1", &o).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail
            .contains("level 1 failed: ghost: fence agent fence_not_installed not found (looked in"),
        "{}",
        out.detail
    );
}

/// The protocol against a stock agent from Debian's `fence-agents` (its Python fencing library
/// parses our stdin): `fence_dummy` keeps the "power" state of its one plug in a file.
#[tokio::test]
async fn a_stock_fence_agents_agent_fences_through_our_interface() {
    if !common::require_file(
        "a_stock_fence_agents_agent_fences_through_our_interface",
        "/usr/sbin/fence_dummy",
        "fence-agents",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("power");
    std::fs::write(&state, "on").unwrap();
    let dummy = |id: &str, file: &Path| -> hablock::cluster::cib::config::Resource {
        Primitive::new(id, "stonith:fence_dummy")
            .unwrap()
            .param("type", "file")
            .param("status_file", &file.display().to_string())
            // fence_dummy has no plug parameter (Pacemaker learns that from its metadata).
            .param("pcmk_host_argument", "none")
            .param("pcmk_host_list", "n1")
            .into()
    };
    let mut cfg = Configuration::default();
    cfg.nodes.push(Node::new("n1", 1));
    // The first device's state file holds no state it knows: the agent fails, the second one
    // fences.
    let garbled = dir.path().join("garbled");
    std::fs::write(&garbled, "smoke").unwrap();
    cfg.resources.push(dummy("broken", &garbled));
    cfg.resources.push(dummy("good", &state));
    cfg.properties.insert("stonith-action".into(), "off".into());
    hablock::cluster::cib::validate::validate(&cfg, &Default::default()).unwrap();
    let o = FenceOptions {
        agent_dirs: vec![],
        output_dir: dir.path().join("out"),
        timeout: Duration::from_secs(30),
    };
    fencing::monitor_device(&cfg, "good", &o).await.unwrap();
    let out = fencing::fence(&cfg, "n1", &o).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.device.as_deref(), Some("good"));
    assert!(
        out.detail
            .contains("level 1 failed: broken: fence_dummy off of plug n1 exited 1:"),
        "{}",
        out.detail
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "off");
    let st = fencing::device_action(&cfg, "good", "status", None, &o).await.unwrap();
    assert_eq!(st.rc, Some(2), "{st:?}");
    assert!(st.stdout.contains("Status: OFF"), "{st:?}");
    let on = fencing::execute(&fencing::plan(&cfg, "n1", FenceAction::On).unwrap(), &o).await;
    assert!(on.ok, "{on:?}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "on");

    // Without a host list the default check is dynamic-list; fence_dummy has no `list`, so the
    // plug's status decides (Pacemaker reads the same from the agent's metadata).
    cfg.resources.clear();
    cfg.resources.push(
        Primitive::new("unlisted", "stonith:fence_dummy")
            .unwrap()
            .param("type", "file")
            .param("status_file", &state.display().to_string())
            .param("pcmk_host_argument", "none")
            .into(),
    );
    let out = fencing::fence(&cfg, "n1", &o).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "off");
}
