//! `iscsi.toml` in the node's state directory: what `hbtgtadm` made, so it survives a
//! restart. Written atomically (temp file, fsync, rename, fsync of the directory).

use super::RegistryState;
use std::io::Write;
use std::path::Path;

/// Reads the saved state; a missing file is an empty state.
pub fn load_state(path: &Path) -> Result<RegistryState, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryState::default()),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    toml::from_str(&text).map_err(|e| {
        format!(
            "{}: {} (the file is written by hablockd; move it away to start with no targets)",
            path.display(),
            e.message().trim()
        )
    })
}

/// Writes `state` to `path` atomically.
pub fn save_state(path: &Path, state: &RegistryState) -> Result<(), String> {
    let text = toml::to_string(state).map_err(|e| format!("cannot encode the iSCSI state: {e}"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("toml.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(b"# Written by hablockd: the iSCSI targets made with hbtgtadm. Do not edit while it runs.\n")?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot save {}: {e}", path.display()))
}
