//! The local resource manager against real agents: Debian's resource-agents (Dummy, IPaddr2,
//! Filesystem), an LSB script and small test agents written into temp dirs.
//!
//! IPaddr2 runs only inside a network namespace this test creates (its address and ARP never
//! reach the host's interfaces); Filesystem mounts an ext4 image on a loop device. Both skip with
//! a message where namespaces or loop devices are not permitted.

mod common;

use hablock::cluster::cib::config::{Action, Agent};
use hablock::cluster::cib::ops::CibOp;
use hablock::cluster::cib::status::OpStatus;
use hablock::cluster::lrm::{ocf_rc_name, Lrm, LrmConfig, OpRequest, OpResult};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const OCF_ROOT: &str = "/usr/lib/ocf";

/// Debian's resource-agents is here; otherwise `test` skips (a failure unless allowed).
fn stock_agents(test: &str) -> bool {
    common::require_file(
        test,
        &format!("{OCF_ROOT}/resource.d/heartbeat/Dummy"),
        "resource-agents",
    )
}

struct Node {
    lrm: Arc<Lrm>,
    rx: UnboundedReceiver<OpResult>,
}

impl Node {
    fn new(cfg: LrmConfig) -> Node {
        let (tx, rx) = unbounded_channel();
        Node {
            lrm: Lrm::new(cfg, tx).unwrap(),
            rx,
        }
    }

    /// The next result, within `limit`.
    async fn next(&mut self, limit: Duration) -> OpResult {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no result within {limit:?}"))
            .expect("result channel closed")
    }

    /// Asserts no result arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected result {r:?}");
        }
    }

    /// Executes `req` and waits (bounded) for its result.
    async fn run(&mut self, req: OpRequest) -> OpResult {
        let what = format!("{} {}", req.rsc, req.action);
        let id = self.lrm.execute(req);
        let r = self.next(Duration::from_secs(30)).await;
        assert_eq!(r.call_id, id, "{what}: results arrive in order here: {r:?}");
        r
    }
}

fn cfg(node: &str, dir: &Path) -> LrmConfig {
    LrmConfig::new(node, dir.join(node))
}

fn req(rsc: &str, agent: &str, action: Action, params: &[(&str, &str)]) -> OpRequest {
    let mut r = OpRequest::new(rsc, Agent::parse(agent).unwrap(), action);
    r.timeout_ms = 20_000;
    for (k, v) in params {
        r.params.insert(k.to_string(), v.to_string());
    }
    r
}

fn ok_done(r: &OpResult, rc: i32) {
    assert_eq!(
        (r.status, r.rc),
        (OpStatus::Done, rc),
        "{} {}: expected rc {rc} ({}), got {:?} rc {} ({})\noutput: {}",
        r.rsc,
        r.action,
        ocf_rc_name(rc),
        r.status,
        r.rc,
        ocf_rc_name(r.rc),
        r.output
    );
}

/// The test agent: `ocf:lrmtest:probe`. Params: `log` (append "INSTANCE ACTION begin/end"),
/// `sleep` (seconds to sleep in the action), `child` (file to write the pid of a background
/// `sleep 60` into first), `env` (dump the environment into this file), `rc` (exit code).
const PROBE: &str = r#"#!/bin/sh
[ -n "$OCF_RESKEY_log" ] && echo "$OCF_RESOURCE_INSTANCE $1 begin" >> "$OCF_RESKEY_log"
case "$1" in
meta-data) echo '<?xml version="1.0"?><resource-agent name="probe"/>'; exit 0 ;;
validate-all) [ -n "$OCF_RESKEY_rc" ] && exit "$OCF_RESKEY_rc"; exit 0 ;;
esac
[ -n "$OCF_RESKEY_env" ] && env > "$OCF_RESKEY_env"
if [ -n "$OCF_RESKEY_child" ]; then sleep 60 & echo $! > "$OCF_RESKEY_child"; fi
[ -n "$OCF_RESKEY_sleep" ] && sleep "$OCF_RESKEY_sleep"
echo "probe says $1"
[ -n "$OCF_RESKEY_log" ] && echo "$OCF_RESOURCE_INSTANCE $1 end" >> "$OCF_RESKEY_log"
exit "${OCF_RESKEY_rc:-0}"
"#;

fn write_script(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A config whose extra provider dir holds `lrmtest/probe`.
fn probe_cfg(node: &str, dir: &Path) -> LrmConfig {
    let providers = dir.join("providers");
    write_script(&providers.join("lrmtest/probe"), PROBE);
    let mut c = cfg(node, dir);
    c.extra_provider_dirs = vec![providers];
    c
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn dummy_lifecycle_and_two_nodes_do_not_share_state() {
    if !stock_agents("dummy_lifecycle_and_two_nodes_do_not_share_state") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(cfg("n1", dir.path()));
    let mut n2 = Node::new(cfg("n2", dir.path()));
    let dummy = |a| req("d1", "ocf:heartbeat:Dummy", a, &[]);

    ok_done(&n1.run(dummy(Action::Monitor)).await, 7);
    ok_done(&n1.run(dummy(Action::Start)).await, 0);
    ok_done(&n1.run(dummy(Action::Monitor)).await, 0);
    // Dummy's default state file lives under HA_RSCTMP, which is per node.
    assert!(dir.path().join("n1/rsctmp/Dummy-d1.state").exists());
    ok_done(&n2.run(dummy(Action::Monitor)).await, 7);
    ok_done(&n2.run(dummy(Action::Start)).await, 0);
    ok_done(&n1.run(dummy(Action::Stop)).await, 0);
    ok_done(&n1.run(dummy(Action::Monitor)).await, 7);
    ok_done(&n2.run(dummy(Action::Monitor)).await, 0);
    let r = n2.run(dummy(Action::Stop)).await;
    ok_done(&r, 0);
    let rec = r.to_record();
    assert_eq!((rec.action, rec.rc, rec.call_id), (Action::Stop, 0, r.call_id));
    assert_eq!(rec.status, OpStatus::Done);
    match r.to_cib_op("n2") {
        CibOp::RecordOperation {
            node,
            rsc,
            agent,
            record,
        } => {
            assert_eq!(
                (node.as_str(), rsc.as_str(), agent.as_str()),
                ("n2", "d1", "ocf:heartbeat:Dummy")
            );
            assert_eq!(record, rec);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn call_ids_start_where_told_and_increase() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = probe_cfg("n1", dir.path());
    c.first_call_id = 1000;
    let mut n = Node::new(c);
    let a = n.run(req("p", "ocf:lrmtest:probe", Action::Start, &[])).await;
    let b = n.run(req("p", "ocf:lrmtest:probe", Action::Monitor, &[])).await;
    assert_eq!((a.call_id, b.call_id), (1000, 1001));
    assert_eq!(n.lrm.next_call_id(), 1002);
    assert!(a.output.contains("probe says start"), "output captured: {:?}", a.output);
}

#[tokio::test]
async fn recurring_monitor_reports_a_removed_state_file_once() {
    if !stock_agents("recurring_monitor_reports_a_removed_state_file_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(cfg("n1", dir.path()));
    ok_done(&n.run(req("d", "ocf:heartbeat:Dummy", Action::Start, &[])).await, 0);
    let mut mon = req("d", "ocf:heartbeat:Dummy", Action::Monitor, &[]);
    mon.interval_ms = 200;
    mon.transition = Some("t:7".into());
    let first_id = n.lrm.execute(mon);
    let first = n.next(Duration::from_secs(10)).await;
    ok_done(&first, 0);
    assert_eq!((first.call_id, first.interval_ms), (first_id, 200));
    assert_eq!(first.transition.as_deref(), Some("t:7"));
    // Unchanged results are not reported.
    n.quiet_for(Duration::from_millis(700)).await;
    let status = n.lrm.status_json();
    assert_eq!(status["recurring"][0]["rsc"], "d");
    assert_eq!(status["recurring"][0]["interval_ms"], 200);

    std::fs::remove_file(dir.path().join("n1/rsctmp/Dummy-d.state")).unwrap();
    let failed = n.next(Duration::from_secs(5)).await;
    ok_done(&failed, 7);
    assert!(failed.call_id > first_id, "a failure gets a new call id");
    // Reported once, not every interval.
    n.quiet_for(Duration::from_millis(800)).await;
    assert!(n.lrm.cancel("d", Action::Monitor, 200));
    let c = n.next(Duration::from_secs(5)).await;
    assert_eq!(
        (c.status, c.action, c.interval_ms),
        (OpStatus::Cancelled, Action::Monitor, 200)
    );
    assert!(!n.lrm.cancel("d", Action::Monitor, 200), "already cancelled");
    n.quiet_for(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn stop_cancels_recurring_ops_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    let mut mon = req("p", "ocf:lrmtest:probe", Action::Monitor, &[]);
    mon.interval_ms = 100;
    n.lrm.execute(mon);
    ok_done(&n.next(Duration::from_secs(5)).await, 0);
    let stop_id = n.lrm.execute(req("p", "ocf:lrmtest:probe", Action::Stop, &[]));
    let c = n.next(Duration::from_secs(5)).await;
    assert_eq!((c.status, c.action), (OpStatus::Cancelled, Action::Monitor));
    let s = n.next(Duration::from_secs(5)).await;
    assert_eq!((s.call_id, s.action), (stop_id, Action::Stop));
    ok_done(&s, 0);
    assert_eq!(n.lrm.status_json()["recurring"].as_array().unwrap().len(), 0);
    n.quiet_for(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn one_resource_runs_in_order_and_resources_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    let log = dir.path().join("order.log");
    let log_s = log.to_str().unwrap();
    let t0 = Instant::now();
    let a = n.lrm.execute(req(
        "a",
        "ocf:lrmtest:probe",
        Action::Monitor,
        &[("log", log_s), ("sleep", "1")],
    ));
    let b = n
        .lrm
        .execute(req("a", "ocf:lrmtest:probe", Action::Stop, &[("log", log_s)]));
    let c = n.lrm.execute(req(
        "b",
        "ocf:lrmtest:probe",
        Action::Start,
        &[("log", log_s), ("sleep", "1.5")],
    ));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(n.next(Duration::from_secs(10)).await);
    }
    let elapsed = t0.elapsed();
    let pos = |id| got.iter().position(|r| r.call_id == id).unwrap();
    assert!(pos(a) < pos(b), "the stop waited for the monitor");
    let text = std::fs::read_to_string(&log).unwrap();
    let a_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("a ")).collect();
    assert_eq!(
        a_lines,
        ["a monitor begin", "a monitor end", "a stop begin", "a stop end"]
    );
    assert!(pos(b) < pos(c), "a's stop did not wait for b's start");
    // In parallel, b's start begins while a's 1 s monitor still runs; in sequence it would
    // begin only after a's stop ended. (Told by the agents' own log, not by the clock.)
    let line = |l: &str| {
        text.lines()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("no {l:?} in\n{text}"))
    };
    assert!(
        line("b start begin") < line("a monitor end"),
        "b's start waited for a's operations ({elapsed:?}):\n{text}"
    );
    let stop = &got[pos(b)];
    assert!(
        stop.queue_time_ms >= 800,
        "the stop queued behind the monitor: {stop:?}"
    );
}

#[tokio::test]
async fn timeout_kills_the_agent_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    let child = dir.path().join("child.pid");
    let mut r = req(
        "slow",
        "ocf:lrmtest:probe",
        Action::Start,
        &[("sleep", "30"), ("child", child.to_str().unwrap())],
    );
    r.timeout_ms = 500;
    let t0 = Instant::now();
    let res = n.run(r).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!((res.status, res.rc), (OpStatus::Timeout, 1), "{res:?}");
    assert!(res.exec_time_ms >= 500, "{res:?}");
    assert!(res.output.contains("timeout"), "{:?}", res.output);
    let pid: i32 = std::fs::read_to_string(&child).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pid_alive(pid),
        "the agent's background child {pid} was killed with its group"
    );
}

#[tokio::test]
async fn environment_reaches_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = probe_cfg("n1", dir.path());
    c.extra_env = vec![("HABLOCK_NODE".into(), "n1".into())];
    c.path_prepend = vec![dir.path().join("bin")];
    let mut n = Node::new(c);
    let envf = dir.path().join("env.txt");
    let mut r = req(
        "p:1",
        "ocf:lrmtest:probe",
        Action::Notify,
        &[("env", envf.to_str().unwrap())],
    );
    r.meta.insert("notify-type".into(), "pre".into());
    r.meta.insert("clone-max".into(), "2".into());
    r.extra_env = vec![("OCF_RESKEY_CRM_meta_notify_operation".into(), "start".into())];
    r.timeout_ms = 9000;
    ok_done(&n.run(r).await, 0);
    let text = std::fs::read_to_string(&envf).unwrap();
    let st = dir.path().join("n1");
    for want in [
        "OCF_ROOT=/usr/lib/ocf".to_string(),
        "OCF_RA_VERSION_MAJOR=1".into(),
        "OCF_RESOURCE_INSTANCE=p:1".into(),
        "OCF_RESOURCE_TYPE=probe".into(),
        "OCF_RESOURCE_PROVIDER=lrmtest".into(),
        "OCF_RESKEY_CRM_meta_notify_type=pre".into(),
        "OCF_RESKEY_CRM_meta_clone_max=2".into(),
        "OCF_RESKEY_CRM_meta_notify_operation=start".into(),
        "OCF_RESKEY_CRM_meta_timeout=9000".into(),
        "OCF_RESKEY_CRM_meta_interval=0".into(),
        "OCF_RESKEY_CRM_meta_name=notify".into(),
        "OCF_RESKEY_CRM_meta_on_node=n1".into(),
        "HABLOCK_NODE=n1".into(),
        format!("HA_RSCTMP={}", st.join("rsctmp").display()),
        format!("HA_VARRUN={}", st.join("run").display()),
        format!("PATH={}:/usr/local/sbin", dir.path().join("bin").display()),
    ] {
        assert!(text.lines().any(|l| l.starts_with(&want)), "missing {want} in\n{text}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("HOME=")),
        "the daemon's env leaked:\n{text}"
    );
}

#[tokio::test]
async fn lsb_script_status_is_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.d");
    let flag = dir.path().join("svc.running");
    write_script(
        &init.join("svc"),
        &format!(
            "#!/bin/sh\ncase \"$1\" in\nstart) touch {f} ;;\nstop) rm -f {f} ;;\nstatus) [ -e {f} ] && exit 0; exit 3 ;;\n*) exit 3 ;;\nesac\nexit 0\n",
            f = flag.display()
        ),
    );
    write_script(&init.join("weird"), "#!/bin/sh\nexit 4\n");
    let mut c = cfg("n1", dir.path());
    c.lsb_dir = init;
    let mut n = Node::new(c);
    ok_done(&n.run(req("svc", "lsb:svc", Action::Monitor, &[])).await, 7);
    ok_done(&n.run(req("svc", "lsb:svc", Action::Start, &[])).await, 0);
    ok_done(&n.run(req("svc", "lsb:svc", Action::Monitor, &[])).await, 0);
    ok_done(&n.run(req("svc", "lsb:svc", Action::Stop, &[])).await, 0);
    ok_done(&n.run(req("svc", "lsb:svc", Action::Monitor, &[])).await, 7);
    ok_done(&n.run(req("w", "lsb:weird", Action::Monitor, &[])).await, 1);
    let r = n.run(req("svc", "lsb:svc", Action::Promote, &[])).await;
    assert_eq!((r.status, r.rc), (OpStatus::NotSupported, 3));
}

#[tokio::test]
async fn missing_agents_and_stonith_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    let r = n.run(req("x", "ocf:nosuch:Thing", Action::Start, &[])).await;
    assert_eq!((r.status, r.rc), (OpStatus::NotInstalled, 5), "{r:?}");
    assert!(r.output.contains("not installed"), "{}", r.output);
    let r = n.run(req("x", "lsb:no-such-service", Action::Monitor, &[])).await;
    assert_eq!((r.status, r.rc), (OpStatus::NotInstalled, 5));
    let r = n.run(req("f", "stonith:fence_dummy", Action::Start, &[])).await;
    assert_eq!((r.status, r.rc), (OpStatus::NotSupported, 3));
    // A parameter that cannot be an environment variable is refused, not passed on.
    let r = n
        .run(req("p", "ocf:lrmtest:probe", Action::Start, &[("a=b", "1")]))
        .await;
    assert_eq!((r.status, r.rc), (OpStatus::Error, 2));
}

#[tokio::test]
async fn metadata_and_validate_all() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::new(probe_cfg("n1", dir.path()));
    let probe = Agent::parse("ocf:lrmtest:probe").unwrap();
    let md = n.lrm.metadata(&probe).await.unwrap();
    assert!(md.contains("<resource-agent name=\"probe\""), "{md}");
    assert!(n
        .lrm
        .metadata(&Agent::parse("ocf:nosuch:x").unwrap())
        .await
        .unwrap_err()
        .contains("not installed"));
    let mut params = std::collections::BTreeMap::new();
    params.insert("rc".to_string(), "6".to_string());
    let (st, rc, _) = n.lrm.validate_all("p", &probe, &params, 5000).await;
    assert_eq!((st, rc), (OpStatus::Done, 6));
    if stock_agents("metadata_and_validate_all") {
        let md = n
            .lrm
            .metadata(&Agent::parse("ocf:heartbeat:IPaddr2").unwrap())
            .await
            .unwrap();
        assert!(
            md.len() > 4096 && md.trim_end().ends_with("</resource-agent>"),
            "whole meta-data"
        );
    }
}

#[tokio::test]
async fn shutdown_cancels_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    let mut mon = req("m", "ocf:lrmtest:probe", Action::Monitor, &[]);
    mon.interval_ms = 100;
    n.lrm.execute(mon);
    ok_done(&n.next(Duration::from_secs(5)).await, 0);
    let running = n
        .lrm
        .execute(req("s", "ocf:lrmtest:probe", Action::Start, &[("sleep", "0.5")]));
    let queued = n.lrm.execute(req("s", "ocf:lrmtest:probe", Action::Stop, &[]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), n.lrm.shutdown())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(r) = n.rx.try_recv() {
        got.push((r.call_id, r.action, r.status));
    }
    assert!(got.contains(&(queued, Action::Stop, OpStatus::Cancelled)), "{got:?}");
    assert!(got.contains(&(running, Action::Start, OpStatus::Done)), "{got:?}");
    assert!(
        got.iter().any(|g| g.1 == Action::Monitor && g.2 == OpStatus::Cancelled),
        "{got:?}"
    );
    let late = n.run(req("s", "ocf:lrmtest:probe", Action::Start, &[])).await;
    assert_eq!(late.status, OpStatus::Error, "refused after shutdown");
}

/// Runs `ip ARGS`, Err with its stderr on failure.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in our namespace was started by this test (a send_arp).
        for pid in ip(&["netns", "pids", &self.0]).unwrap_or_default().split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = ip(&["netns", "del", &self.0]);
    }
}

#[tokio::test]
async fn ipaddr2_in_a_private_namespace_is_quick() {
    if !stock_agents("ipaddr2_in_a_private_namespace_is_quick") {
        return;
    }
    let name = format!("lrm-ipaddr2-{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &name]) {
        return common::skip(
            "ipaddr2_in_a_private_namespace_is_quick",
            common::Missing::Netns,
            &format!("network namespaces not permitted: {e}"),
        );
    }
    let ns = Netns(name.clone());
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]).unwrap();
    // A veth pair with both ends inside the namespace (the kernel here may lack the dummy module).
    ip(&[
        "-n", &ns.0, "link", "add", "lrm0", "type", "veth", "peer", "name", "lrm1",
    ])
    .unwrap();
    ip(&["-n", &ns.0, "link", "set", "lrm0", "up"]).unwrap();
    ip(&["-n", &ns.0, "link", "set", "lrm1", "up"]).unwrap();
    ip(&["-n", &ns.0, "addr", "add", "192.168.231.1/24", "dev", "lrm0"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg("n1", dir.path());
    c.netns = Some(name.clone());
    let mut n = Node::new(c);
    // 25 gratuitous ARPs 200 ms apart: the background send_arp runs for about 5 s after start
    // returns. Reading the agent's output through a pipe would wait for it; a file does not.
    let p = [
        ("ip", "192.168.231.10"),
        ("cidr_netmask", "24"),
        ("nic", "lrm0"),
        ("arp_count", "25"),
    ];
    let ipreq = |a| req("vip", "ocf:heartbeat:IPaddr2", a, &p);
    // Each op takes ~0.1-0.3 s here. The real check is that start returns while send_arp still
    // runs (below); this bound only catches an op that waited for send_arp's ~5 s pipe, with
    // room for a loaded 2-core machine.
    let quick = Duration::from_millis(4500);
    for (action, rc) in [(Action::Monitor, 7), (Action::Start, 0), (Action::Monitor, 0)] {
        let t0 = Instant::now();
        ok_done(&n.run(ipreq(action)).await, rc);
        let took = t0.elapsed();
        eprintln!("IPaddr2 {action}: {took:?}");
        assert!(took < quick, "{action} took {took:?}");
        if action == Action::Start {
            // send_arp writes its own pid file once it runs.
            let pidfile = dir.path().join("n1/rsctmp/send_arp-192.168.231.10");
            let deadline = Instant::now() + Duration::from_secs(2);
            while !pidfile.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let sender = read_pid(&pidfile);
            assert!(
                pid_alive(sender),
                "start returned while its send_arp {sender} still runs"
            );
        }
    }
    let addrs = ip(&["-n", &ns.0, "addr", "show", "dev", "lrm0"]).unwrap();
    assert!(addrs.contains("192.168.231.10/24"), "{addrs}");
    let host = ip(&["addr", "show"]).unwrap();
    assert!(!host.contains("192.168.231.10"), "the host's interfaces are untouched");
    let t0 = Instant::now();
    ok_done(&n.run(ipreq(Action::Stop)).await, 0);
    assert!(t0.elapsed() < quick, "stop took {:?}", t0.elapsed());
    ok_done(&n.run(ipreq(Action::Monitor)).await, 7);
    let addrs = ip(&["-n", &ns.0, "addr", "show", "dev", "lrm0"]).unwrap();
    assert!(!addrs.contains("192.168.231.10"), "{addrs}");
}

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

fn mounted(dir: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let d = dir.to_str().unwrap();
    m.lines().any(|l| l.split_whitespace().nth(1) == Some(d))
}

#[tokio::test]
async fn filesystem_on_a_loop_device() {
    if !stock_agents("filesystem_on_a_loop_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let mk = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).output().unwrap();
    assert!(mk.status.success(), "{}", String::from_utf8_lossy(&mk.stderr));
    let lo = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    if !lo.status.success() {
        return common::skip(
            "filesystem_on_a_loop_device",
            common::Missing::Loop,
            &format!("loop devices not permitted: {}", String::from_utf8_lossy(&lo.stderr)),
        );
    }
    let dev = Loop(String::from_utf8_lossy(&lo.stdout).trim().to_string());
    let mnt: PathBuf = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut n = Node::new(cfg("n1", dir.path()));
    let p = [
        ("device", dev.0.as_str()),
        ("directory", mnt.to_str().unwrap()),
        ("fstype", "ext4"),
    ];
    let fs = |a| req("fs", "ocf:heartbeat:Filesystem", a, &p);
    ok_done(&n.run(fs(Action::Monitor)).await, 7);
    ok_done(&n.run(fs(Action::Start)).await, 0);
    assert!(mounted(&mnt), "start mounted {}", mnt.display());
    ok_done(&n.run(fs(Action::Monitor)).await, 0);
    ok_done(&n.run(fs(Action::Stop)).await, 0);
    assert!(!mounted(&mnt), "stop unmounted {}", mnt.display());
    ok_done(&n.run(fs(Action::Monitor)).await, 7);
}

#[tokio::test]
async fn agent_state_survives_a_daemon_restart_but_not_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n1");
    let kept = state.join("rsctmp/Dummy-d.state");
    {
        let _n = Node::new(cfg("n1", dir.path()));
        std::fs::write(&kept, "").unwrap();
    }
    // Restarted on the same boot: the resources still run, their state files stay.
    let _n = Node::new(cfg("n1", dir.path()));
    assert!(kept.exists());
    drop(_n);
    // As if the host had rebooted since: HA_RSCTMP and HA_VARRUN are emptied like a tmpfs.
    std::fs::write(state.join("boot_id"), "00000000-0000-0000-0000-000000000000\n").unwrap();
    std::fs::write(state.join("run/x.pid"), "1").unwrap();
    let _n = Node::new(cfg("n1", dir.path()));
    assert!(!kept.exists() && !state.join("run/x.pid").exists());
    assert!(state.join("rsctmp").is_dir() && state.join("run").is_dir());
}

/// If the test fails half-way, ends the server it started (by the PID in its pid file).
struct KillPidFile(PathBuf);
impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            if pid > 1 {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Reads a pid file written by a process we started through the agent.
fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn mysql_with_mariadbd_starts_dies_and_stops() {
    if !stock_agents("mysql_with_mariadbd_starts_dies_and_stops") {
        return;
    }
    if !common::require_file(
        "mysql_with_mariadbd_starts_dies_and_stops",
        "/usr/sbin/mariadbd",
        "mariadb-server",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // mariadbd runs as the mysql user: it must reach its files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("mysqld");
    std::fs::create_dir(&data).unwrap();
    let chown = Command::new("chown").args(["mysql:mysql"]).arg(&data).status().unwrap();
    assert!(chown.success());
    // The agent's enable_creation looks for mysql_install_db beside `binary` (/usr/sbin), where
    // Debian does not put it, so the data directory is made here.
    let init = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
        .arg(format!("--datadir={}", data.display()))
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let cnf = dir.path().join("my.cnf");
    // No TCP: the server is reached through its own socket only, so it never meets another
    // MariaDB on port 3306.
    std::fs::write(&cnf, "[mysqld]\nskip-networking\n").unwrap();
    let pid = run.join("mysqld.pid");
    let sock = run.join("mysqld.sock");
    let log = dir.path().join("mysqld.log");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let params = [
        ("binary", "/usr/sbin/mariadbd".to_string()),
        ("config", s(&cnf)),
        ("datadir", s(&data)),
        ("pid", s(&pid)),
        ("socket", s(&sock)),
        ("log", s(&log)),
        ("user", "mysql".into()),
        ("group", "mysql".into()),
    ];
    let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _guard = KillPidFile(pid.clone());
    let mut n = Node::new(cfg("n1", dir.path()));
    let db = |a| {
        let mut r = req("db", "ocf:heartbeat:mysql", a, &p);
        r.timeout_ms = 120_000;
        r
    };
    ok_done(&n.run(db(Action::Monitor)).await, 7);
    ok_done(&n.run(db(Action::Start)).await, 0);
    ok_done(&n.run(db(Action::Monitor)).await, 0);
    let q = Command::new("mariadb")
        .arg(format!("--socket={}", sock.display()))
        .args(["-uroot", "-N", "-e", "SELECT 40+2"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&q.stderr)
    );
    // Killed outright it stays dead (no mysqld_safe to restart it) and the monitor says so.
    let server = read_pid(&pid);
    unsafe {
        libc::kill(server, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(server) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok_done(&n.run(db(Action::Monitor)).await, 7);
    ok_done(&n.run(db(Action::Start)).await, 0);
    let server = read_pid(&pid);
    ok_done(&n.run(db(Action::Stop)).await, 0);
    assert!(!pid_alive(server), "stop ended mariadbd {server}");
    ok_done(&n.run(db(Action::Monitor)).await, 7);
}

#[tokio::test]
async fn a_recurring_op_with_the_same_key_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    let mon = |rc: &str| {
        let mut r = req("p", "ocf:lrmtest:probe", Action::Monitor, &[("rc", rc)]);
        r.interval_ms = 100;
        r.expected_rc = Some(8);
        r
    };
    let old = n.lrm.execute(mon("0"));
    ok_done(&n.next(Duration::from_secs(5)).await, 0);
    assert_eq!(n.lrm.status_json()["recurring"][0]["as_expected"], false);
    let new = n.lrm.execute(mon("8"));
    let c = n.next(Duration::from_secs(5)).await;
    assert_eq!((c.call_id, c.status), (old, OpStatus::Cancelled));
    let first = n.next(Duration::from_secs(5)).await;
    assert_eq!((first.call_id, first.rc), (new, 8));
    assert_eq!(n.lrm.status_json()["recurring"][0]["as_expected"], true);
    assert_eq!(n.lrm.status_json()["recurring"].as_array().unwrap().len(), 1);
    n.quiet_for(Duration::from_millis(400)).await;
    n.lrm.cancel_all("p");
    assert_eq!(n.next(Duration::from_secs(5)).await.status, OpStatus::Cancelled);
}

#[tokio::test]
async fn a_lost_output_directory_is_an_lrm_error_not_a_missing_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::new(probe_cfg("n1", dir.path()));
    std::fs::remove_dir_all(dir.path().join("n1/output")).unwrap();
    let r = n.run(req("p", "ocf:lrmtest:probe", Action::Start, &[])).await;
    assert_eq!((r.status, r.rc), (OpStatus::Error, 1), "{r:?}");
    assert!(r.output.contains("cannot create"), "{}", r.output);
}
