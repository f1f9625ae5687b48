//! The daemon's holder of the registry: loads it from the node's state and the cluster
//! file, answers tgtadm requests, and saves after every change.

use super::{load_state, save_state, FsProbe, TargetRegistry, TgtReply, TgtRequest};
use crate::config::ClusterConfig;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// The node's registry and where it is kept (`<state_dir>/<node>/iscsi.toml`).
#[derive(Debug)]
pub struct IscsiAdmin {
    registry: Mutex<TargetRegistry>,
    state_file: PathBuf,
}

impl IscsiAdmin {
    /// Loads the saved targets, then makes the targets the cluster file declares that are
    /// not there yet (matched by name), and saves if that changed anything.
    pub fn load(config: &ClusterConfig, node: &str) -> Result<IscsiAdmin, String> {
        let state_file = config.state_dir(node).join("iscsi.toml");
        let mut probe = FsProbe::default();
        for r in &config.resources {
            if let Some(n) = r.on.get(node) {
                // The backing disk's size: an upper bound of what the resource exposes
                // until the server asks the running resource.
                let size = FsProbe::default().path_size_of(&n.disk).unwrap_or(0);
                probe.resources.insert(r.name.clone(), size);
                probe.disks.insert(n.disk.display().to_string(), r.name.clone());
            }
        }
        let state = load_state(&state_file)?;
        let mut reg = TargetRegistry::from_state(state, Arc::new(probe));
        if let Some(section) = &config.iscsi {
            if let Some(me) = section.on.get(node) {
                reg.set_portals(vec![me.portal.to_string()]);
            }
            for decl in &section.targets {
                if reg.targets().iter().any(|t| t.name == decl.name) {
                    continue;
                }
                let tid = decl.tid.unwrap_or_else(|| reg.next_free_tid());
                for req in decl.steps(tid) {
                    let rep = reg.handle(req.clone());
                    let exists = req.mode.as_deref() == Some("account")
                        && req.op.as_deref() == Some("new")
                        && rep.stderr.contains("already exists");
                    if rep.code != 0 && !exists {
                        return Err(format!(
                            "{}: declared target {}: {:?} {:?}: {}",
                            config.path.display(),
                            decl.name,
                            req.mode.unwrap_or_default(),
                            req.op.unwrap_or_default(),
                            rep.stderr.trim()
                        ));
                    }
                }
            }
        }
        let admin = IscsiAdmin {
            registry: Mutex::new(reg),
            state_file,
        };
        if admin.lock().take_dirty() {
            save_state(&admin.state_file, admin.lock().state())?;
        }
        Ok(admin)
    }

    /// The registry (for the iSCSI server: logins, LUN tables, sessions).
    pub fn lock(&self) -> MutexGuard<'_, TargetRegistry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state_file(&self) -> &PathBuf {
        &self.state_file
    }

    /// Carries out one tgtadm command and saves the state if it changed.
    pub fn handle(&self, req: TgtRequest) -> TgtReply {
        let mut reg = self.lock();
        let mut reply = reg.handle(req);
        if reg.take_dirty() {
            if let Err(e) = save_state(&self.state_file, reg.state()) {
                tracing::error!("{e}");
                reply.code = 1;
                reply.stderr.push_str(&format!("tgtadm: done, but not saved: {e}\n"));
            }
        }
        reply
    }
}
