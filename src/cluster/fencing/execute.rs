//! Carrying out a [`FencePlan`]: levels in order, the calls of a level in order, the first level
//! whose required calls all succeed wins.

use super::agent::{file_part, find_agent, run_agent, AgentRun};
use super::plan::{stonith_device, Device, DeviceCall, FenceAction, FencePlan, HostCheck};
use crate::cluster::cib::Configuration;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where agents are and how long they may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceOptions {
    /// Searched in order before `/usr/sbin` (e.g. the repository's `agents/fence` in tests).
    pub agent_dirs: Vec<PathBuf>,
    /// Agents' stdout and stderr go to `<output_dir>/<target>.<device>.<action>.out|.err`.
    pub output_dir: PathBuf,
    /// Each agent run's limit unless the device sets `pcmk_<action>_timeout`; the caller
    /// usually passes `stonith-timeout` (see [`super::stonith_timeout_ms`]).
    pub timeout: Duration,
}

/// How fencing went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceOutcome {
    /// The target is fenced: every required call of one level succeeded.
    pub ok: bool,
    /// The device(s) of the level that succeeded, joined by `,`.
    pub device: Option<String>,
    /// What happened, level by level, with the agents' own last words on failures.
    pub detail: String,
    pub elapsed_ms: u64,
}

/// Runs the plan. Never panics; a failed or timed-out agent moves on to the next level.
pub async fn execute(plan: &FencePlan, opts: &FenceOptions) -> FenceOutcome {
    let start = Instant::now();
    let mut notes: Vec<String> = Vec::new();
    for level in &plan.levels {
        let mut failed = None;
        let mut soft = Vec::new();
        for call in &level.calls {
            match run_call(plan, call, opts).await {
                Ok(()) => {}
                Err(e) if !call.required => soft.push(format!("{} {} (not required): {e}", call.device, call.action)),
                Err(e) => {
                    failed = Some(format!("{}: {e}", call.device));
                    break;
                }
            }
        }
        match failed {
            None => {
                let devices = level.devices().join(",");
                let mut detail = format!(
                    "{} fenced ({}) by level {} ({devices})",
                    plan.target, plan.action, level.index
                );
                if !soft.is_empty() {
                    detail.push_str(&format!("; but {}", soft.join("; ")));
                }
                if !notes.is_empty() {
                    detail.push_str(&format!(" after {}", notes.join("; ")));
                }
                return FenceOutcome {
                    ok: true,
                    device: Some(devices),
                    detail,
                    elapsed_ms: start.elapsed().as_millis() as u64,
                };
            }
            Some(e) => notes.push(format!("level {} failed: {e}", level.index)),
        }
    }
    let mut detail = format!("could not fence {} ({}): ", plan.target, plan.action);
    if plan.levels.is_empty() {
        detail.push_str("the plan has no levels");
    } else {
        detail.push_str(&notes.join("; "));
    }
    if !plan.skipped.is_empty() {
        detail.push_str(&format!(" (not used: {})", plan.skipped.join("; ")));
    }
    FenceOutcome {
        ok: false,
        device: None,
        detail,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

async fn run_call(plan: &FencePlan, call: &DeviceCall, opts: &FenceOptions) -> Result<(), String> {
    let exe = find_agent(&call.agent, &opts.agent_dirs)?;
    let base = |action: &str| {
        opts.output_dir.join(format!(
            "{}.{}.{}",
            file_part(&plan.target),
            file_part(&call.device),
            file_part(action)
        ))
    };
    let check_timeout = call.check_timeout_ms.map(Duration::from_millis).unwrap_or(opts.timeout);
    match call.check {
        HostCheck::DynamicList => {
            let run = run_agent(
                &exe,
                &call.stdin_for("list", false, &plan.target),
                &base("list"),
                check_timeout,
            )
            .await?;
            if run.success() {
                if !list_names(&run.stdout, &call.plug) && !list_names(&run.stdout, &plan.target) {
                    return Err(format!(
                        "{} list does not name {} (plug {}); see {}",
                        call.agent,
                        plan.target,
                        call.plug,
                        run.stdout_file.display()
                    ));
                }
            } else if call.check_defaulted {
                // No host check was configured and the agent has no working `list` (some, like
                // fence_dummy, have none): as Pacemaker does for such agents, the plug's
                // status decides.
                let st = run_agent(
                    &exe,
                    &call.stdin_for("status", true, &plan.target),
                    &base("status"),
                    check_timeout,
                )
                .await?;
                if !matches!(st.rc, Some(0) | Some(2)) {
                    return Err(format!(
                        "{} list {}, and status of plug {} {}",
                        call.agent,
                        run.summary(),
                        call.plug,
                        st.summary()
                    ));
                }
            } else {
                return Err(format!(
                    "{} list (pcmk_host_check=dynamic-list) {}",
                    call.agent,
                    run.summary()
                ));
            }
        }
        HostCheck::Status => {
            let run = run_agent(
                &exe,
                &call.stdin_for("status", true, &plan.target),
                &base("status"),
                check_timeout,
            )
            .await?;
            if !matches!(run.rc, Some(0) | Some(2)) {
                return Err(format!(
                    "{} status of plug {} (pcmk_host_check=status) {}",
                    call.agent,
                    call.plug,
                    run.summary()
                ));
            }
        }
        HostCheck::StaticList | HostCheck::None => {}
    }
    let delay_ms = if call.delay_max_ms > call.delay_ms {
        rand::Rng::gen_range(&mut rand::thread_rng(), call.delay_ms..=call.delay_max_ms)
    } else {
        call.delay_ms
    };
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let timeout = call.timeout_ms.map(Duration::from_millis).unwrap_or(opts.timeout);
    let run: AgentRun = run_agent(&exe, &call.stdin, &base(&call.action), timeout).await?;
    if run.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {} of plug {} {}",
            call.agent,
            call.action,
            call.plug,
            run.summary()
        ))
    }
}

/// Plans and executes fencing `target` with the cluster's `stonith-action`: the one call the
/// controller needs. A planning error (no device can fence the node) is a failed outcome.
pub async fn fence(config: &Configuration, target: &str, opts: &FenceOptions) -> FenceOutcome {
    match super::plan::plan(config, target, FenceAction::from_config(config)) {
        Ok(p) => execute(&p, opts).await,
        Err(detail) => FenceOutcome {
            ok: false,
            device: None,
            detail,
            elapsed_ms: 0,
        },
    }
}

/// Whether a `list` output names `name`: each line is `plug[,alias]` (some agents separate by
/// spaces); any field may match.
pub fn list_names(output: &str, name: &str) -> bool {
    output
        .lines()
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .any(|f| !f.is_empty() && f == name)
}

/// Runs one action of a stonith device outside fencing: `monitor` (is the device reachable),
/// `list`, `metadata`; or `status`/`on`/`off` of `plug`. Errors name the device and say why.
pub async fn device_action(
    config: &Configuration,
    device: &str,
    action: &str,
    plug: Option<&str>,
    opts: &FenceOptions,
) -> Result<AgentRun, String> {
    if action.is_empty() || action.contains(['\n', '=', '/']) {
        return Err(format!("{action:?} is not a fence agent action"));
    }
    let p = stonith_device(config, device).map_err(|e| format!("no such fencing device: {e}"))?;
    let dev = Device::read(p).map_err(|e| format!("device {device:?}: {e}"))?;
    let exe = find_agent(&dev.agent, &opts.agent_dirs)?;
    let mut lines = vec![format!("action={action}")];
    if let (Some(plug), Some(arg)) = (plug, &dev.host_argument) {
        lines.push(format!("{arg}={plug}"));
    }
    lines.extend(dev.args.iter().map(|(k, v)| format!("{k}={v}")));
    let timeout = match action {
        "monitor" => dev
            .monitor_timeout_ms()
            .map(Duration::from_millis)
            .unwrap_or(opts.timeout),
        _ => opts.timeout,
    };
    let base = opts
        .output_dir
        .join(format!("device.{}.{}", file_part(device), file_part(action)));
    run_agent(&exe, &lines, &base, timeout).await
}

/// The device's `monitor` action (the LRM does not run `stonith:` resources; the cluster calls
/// this for their recurring monitor). `Ok` when the agent exits 0.
pub async fn monitor_device(config: &Configuration, device: &str, opts: &FenceOptions) -> Result<(), String> {
    let run = device_action(config, device, "monitor", None, opts).await?;
    if run.success() {
        Ok(())
    } else {
        Err(format!("monitor of fencing device {device:?} {}", run.summary()))
    }
}
