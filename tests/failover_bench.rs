//! The failover benchmark (run by `benches/failover-bench`, ignored by `cargo test`): over N
//! rounds, a fresh three-node cluster in network namespaces (keepalive 100 ms, deadtime 500 ms,
//! fencing on with the test fence agent) runs a Dummy on one node; that node's hablockd is killed
//! with SIGKILL, and the time from the kill to the Dummy's successful start on a survivor (the
//! start's completion time as the survivor's LRM recorded it) is measured. Twice per round, on
//! fresh clusters: the Dummy on a node that is not the DC (beta), and on the DC itself (alpha),
//! whose loss also costs a DC election.
//! Also measured: daemons spawned → DC elected and resources configured → Started.

mod common;

use common::cluster::{
    cluster_config, configure, running, test_dir, view, wait_cib, wait_for, Daemon, Netns, FAST_TIMING, NAMES,
};
use hablock::cluster::cib::config::Action;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Round {
    formed: Duration,
    started: Duration,
    failover_ms: u64,
}

/// One fresh cluster; the Dummy runs on `NAMES[holder]` (0 = alpha, the DC) until it is killed.
fn one_round(round: usize, holder: usize) -> Result<Round, String> {
    let net = Netns::create(3, 1)?;
    let dir = test_dir("failover-");
    let links: Vec<Vec<String>> = (0..3)
        .map(|i| vec![format!("{}:16960", Netns::addr(i, 0, false))])
        .collect();
    let path = cluster_config(dir.path(), "bench", &links, FAST_TIMING);
    let spawned = Instant::now();
    let mut nodes: Vec<Daemon> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::spawn(&path, n, Some(&net.nodes[i])))
        .collect();
    for d in nodes.iter_mut() {
        wait_for(d, Duration::from_secs(20), "a full quorate view with a DC", |st| {
            view(st).len() == 3 && st["quorate"] == true && st["dc"].as_u64() == Some(0)
        });
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
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let killed_at = unix_ms();
    nodes[holder].kill();
    let start_on_survivor = |c: &hablock::cluster::cib::Cib| {
        survivors
            .iter()
            .map(|i| NAMES[*i])
            .filter_map(|n| c.status.nodes.get(n)?.resources.get("d"))
            .flat_map(|h| h.ops.iter())
            .filter(|o| o.action == Action::Start && o.rc == 0 && o.last_rc_change_unix_ms >= killed_at)
            .map(|o| o.last_rc_change_unix_ms)
            .max()
    };
    let observer = &nodes[survivors[0]];
    wait_cib(observer, Duration::from_secs(30), "d started on a survivor", |c| {
        start_on_survivor(c).is_some()
    });
    let done = start_on_survivor(&common::cluster::cib(observer)).unwrap();
    if std::env::var_os("HABLOCK_SHOW_LOGS").is_some() {
        for i in &survivors {
            eprintln!("killed at {killed_at} ms\n=== {}\n{}", NAMES[*i], nodes[*i].log());
        }
    }
    eprintln!(
        "round {round} (Dummy on {}): formed {formed:?}, started {started:?}, failover {} ms",
        NAMES[holder],
        done - killed_at
    );
    Ok(Round {
        formed,
        started,
        failover_ms: done - killed_at,
    })
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
#[ignore = "a benchmark: run benches/failover-bench"]
fn failover_after_sigkill() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let (mut results, mut on_dc) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        match one_round(r, 1).and_then(|x| Ok((x, one_round(r, 0)?))) {
            Ok((x, y)) => {
                results.push(x);
                on_dc.push(y.failover_ms as f64 / 1000.0);
            }
            Err(e) => panic!("failover bench: round {r} failed: {e}"),
        }
    }
    let (a, b, c) = stats(results.iter().map(|r| r.failover_ms as f64 / 1000.0).collect());
    let (j, k, l) = stats(on_dc);
    let (d, e, f) = stats(results.iter().map(|r| r.formed.as_secs_f64()).collect());
    let (g, h, i) = stats(results.iter().map(|r| r.started.as_secs_f64()).collect());
    println!("\n{rounds} rounds (min / median / max, seconds)");
    println!("{:<52} {:>6} {:>6} {:>6}", "", "min", "median", "max");
    println!(
        "{:<52} {a:>6.2} {b:>6.2} {c:>6.2}",
        "hablock: SIGKILL -> Dummy Started on a survivor"
    );
    println!(
        "{:<52} {j:>6.2} {k:>6.2} {l:>6.2}",
        "  the same, the Dummy's node being the DC"
    );
    println!(
        "{:<52} {:>6} {:>6} {:>6}",
        "Pacemaker+Corosync, token 1000 (issue 7 figures)", "2.16", "~2.70", "3.43"
    );
    println!(
        "{:<52} {:>6} {:>6} {:>6}",
        "Pacemaker+Corosync, default token (issue 7)", "6.5", "", "7.5"
    );
    println!(
        "{:<52} {d:>6.2} {e:>6.2} {f:>6.2}",
        "hablock: daemons spawned -> DC elected"
    );
    println!(
        "{:<52} {g:>6.2} {h:>6.2} {i:>6.2}",
        "hablock: configured -> Dummy Started"
    );
}
