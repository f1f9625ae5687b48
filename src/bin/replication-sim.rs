//! Runs the replication simulator over many seeds and prints what it checked.
//!
//! `replication-sim --seeds N --start S [--steps K] [--blocks B] [--protocol A|B|C]`
//!
//! Every seed runs one random history and one split-brain scenario (link cut,
//! forced promotion of the Secondary, heal under a policy chosen by the seed).

use hablock::config::Protocol;
use hablock::replication::sim::{Sim, SimConfig, SimStats};
use std::process::ExitCode;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|_| format!("{name}: not a valid value")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (|| -> Result<(u64, u64, SimConfig), String> {
        let seeds = arg(&args, "--seeds", 1000u64)?;
        let start = arg(&args, "--start", 0u64)?;
        let mut cfg = SimConfig {
            steps: arg(&args, "--steps", 400usize)?,
            blocks: arg(&args, "--blocks", 48u64)?,
            protocol: None,
        };
        cfg.protocol = match arg(&args, "--protocol", String::new())?.as_str() {
            "" => None,
            "A" | "a" => Some(Protocol::A),
            "B" | "b" => Some(Protocol::B),
            "C" | "c" => Some(Protocol::C),
            p => return Err(format!("--protocol {p}: expected A, B or C")),
        };
        if cfg.blocks < 4 {
            return Err("--blocks must be at least 4".into());
        }
        Ok((seeds, start, cfg))
    })();
    let (seeds, start, cfg) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("replication-sim: {e}");
            eprintln!("usage: replication-sim [--seeds N] [--start S] [--steps K] [--blocks B] [--protocol A|B|C]");
            return ExitCode::from(2);
        }
    };
    let mut total = SimStats::default();
    for seed in start..start + seeds {
        let run = Sim::new(seed, cfg.clone())
            .run()
            .and_then(|a| Ok((a, Sim::new(seed, cfg.clone()).run_split_brain()?)));
        match run {
            Ok((a, b)) => {
                total.add(&a);
                total.add(&b);
            }
            Err(e) => {
                eprintln!("FAILED: {e}");
                eprintln!(
                    "reproduce: replication-sim --start {seed} --seeds 1 --steps {}",
                    cfg.steps
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "histories {} steps {} invariant checks {}\nwrites acknowledged {} (peer-durable {}), crashes {}, failovers {}, resyncs {}, split-brain disconnects (per node) {}, promotions refused {}",
        total.histories,
        total.steps,
        total.checks,
        total.writes_acked,
        total.writes_peer_durable,
        total.crashes,
        total.failovers,
        total.resyncs,
        total.split_brains,
        total.promotions_refused
    );
    println!(
        "split-brain scenarios {}: split brains produced {}, detected {}, resolved by policy {} (losing Primary demoted {}, resync cut and resumed {}), left StandAlone {}",
        total.sb_histories,
        total.sb_expected,
        total.sb_detected,
        total.sb_resolved,
        total.sb_primary_demoted,
        total.sb_resync_interrupted,
        total.sb_unresolved
    );
    ExitCode::SUCCESS
}
