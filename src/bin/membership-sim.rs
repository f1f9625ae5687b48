//! membership-sim: runs many seeded membership histories (the real cores over a faulty simulated
//! network) and prints their histories and the checks they passed.
//!
//!     membership-sim --seeds 500            # every shape: 3 nodes x 1-2 links, 2 nodes two_node
//!     membership-sim --seed 42 --verbose    # replay one history with every event

use clap::Parser;
use hablock::cluster::sim::{Sim, SimConfig, SimReport};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Seeded deterministic simulation of hablock cluster membership")]
struct Args {
    /// Histories per cluster shape.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run only this seed (implies printing its history).
    #[arg(long)]
    seed: Option<u64>,
    /// Chaos/calm phases per history.
    #[arg(long, default_value_t = 12)]
    phases: usize,
    /// Record every view, quorum and DC change in the histories.
    #[arg(long)]
    verbose: bool,
    /// Print every history, not only failing ones.
    #[arg(long)]
    print_histories: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let shapes = [(3u8, 1u8), (3, 2), (2, 1), (2, 2)];
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first_seed..a.first_seed + a.seeds).collect(),
    };
    let mut failed = 0u64;
    let mut total = SimReport::default();
    let mut histories = 0u64;
    for (nodes, links) in shapes {
        let mut cfg = SimConfig::new(nodes, links);
        cfg.phases = a.phases;
        cfg.verbose = a.verbose || a.seed.is_some();
        let (mut checks, mut max_det, mut dual) = (0, 0, 0);
        for &seed in &seeds {
            let r = Sim::new(cfg, seed).run();
            histories += 1;
            checks += r.checks;
            max_det = max_det.max(r.max_detection);
            dual += r.transient_dual_dc;
            if a.print_histories || a.seed.is_some() || !r.violations.is_empty() {
                println!("=== {nodes} nodes, {links} link(s), seed {seed}");
                print!("{}", r.history);
            }
            if !r.violations.is_empty() {
                failed += 1;
                for v in &r.violations {
                    println!("VIOLATION seed {seed}: {v}");
                }
            }
            total.checks += r.checks;
            total.crashes += r.crashes;
            total.restarts += r.restarts;
            total.restarts_detected += r.restarts_detected;
            total.leaves += r.leaves;
            total.partitions += r.partitions;
            total.injected += r.injected;
            total.replays_injected += r.replays_injected;
            total.dropped += r.dropped;
            total.packets_sent += r.packets_sent;
            total.changes_submitted += r.changes_submitted;
            total.changes_ok += r.changes_ok;
            total.changes_failed += r.changes_failed;
            total.forced_on_minority += r.forced_on_minority;
            total.updates_applied += r.updates_applied;
        }
        println!(
            "{nodes} nodes, {links} link(s){}: {} histories, {checks} checks, crash detected within {max_det} ms \
             (deadtime {} + max delay {} + tick {}), {dual} chaos ticks with two self-declared DCs",
            if cfg.two_node { " (two_node)" } else { "" },
            seeds.len(),
            cfg.timing.deadtime,
            cfg.max_delay,
            cfg.tick
        );
    }
    println!(
        "total: {histories} histories, {} checks, {} failed; {} crashes, {} leaves, {} restarts ({} seen as restarts by \
         peers), {} partition changes, {} packets sent, {} bad packets and {} replays injected, {} packets dropped",
        total.checks,
        failed,
        total.crashes,
        total.leaves,
        total.restarts,
        total.restarts_detected,
        total.partitions,
        total.packets_sent,
        total.injected,
        total.replays_injected,
        total.dropped
    );
    println!(
        "CIB: {} changes submitted ({} applied, {} refused or timed out), {} forced on a minority (none survived), \
         {} updates applied by members",
        total.changes_submitted,
        total.changes_ok,
        total.changes_failed,
        total.forced_on_minority,
        total.updates_applied
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
