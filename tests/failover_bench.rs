//! The failover benchmark (run by `benches/failover-bench`, ignored by `cargo test`): over N
//! rounds, a fresh three-node cluster in network namespaces (fencing on with the test fence
//! agent) runs a Dummy on one node; that node's hablockd is killed with SIGKILL, and the time
//! from the kill to the Dummy's successful start on a survivor (the start's completion time as
//! the survivor's LRM recorded it) is measured. Twice per round, on fresh clusters: the Dummy on
//! a node that is not the DC (beta), and on the DC itself (alpha), whose loss also costs a DC
//! election. A round fails unless the CIB's fencing history (what `hbcrm status
//! --fence-history` shows) has a successful fencing of the killed node completed after the kill
//! and no later than the Dummy's start on the survivor.
//! Also measured: daemons spawned → DC elected and resources configured → Started.
//!
//! Environment: `ROUNDS` (default 10); `DEADTIME` in ms (default 500, with keepalive, warntime
//! and initdead in hablock's default proportions: 1/5, 3/5 and 3 times it, so 500 gives
//! 100/300/500/1500 ms) or `default` (no timing in the cluster file: hablock's defaults, deadtime
//! 5 s); `BENCH_RESULTS`, a file to which a `key median_seconds` line per measured row is
//! appended for the script's ratios.

mod common;

use common::cluster::{cluster_config, configure, running, test_dir, view, wait_cib, wait_for, Daemon, Netns, NAMES};
use common::{bench_record, min_median_max};
use hablock::cluster::cib::config::Action;
use hablock::cluster::cib::Cib;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Round {
    formed: Duration,
    started: Duration,
    failover_ms: u64,
}

/// The cluster's heartbeat timing: `[cluster]` lines and the deadtime they give.
struct Timing {
    lines: String,
    deadtime: Duration,
    label: String,
    /// Names this timing in `BENCH_RESULTS`: `default` or the deadtime in ms.
    key: String,
}

impl Timing {
    /// From `DEADTIME`: a number of ms, or `default` for hablock's own defaults.
    fn from_env() -> Timing {
        match std::env::var("DEADTIME").as_deref() {
            Ok("default") => Timing {
                lines: String::new(),
                // hablock's default: keepalive 1 s, deadtime 5 x keepalive.
                deadtime: Duration::from_secs(5),
                label: "hablock defaults (deadtime 5 s)".into(),
                key: "default".into(),
            },
            v => {
                let ms: u64 = match v {
                    Ok(v) => v.parse().unwrap_or_else(|_| panic!("DEADTIME={v}: ms or `default`")),
                    Err(_) => 500,
                };
                Timing {
                    lines: format!(
                        "keepalive = \"{}ms\"\nwarntime = \"{}ms\"\ndeadtime = \"{ms}ms\"\ninitdead = \"{}ms\"\n",
                        ms / 5,
                        ms * 3 / 5,
                        ms * 3
                    ),
                    deadtime: Duration::from_millis(ms),
                    label: format!("hablock, deadtime {ms} ms"),
                    key: ms.to_string(),
                }
            }
        }
    }
}

/// The last successful start of `d` on one of `nodes` recorded at or after `since` (unix ms).
fn start_on(c: &Cib, nodes: &[&str], since: u64) -> Option<u64> {
    nodes
        .iter()
        .filter_map(|n| c.status.nodes.get(*n)?.resources.get("d"))
        .flat_map(|h| h.ops.iter())
        .filter(|o| o.action == Action::Start && o.rc == 0 && o.last_rc_change_unix_ms >= since)
        .map(|o| o.last_rc_change_unix_ms)
        .max()
}

/// When the first successful fencing of `target` completed at or after `since` (unix ms).
fn fenced_at(c: &Cib, target: &str, since: u64) -> Option<u64> {
    c.status
        .fencing
        .iter()
        .filter(|e| {
            e.target == target && e.ok && (e.action == "reboot" || e.action == "off") && e.completed_unix_ms >= since
        })
        .map(|e| e.completed_unix_ms)
        .min()
}

/// One fresh cluster; the Dummy runs on `NAMES[holder]` (0 = alpha, the DC) until it is killed.
fn one_round(round: usize, holder: usize, timing: &Timing) -> Result<Round, String> {
    let net = Netns::create(3, 1)?;
    let dir = test_dir("failover-");
    let links: Vec<Vec<String>> = (0..3)
        .map(|i| vec![format!("{}:16960", Netns::addr(i, 0, false))])
        .collect();
    let path = cluster_config(dir.path(), "bench", &links, &timing.lines);
    let spawned = Instant::now();
    let mut nodes: Vec<Daemon> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::spawn(&path, n, Some(&net.nodes[i])))
        .collect();
    for d in nodes.iter_mut() {
        wait_for(
            d,
            Duration::from_secs(20) + timing.deadtime * 3,
            "a full quorate view with a DC",
            |st| view(st).len() == 3 && st["quorate"] == true && st["dc"].as_u64() == Some(0),
        );
    }
    let formed = spawned.elapsed();
    let map: Vec<String> = NAMES
        .iter()
        .zip(&net.nodes)
        .map(|(n, ns)| format!("{n}:{ns}"))
        .collect();
    let configured = Instant::now();
    configure(
        &nodes[0],
        &format!(
            "primitive fence_ns stonith:fence_hablock_netns params netns_map=\"{}\" pcmk_host_list=\"alpha beta gamma\"
primitive d Dummy op monitor interval=1s timeout=10s
location d_home d 100: {home}
location fence_not_home fence_ns -inf: {home}
property stonith-enabled=true
",
            map.join(","),
            home = NAMES[holder],
        ),
    );
    wait_cib(
        &nodes[0],
        Duration::from_secs(20),
        "d started on its preferred node",
        |c| matches!(&running(c, "d")[..], [(n, _)] if n == NAMES[holder]),
    );
    let started = configured.elapsed();
    // And every survivor's copy of the CIB says so, as in a cluster that has been running a
    // while: a DC killed before it passed the start on leaves survivors that do not know the
    // Dummy ran there (and, today, start it without fencing that node: see the round's check).
    for i in (0..3).filter(|i| *i != holder) {
        wait_cib(
            &nodes[i],
            Duration::from_secs(20),
            "d started on its preferred node, in a survivor's CIB",
            |c| matches!(&running(c, "d")[..], [(n, _)] if n == NAMES[holder]),
        );
    }
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let survivor_names: Vec<&str> = survivors.iter().map(|i| NAMES[*i]).collect();
    let victim = NAMES[holder];
    let killed_at = unix_ms();
    nodes[holder].kill();
    let observer = &nodes[survivors[0]];
    // The start is recorded only after the fencing that allowed it, but the two may reach the
    // observer's CIB in separate updates: wait for the start, then (briefly) for the record.
    wait_cib(
        observer,
        Duration::from_secs(30) + timing.deadtime * 2,
        "d started on a survivor",
        |c| start_on(c, &survivor_names, killed_at).is_some(),
    );
    let limit = Instant::now() + Duration::from_secs(5);
    let (done, fenced) = loop {
        let c = common::cluster::cib(observer);
        let done = start_on(&c, &survivor_names, killed_at).unwrap();
        match fenced_at(&c, victim, killed_at) {
            Some(f) => break (done, f),
            None if Instant::now() < limit => std::thread::sleep(Duration::from_millis(20)),
            None => {
                return Err(format!(
                    "d started on a survivor at {done} (killed at {killed_at}) with no successful fencing of \
                     {victim} in the fencing history\nhbcrm status --fence-history:\n{}\nlog:\n{}",
                    observer.hbcrm_ok(&["status", "--fence-history"]),
                    observer.log()
                ))
            }
        }
    };
    if fenced > done {
        return Err(format!(
            "d started on a survivor at {done} before {victim} was fenced at {fenced} (killed at {killed_at})\n\
             hbcrm status --fence-history:\n{}",
            observer.hbcrm_ok(&["status", "--fence-history"])
        ));
    }
    if std::env::var_os("HABLOCK_SHOW_LOGS").is_some() {
        for i in &survivors {
            eprintln!("killed at {killed_at} ms\n=== {}\n{}", NAMES[*i], nodes[*i].log());
        }
    }
    eprintln!(
        "round {round} (Dummy on {victim}): formed {formed:?}, started {started:?}, fenced after {} ms, \
         failover {} ms",
        fenced - killed_at,
        done - killed_at
    );
    Ok(Round {
        formed,
        started,
        failover_ms: done - killed_at,
    })
}

#[test]
#[ignore = "a benchmark: run benches/failover-bench"]
fn failover_after_sigkill() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    assert!(rounds > 0, "ROUNDS must be at least 1");
    let timing = Timing::from_env();
    let (mut results, mut on_dc) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        match one_round(r, 1, &timing).and_then(|x| Ok((x, one_round(r, 0, &timing)?))) {
            Ok((x, y)) => {
                results.push(x);
                on_dc.push(y.failover_ms as f64 / 1000.0);
            }
            Err(e) => panic!("failover bench ({}): round {r} failed: {e}", timing.label),
        }
    }
    let (a, b, c) = min_median_max(results.iter().map(|r| r.failover_ms as f64 / 1000.0).collect());
    let (j, k, l) = min_median_max(on_dc);
    let (d, e, f) = min_median_max(results.iter().map(|r| r.formed.as_secs_f64()).collect());
    let (g, h, i) = min_median_max(results.iter().map(|r| r.started.as_secs_f64()).collect());
    bench_record(&format!("hablock-{}", timing.key), b);
    bench_record(&format!("hablock-dc-{}", timing.key), k);
    let row = |label: String, (x, y, z): (f64, f64, f64)| println!("{label:<68} {x:>6.2} {y:>6.2} {z:>6.2}");
    row(format!("{}: SIGKILL -> fenced, Dummy Started", timing.label), (a, b, c));
    row("  the same, the Dummy's node being the DC".into(), (j, k, l));
    row("  daemons spawned -> DC elected".into(), (d, e, f));
    row("  configured -> Dummy Started".into(), (g, h, i));
}
