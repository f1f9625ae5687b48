//! Fencing (STONITH): turning a lost node off before its resources start elsewhere.
//!
//! - [`plan`](plan::plan) (pure): from the CIB configuration, which `stonith:` devices can fence
//!   a node, grouped into levels (the `fencing_topology`, or one level per capable device), and
//!   the exact `key=value` stdin each agent gets. Host lists and maps (`pcmk_host_list`,
//!   `pcmk_host_map`, `pcmk_host_check`, `pcmk_host_argument`) and action overrides
//!   (`pcmk_off_action`, `pcmk_reboot_action`, `pcmk_<action>_timeout`, `pcmk_delay_base`) are
//!   read here.
//! - [`execute`]: runs a plan with the fence-agents interface (FenceAgentAPI): each agent is
//!   an executable reading `key=value` lines on stdin; exit 0 is success (for `status`: 0 on,
//!   2 off, 1 error). Output goes to files, overruns kill the agent's process group.
//! - [`monitor_device`] / [`device_action`]: a device's own actions (`monitor`, `list`, ...).
//!
//! The controller on the DC decides when to fence and calls these; `docs/fencing.md` describes
//! the parameters and the test agent `agents/fence/fence_hablock_netns`.

pub mod agent;
pub mod execute;
pub mod plan;

#[cfg(test)]
mod plan_test;

pub use agent::{find_agent, run_agent, AgentRun};
pub use execute::{device_action, execute, fence, list_names, monitor_device, FenceOptions, FenceOutcome};
pub use plan::{
    check_device_params, parse_host_map, plan, stonith_max_attempts, stonith_timeout_ms, DeviceCall, FenceAction,
    FenceLevel, FencePlan, HostCheck,
};
