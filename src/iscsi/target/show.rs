//! `--op show` in tgtadm 1.0.85's exact text layout (the OCF agents parse it).

use super::{Account, SessionInfo, Target, TargetState, TARGET_PARAMS};
use std::fmt::Write as _;

fn yes(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// `--mode target --op show`.
pub(super) fn targets(targets: &[Target]) -> String {
    let mut s = String::new();
    for t in targets {
        target(&mut s, t);
    }
    s
}

fn target(s: &mut String, t: &Target) {
    let _ = writeln!(s, "Target {}: {}", t.tid, t.name);
    s.push_str("    System information:\n        Driver: iscsi\n");
    let state = match t.state {
        TargetState::Ready => "ready",
        TargetState::Offline => "offline",
    };
    let _ = writeln!(s, "        State: {state}");
    let nop = t.param("nop_interval").unwrap_or_default();
    if nop != "0" {
        let _ = writeln!(s, "        Nop interval: {nop}");
        let _ = writeln!(s, "        Nop count: {}", t.param("nop_count").unwrap_or_default());
    }
    s.push_str("    I_T nexus information:\n");
    for sess in &t.sessions {
        let _ = writeln!(s, "        I_T nexus: {}", sess.sid);
        let _ = writeln!(
            s,
            "            Initiator: {} alias: {}",
            sess.initiator,
            sess.alias.as_deref().unwrap_or("none")
        );
        for c in &sess.conns {
            let _ = writeln!(s, "            Connection: {}", c.cid);
            let _ = writeln!(s, "                IP Address: {}", c.addr);
        }
    }
    s.push_str("    LUN information:\n");
    for l in &t.luns {
        let controller = l.backing == super::Backing::Null;
        let _ = writeln!(s, "        LUN: {}", l.lun);
        let _ = writeln!(
            s,
            "            Type: {}",
            if controller { "controller" } else { "disk" }
        );
        let _ = writeln!(s, "            SCSI ID: {}", l.scsi_id(t.tid));
        let _ = writeln!(s, "            SCSI SN: {}", l.scsi_sn(t.tid));
        // tgt rounds to decimal megabytes.
        let _ = writeln!(
            s,
            "            Size: {} MB, Block size: {}",
            (l.size + 500_000) / 1_000_000,
            l.block_size()
        );
        let _ = writeln!(s, "            Online: {}", yes(l.params.online));
        let _ = writeln!(s, "            Removable media: {}", yes(l.params.removable));
        s.push_str("            Prevent removal: No\n");
        let _ = writeln!(s, "            Readonly: {}", yes(l.params.readonly));
        s.push_str("            SWP: No\n");
        let _ = writeln!(s, "            Thin-provisioning: {}", yes(l.params.thin_provisioning));
        let _ = writeln!(s, "            Backing store type: {}", l.backing.bstype());
        let path = l.shown_path.as_deref().or(l.backing.path()).unwrap_or("None");
        let _ = writeln!(s, "            Backing store path: {path}");
        let _ = writeln!(s, "            Backing store flags: {}", l.bsoflags.replace(':', " "));
    }
    s.push_str("    Account information:\n");
    for u in &t.incoming {
        let _ = writeln!(s, "        {u}");
    }
    if let Some(u) = &t.outgoing {
        let _ = writeln!(s, "        {u} (outgoing)");
    }
    s.push_str("    ACL information:\n");
    for a in t.acl_addresses.iter().chain(&t.acl_names) {
        let _ = writeln!(s, "        {a}");
    }
}

/// `--mode target --op show --tid N`: the target's parameters.
pub(super) fn target_params(t: &Target) -> String {
    TARGET_PARAMS
        .iter()
        .map(|p| format!("{}={}\n", p.name, t.param(p.name).unwrap_or_default()))
        .collect()
}

/// `--mode account --op show`.
pub(super) fn accounts(accounts: &[Account]) -> String {
    let mut s = String::from("Account list:\n");
    for a in accounts {
        let _ = writeln!(s, "    {}", a.user);
    }
    s
}

/// `--mode conn --op show --tid N [--sid S]`.
pub(super) fn conns(sessions: &[&SessionInfo]) -> String {
    let mut s = String::new();
    for sess in sessions {
        let _ = writeln!(s, "Session: {}", sess.sid);
        for c in &sess.conns {
            let _ = writeln!(s, "    Connection: {}", c.cid);
            let _ = writeln!(s, "        Initiator: {}", sess.initiator);
            let _ = writeln!(s, "        IP Address: {}", c.addr);
        }
    }
    s
}

/// `--mode sys --op show`: tgtd's layout, listing what hablock serves.
pub(super) fn sys() -> String {
    "System:\n    State: ready\n    debug: off\nLLDs:\n    iscsi: ready\nBacking stores:\n    null\n    \
     rdwr (bsoflags sync:direct)\n    hablock\nDevice types:\n    disk\n    controller\niSNS:\n    iSNS=Off\n    \
     iSNSServerIP=\n    iSNSServerPort=3205\n    iSNSAccessControl=Off\n"
        .to_string()
}
