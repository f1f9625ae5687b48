//! Pure: where an agent lives, its command line and its environment.

use super::{rc, LrmConfig, OpRequest};
use crate::cluster::cib::config::{Action, Agent, ResourceClass};
use crate::cluster::cib::status::OpStatus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `PATH` every agent gets after `path_prepend`.
pub const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why an operation did not run an agent at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: OpStatus,
    pub rc: i32,
    pub message: String,
}

impl Refusal {
    fn new(status: OpStatus, rc: i32, message: String) -> Refusal {
        Refusal { status, rc, message }
    }
}

/// A name that may be one path component: not empty, not `.`/`..`, no `/` or NUL.
fn is_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// The paths an agent may live at, in search order. `stonith:` belongs to the fencing module and
/// `systemd:` is not implemented: both are refused with `NotSupported`/rc 3.
pub fn agent_candidates(cfg: &LrmConfig, agent: &Agent) -> Result<Vec<PathBuf>, Refusal> {
    if !is_component(&agent.kind) {
        return Err(Refusal::new(
            OpStatus::NotInstalled,
            rc::ERR_INSTALLED,
            format!("agent type {:?} is not a valid name", agent.kind),
        ));
    }
    match agent.class {
        ResourceClass::Ocf => {
            let provider = agent.provider.as_deref().unwrap_or("heartbeat");
            if !is_component(provider) {
                return Err(Refusal::new(
                    OpStatus::NotInstalled,
                    rc::ERR_INSTALLED,
                    format!("agent provider {provider:?} is not a valid name"),
                ));
            }
            let mut v: Vec<PathBuf> = cfg
                .extra_provider_dirs
                .iter()
                .map(|d| d.join(provider).join(&agent.kind))
                .collect();
            v.push(cfg.ocf_root.join("resource.d").join(provider).join(&agent.kind));
            Ok(v)
        }
        ResourceClass::Lsb => Ok(vec![cfg.lsb_dir.join(&agent.kind)]),
        ResourceClass::Stonith => Err(Refusal::new(
            OpStatus::NotSupported,
            rc::ERR_UNIMPLEMENTED,
            format!("{agent} is run by the fencing module, not the local resource manager"),
        )),
        ResourceClass::Systemd => Err(Refusal::new(
            OpStatus::NotSupported,
            rc::ERR_UNIMPLEMENTED,
            format!("{agent}: systemd resources are not supported"),
        )),
    }
}

/// The first candidate that `is_executable` accepts, or `NotInstalled`/rc 5.
pub fn resolve_agent(
    cfg: &LrmConfig,
    agent: &Agent,
    is_executable: impl Fn(&Path) -> bool,
) -> Result<PathBuf, Refusal> {
    let candidates = agent_candidates(cfg, agent)?;
    candidates.iter().find(|p| is_executable(p)).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Refusal::new(
            OpStatus::NotInstalled,
            rc::ERR_INSTALLED,
            format!("{agent} is not installed (no executable at {})", tried.join(", ")),
        )
    })
}

/// The argument an agent gets for `action`: LSB scripts have `status`, not `monitor`.
pub fn action_arg(class: ResourceClass, action: Action) -> &'static str {
    match (class, action) {
        (ResourceClass::Lsb, Action::Monitor) => "status",
        _ => action.as_str(),
    }
}

/// Whether an LSB script can be asked for `action` (start, stop, monitor/status, reload).
pub fn lsb_supports(action: Action) -> bool {
    matches!(action, Action::Start | Action::Stop | Action::Monitor | Action::Reload)
}

/// `path_prepend` then [`CLEAN_PATH`].
pub fn clean_path(cfg: &LrmConfig) -> String {
    let mut parts: Vec<String> = cfg.path_prepend.iter().map(|p| p.display().to_string()).collect();
    parts.push(CLEAN_PATH.to_string());
    parts.join(":")
}

/// Pacemaker's meta attribute variable name: `OCF_RESKEY_CRM_meta_` + name with `-` as `_`.
pub fn meta_var(name: &str) -> String {
    format!("OCF_RESKEY_CRM_meta_{}", name.replace('-', "_"))
}

fn check_var(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!("{name:?} cannot be an environment variable name"));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte"));
    }
    Ok(())
}

/// The complete environment of one agent run (the process gets nothing else). `action_name` is
/// what the agent is asked to do (`start`, `meta-data`, ...). Later entries win: the fixed
/// variables, then `cfg.extra_env`, then params, then meta, then the meta Pacemaker sets itself
/// (`timeout`, `interval`, `name`, `on_node`), then `req.extra_env`.
pub fn build_env(cfg: &LrmConfig, req: &OpRequest, action_name: &str) -> Result<Vec<(String, String)>, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: String, v: String| -> Result<(), String> {
        check_var(&k, &v)?;
        env.insert(k, v);
        Ok(())
    };
    set("PATH".into(), clean_path(cfg))?;
    // Agents log to stderr (our output file), never to syslog or a logd.
    set("HA_LOGFACILITY".into(), "none".into())?;
    set("HA_LOGD".into(), "no".into())?;
    set("HA_debug".into(), "0".into())?;
    if req.agent.class == ResourceClass::Ocf {
        let root = cfg.ocf_root.display().to_string();
        set("OCF_ROOT".into(), root)?;
        set(
            "OCF_FUNCTIONS_DIR".into(),
            cfg.ocf_root.join("lib/heartbeat").display().to_string(),
        )?;
        set("OCF_RA_VERSION_MAJOR".into(), "1".into())?;
        set("OCF_RA_VERSION_MINOR".into(), "0".into())?;
        set("OCF_RESOURCE_INSTANCE".into(), req.rsc.clone())?;
        set("OCF_RESOURCE_TYPE".into(), req.agent.kind.clone())?;
        set(
            "OCF_RESOURCE_PROVIDER".into(),
            req.agent.provider.clone().unwrap_or_else(|| "heartbeat".into()),
        )?;
        set("OCF_EXIT_REASON_PREFIX".into(), "ocf-exit-reason:".into())?;
        // Per node, so that several nodes on one host never share an agent's state files
        // (ocf-directories only sets these when they are unset).
        set("HA_RSCTMP".into(), cfg.rsctmp_dir().display().to_string())?;
        set("HA_VARRUN".into(), cfg.varrun_dir().display().to_string())?;
        set("HA_VARLOCK".into(), cfg.varlock_dir().display().to_string())?;
        set("HA_VARLIB".into(), cfg.varlib_dir().display().to_string())?;
    }
    for (k, v) in &cfg.extra_env {
        set(k.clone(), v.clone())?;
    }
    if req.agent.class == ResourceClass::Ocf {
        for (k, v) in &req.params {
            set(format!("OCF_RESKEY_{k}"), v.clone())?;
        }
        for (k, v) in &req.meta {
            set(meta_var(k), v.clone())?;
        }
        set(meta_var("timeout"), req.effective_timeout_ms().to_string())?;
        set(meta_var("interval"), req.interval_ms.to_string())?;
        set(meta_var("name"), action_name.to_string())?;
        set(meta_var("on_node"), cfg.node.clone())?;
        set(meta_var("on_node_uuid"), cfg.node.clone())?;
    }
    for (k, v) in &req.extra_env {
        set(k.clone(), v.clone())?;
    }
    Ok(env.into_iter().collect())
}

/// Program and arguments: the agent with its action, or `ip netns exec NS agent action`.
pub fn command_line(cfg: &LrmConfig, agent_path: &Path, action_arg: &str) -> (PathBuf, Vec<String>) {
    match &cfg.netns {
        Some(ns) => (
            PathBuf::from("ip"),
            vec![
                "netns".into(),
                "exec".into(),
                ns.clone(),
                agent_path.display().to_string(),
                action_arg.to_string(),
            ],
        ),
        None => (agent_path.to_path_buf(), vec![action_arg.to_string()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LrmConfig {
        let mut c = LrmConfig::new("n1", "/var/lib/hb/n1");
        c.extra_provider_dirs = vec![PathBuf::from("/repo/agents/ocf/resource.d")];
        c.path_prepend = vec![PathBuf::from("/repo/agents/bin")];
        c.extra_env = vec![("HABLOCK_NODE".into(), "n1".into())];
        c
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn ocf_environment_is_pacemakers() {
        let mut req = OpRequest::new(
            "p_ip:1",
            Agent::parse("ocf:heartbeat:IPaddr2").unwrap(),
            Action::Monitor,
        );
        req.interval_ms = 10_000;
        req.timeout_ms = 30_000;
        req.params.insert("ip".into(), "10.0.0.5".into());
        req.meta.insert("clone-max".into(), "2".into());
        req.extra_env = vec![("OCF_RESKEY_CRM_meta_notify_type".into(), "pre".into())];
        let env = build_env(&cfg(), &req, "monitor").unwrap();
        let want = [
            (
                "PATH",
                "/repo/agents/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("OCF_ROOT", "/usr/lib/ocf"),
            ("OCF_FUNCTIONS_DIR", "/usr/lib/ocf/lib/heartbeat"),
            ("OCF_RA_VERSION_MAJOR", "1"),
            ("OCF_RA_VERSION_MINOR", "0"),
            ("OCF_RESOURCE_INSTANCE", "p_ip:1"),
            ("OCF_RESOURCE_TYPE", "IPaddr2"),
            ("OCF_RESOURCE_PROVIDER", "heartbeat"),
            ("OCF_RESKEY_ip", "10.0.0.5"),
            ("OCF_RESKEY_CRM_meta_clone_max", "2"),
            ("OCF_RESKEY_CRM_meta_timeout", "30000"),
            ("OCF_RESKEY_CRM_meta_interval", "10000"),
            ("OCF_RESKEY_CRM_meta_name", "monitor"),
            ("OCF_RESKEY_CRM_meta_on_node", "n1"),
            ("OCF_RESKEY_CRM_meta_notify_type", "pre"),
            ("HA_RSCTMP", "/var/lib/hb/n1/rsctmp"),
            ("HA_VARRUN", "/var/lib/hb/n1/run"),
            ("HA_LOGFACILITY", "none"),
            ("HABLOCK_NODE", "n1"),
        ];
        for (k, v) in want {
            assert_eq!(get(&env, k), Some(v), "{k}");
        }
        // Nothing else leaks in (e.g. the daemon's HOME or RUST_LOG).
        assert!(get(&env, "HOME").is_none());
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let mut sorted = names.clone();
        sorted.dedup();
        assert_eq!(names, sorted, "no duplicates");
    }

    #[test]
    fn request_meta_cannot_override_the_timeout_pacemaker_sets() {
        let mut req = OpRequest::new("d", Agent::parse("ocf:heartbeat:Dummy").unwrap(), Action::Start);
        req.timeout_ms = 0;
        req.meta.insert("timeout".into(), "5".into());
        let env = build_env(&cfg(), &req, "start").unwrap();
        assert_eq!(get(&env, "OCF_RESKEY_CRM_meta_timeout"), Some("20000"));
    }

    #[test]
    fn lsb_gets_no_ocf_variables() {
        let req = OpRequest::new("svc", Agent::parse("lsb:foo").unwrap(), Action::Monitor);
        let env = build_env(&cfg(), &req, "status").unwrap();
        assert!(get(&env, "OCF_ROOT").is_none() && get(&env, "OCF_RESOURCE_INSTANCE").is_none());
        assert_eq!(get(&env, "HABLOCK_NODE"), Some("n1"));
        assert_eq!(action_arg(ResourceClass::Lsb, Action::Monitor), "status");
        assert_eq!(action_arg(ResourceClass::Ocf, Action::Monitor), "monitor");
    }

    #[test]
    fn bad_names_are_errors() {
        let mut req = OpRequest::new("d", Agent::parse("ocf:heartbeat:Dummy").unwrap(), Action::Start);
        req.params.insert("a=b".into(), "x".into());
        assert!(build_env(&cfg(), &req, "start").unwrap_err().contains("a=b"));
        let mut req = OpRequest::new("d", Agent::parse("ocf:heartbeat:Dummy").unwrap(), Action::Start);
        req.params.insert("state".into(), "x\0y".into());
        assert!(build_env(&cfg(), &req, "start").unwrap_err().contains("NUL"));
    }

    #[test]
    fn agent_search_order_and_refusals() {
        let c = cfg();
        let a = Agent::parse("ocf:hablock:replica").unwrap();
        assert_eq!(
            agent_candidates(&c, &a).unwrap(),
            vec![
                PathBuf::from("/repo/agents/ocf/resource.d/hablock/replica"),
                PathBuf::from("/usr/lib/ocf/resource.d/hablock/replica"),
            ]
        );
        let found = resolve_agent(&c, &a, |p| p.starts_with("/usr")).unwrap();
        assert_eq!(found, PathBuf::from("/usr/lib/ocf/resource.d/hablock/replica"));
        let r = resolve_agent(&c, &a, |_| false).unwrap_err();
        assert_eq!((r.status, r.rc), (OpStatus::NotInstalled, 5));
        let r = resolve_agent(&c, &Agent::parse("stonith:fence_xvm").unwrap(), |_| true).unwrap_err();
        assert_eq!((r.status, r.rc), (OpStatus::NotSupported, 3));
        let sneaky = Agent {
            class: ResourceClass::Ocf,
            provider: Some("..".into()),
            kind: "x".into(),
        };
        assert_eq!(resolve_agent(&c, &sneaky, |_| true).unwrap_err().rc, 5);
        assert_eq!(
            agent_candidates(&c, &Agent::parse("lsb:mysql").unwrap()).unwrap(),
            vec![PathBuf::from("/etc/init.d/mysql")]
        );
    }

    #[test]
    fn netns_wraps_the_command() {
        let mut c = cfg();
        let (p, a) = command_line(&c, Path::new("/x/IPaddr2"), "start");
        assert_eq!((p, a), (PathBuf::from("/x/IPaddr2"), vec!["start".to_string()]));
        c.netns = Some("t1".into());
        let (p, a) = command_line(&c, Path::new("/x/IPaddr2"), "start");
        assert_eq!(p, PathBuf::from("ip"));
        assert_eq!(a, ["netns", "exec", "t1", "/x/IPaddr2", "start"]);
    }
}
