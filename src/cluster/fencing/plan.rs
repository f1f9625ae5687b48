//! Which devices fence a node, in what order, with which agent input. Pure: reads the
//! configuration, runs nothing.
//!
//! With a fencing topology for the target, each of its levels (by index) becomes one
//! [`FenceLevel`]; every device in a level must succeed. Without one, every usable device that
//! can fence the target becomes a level of its own, in configuration order, so the first device
//! that succeeds wins.

use crate::cluster::cib::config::Resource;
use crate::cluster::cib::config::{parse_duration_ms, Attrs, Configuration, Primitive, ResourceClass};
use std::fmt;
use std::str::FromStr;

/// What fencing should do to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceAction {
    /// Power the node off (`stonith-action=off`, also spelled `poweroff`).
    Off,
    /// Power it on again (unfencing).
    On,
    /// Off, then on (`stonith-action=reboot`, Pacemaker's default).
    Reboot,
}

impl FenceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceAction::Off => "off",
            FenceAction::On => "on",
            FenceAction::Reboot => "reboot",
        }
    }

    /// The cluster's `stonith-action` (`fencing-action`), default reboot.
    pub fn from_config(cfg: &Configuration) -> FenceAction {
        cfg.property("stonith-action")
            .and_then(|v| v.parse().ok())
            .unwrap_or(FenceAction::Reboot)
    }
}

impl FromStr for FenceAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "poweroff" => Ok(FenceAction::Off),
            "on" => Ok(FenceAction::On),
            "reboot" => Ok(FenceAction::Reboot),
            _ => Err(format!("{s:?} is not a fencing action: expected off, on or reboot")),
        }
    }
}

impl fmt::Display for FenceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `pcmk_host_check`: how a device tells whether it can fence a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCheck {
    /// The node is in `pcmk_host_list` or `pcmk_host_map` (decided here, by [`plan`]).
    StaticList,
    /// The agent's `list` output names the node's plug (decided when executing).
    DynamicList,
    /// The agent's `status` of the node's plug answers on (0) or off (2) (decided when executing).
    Status,
    /// The device can fence every node.
    None,
}

impl HostCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            HostCheck::StaticList => "static-list",
            HostCheck::DynamicList => "dynamic-list",
            HostCheck::Status => "status",
            HostCheck::None => "none",
        }
    }
}

impl FromStr for HostCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "static-list" => Ok(HostCheck::StaticList),
            "dynamic-list" => Ok(HostCheck::DynamicList),
            "status" => Ok(HostCheck::Status),
            "none" => Ok(HostCheck::None),
            _ => Err(format!(
                "pcmk_host_check={s:?} is not valid: expected static-list, dynamic-list, status or none"
            )),
        }
    }
}

/// One run of one agent, as a step of a level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCall {
    /// The stonith resource's id.
    pub device: String,
    /// The agent executable's name (`fence_ipmilan`).
    pub agent: String,
    /// The action sent to the agent (after `pcmk_off_action` and friends).
    pub action: String,
    /// The plug (port) for the target: its `pcmk_host_map` entry, else the node name.
    pub plug: String,
    /// The check to run before the action (dynamic-list or status); static-list and none
    /// were decided by [`plan`] and need nothing at run time.
    pub check: HostCheck,
    /// The check is dynamic-list only because nothing else was configured (no
    /// `pcmk_host_check`, list or map). Pacemaker would then pick what the agent supports; here
    /// an agent whose `list` fails is asked the plug's `status` instead.
    pub check_defaulted: bool,
    /// The agent's stdin for the action, one `key=value` per line.
    pub stdin: Vec<String>,
    /// The device's own arguments (params without `pcmk_*`, `action`, the host argument),
    /// used to build the stdin of check actions; see [`DeviceCall::stdin_for`].
    pub args: Vec<(String, String)>,
    /// The parameter that carries the plug (`pcmk_host_argument`, default `plug`); `None`
    /// when set to `none`.
    pub host_argument: Option<String>,
    /// `pcmk_<action>_timeout`, when set; else the caller's timeout applies.
    pub timeout_ms: Option<u64>,
    /// `pcmk_delay_base`: how long to wait before the action (breaks fence races in two-node
    /// clusters by giving one node a head start).
    pub delay_ms: u64,
    /// `pcmk_delay_max`: when above `delay_ms`, the wait is random between the two (Pacemaker's
    /// answer to the same race when no node should be preferred).
    pub delay_max_ms: u64,
    /// `pcmk_list_timeout` or `pcmk_status_timeout` for the host check, when set.
    pub check_timeout_ms: Option<u64>,
    /// Whether the level fails when this call fails. False only for the `on` half of a
    /// multi-device reboot: the target is already off, which is what fencing needs.
    pub required: bool,
}

impl DeviceCall {
    /// The stdin for `action` on this device for the planned target.
    pub fn stdin_for(&self, action: &str, with_plug: bool, target: &str) -> Vec<String> {
        let mut v = vec![format!("action={action}")];
        if with_plug {
            if let Some(arg) = &self.host_argument {
                v.push(format!("{arg}={}", self.plug));
            }
            v.push(format!("nodename={target}"));
        }
        v.extend(self.args.iter().map(|(k, val)| format!("{k}={val}")));
        v
    }
}

/// A fencing level: its calls run in order and all required ones must succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceLevel {
    /// The topology index, or the position (1, 2, ...) without a topology.
    pub index: u32,
    pub calls: Vec<DeviceCall>,
}

impl FenceLevel {
    /// The distinct device ids of the level, in order.
    pub fn devices(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for c in &self.calls {
            if !v.contains(&c.device.as_str()) {
                v.push(&c.device);
            }
        }
        v
    }
}

/// How to fence one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencePlan {
    pub target: String,
    pub action: FenceAction,
    /// Tried in order until one succeeds.
    pub levels: Vec<FenceLevel>,
    /// Whether the levels come from `fencing_topology`.
    pub from_topology: bool,
    /// Devices left out and why (for logs and error messages).
    pub skipped: Vec<String>,
}

/// The cluster's `stonith-timeout` (`fencing-timeout`), default 60 s.
pub fn stonith_timeout_ms(cfg: &Configuration) -> u64 {
    cfg.property("stonith-timeout")
        .and_then(|v| parse_duration_ms(v).ok())
        .unwrap_or(60_000)
}

/// The cluster's `stonith-max-attempts` (`fencing-max-attempts`): how many fencing failures in a
/// row against one node before the DC stops trying (Pacemaker's default, 10; at least 1).
pub fn stonith_max_attempts(cfg: &Configuration) -> usize {
    cfg.property("stonith-max-attempts")
        .or_else(|| cfg.property("fencing-max-attempts"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(10)
        .max(1)
}

/// Plans fencing `target` with `action`. An error says why no device can do it.
pub fn plan(config: &Configuration, target: &str, action: FenceAction) -> Result<FencePlan, String> {
    if config.node(target).is_none() {
        return Err(format!("cannot fence {target:?}: it is not a configured node"));
    }
    let mut skipped = Vec::new();
    let topology = config.fencing_levels(target);
    let mut levels = Vec::new();
    if !topology.is_empty() {
        for l in &topology {
            let mut calls = Vec::new();
            let mut unusable = Vec::new();
            for d in &l.devices {
                let dev =
                    stonith_device(config, d).and_then(|p| Device::read(p).map_err(|e| format!("device {d:?}: {e}")));
                match dev {
                    Ok(dev) => {
                        if let Some(why) = dev.disabled() {
                            unusable.push(format!("{d}: {why}"));
                        }
                        // The administrator named the device for this node: no host check.
                        calls.push((dev, HostCheck::None));
                    }
                    Err(e) => unusable.push(e),
                }
            }
            // A level with a device that cannot run cannot succeed: the next level is tried.
            if unusable.is_empty() {
                levels.push(level_calls(l.index, calls, target, action, l.devices.len() > 1));
            } else {
                skipped.push(format!("level {}: {}", l.index, unusable.join(", ")));
            }
        }
        if levels.is_empty() {
            return Err(format!(
                "cannot fence {target:?}: no fencing level can be used ({})",
                skipped.join("; ")
            ));
        }
    } else {
        let mut index = 0;
        for r in &config.resources {
            let Resource::Primitive(p) = r else { continue };
            if p.agent.class != ResourceClass::Stonith {
                continue;
            }
            let dev = match Device::read(p) {
                Ok(d) => d,
                Err(e) => {
                    skipped.push(format!("{}: {e}", p.id));
                    continue;
                }
            };
            if let Some(why) = dev.disabled() {
                skipped.push(format!("{}: {why}", p.id));
                continue;
            }
            let check = match dev.can_fence(target) {
                Ok(c) => c,
                Err(why) => {
                    skipped.push(format!("{}: {why}", p.id));
                    continue;
                }
            };
            index += 1;
            levels.push(level_calls(index, vec![(dev, check)], target, action, false));
        }
        if levels.is_empty() {
            let why = if skipped.is_empty() {
                "no stonith: device is configured".to_string()
            } else {
                skipped.join("; ")
            };
            return Err(format!(
                "cannot fence {target:?}: no fencing device can fence it ({why})"
            ));
        }
    }
    Ok(FencePlan {
        target: target.to_string(),
        action,
        levels,
        from_topology: !topology.is_empty(),
        skipped,
    })
}

/// The device `id` as a stonith primitive, or why not.
pub fn stonith_device<'a>(config: &'a Configuration, id: &str) -> Result<&'a Primitive, String> {
    match config.resource(id) {
        Some(Resource::Primitive(p)) if p.agent.class == ResourceClass::Stonith => Ok(p),
        Some(Resource::Primitive(p)) => Err(format!("{id:?} runs {}, not a stonith: agent", p.agent)),
        Some(r) => Err(format!("{id:?} is a {}, not a stonith: device", r.kind_name())),
        None => Err(format!("device {id:?} is not configured")),
    }
}

fn level_calls(
    index: u32,
    devices: Vec<(Device, HostCheck)>,
    target: &str,
    action: FenceAction,
    multi: bool,
) -> FenceLevel {
    let mut calls = Vec::new();
    if action == FenceAction::Reboot && multi {
        // Rebooting a node with several power supplies: every one off, then every one on, so
        // that the node is really without power in between.
        for (dev, check) in &devices {
            calls.push(dev.call(target, FenceAction::Off, *check, true));
        }
        for (dev, check) in &devices {
            calls.push(dev.call(target, FenceAction::On, *check, false));
        }
    } else {
        for (dev, check) in &devices {
            calls.push(dev.call(target, action, *check, true));
        }
    }
    FenceLevel { index, calls }
}

/// A stonith primitive's parameters, read.
#[derive(Debug, Clone)]
pub(super) struct Device {
    pub id: String,
    pub agent: String,
    pub params: Attrs,
    pub meta: Attrs,
    host_list: Vec<String>,
    host_map: Vec<(String, String)>,
    host_check: Option<HostCheck>,
    pub host_argument: Option<String>,
    pub args: Vec<(String, String)>,
}

impl Device {
    pub(super) fn read(p: &Primitive) -> Result<Device, String> {
        if p.agent.kind.is_empty() || p.agent.kind.contains(['/', '\0']) || p.agent.kind.starts_with('.') {
            return Err(format!("agent name {:?} is not a plain file name", p.agent.kind));
        }
        for (k, v) in &p.params {
            if k.contains(['=', '\n', '\r', '\0']) || v.contains(['\n', '\r', '\0']) || k.is_empty() {
                return Err(format!(
                    "parameter {k:?} cannot be passed on a fence agent's stdin (no '=' in names, no line breaks)"
                ));
            }
        }
        let host_list = p
            .params
            .get("pcmk_host_list")
            .map(|v| {
                v.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let host_map = match p.params.get("pcmk_host_map") {
            Some(v) => parse_host_map(v)?,
            None => Vec::new(),
        };
        let host_check = p.params.get("pcmk_host_check").map(|v| v.parse()).transpose()?;
        let host_argument = match p.params.get("pcmk_host_argument").map(|s| s.trim()) {
            None | Some("") => Some("plug".to_string()),
            Some("none") => None,
            Some(a) if a.contains(['=', ' ']) => {
                return Err(format!("pcmk_host_argument={a:?} is not a parameter name"))
            }
            Some(a) => Some(a.to_string()),
        };
        let args = p
            .params
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("pcmk_") && k.as_str() != "action" && Some(k.as_str()) != host_argument.as_deref()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Device {
            id: p.id.clone(),
            agent: p.agent.kind.clone(),
            params: p.params.clone(),
            meta: p.meta.clone(),
            host_list,
            host_map,
            host_check,
            host_argument,
            args,
        })
    }

    /// Why the device may not be used, if so (`target-role=Stopped`, `is-managed` does not
    /// matter for fencing).
    fn disabled(&self) -> Option<String> {
        match self.meta.get("target-role").map(|s| s.to_ascii_lowercase()) {
            Some(r) if r == "stopped" => Some("disabled (target-role=Stopped)".into()),
            _ => None,
        }
    }

    /// Whether the device can fence `target` as far as the configuration says: the check left
    /// to run time, or why not.
    fn can_fence(&self, target: &str) -> Result<HostCheck, String> {
        let listed = !self.host_list.is_empty() || !self.host_map.is_empty();
        let check = self.host_check.unwrap_or(if listed {
            HostCheck::StaticList
        } else {
            HostCheck::DynamicList
        });
        match check {
            HostCheck::StaticList => {
                if self.host_list.iter().any(|h| h == target) || self.host_map.iter().any(|(n, _)| n == target) {
                    Ok(HostCheck::None)
                } else if !listed {
                    Err("pcmk_host_check=static-list but neither pcmk_host_list nor pcmk_host_map is set".into())
                } else {
                    Err(format!("{target} is not in its pcmk_host_list or pcmk_host_map"))
                }
            }
            c => Ok(c),
        }
    }

    fn plug(&self, target: &str) -> String {
        self.host_map
            .iter()
            .find(|(n, _)| n == target)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| target.to_string())
    }

    fn call(&self, target: &str, action: FenceAction, check: HostCheck, required: bool) -> DeviceCall {
        let (name, default) = match action {
            FenceAction::Off => ("off", "off"),
            FenceAction::On => ("on", "on"),
            FenceAction::Reboot => ("reboot", "reboot"),
        };
        let agent_action = self
            .params
            .get(&format!("pcmk_{name}_action"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default.to_string());
        let timeout_ms = self
            .params
            .get(&format!("pcmk_{name}_timeout"))
            .and_then(|v| parse_duration_ms(v).ok());
        let duration = |name: &str| self.params.get(name).and_then(|v| parse_duration_ms(v).ok());
        let (delay_ms, delay_max_ms) = if action == FenceAction::On {
            (0, 0)
        } else {
            (
                duration("pcmk_delay_base").unwrap_or(0),
                duration("pcmk_delay_max").unwrap_or(0),
            )
        };
        let check_timeout_ms = match check {
            HostCheck::DynamicList => duration("pcmk_list_timeout"),
            HostCheck::Status => duration("pcmk_status_timeout"),
            _ => None,
        };
        let mut call = DeviceCall {
            device: self.id.clone(),
            agent: self.agent.clone(),
            action: agent_action,
            plug: self.plug(target),
            check,
            check_defaulted: check == HostCheck::DynamicList && self.host_check.is_none(),
            stdin: Vec::new(),
            args: self.args.clone(),
            host_argument: self.host_argument.clone(),
            timeout_ms,
            delay_ms,
            delay_max_ms,
            check_timeout_ms,
            required,
        };
        call.stdin = call.stdin_for(&call.action.clone(), true, target);
        call
    }

    /// `pcmk_monitor_timeout`, when set.
    pub(super) fn monitor_timeout_ms(&self) -> Option<u64> {
        self.params
            .get("pcmk_monitor_timeout")
            .and_then(|v| parse_duration_ms(v).ok())
    }
}

/// The device parameters the cluster reads (`pcmk_*`), checked: what is wrong with them, for
/// the CIB's validation. [`plan`] is lenient where this is strict (an unreadable timeout is
/// ignored there), so that a device the CIB let through still fences.
pub fn check_device_params(p: &Primitive) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &p.params {
        let is_duration = k.starts_with("pcmk_delay_") || (k.starts_with("pcmk_") && k.ends_with("_timeout"));
        if is_duration {
            if let Err(e) = parse_duration_ms(v) {
                out.push(format!("{k}: {e}"));
            }
        }
        if k.contains(['=', '\n', '\r', '\0']) || k.is_empty() || v.contains(['\n', '\r', '\0']) {
            out.push(format!(
                "parameter {k:?} cannot be passed on a fence agent's stdin (no '=' in names, no line breaks)"
            ));
        }
    }
    if let Some(v) = p.params.get("pcmk_host_check") {
        if let Err(e) = v.parse::<HostCheck>() {
            out.push(e);
        }
    }
    if let Some(v) = p.params.get("pcmk_host_map") {
        if let Err(e) = parse_host_map(v) {
            out.push(e);
        }
    }
    if let Some(a) = p.params.get("pcmk_host_argument") {
        if a.trim().is_empty() || a.contains(['=', ' ']) {
            out.push(format!("pcmk_host_argument={a:?} is not a parameter name"));
        }
    }
    for name in ["pcmk_off_action", "pcmk_reboot_action", "pcmk_on_action"] {
        if let Some(a) = p.params.get(name) {
            if a.trim().is_empty() || a.contains(char::is_whitespace) || a.contains('=') {
                out.push(format!("{name}={a:?} is not an agent action"));
            }
        }
    }
    out
}

/// Parses `pcmk_host_map`: `node:plug` (or `node=plug`) entries separated by `;`, spaces or
/// newlines, e.g. `node1:1;node2:2,3`.
pub fn parse_host_map(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in v
        .split(|c: char| c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let Some((node, plug)) = entry.split_once([':', '=']) else {
            return Err(format!(
                "pcmk_host_map entry {entry:?} is not NODE:PLUG (expected e.g. node1:1;node2:2)"
            ));
        };
        if node.is_empty() || plug.is_empty() {
            return Err(format!("pcmk_host_map entry {entry:?} has an empty node or plug"));
        }
        out.push((node.to_string(), plug.to_string()));
    }
    Ok(out)
}
