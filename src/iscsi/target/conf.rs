//! tgt-admin's `targets.conf`, turned into the tgtadm commands tgt-admin would run.
//!
//! Understood: `default-driver`, `incomingdiscoveryuser`/`outgoingdiscoveryuser` at the top;
//! inside `<target NAME>`: `backing-store`, `direct-store` (served like a backing store),
//! `<backing-store PATH>`/`<direct-store PATH>` blocks with `lun`, `bs-type`, `vendor_id`,
//! `product_id`, `product_rev`, `scsi_id`, `scsi_sn`, `readonly`, `removable`, `online`,
//! `thin_provisioning`, `params`, `bsoflags`, `bsopts`, `device-type`; target-wide `lun`
//! defaults the same LU keys; `initiator-address`, `initiator-name`, `incominguser`,
//! `outgoinguser`, `tid`, `bs-type`, `allow-in-use`/`write-cache` (ignored) and any target
//! parameter tgtadm accepts (`MaxRecvDataSegmentLength 65536`). `include` is refused.

use super::{TgtRequest, TARGET_PARAMS};

/// One command of an import; `tolerate_exists` marks account creation, which may find the
/// account already there (tgt-admin skips those too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportStep {
    pub req: TgtRequest,
    pub tolerate_exists: bool,
}

const LU_KEYS: &[&str] = &[
    "vendor_id",
    "product_id",
    "product_rev",
    "scsi_id",
    "scsi_sn",
    "readonly",
    "removable",
    "online",
    "thin_provisioning",
    "sense_format",
];

#[derive(Default, Clone)]
struct LuDecl {
    path: String,
    lun: Option<u64>,
    bstype: Option<String>,
    params: Vec<String>,
    bsoflags: Option<String>,
    bsopts: Option<String>,
    device_type: Option<String>,
}

#[derive(Default)]
struct TargetDecl {
    name: String,
    line: usize,
    tid: Option<u32>,
    bstype: Option<String>,
    lu_defaults: Vec<String>,
    luns: Vec<LuDecl>,
    addresses: Vec<String>,
    names: Vec<String>,
    incoming: Vec<(String, String)>,
    outgoing: Option<(String, String)>,
    params: Vec<(String, String)>,
}

fn base(mode: &str, op: &str) -> TgtRequest {
    TgtRequest {
        lld: Some("iscsi".into()),
        mode: Some(mode.into()),
        op: Some(op.into()),
        ..TgtRequest::default()
    }
}

/// Parses `text` (a targets.conf) into tgtadm commands; targets without a `tid` directive
/// get tids from `first_tid` on. Errors name the line.
pub fn import_targets_conf(text: &str, first_tid: u32) -> Result<Vec<ImportStep>, String> {
    let mut targets: Vec<TargetDecl> = Vec::new();
    let mut discovery: Vec<(String, String, bool)> = Vec::new();
    let mut cur: Option<TargetDecl> = None;
    let mut lu: Option<LuDecl> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fail = |m: String| Err(format!("line {n}: {m}"));
        if let Some(inner) = line.strip_prefix('<').and_then(|l| l.strip_suffix('>')) {
            let inner = inner.trim();
            if inner == "/target" {
                if lu.is_some() {
                    return fail("</target> inside an open <backing-store> block".into());
                }
                match cur.take() {
                    Some(t) => targets.push(t),
                    None => return fail("</target> without <target>".into()),
                }
            } else if inner == "/backing-store" || inner == "/direct-store" {
                match (lu.take(), cur.as_mut()) {
                    (Some(l), Some(t)) => t.luns.push(l),
                    _ => return fail(format!("<{inner}> without its opening block")),
                }
            } else {
                let (kind, arg) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
                let arg = arg.trim().to_string();
                match kind {
                    "target" if cur.is_none() && !arg.is_empty() => {
                        cur = Some(TargetDecl {
                            name: arg,
                            line: n,
                            ..TargetDecl::default()
                        })
                    }
                    "backing-store" | "direct-store" if cur.is_some() && lu.is_none() && !arg.is_empty() => {
                        lu = Some(LuDecl {
                            path: arg,
                            ..LuDecl::default()
                        })
                    }
                    _ => return fail(format!("unexpected <{inner}>")),
                }
            }
            continue;
        }
        let (key, val) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let val = val.trim().to_string();
        let two = || {
            let mut it = val.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some(u), Some(p), None) => Ok((u.to_string(), p.to_string())),
                _ => Err(format!("line {n}: {key}: expected USER PASSWORD")),
            }
        };
        if let Some(l) = lu.as_mut() {
            match key {
                "lun" => {
                    l.lun = Some(
                        val.parse()
                            .map_err(|_| format!("line {n}: lun: {val:?} is not a number"))?,
                    )
                }
                "bs-type" => l.bstype = Some(val),
                "params" => l.params.push(val),
                "bsoflags" => l.bsoflags = Some(val),
                "bsopts" => l.bsopts = Some(val),
                "device-type" => l.device_type = Some(val),
                "write-cache" | "allow-in-use" => {}
                k if LU_KEYS.contains(&k) => l.params.push(format!("{k}={val}")),
                _ => return fail(format!("{key}: not understood inside <backing-store>")),
            }
            continue;
        }
        let Some(t) = cur.as_mut() else {
            match key {
                "default-driver" if val == "iscsi" => {}
                "default-driver" => return fail(format!("default-driver {val}: only iscsi is served")),
                "incomingdiscoveryuser" | "outgoingdiscoveryuser" => {
                    let (u, p) = two()?;
                    discovery.push((u, p, key == "outgoingdiscoveryuser"));
                }
                "ignore-errors" | "control-port" | "iSNSServerIP" | "iSNSServerPort" | "iSNSAccessControl" | "iSNS" => {
                }
                "include" => return fail("include: not supported; concatenate the files".into()),
                _ => return fail(format!("{key}: not understood outside <target>")),
            }
            continue;
        };
        match key {
            "backing-store" | "direct-store" => t.luns.push(LuDecl {
                path: val,
                ..LuDecl::default()
            }),
            "initiator-address" => t.addresses.extend(val.split_whitespace().map(str::to_string)),
            "initiator-name" => t.names.extend(val.split_whitespace().map(str::to_string)),
            "incominguser" => t.incoming.push(two()?),
            "outgoinguser" => {
                if t.outgoing.is_some() {
                    return fail("outgoinguser: a target has at most one".into());
                }
                t.outgoing = Some(two()?)
            }
            "tid" | "controller_tid" => {
                t.tid = Some(
                    val.parse()
                        .map_err(|_| format!("line {n}: {key}: {val:?} is not a number"))?,
                )
            }
            "bs-type" => t.bstype = Some(val),
            "params" => t.lu_defaults.push(val),
            "write-cache" | "allow-in-use" | "driver" => {}
            k if LU_KEYS.contains(&k) => t.lu_defaults.push(format!("{k}={val}")),
            k if TARGET_PARAMS.iter().any(|p| p.name.eq_ignore_ascii_case(k)) => t.params.push((k.to_string(), val)),
            _ => return fail(format!("{key}: not understood inside <target>")),
        }
    }
    if let Some(t) = cur {
        return Err(format!("line {}: <target {}> is not closed", t.line, t.name));
    }
    let mut steps = Vec::new();
    let account = |steps: &mut Vec<ImportStep>, u: &str, p: &str| {
        let mut r = base("account", "new");
        r.user = Some(u.into());
        r.password = Some(p.into());
        steps.push(ImportStep {
            req: r,
            tolerate_exists: true,
        });
    };
    for (u, p, out) in &discovery {
        account(&mut steps, u, p);
        let mut r = base("account", "bind");
        r.user = Some(u.clone());
        r.outgoing = *out;
        steps.push(ImportStep {
            req: r,
            tolerate_exists: false,
        });
    }
    let mut next = first_tid.max(1);
    let step = |req| ImportStep {
        req,
        tolerate_exists: false,
    };
    for t in targets {
        let tid = match t.tid {
            Some(x) => x,
            None => {
                next += 1;
                next - 1
            }
        };
        let mut r = base("target", "new");
        r.tid = Some(tid);
        r.targetname = Some(t.name.clone());
        steps.push(step(r));
        let mut lun_no = 1;
        for l in &t.luns {
            let lun = l.lun.unwrap_or(lun_no);
            lun_no = lun + 1;
            let mut r = base("logicalunit", "new");
            r.tid = Some(tid);
            r.lun = Some(lun);
            r.backing_store = Some(l.path.clone());
            r.bstype = l.bstype.clone().or_else(|| t.bstype.clone());
            r.bsoflags = l.bsoflags.clone();
            r.bsopts = l.bsopts.clone();
            r.device_type = l.device_type.clone();
            let params: Vec<String> = t.lu_defaults.iter().chain(&l.params).cloned().collect();
            if !params.is_empty() {
                r.params = Some(params.join(","));
            }
            steps.push(step(r));
        }
        for (k, v) in &t.params {
            let mut r = base("target", "update");
            r.tid = Some(tid);
            r.name = Some(k.clone());
            r.value = Some(v.clone());
            steps.push(step(r));
        }
        for (u, p) in t.incoming.iter().chain(&t.outgoing) {
            account(&mut steps, u, p);
        }
        for (u, out) in t
            .incoming
            .iter()
            .map(|x| (x, false))
            .chain(t.outgoing.iter().map(|x| (x, true)))
        {
            let mut r = base("account", "bind");
            r.tid = Some(tid);
            r.user = Some(u.0.clone());
            r.outgoing = out;
            steps.push(step(r));
        }
        // tgt-admin: no initiator-address and no initiator-name means everyone may log in.
        let addresses = if t.addresses.is_empty() && t.names.is_empty() {
            vec!["ALL".to_string()]
        } else if t.addresses.is_empty() {
            // Name rules alone: tgt-admin binds ALL too, the names then restrict.
            vec!["ALL".to_string()]
        } else {
            t.addresses.clone()
        };
        for a in addresses {
            let mut r = base("target", "bind");
            r.tid = Some(tid);
            r.initiator_address = Some(a);
            steps.push(step(r));
        }
        for q in &t.names {
            let mut r = base("target", "bind");
            r.tid = Some(tid);
            r.initiator_name = Some(q.clone());
            steps.push(step(r));
        }
    }
    Ok(steps)
}
