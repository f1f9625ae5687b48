//! Pacemaker + Corosync's side of the failover benchmark (run by `benches/failover-bench`,
//! ignored by `cargo test`): the same scenario as tests/failover_bench.rs, on Debian's
//! Pacemaker 2.1 + Corosync 3 on this machine. Over N rounds, a fresh three-node cluster in
//! network namespaces (common::pacemaker; Corosync knet) with fencing on (the same test fence agent, fence_hablock_netns, as a stonith
//! device) runs a Dummy on a node that is not the DC; every process of that node is killed with
//! SIGKILL, and the time from the kill to the Dummy's start on a survivor is measured: the
//! modification time of the state file that ocf:heartbeat:Dummy's start creates (in the
//! survivor's private /run/resource-agents), i.e. the start itself, a few ms before Pacemaker
//! records it. Also measured: pacemakerd started -> DC elected with every node online.
//! HABLOCK_KEEP_DIR=1 keeps each round's directory (the nodes' pacemaker.log, corosync.log).
//!
//! Environment: `ROUNDS` (default 10); `TOKEN`, `TOKEN_COEFFICIENT`, `CONSENSUS` (ms; each left
//! at Corosync's default when unset); `NOTICE_MS`, when set, the time Corosync must take to
//! notice a dead node: the effective token plus consensus that Corosync itself reports
//! (`runtime.config.totem.token` and `.consensus`, read in every round), or the bench fails;
//! `BENCH_RESULTS`, a file to which `pacemaker-<key> median_seconds` is appended, the key being
//! `default` with no timeout set and the time to notice in ms otherwise.

mod common;

use common::cluster::test_dir;
use common::pacemaker::{fence_agents_dir, fence_device_xml, PcmkCluster, PcmkOptions, Totem, PROGRAMS};
use common::{bench_record, min_median_max};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

struct Round {
    formed: Duration,
    failover: Duration,
    /// Corosync's effective token timeout and consensus (ms), as it reports them.
    token_consensus: (u64, u64),
}

/// The line of `crm_mon -1` for resource `id` of `agent`, if any.
fn rsc_line<'a>(mon: &'a str, id: &str, agent: &str) -> Option<&'a str> {
    mon.lines().find(|l| {
        let t = l.trim_start().trim_start_matches("* ");
        t.starts_with(id) && t[id.len()..].trim_start().starts_with(&format!("({agent}):"))
    })
}

fn one_round(round: usize, totem: &Totem) -> Result<Round, String> {
    let dir = test_dir("pcmk-failover-");
    let fence = fence_agents_dir(dir.path());
    let mut pc = PcmkCluster::start(
        dir.path(),
        &PcmkOptions {
            names: &NAMES,
            totem: *totem,
            // startup-fencing off: a node that is slow to join the first membership is not
            // shot before the device exists (not part of what is measured).
            properties: &[
                ("stonith-enabled", "true"),
                ("startup-fencing", "false"),
                ("dc-deadtime", "2s"),
            ],
            ocf_hablock: Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/ocf/resource.d/hablock"),
            fence_agents: Some(fence),
        },
    )?;
    let formed = pc.wait_online("alpha", Duration::from_secs(60));
    let token_consensus = (
        pc.cmap_u64("alpha", "runtime.config.totem.token"),
        pc.cmap_u64("alpha", "runtime.config.totem.consensus"),
    );
    let dc = pc.dc("alpha").expect("a DC");
    // The Dummy runs on a node that is not the DC (beta when it can), as in hablock's bench.
    let victim = if dc == "beta" { 2 } else { 1 };
    let vname = NAMES[victim];
    let alpha = pc.node("alpha");
    alpha.tool_ok(
        "cibadmin",
        &["--create", "-o", "resources", "--xml-text", &fence_device_xml(&pc)],
    );
    // The Dummy is created stopped, placed, then started, so it never starts elsewhere first.
    alpha.tool_ok(
        "cibadmin",
        &[
            "--create",
            "-o",
            "resources",
            "--xml-text",
            r#"<primitive id="d" class="ocf" provider="heartbeat" type="Dummy">
  <meta_attributes id="d-meta"><nvpair id="d-target-role" name="target-role" value="Stopped"/></meta_attributes>
  <operations><op id="d-mon" name="monitor" interval="1s" timeout="10s"/></operations>
</primitive>"#,
        ],
    );
    for c in [
        format!(r#"<rsc_location id="d_on_victim" rsc="d" node="{vname}" score="100"/>"#),
        format!(r#"<rsc_location id="fence_not_on_victim" rsc="fence_ns" node="{vname}" score="-INFINITY"/>"#),
    ] {
        alpha.tool_ok("cibadmin", &["--create", "-o", "constraints", "--xml-text", &c]);
    }
    alpha.tool_ok(
        "crm_resource",
        &["-r", "d", "--meta", "-p", "target-role", "-v", "Started"],
    );
    let want = format!("Started {vname}");
    pc.wait_mon(
        "alpha",
        Duration::from_secs(60),
        "d and the fence device started",
        |t| {
            rsc_line(t, "d", "ocf:heartbeat:Dummy").is_some_and(|l| l.trim_end().ends_with(&want))
                && rsc_line(t, "fence_ns", "stonith:fence_hablock_netns").is_some_and(|l| l.contains("Started"))
        },
    );
    // And the DC idle (the transition that started d finished, its monitor recorded), as in a
    // cluster that has been running a while.
    pc.wait_idle("alpha", Duration::from_secs(30));
    let killed = SystemTime::now();
    pc.kill_node(victim);
    let state_files: Vec<PathBuf> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| pc.nodes[i].dir.join("run/resource-agents/Dummy-d.state"))
        .collect();
    let start = Instant::now();
    let started_at = loop {
        if let Some(t) = state_files
            .iter()
            .find_map(|f| std::fs::metadata(f).ok().and_then(|m| m.modified().ok()))
        {
            break t;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("d not started on a survivor within 60 s\n{}", pc.logs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let failover = started_at.duration_since(killed).unwrap_or_default();
    // Pacemaker fenced the node before starting d elsewhere (its fence history says so).
    let survivor = NAMES[if victim == 1 { 0 } else { 1 }];
    let history = pc.node(survivor).tool_ok("stonith_admin", &["--history", vname]);
    assert!(
        history.contains("successful") || history.contains("succeeded"),
        "no successful fencing of {vname} recorded: {history}"
    );
    eprintln!(
        "round {round}: formed {formed:?}, failover {} ms (victim {vname}, DC {dc}, effective token {} + \
         consensus {} ms)",
        failover.as_millis(),
        token_consensus.0,
        token_consensus.1
    );
    if std::env::var_os("HABLOCK_KEEP_DIR").is_some() {
        eprintln!("kept {}", dir.path().display());
        drop(pc);
        std::mem::forget(dir);
    }
    Ok(Round {
        formed,
        failover,
        token_consensus,
    })
}

#[test]
#[ignore = "a benchmark: run benches/failover-bench"]
fn pacemaker_failover_after_sigkill() {
    // A benchmark fails loudly: nothing it needs may be missing.
    for (p, pkg) in PROGRAMS {
        assert!(
            common::have(p),
            "{p} not found (Debian package {pkg}; tools/setup installs it)"
        );
    }
    let env_ms = |k: &str| {
        std::env::var(k)
            .ok()
            .map(|v| v.parse::<u32>().unwrap_or_else(|_| panic!("{k}={v}: a number of ms")))
    };
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    assert!(rounds > 0, "ROUNDS must be at least 1");
    let totem = Totem {
        token_ms: env_ms("TOKEN"),
        token_coefficient_ms: env_ms("TOKEN_COEFFICIENT"),
        consensus_ms: env_ms("CONSENSUS"),
    };
    let notice = env_ms("NOTICE_MS").map(u64::from);
    let mut results = Vec::new();
    for r in 1..=rounds {
        match one_round(r, &totem) {
            Ok(x) => results.push(x),
            Err(e) => panic!("Pacemaker failover bench: round {r} failed: {e}"),
        }
    }
    let (token, consensus) = results[0].token_consensus;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r.token_consensus,
            (token, consensus),
            "round {}: Corosync's effective token/consensus changed between rounds",
            i + 1
        );
    }
    if let Some(want) = notice {
        assert_eq!(
            token + consensus,
            want,
            "Corosync notices a dead node after token {token} + consensus {consensus} ms, not the \
             {want} ms asked for ({totem:?})"
        );
    }
    let (a, b, c) = min_median_max(results.iter().map(|r| r.failover.as_secs_f64()).collect());
    let (d, e, f) = min_median_max(results.iter().map(|r| r.formed.as_secs_f64()).collect());
    let is_default = totem.token_ms.is_none() && totem.token_coefficient_ms.is_none() && totem.consensus_ms.is_none();
    let key = if is_default {
        "default".to_string()
    } else {
        (token + consensus).to_string()
    };
    bench_record(&format!("pacemaker-{key}"), b);
    let set = |k: &str, v: Option<u32>| v.map_or(format!("{k} default"), |v| format!("{k} {v}"));
    println!(
        "Pacemaker+Corosync, {}, {}, {}: notices after {token} + {consensus} ms",
        set("token", totem.token_ms),
        set("token_coefficient", totem.token_coefficient_ms),
        set("consensus", totem.consensus_ms)
    );
    println!(
        "{:<68} {a:>6.2} {b:>6.2} {c:>6.2}",
        "  SIGKILL -> fenced, Dummy Started on a survivor"
    );
    println!(
        "{:<68} {d:>6.2} {e:>6.2} {f:>6.2}",
        "  pacemakerd started -> DC elected"
    );
}
