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
    let hint = "the file is written by hablockd; move it away to start with no targets";
    let state: RegistryState =
        toml::from_str(&text).map_err(|e| format!("{}: {} ({hint})", path.display(), e.message().trim()))?;
    check(&state).map_err(|e| format!("{}: {e} ({hint})", path.display()))?;
    Ok(state)
}

/// The invariants the registry keeps, checked on what was read.
fn check(state: &RegistryState) -> Result<(), String> {
    let mut users = std::collections::BTreeSet::new();
    for a in &state.account {
        if !users.insert(a.user.as_str()) {
            return Err(format!("account {:?} appears twice", a.user));
        }
    }
    let known = |u: &String| {
        if users.contains(u.as_str()) {
            Ok(())
        } else {
            Err(format!("account {u:?} is bound but not defined"))
        }
    };
    state.discovery_incoming.iter().try_for_each(known)?;
    state.discovery_outgoing.iter().try_for_each(known)?;
    let mut tids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    for t in &state.target {
        if t.tid == 0 || !tids.insert(t.tid) {
            return Err(format!("target tid {} is 0 or appears twice", t.tid));
        }
        if !super::valid_iscsi_name(&t.name) || !names.insert(t.name.as_str()) {
            return Err(format!(
                "target {:?} is not a valid iSCSI name or appears twice",
                t.name
            ));
        }
        let mut luns = std::collections::BTreeSet::new();
        for l in &t.luns {
            let controller = l.backing == super::Backing::Null;
            if !luns.insert(l.lun) || (l.lun == 0) != controller {
                return Err(format!(
                    "target {}: LUN {} appears twice, or only LUN 0 may be the controller",
                    t.tid, l.lun
                ));
            }
        }
        if let Some(a) = t.acl_addresses.iter().find(|a| !super::valid_acl_address(a)) {
            return Err(format!(
                "target {}: ACL {a:?} is not ALL, an address or NET/PREFIX",
                t.tid
            ));
        }
        t.incoming.iter().try_for_each(known)?;
        t.outgoing.iter().try_for_each(known)?;
    }
    Ok(())
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
