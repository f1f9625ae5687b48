//! What every admin tool shares: how it finds its node and how it reports failure.

use hablock::config::{ClusterConfig, Identity};
use hablock::control::exit;
use std::path::PathBuf;
use std::process::ExitCode;

/// Prints `TOOL: message` on stderr and turns `code` into the process exit code.
pub fn fail(tool: &str, code: i32, msg: impl AsRef<str>) -> ExitCode {
    eprintln!("{tool}: {}", msg.as_ref());
    ExitCode::from(code.clamp(1, 255) as u8)
}

/// Resolves the node (flags, then environment, then defaults) and loads its cluster file.
pub fn load(tool: &str, config: Option<PathBuf>, node: Option<String>) -> Result<(Identity, ClusterConfig), ExitCode> {
    let id = Identity::resolve(config, node);
    match id.load() {
        Ok(cfg) => Ok((id, cfg)),
        Err(e) => Err(fail(tool, exit::FAILED, e.to_string())),
    }
}
pub mod crm;
