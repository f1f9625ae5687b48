//! Scheduler table cases in the style of Pacemaker's scheduler regression tests: every
//! `testdata/*.txt` file holds a CIB in crm syntax, the cluster state and the expected result.
//!
//! ```text
//! # what the case shows
//! == config
//! primitive a Dummy op monitor interval=10s
//! == state
//! node n1 online [standby] [maintenance]      # or offline / unclean [fencing-failed]; unlisted: offline
//! quorum no                                    # default yes
//! no-quorum-policy freeze                      # overrides the configuration
//! stonith off                                  # overrides the configuration
//! now 100000                                   # ms since the epoch
//! running RSC NODE [Promoted]                  # start (+promote) and its monitors succeeded
//! failed RSC NODE start|monitor|stop [Promoted] # the last such operation failed
//! probed RSC NODE RC                          # a probe (monitor interval 0) returned RC
//! failcount RSC NODE N [at T]                  # fail-count-RSC#monitor_0 (last-failure T)
//! attr NODE NAME=VALUE                         # transient node attribute (master-RSC=...)
//! == placement                                 # every primitive: nodes (roles) or stopped
//! a: n1
//! == actions                                   # exactly these actions, any order
//! start a on n1
//! monitor a on n1 every 10s
//! == order                                     # each: the first must run before the second
//! start a on n1 < monitor a on n1 every 10s
//! ```
//!
//! Every case is also checked for: the same output when scheduled twice, an acyclic graph whose
//! action list is a topological order, and convergence (scheduling again after the transition
//! ran gives no actions and the same placement).

use super::simulate::{apply, record};
use super::{crm_syntax, render_placement, schedule, ClusterState, NodeState, Transition};
use crate::cluster::cib::config::{Action, Resource, Role};
use crate::cluster::cib::status::{OpRecord, OpStatus, Status};
use crate::cluster::cib::Configuration;
use crate::cluster::quorum::NoQuorumPolicy;
use std::collections::BTreeSet;
use std::path::Path;

pub(super) struct Case {
    pub config: Configuration,
    pub status: Status,
    pub cluster: ClusterState,
    pub placement: Vec<String>,
    pub actions: Option<BTreeSet<String>>,
    pub order: Vec<(String, String)>,
}

fn sections(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            return Err(format!("text before the first section: {line:?}"));
        }
    }
    Ok(out)
}

fn body_lines(body: &str) -> impl Iterator<Item = &str> {
    body.lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The monitors a running instance would have had started for its role.
fn monitors_of(cfg: &Configuration, rsc: &str, promoted: bool) -> Vec<u64> {
    let Some(Resource::Primitive(p)) = cfg.resource(super::state::base_id(rsc)) else {
        return Vec::new();
    };
    p.ops
        .iter()
        .filter(|o| o.name == Action::Monitor && o.interval_ms > 0)
        .filter(|o| (o.role == Some(Role::Promoted)) == promoted)
        .map(|o| o.interval_ms)
        .collect()
}

pub(super) fn parse_case(text: &str) -> Result<Case, String> {
    let mut case = Case {
        config: Configuration::default(),
        status: Status::default(),
        cluster: ClusterState {
            has_quorum: true,
            now_unix_ms: 1_000_000,
            ..ClusterState::default()
        },
        placement: Vec::new(),
        actions: None,
        order: Vec::new(),
    };
    let secs = sections(text)?;
    for (name, body) in &secs {
        if name == "config" {
            case.config = crm_syntax::parse(body).map_err(|e| format!("config: {e}"))?;
        }
    }
    let now = |c: &Case| c.cluster.now_unix_ms;
    for (name, body) in &secs {
        match name.as_str() {
            "config" => {}
            "state" => {
                for l in body_lines(body) {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    let bad = || format!("state: cannot read {l:?}");
                    match w.as_slice() {
                        ["node", n, rest @ ..] => {
                            let mut ns = NodeState::default();
                            for f in rest {
                                match *f {
                                    "online" => ns.online = true,
                                    "offline" => {}
                                    "unclean" => ns.unclean = true,
                                    "fencing-failed" => ns.fencing_failed = true,
                                    "standby" => ns.standby = true,
                                    "maintenance" => ns.maintenance = true,
                                    _ => return Err(bad()),
                                }
                            }
                            case.cluster.nodes.insert(n.to_string(), ns);
                        }
                        ["quorum", q] => case.cluster.has_quorum = *q == "yes",
                        ["no-quorum-policy", p] => {
                            case.cluster.no_quorum_policy = Some(p.parse::<NoQuorumPolicy>()?);
                        }
                        ["stonith", s] => case.cluster.stonith_enabled = Some(*s == "on"),
                        ["now", t] => case.cluster.now_unix_ms = t.parse().map_err(|_| bad())?,
                        ["running", r, n, role @ ..] => {
                            let promoted = role.first() == Some(&"Promoted");
                            let t = now(&case);
                            record(&mut case.status, n, r, Action::Start, 0, 0, t);
                            if promoted {
                                record(&mut case.status, n, r, Action::Promote, 0, 0, t);
                            }
                            for i in monitors_of(&case.config, r, promoted) {
                                record(
                                    &mut case.status,
                                    n,
                                    r,
                                    Action::Monitor,
                                    i,
                                    if promoted { 8 } else { 0 },
                                    t,
                                );
                            }
                        }
                        ["failed", r, n, op, role @ ..] => {
                            let t = now(&case);
                            let action: Action = op.parse()?;
                            let promoted = role.first() == Some(&"Promoted");
                            if action != Action::Start {
                                record(&mut case.status, n, r, Action::Start, 0, 0, t);
                            }
                            if promoted && action != Action::Promote {
                                record(&mut case.status, n, r, Action::Promote, 0, 0, t);
                            }
                            let interval = if action == Action::Monitor {
                                monitors_of(&case.config, r, promoted)
                                    .first()
                                    .copied()
                                    .unwrap_or(10_000)
                            } else {
                                0
                            };
                            let ns = case.status.nodes.entry(n.to_string()).or_default();
                            let call_id = ns
                                .resources
                                .values()
                                .flat_map(|h| h.ops.iter().map(|o| o.call_id))
                                .max()
                                .unwrap_or(0)
                                + 1;
                            ns.resources.entry(r.to_string()).or_default().record(OpRecord {
                                action,
                                interval_ms: interval,
                                call_id,
                                rc: if action == Action::Monitor { 7 } else { 1 },
                                status: OpStatus::Done,
                                last_rc_change_unix_ms: t,
                                exec_time_ms: 0,
                                queue_time_ms: 0,
                                transition: None,
                                exit_reason: String::new(),
                            });
                        }
                        ["probed", r, n, rc] => {
                            let t = now(&case);
                            let rc: i32 = rc.parse().map_err(|_| bad())?;
                            record(&mut case.status, n, r, Action::Monitor, 0, rc, t);
                        }
                        ["failcount", r, n, c, rest @ ..] => {
                            let ns = case.status.nodes.entry(n.to_string()).or_default();
                            ns.transient_attributes
                                .insert(format!("fail-count-{r}#monitor_0"), c.to_string());
                            if let ["at", at] = rest {
                                ns.transient_attributes
                                    .insert(format!("last-failure-{r}#monitor_0"), at.to_string());
                            }
                        }
                        ["attr", n, kv] => {
                            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
                            let ns = case.status.nodes.entry(n.to_string()).or_default();
                            ns.transient_attributes.insert(k.to_string(), v.to_string());
                        }
                        _ => return Err(bad()),
                    }
                }
            }
            "placement" => case.placement = body_lines(body).map(str::to_string).collect(),
            "actions" => case.actions = Some(body_lines(body).map(str::to_string).collect()),
            "order" => {
                for l in body_lines(body) {
                    let (a, b) = l
                        .split_once(" < ")
                        .ok_or_else(|| format!("order: expected A < B, got {l:?}"))?;
                    case.order.push((a.trim().to_string(), b.trim().to_string()));
                }
            }
            other => return Err(format!("unknown section {other:?}")),
        }
    }
    Ok(case)
}

/// The checks every scheduled transition must pass; returns the problems found.
pub(super) fn check_invariants(cfg: &Configuration, status: &Status, cl: &ClusterState, t: &Transition) -> Vec<String> {
    let mut errs = Vec::new();
    let again = schedule(cfg, status, cl);
    if again.render() != t.render() {
        errs.push("not deterministic".into());
    }
    for &(a, b) in &t.edges {
        if a >= b {
            errs.push(format!("edge {a} -> {b} goes backwards in the action list"));
        }
    }
    let (st2, cl2) = apply(status, cl, t);
    let t2 = schedule(cfg, &st2, &cl2);
    if !t2.actions.is_empty() {
        errs.push(format!("does not converge; second transition:\n{}", t2.render()));
    }
    if t2.placement != t.placement {
        errs.push(format!(
            "placement changed after the transition ran:\n{}\nvs\n{}",
            t.render(),
            t2.render()
        ));
    }
    errs
}

fn run_case(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case = parse_case(&text)?;
    let t = schedule(&case.config, &case.status, &case.cluster);
    let mut errs = Vec::new();
    let got: Vec<String> = t
        .placement
        .iter()
        .map(|(r, n)| format!("{r}: {}", render_placement(n)))
        .collect();
    if !case.placement.is_empty() && got != case.placement {
        errs.push(format!("placement:\n  want {:?}\n  got  {:?}", case.placement, got));
    }
    if let Some(want) = &case.actions {
        let have: BTreeSet<String> = t.actions.iter().map(|a| a.to_string()).collect();
        let missing: Vec<_> = want.difference(&have).collect();
        let extra: Vec<_> = have.difference(want).collect();
        if !missing.is_empty() || !extra.is_empty() {
            errs.push(format!("actions: missing {missing:?}, unexpected {extra:?}"));
        }
    }
    for (a, b) in &case.order {
        match (t.find(a), t.find(b)) {
            (Some(x), Some(y)) if t.precedes(x, y) => {}
            (Some(_), Some(_)) => errs.push(format!("order: {a:?} does not precede {b:?}")),
            _ => errs.push(format!("order: {a:?} or {b:?} is not an action")),
        }
    }
    errs.extend(check_invariants(&case.config, &case.status, &case.cluster, &t));
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{}", errs.join("\n"), t.render()))
    }
}

#[test]
fn scheduler_tables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cluster/pengine/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "only {} table cases", files.len());
    let mut failures = Vec::new();
    for f in &files {
        if let Err(e) = run_case(f) {
            failures.push(format!("--- {}:\n{e}", f.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn actions_carry_timeouts_and_the_transition_round_trips_through_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cluster/pengine/testdata");
    let case = parse_case(&std::fs::read_to_string(dir.join("40_seed_mariadb_start.txt")).unwrap()).unwrap();
    let t = schedule(&case.config, &case.status, &case.cluster);
    let timeout = |text: &str| t.actions[t.find(text).unwrap()].timeout_ms;
    assert_eq!(timeout("start mystor on node1.magedu.com"), Some(240_000));
    assert_eq!(timeout("start mydata on node1.magedu.com"), Some(60_000));
    assert_eq!(timeout("monitor myip on node1.magedu.com every 10s"), Some(20_000));
    assert_eq!(timeout("start myip on node1.magedu.com"), None);
    let json = serde_json::to_string(&t).unwrap();
    let back: Transition = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn interleave_orders_each_instance_after_the_local_one_only() {
    let text = |interleave: &str| {
        format!(
            "== config\nprimitive a Dummy\nprimitive b Dummy\nclone ca a\nclone cb b meta interleave={interleave}\n\
             order o Mandatory: ca cb\n== state\nnode n1 online\nnode n2 online\n"
        )
    };
    for (interleave, crosses) in [("true", false), ("false", true)] {
        let case = parse_case(&text(interleave)).unwrap();
        let t = schedule(&case.config, &case.status, &case.cluster);
        let i = |s: &str| t.find(s).unwrap_or_else(|| panic!("no {s:?} in\n{}", t.render()));
        assert!(t.precedes(i("start a on n1"), i("start b on n1")), "{}", t.render());
        assert!(t.precedes(i("start a on n2"), i("start b on n2")), "{}", t.render());
        // Without interleave, b's start on n1 also waits for a's on n2 (all of clone a).
        assert_eq!(
            t.precedes(i("start a on n2"), i("start b on n1")),
            crosses,
            "{}",
            t.render()
        );
        assert_eq!(
            t.precedes(i("start a on n1"), i("start b on n2")),
            crosses,
            "{}",
            t.render()
        );
    }
    // And on the way down: a's stop on n1 waits only for b's stop on n1.
    let mut case = parse_case(&text("true")).unwrap();
    for n in ["n1", "n2"] {
        record(&mut case.status, n, "a", Action::Start, 0, 0, 1);
        record(&mut case.status, n, "b", Action::Start, 0, 0, 1);
    }
    case.cluster.nodes.get_mut("n1").unwrap().standby = true;
    let t = schedule(&case.config, &case.status, &case.cluster);
    let i = |s: &str| t.find(s).unwrap_or_else(|| panic!("no {s:?} in\n{}", t.render()));
    assert!(t.precedes(i("stop b on n1"), i("stop a on n1")), "{}", t.render());
    assert!(
        t.find("stop b on n2").is_none() && t.find("stop a on n2").is_none(),
        "{}",
        t.render()
    );
}

#[test]
fn unique_clone_instances_keep_their_own_history() {
    // Scheduling twice after the first transition ran: each instance's start is recorded under
    // its own name, and nothing moves.
    let case = parse_case(
        "== config\nprimitive p Dummy\nclone c p meta clone-max=3 clone-node-max=2 globally-unique=true\n\
         == state\nnode n1 online\nnode n2 online\n",
    )
    .unwrap();
    let t = schedule(&case.config, &case.status, &case.cluster);
    let (st, cl) = apply(&case.status, &case.cluster, &t);
    let keys = |n: &str| st.nodes[n].resources.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys("n1"), ["p:0", "p:2"]);
    assert_eq!(keys("n2"), ["p:1"]);
    assert!(schedule(&case.config, &st, &cl).actions.is_empty());
}
