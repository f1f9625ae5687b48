//! `hbcrm status`: the cluster in `crm_mon -1`'s layout, from the daemon's membership status
//! document (`cluster-status`) and the CIB (`cib-show`). Where a resource runs and in which
//! role comes from the status section's operation history (`pengine::state::observe`).
//!
//! ```text
//! Cluster Summary:
//!   * Stack: hablock heartbeat (unicast)
//!   * Current DC: alpha (version 0.1.0) - partition with quorum
//!   ...
//! Node List:
//!   * Node beta: standby
//!   * Online: [ alpha gamma ]
//!
//! Full List of Resources:
//!   * web (ocf:heartbeat:Dummy): Started alpha
//!   * Resource Group: g:
//!     * ip (ocf:heartbeat:IPaddr2): Started alpha
//!   * Clone Set: ms_r0 [p_r0] (promotable):
//!     * Promoted: [ alpha ]
//!     * Unpromoted: [ gamma ]
//!
//! Failed Resource Actions:
//!   * web_monitor_10000 on alpha 'not running' (7): call=12, status='complete', exitreason='', last-rc-change='Sun Nov 22 06:00:00 2026', queued=0ms, exec=3ms
//! ```

use hablock::cluster::cib::config::{Configuration, Primitive, Resource, Role};
use hablock::cluster::cib::status::{FenceEvent, OpRecord, OpStatus};
use hablock::cluster::cib::{Cib, Score};
use hablock::cluster::pengine::instances;
use hablock::cluster::pengine::state::{self, Observed};
use serde_json::{json, Value};

/// What to print besides the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `--failcounts` (`-f`): the Migration Summary with fail counts per node.
    pub failcounts: bool,
    /// `--fence-history`: every fencing operation kept in the CIB (Fencing History).
    pub fence_history: bool,
    /// When the status was taken (ms since the Unix epoch), for crm_mon's "Last updated" line.
    pub now_unix_ms: Option<u64>,
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// `Sun Nov 22 06:00:00 2026` (UTC), as crm_mon prints times.
pub fn ctime(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {year}",
        WD[days.rem_euclid(7) as usize],
        MON[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// OCF exit codes as Pacemaker names them.
pub fn rc_text(rc: i32) -> &'static str {
    match rc {
        0 => "ok",
        1 => "error",
        2 => "invalid parameter",
        3 => "unimplemented feature",
        4 => "insufficient privileges",
        5 => "not installed",
        6 => "not configured",
        7 => "not running",
        8 => "promoted",
        9 => "promoted (failed)",
        _ => "unknown",
    }
}

fn op_status_text(s: OpStatus) -> &'static str {
    match s {
        OpStatus::Done => "complete",
        OpStatus::Cancelled => "Cancelled",
        OpStatus::Timeout => "Timed Out",
        OpStatus::NotSupported => "NOT SUPPORTED",
        OpStatus::Error => "Error",
        OpStatus::NotInstalled => "Not installed",
    }
}

/// The resource, its group and its clone, innermost first.
fn lineage<'a>(cfg: &'a Configuration, id: &str) -> Vec<&'a Resource> {
    let mut out = Vec::new();
    let mut cur = cfg.resource(id);
    while let Some(r) = cur {
        out.push(r);
        if out.len() > 3 {
            break;
        }
        cur = cfg.parent_of(r.id());
    }
    out
}

fn disabled(cfg: &Configuration, id: &str) -> bool {
    lineage(cfg, id).iter().any(|r| r.target_role() == Role::Stopped)
}

fn unmanaged(cfg: &Configuration, id: &str) -> bool {
    cfg.maintenance_mode() || lineage(cfg, id).iter().any(|r| !r.is_managed())
}

/// Every active instance of primitive `prim`: (node, status id, state), nodes in name order.
fn instances(cib: &Cib, prim: &str) -> Vec<(String, String, Observed)> {
    let mut out = Vec::new();
    for (node, ns) in &cib.status.nodes {
        for (sid, h) in &ns.resources {
            if state::base_id(sid) == prim {
                let o = state::observe(h);
                if o.is_active() {
                    out.push((node.clone(), sid.clone(), o));
                }
            }
        }
    }
    out
}

fn state_word(o: Observed, promotable: bool) -> &'static str {
    match o {
        Observed::Running(Role::Promoted) => "Promoted",
        Observed::Running(_) if promotable => "Unpromoted",
        Observed::Running(_) => "Started",
        Observed::Failed(_) => "FAILED",
        Observed::StopFailed => "FAILED",
        Observed::Stopped => "Stopped",
    }
}

fn flags(cfg: &Configuration, id: &str, o: Observed) -> String {
    let mut s = String::new();
    if o == Observed::StopFailed {
        s += " (blocked)";
    }
    if unmanaged(cfg, id) {
        s += " (unmanaged)";
    }
    if disabled(cfg, id) && o.is_active() {
        s += " (disabled)";
    }
    s
}

/// The lines of one primitive outside a clone.
fn primitive_lines(cib: &Cib, offline: &[String], p: &Primitive, indent: &str, out: &mut String) {
    let cfg = &cib.configuration;
    let inst = instances(cib, &p.id);
    if inst.is_empty() {
        let dis = if disabled(cfg, &p.id) { " (disabled)" } else { "" };
        let unm = if unmanaged(cfg, &p.id) { " (unmanaged)" } else { "" };
        *out += &format!("{indent}* {} ({}): Stopped{dis}{unm}\n", p.id, p.agent);
        return;
    }
    let promotable = cfg.promotable_ancestor(&p.id).is_some();
    let all_started = inst.len() > 1
        && inst
            .iter()
            .all(|i| i.2 == Observed::Running(Role::Started) && !offline.contains(&i.0));
    if all_started {
        let nodes: Vec<&str> = inst.iter().map(|i| i.0.as_str()).collect();
        *out += &format!(
            "{indent}* {} ({}): Started [ {} ]{}\n",
            p.id,
            p.agent,
            nodes.join(" "),
            flags(cfg, &p.id, inst[0].2)
        );
        return;
    }
    for (node, _, o) in &inst {
        *out += &format!(
            "{indent}* {} ({}): {} {node}{}{}\n",
            p.id,
            p.agent,
            state_word(*o, promotable),
            flags(cfg, &p.id, *o),
            offline_mark(offline, node)
        );
    }
}

/// A node outside the membership view whose history still says the resource is active there:
/// the scheduler must stop it (or fence the node) before it counts as stopped.
fn offline_mark(offline: &[String], node: &str) -> &'static str {
    if offline.iter().any(|n| n == node) {
        " (OFFLINE)"
    } else {
        ""
    }
}

fn list(nodes: &[String]) -> String {
    format!("[ {} ]", nodes.join(" "))
}

/// A clone's lines: failed or partly running instances one by one, the rest as
/// `Promoted:`/`Unpromoted:`/`Started:`/`Stopped:` node lists.
fn clone_lines(cib: &Cib, offline: &[String], c: &hablock::cluster::cib::config::CloneSet, out: &mut String) {
    let cfg = &cib.configuration;
    let promotable = c.is_promotable();
    let mut head = format!("  * Clone Set: {} [{}]", c.id, c.child);
    if promotable {
        head += " (promotable)";
    }
    if c.globally_unique() {
        head += " (unique)";
    }
    if unmanaged(cfg, &c.id) {
        head += " (unmanaged)";
    }
    *out += &format!("{head}:\n");
    let members = cfg.primitives_of(&c.child);
    if instances::is_unique(cfg, c) {
        unique_clone_lines(cib, offline, &members, promotable, out);
        return;
    }
    let (mut promoted, mut started, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
    let mut singles = String::new();
    for node in cfg.nodes.iter().map(|n| n.name.as_str()) {
        let states: Vec<Option<Observed>> = members
            .iter()
            .map(|m| instances(cib, &m.id).into_iter().find(|i| i.0 == node).map(|i| i.2))
            .collect();
        let running = |s: &Option<Observed>| matches!(s, Some(Observed::Running(_)));
        if states.iter().all(Option::is_none) {
            stopped.push(node.to_string());
        } else if !members.is_empty() && states.iter().all(running) && offline_mark(offline, node).is_empty() {
            if states.iter().all(|s| *s == Some(Observed::Running(Role::Promoted))) {
                promoted.push(node.to_string());
            } else {
                started.push(node.to_string());
            }
        } else {
            for (m, s) in members.iter().zip(&states) {
                if let Some(o) = s {
                    singles += &format!(
                        "    * {} ({}): {} {node}{}{}\n",
                        m.id,
                        m.agent,
                        state_word(*o, promotable),
                        flags(cfg, &m.id, *o),
                        offline_mark(offline, node)
                    );
                }
            }
        }
    }
    *out += &singles;
    if !promoted.is_empty() {
        *out += &format!("    * Promoted: {}\n", list(&promoted));
    }
    if !started.is_empty() {
        let word = if promotable { "Unpromoted" } else { "Started" };
        *out += &format!("    * {word}: {}\n", list(&started));
    }
    if !stopped.is_empty() {
        let dis = if disabled(cfg, &c.id) { " (disabled)" } else { "" };
        *out += &format!("    * Stopped{dis}: {}\n", list(&stopped));
    }
}

/// A globally-unique clone's instances, each on its own line as crm_mon shows them:
/// `rsc:N (agent): Started node`, or `Stopped` for an instance that runs nowhere.
fn unique_clone_lines(cib: &Cib, offline: &[String], members: &[&Primitive], promotable: bool, out: &mut String) {
    let cfg = &cib.configuration;
    let max = members
        .first()
        .map_or(0, |m| instances::instance_ids(cfg, &m.id, cfg.nodes.len()).len());
    for n in 0..max {
        for m in members {
            let id = instances::instance_id(&m.id, n);
            let mut found = false;
            for (node, ns) in &cib.status.nodes {
                let Some(h) = ns.resources.get(&id) else { continue };
                let o = state::observe(h);
                if o.is_active() {
                    found = true;
                    *out += &format!(
                        "    * {id} ({}): {} {node}{}{}\n",
                        m.agent,
                        state_word(o, promotable),
                        flags(cfg, &m.id, o),
                        offline_mark(offline, node)
                    );
                }
            }
            if !found {
                let dis = if disabled(cfg, &m.id) { " (disabled)" } else { "" };
                *out += &format!("    * {id} ({}): Stopped{dis}\n", m.agent);
            }
        }
    }
}

/// The "Full List of Resources:" section (top-level resources in configuration order).
/// Instances on the `offline` nodes are marked `(OFFLINE)`.
pub fn resources_section(cib: &Cib, offline: &[String]) -> String {
    let cfg = &cib.configuration;
    let mut out = String::from("Full List of Resources:\n");
    let top: Vec<&Resource> = cfg
        .resources
        .iter()
        .filter(|r| cfg.parent_of(r.id()).is_none())
        .collect();
    if top.is_empty() {
        out += "  * No resources\n";
    }
    for r in top {
        match r {
            Resource::Primitive(p) => primitive_lines(cib, offline, p, "  ", &mut out),
            Resource::Group(g) => {
                let dis = if disabled(cfg, &g.id) { " (disabled)" } else { "" };
                out += &format!("  * Resource Group: {}{dis}:\n", g.id);
                for m in &g.members {
                    if let Some(Resource::Primitive(p)) = cfg.resource(m) {
                        primitive_lines(cib, offline, p, "    ", &mut out);
                    }
                }
            }
            Resource::Clone(c) => clone_lines(cib, offline, c, &mut out),
        }
    }
    out
}

/// Every failed operation: (node, status id, record), by node then call id.
pub fn failed_actions(cib: &Cib) -> Vec<(&str, &str, &OpRecord)> {
    let mut out = Vec::new();
    for (node, ns) in &cib.status.nodes {
        let mut recs: Vec<(&str, &str, &OpRecord)> = ns
            .resources
            .iter()
            .flat_map(|(sid, h)| h.ops.iter().map(move |o| (node.as_str(), sid.as_str(), o)))
            .filter(|(_, _, o)| state::op_failed(o))
            .collect();
        recs.sort_by_key(|r| r.2.call_id);
        out.extend(recs);
    }
    out
}

/// Failed fencing operations against nodes not fenced (or confirmed down) since, newest first
/// (crm_mon's "Failed Fencing Actions").
pub fn failed_fencing(cib: &Cib) -> Vec<&FenceEvent> {
    let events = &cib.status.fencing;
    events
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, e)| !e.ok && !events[i + 1..].iter().any(|later| later.target == e.target && later.ok))
        .map(|(_, e)| e)
        .collect()
}

/// One fencing operation as crm_mon prints it.
pub fn fence_line(e: &FenceEvent) -> String {
    let what = if e.action == "confirm" {
        format!("  * {} confirmed down", e.target)
    } else {
        format!(
            "  * {} of {} {}",
            e.action,
            e.target,
            if e.ok { "successful" } else { "failed" }
        )
    };
    let mut parts = vec![format!("delegate={}", e.delegate)];
    if let Some(d) = &e.device {
        parts.push(format!("device={d}"));
    }
    if !e.detail.is_empty() {
        parts.push(format!("reason='{}'", e.detail));
    }
    let when = if e.ok { "completed" } else { "last-failed" };
    parts.push(format!("{when}='{}'", ctime(e.completed_unix_ms)));
    format!("{what}: {}\n", parts.join(", "))
}

fn failed_line(node: &str, sid: &str, o: &OpRecord) -> String {
    format!(
        "  * {sid}_{}_{} on {node} '{}' ({}): call={}, status='{}', exitreason='{}', last-rc-change='{}', queued={}ms, exec={}ms\n",
        o.action.as_str(),
        o.interval_ms,
        rc_text(o.rc),
        o.rc,
        o.call_id,
        op_status_text(o.status),
        o.exit_reason,
        ctime(o.last_rc_change_unix_ms),
        o.queue_time_ms,
        o.exec_time_ms
    )
}

/// One fail count: (node, primitive, count, migration-threshold, last failure ms).
pub type FailCount = (String, String, Score, String, Option<u64>);

/// Fail counts above zero, per node (name order) and primitive (id order).
pub fn fail_counts(cib: &Cib) -> Vec<FailCount> {
    let cfg = &cib.configuration;
    let mut out = Vec::new();
    for (node, ns) in &cib.status.nodes {
        let mut ids: Vec<String> = cfg
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::Primitive(p) => Some(p.id.clone()),
                _ => None,
            })
            .chain(ns.resources.keys().map(|k| instances::history_id(cfg, k)))
            // A unique clone's instances have their own fail counts (`fail-count-p:1#...`).
            .chain(ns.transient_attributes.keys().filter_map(|k| {
                let rest = k.strip_prefix("fail-count-")?;
                let id = rest.split('#').next().unwrap_or(rest);
                instances::is_unique_instance(cfg, id).then(|| id.to_string())
            }))
            .collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            let hist = ns
                .resources
                .iter()
                .find(|(k, _)| instances::history_id(cfg, k) == id)
                .map(|x| x.1);
            let (count, last) = state::fail_count(&id, &ns.transient_attributes, hist);
            if count > Score::ZERO {
                let threshold = cfg
                    .resource(state::base_id(&id))
                    .and_then(|r| r.meta().get("migration-threshold").cloned())
                    .or_else(|| cfg.rsc_defaults.get("migration-threshold").cloned())
                    .unwrap_or_else(|| "1000000".into());
                out.push((node.clone(), id, count, threshold, last));
            }
        }
    }
    out
}

fn instance_count(cfg: &Configuration) -> usize {
    cfg.resources
        .iter()
        .filter(|r| cfg.parent_of(r.id()).is_none())
        .map(|r| match r {
            Resource::Clone(c) => {
                let n = c.clone_max().map_or(cfg.nodes.len(), |m| m as usize);
                n * cfg.primitives_of(&c.child).len()
            }
            _ => cfg.primitives_of(r.id()).len(),
        })
        .sum()
}

/// `crm_mon -1`-shaped text from the membership status document and, when there is one, the
/// CIB (resources, failed actions, fail counts).
pub fn render(st: &Value, cib: Option<&Cib>, opts: Options) -> String {
    let nodes: Vec<(u64, String, Vec<String>)> = st["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let links = n["links"]
                        .as_array()
                        .map(|l| l.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    (
                        u64_of(&n["id"]).unwrap_or(0),
                        n["name"].as_str().unwrap_or("?").to_string(),
                        links,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let name_of = |id: u64| {
        nodes
            .iter()
            .find(|n| n.0 == id)
            .map_or_else(|| format!("node{id}"), |n| n.1.clone())
    };
    let view: Vec<u64> = st["view"]
        .as_array()
        .map(|a| a.iter().filter_map(u64_of).collect())
        .unwrap_or_default();
    let local = u64_of(&st["local"]).unwrap_or(0);
    let quorate = st["quorate"].as_bool().unwrap_or(false);
    let peers = st["peers"].as_array().cloned().unwrap_or_default();
    let peer = |id: u64| peers.iter().find(|p| u64_of(&p["id"]) == Some(id));
    let mut out = String::new();
    out += "Cluster Summary:\n";
    out += &format!(
        "  * Stack: hablock heartbeat ({})\n",
        st["transport"].as_str().unwrap_or("unicast")
    );
    let version = st["version"].as_str().unwrap_or("?");
    let partition = if quorate { "with quorum" } else { "WITHOUT quorum" };
    match u64_of(&st["dc"]) {
        Some(dc) => {
            out += &format!(
                "  * Current DC: {} (version {version}) - partition {partition}\n",
                name_of(dc)
            )
        }
        None => out += &format!("  * Current DC: NONE - partition {partition}\n"),
    }
    if let Some(now) = opts.now_unix_ms {
        out += &format!("  * Last updated: {}\n", ctime(now));
    }
    out += &format!(
        "  * Cluster: {} (this node: {}, incarnation {})\n",
        st["cluster"].as_str().unwrap_or("?"),
        name_of(local),
        st["incarnation"]
    );
    let cibst = &st["cib"];
    if let Some(v) = cibst["version"].as_str() {
        out += &format!(
            "  * CIB: version {v} (admin_epoch {}, epoch {}, num_updates {}), digest {}{}\n",
            cibst["admin_epoch"],
            cibst["epoch"],
            cibst["num_updates"],
            cibst["digest"].as_str().map_or("?", |d| &d[..d.len().min(12)]),
            if cibst["origin_quorate"].as_bool() == Some(false) {
                " - unconfirmed (made or kept without quorum)"
            } else {
                ""
            }
        );
    }
    out += &format!("  * {} nodes configured\n", nodes.len());
    if let Some(cib) = cib {
        out += &format!(
            "  * {} resource instances configured\n",
            instance_count(&cib.configuration)
        );
    }
    if !quorate {
        out += &format!(
            "  * no-quorum-policy: {}\n",
            st["no_quorum_policy"].as_str().unwrap_or("stop")
        );
    }
    out += "\nNode List:\n";
    let mut online = Vec::new();
    let mut offline = Vec::new();
    let mut pending = Vec::new();
    let in_list = |key: &str, name: &str| {
        cibst[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(name)))
    };
    for (id, name, _) in &nodes {
        let up = view.contains(id);
        if in_list("standby", name) {
            out += &format!("  * Node {name}: standby{}\n", if up { "" } else { " (OFFLINE)" });
        } else if in_list("maintenance", name) {
            out += &format!("  * Node {name}: maintenance{}\n", if up { "" } else { " (OFFLINE)" });
        } else if up {
            online.push(name.clone());
        } else if peer(*id).and_then(|p| p["state"].as_str()) == Some("pending") {
            pending.push(name.clone());
        } else {
            offline.push(name.clone());
        }
    }
    if !online.is_empty() {
        out += &format!("  * Online: {}\n", list(&online));
    }
    if !pending.is_empty() {
        out += &format!("  * Pending: {}\n", list(&pending));
    }
    if !offline.is_empty() {
        out += &format!("  * OFFLINE: {}\n", list(&offline));
    }
    if let Some(cib) = cib {
        out += "\n";
        out += &resources_section(cib, &offline_names(st));
        if opts.failcounts {
            out += "\nMigration Summary:\n";
            let mut last_node = String::new();
            for (node, rsc, count, threshold, last) in fail_counts(cib) {
                if node != last_node {
                    out += &format!("  * Node: {node}:\n");
                    last_node = node.clone();
                }
                let when = last.map_or(String::new(), |t| format!(" last-failure='{}'", ctime(t)));
                out += &format!("    * {rsc}: migration-threshold={threshold} fail-count={count}{when}\n");
            }
        }
        let failed = failed_actions(cib);
        if !failed.is_empty() {
            out += "\nFailed Resource Actions:\n";
            for (node, sid, o) in failed {
                out += &failed_line(node, sid, o);
            }
        }
        let failed_fencing = failed_fencing(cib);
        if !failed_fencing.is_empty() {
            out += "\nFailed Fencing Actions:\n";
            for e in failed_fencing {
                out += &fence_line(e);
            }
        }
        if opts.fence_history && !cib.status.fencing.is_empty() {
            out += "\nFencing History:\n";
            for e in cib.status.fencing.iter().rev() {
                out += &fence_line(e);
            }
        }
    }
    out += "\nHeartbeat Links:\n";
    let local_links = nodes
        .iter()
        .find(|n| n.0 == local)
        .map(|n| n.2.clone())
        .unwrap_or_default();
    for (l, addr) in local_links.iter().enumerate() {
        let mut parts = Vec::new();
        for (id, name, _) in nodes.iter().filter(|n| n.0 != local) {
            let up = peer(*id)
                .and_then(|p| p["links_up"].as_array().and_then(|a| a.get(l)).and_then(Value::as_bool))
                .unwrap_or(false);
            parts.push(format!("{name} {}", if up { "up" } else { "down" }));
        }
        let all_up = parts.iter().all(|p| p.ends_with(" up"));
        out += &format!(
            "  * link {l} ({addr}): {} - {}\n",
            if all_up { "healthy" } else { "degraded" },
            if parts.is_empty() {
                "no peers".to_string()
            } else {
                parts.join(", ")
            }
        );
    }
    for p in &peers {
        let id = u64_of(&p["id"]).unwrap_or(0);
        let heard = match u64_of(&p["last_heard_ago"]) {
            Some(ms) => format!("last heard {ms} ms ago"),
            None => "never heard".into(),
        };
        out += &format!(
            "  * {}: {} ({heard})\n",
            name_of(id),
            p["state"].as_str().unwrap_or("?")
        );
    }
    out += "\nDropped Packets:\n";
    if let Some(d) = st["dropped"].as_object() {
        let parts: Vec<String> = d.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out += &format!("  * {}\n", parts.join(" "));
    }
    out
}

/// The configured nodes the membership document shows outside the view.
fn offline_names(st: &Value) -> Vec<String> {
    let view: Vec<u64> = st["view"]
        .as_array()
        .map(|a| a.iter().filter_map(u64_of).collect())
        .unwrap_or_default();
    st["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| u64_of(&n["id"]).is_some_and(|id| !view.contains(&id)))
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `hbcrm status --json`: the membership status document with, when there is a CIB,
/// `resources` (each primitive: id, agent, parent, target_role, managed, and its active
/// `instances` with node, status id and state), `failed_actions`, `fail_counts` and `fencing`
/// (the CIB's fencing history) added.
pub fn to_json(st: &Value, cib: Option<&Cib>) -> Value {
    let mut v = st.clone();
    let (Some(cib), Some(o)) = (cib, v.as_object_mut()) else {
        return v;
    };
    let cfg = &cib.configuration;
    let offline = offline_names(st);
    let resources: Vec<Value> = cfg
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::Primitive(p) => Some(p),
            _ => None,
        })
        .map(|p| {
            let promotable = cfg.promotable_ancestor(&p.id).is_some();
            let inst: Vec<Value> = instances(cib, &p.id)
                .into_iter()
                .map(|(node, sid, o)| json!({"online": !offline.contains(&node), "node": node, "id": sid, "state": state_word(o, promotable), "blocked": o == Observed::StopFailed}))
                .collect();
            json!({
                "id": p.id,
                "agent": p.agent.to_string(),
                "parent": cfg.parent_of(&p.id).map(|r| r.id().to_string()),
                "clone": lineage(cfg, &p.id).iter().find(|r| matches!(r, Resource::Clone(_))).map(|r| r.id().to_string()),
                "disabled": disabled(cfg, &p.id),
                "managed": !unmanaged(cfg, &p.id),
                "instances": inst,
            })
        })
        .collect();
    let failed: Vec<Value> = failed_actions(cib)
        .into_iter()
        .map(|(node, sid, r)| {
            json!({
                "node": node, "rsc": sid, "action": r.action.as_str(), "interval_ms": r.interval_ms,
                "rc": r.rc, "rc_text": rc_text(r.rc), "status": op_status_text(r.status), "call_id": r.call_id,
                "last_rc_change_unix_ms": r.last_rc_change_unix_ms,
            })
        })
        .collect();
    let counts: Vec<Value> = fail_counts(cib)
        .into_iter()
        .map(|(node, rsc, count, threshold, last)| {
            json!({"node": node, "rsc": rsc, "fail_count": count.to_string(), "migration_threshold": threshold, "last_failure_unix_ms": last})
        })
        .collect();
    o.insert("resources".into(), resources.into());
    o.insert("failed_actions".into(), failed.into());
    o.insert("fail_counts".into(), counts.into());
    o.insert("fencing".into(), json!(cib.status.fencing));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::configure::{load_ops, LoadMode};
    use hablock::cluster::cib::config::{Action, Node};
    use hablock::cluster::cib::CibOp;

    fn rec(action: Action, interval_ms: u64, call_id: u64, rc: i32) -> OpRecord {
        OpRecord {
            last_rc_change_unix_ms: 1_795_305_600_000 + call_id * 1000,
            exec_time_ms: 3,
            ..OpRecord::done(action, interval_ms, call_id, rc)
        }
    }

    fn cib() -> Cib {
        let mut cfg = Configuration::default();
        for (i, n) in ["alpha", "beta", "gamma"].iter().enumerate() {
            cfg.nodes.push(Node::new(n, i as u8));
        }
        let mut cib = Cib::with_configuration(cfg).unwrap();
        let text = "primitive web Dummy\n\
                    primitive ip IPaddr2 params ip=10.99.0.1\n\
                    primitive fs Filesystem params device=/dev/x directory=/d fstype=ext4\n\
                    group g ip fs\n\
                    primitive p_r0 ocf:hablock:replica\n\
                    ms ms_r0 p_r0 meta clone-max=2\n\
                    primitive ping ocf:pacemaker:ping\n\
                    clone cl_ping ping\n\
                    primitive off Dummy meta target-role=Stopped\n";
        let ops = load_ops(&cib.configuration, text, LoadMode::Update).unwrap();
        cib.apply(&ops).unwrap();
        let mut ops = Vec::new();
        let mut put = |node: &str, rsc: &str, r: OpRecord| {
            ops.push(CibOp::RecordOperation {
                node: node.into(),
                rsc: rsc.into(),
                agent: "ocf:heartbeat:Dummy".into(),
                record: r,
            })
        };
        put("alpha", "web", rec(Action::Start, 0, 1, 0));
        put(
            "alpha",
            "web",
            OpRecord {
                exit_reason: "state file gone".into(),
                ..rec(Action::Monitor, 10_000, 12, 7)
            },
        );
        put("alpha", "ip", rec(Action::Start, 0, 2, 0));
        put("alpha", "fs", rec(Action::Start, 0, 3, 0));
        put("alpha", "p_r0:0", rec(Action::Start, 0, 4, 0));
        put("alpha", "p_r0:0", rec(Action::Promote, 0, 5, 0));
        put("gamma", "p_r0:1", rec(Action::Start, 0, 1, 0));
        put("beta", "p_r0", rec(Action::Monitor, 0, 1, 7));
        for n in ["alpha", "beta", "gamma"] {
            put(n, "ping:0", rec(Action::Start, 0, 20, 0));
        }
        cib.apply(&ops).unwrap();
        cib.apply(&[CibOp::SetTransientAttribute {
            node: "alpha".into(),
            name: "fail-count-web#monitor_10000".into(),
            value: Some("1".into()),
        }])
        .unwrap();
        cib
    }

    fn membership() -> Value {
        json!({
            "nodes": [
                {"id": 0, "name": "alpha", "links": ["127.0.0.1:5000"]},
                {"id": 1, "name": "beta", "links": ["127.0.0.2:5000"]},
                {"id": 2, "name": "gamma", "links": ["127.0.0.3:5000"]},
            ],
            "view": [0, 2], "local": 0, "dc": 0, "quorate": true, "incarnation": 1,
            "cluster": "c", "version": "0.1.0", "transport": "unicast",
            "peers": [], "cib": {"version": "0.5.9", "standby": ["beta"], "maintenance": []},
        })
    }

    #[test]
    fn unique_clone_instances_are_listed_one_by_one() {
        let mut c = cib();
        let ops = load_ops(
            &c.configuration,
            "primitive u Dummy\nclone c_u u meta clone-max=4 clone-node-max=2 globally-unique=true\n",
            LoadMode::Update,
        )
        .unwrap();
        c.apply(&ops).unwrap();
        let mut ops = Vec::new();
        for (node, rsc) in [("alpha", "u:0"), ("beta", "u:1"), ("alpha", "u:3")] {
            ops.push(CibOp::RecordOperation {
                node: node.into(),
                rsc: rsc.into(),
                agent: "ocf:heartbeat:Dummy".into(),
                record: rec(Action::Start, 0, 30, 0),
            });
        }
        ops.push(CibOp::SetTransientAttribute {
            node: "beta".into(),
            name: "fail-count-u:1#monitor_10000".into(),
            value: Some("2".into()),
        });
        c.apply(&ops).unwrap();
        let text = resources_section(&c, &[]);
        let want = "  * Clone Set: c_u [u] (unique):\n\
                    \x20   * u:0 (ocf:heartbeat:Dummy): Started alpha\n\
                    \x20   * u:1 (ocf:heartbeat:Dummy): Started beta\n\
                    \x20   * u:2 (ocf:heartbeat:Dummy): Stopped\n\
                    \x20   * u:3 (ocf:heartbeat:Dummy): Started alpha\n";
        assert!(text.contains(want), "{text}");
        let counts = fail_counts(&c);
        assert!(
            counts
                .iter()
                .any(|f| f.0 == "beta" && f.1 == "u:1" && f.2 == Score::new(2)),
            "{counts:?}"
        );
    }

    #[test]
    fn ctime_matches_known_dates() {
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime(1_795_305_600_000), "Sun Nov 22 00:00:00 2026");
        assert_eq!(ctime(951_782_400_000 + 3_661_000), "Tue Feb 29 01:01:01 2000");
    }

    #[test]
    fn crm_mon_layout() {
        let cib = cib();
        let text = render(
            &membership(),
            Some(&cib),
            Options {
                failcounts: true,
                now_unix_ms: Some(1_795_305_600_000),
                ..Options::default()
            },
        );
        assert!(text.contains("  * Last updated: Sun Nov 22 00:00:00 2026\n"), "{text}");
        let want = "\
Node List:
  * Node beta: standby (OFFLINE)
  * Online: [ alpha gamma ]

Full List of Resources:
  * web (ocf:heartbeat:Dummy): FAILED alpha
  * Resource Group: g:
    * ip (ocf:heartbeat:IPaddr2): Started alpha
    * fs (ocf:heartbeat:Filesystem): Started alpha
  * Clone Set: ms_r0 [p_r0] (promotable):
    * Promoted: [ alpha ]
    * Unpromoted: [ gamma ]
    * Stopped: [ beta ]
  * Clone Set: cl_ping [ping]:
    * ping (ocf:pacemaker:ping): Started beta (OFFLINE)
    * Started: [ alpha gamma ]
  * off (ocf:heartbeat:Dummy): Stopped (disabled)

Migration Summary:
  * Node: alpha:
    * web: migration-threshold=1000000 fail-count=1 last-failure='Sun Nov 22 00:00:12 2026'

Failed Resource Actions:
  * web_monitor_10000 on alpha 'not running' (7): call=12, status='complete', exitreason='state file gone', last-rc-change='Sun Nov 22 00:00:12 2026', queued=0ms, exec=3ms

Heartbeat Links:
";
        assert!(text.contains(want), "{text}");
        assert!(text.contains("  * 9 resource instances configured\n"), "{text}");
        assert!(text.starts_with("Cluster Summary:\n"), "{text}");
        // Without -f no Migration Summary; without a CIB no resources.
        let plain = render(&membership(), Some(&cib), Options::default());
        assert!(!plain.contains("Migration Summary") && plain.contains("Failed Resource Actions:"));
        let bare = render(&membership(), None, Options::default());
        assert!(!bare.contains("Full List of Resources"), "{bare}");
    }

    #[test]
    fn fencing_failures_show_until_the_target_is_fenced() {
        let mut cib = cib();
        let ev = |target: &str, ok: bool, at: u64| FenceEvent {
            target: target.into(),
            action: "reboot".into(),
            ok,
            device: ok.then(|| "fence_ipmi".to_string()),
            delegate: "alpha".into(),
            detail: if ok { String::new() } else { "no device answered".into() },
            completed_unix_ms: 1_795_305_600_000 + at * 1000,
        };
        // beta: failed, then fenced (nothing failed left); gamma: fenced, then failed twice.
        cib.status.fencing = vec![
            ev("beta", false, 1),
            ev("beta", true, 2),
            ev("gamma", true, 3),
            ev("gamma", false, 4),
            ev("gamma", false, 5),
        ];
        let failed: Vec<u64> = failed_fencing(&cib)
            .iter()
            .map(|e| e.completed_unix_ms % 100_000)
            .collect();
        assert_eq!(failed, vec![5000, 4000]);
        let text = render(&membership(), Some(&cib), Options::default());
        let want = "\nFailed Fencing Actions:
  * reboot of gamma failed: delegate=alpha, reason='no device answered', last-failed='Sun Nov 22 00:00:05 2026'
  * reboot of gamma failed: delegate=alpha, reason='no device answered', last-failed='Sun Nov 22 00:00:04 2026'
";
        assert!(text.contains(want), "{text}");
        assert!(!text.contains("Fencing History:"), "{text}");
        let all = render(
            &membership(),
            Some(&cib),
            Options {
                fence_history: true,
                ..Options::default()
            },
        );
        assert!(
            all.contains("\nFencing History:\n  * reboot of gamma failed")
                && all.contains(
                    "  * reboot of beta successful: delegate=alpha, device=fence_ipmi, completed='Sun Nov 22 00:00:02 2026'\n"
                ),
            "{all}"
        );
    }

    #[test]
    fn cloned_group_partly_running() {
        let mut cfg = Configuration::default();
        for (i, n) in ["alpha", "beta", "gamma"].iter().enumerate() {
            cfg.nodes.push(Node::new(n, i as u8));
        }
        let mut cib = Cib::with_configuration(cfg).unwrap();
        let text = "primitive a1 Dummy\nprimitive a2 Dummy\ngroup g a1 a2\nclone cl_g g meta target-role=Stopped\n";
        cib.apply(&load_ops(&cib.configuration, text, LoadMode::Update).unwrap())
            .unwrap();
        let put = |node: &str, rsc: &str, call: u64| CibOp::RecordOperation {
            node: node.into(),
            rsc: rsc.into(),
            agent: "ocf:heartbeat:Dummy".into(),
            record: rec(Action::Start, 0, call, 0),
        };
        cib.apply(&[put("alpha", "a1:0", 1), put("alpha", "a2:0", 2), put("beta", "a1:1", 1)])
            .unwrap();
        assert_eq!(
            resources_section(&cib, &[]),
            "Full List of Resources:\n\
             \x20 * Clone Set: cl_g [g]:\n\
             \x20   * a1 (ocf:heartbeat:Dummy): Started beta (disabled)\n\
             \x20   * Started: [ alpha ]\n\
             \x20   * Stopped (disabled): [ gamma ]\n"
        );
    }

    #[test]
    fn stopped_failed_and_unmanaged() {
        let mut cib = cib();
        cib.apply(&[
            CibOp::SetResourceMeta {
                id: "g".into(),
                name: "is-managed".into(),
                value: Some("false".into()),
            },
            CibOp::ClearResourceHistory {
                rsc: "web".into(),
                node: None,
            },
            CibOp::RecordOperation {
                node: "gamma".into(),
                rsc: "fs".into(),
                agent: "ocf:heartbeat:Filesystem".into(),
                record: rec(Action::Stop, 0, 30, 1),
            },
        ])
        .unwrap();
        let text = resources_section(&cib, &[]);
        assert!(text.contains("  * web (ocf:heartbeat:Dummy): Stopped\n"), "{text}");
        assert!(
            text.contains("    * fs (ocf:heartbeat:Filesystem): Started alpha (unmanaged)\n"),
            "{text}"
        );
        assert!(
            text.contains("    * fs (ocf:heartbeat:Filesystem): FAILED gamma (blocked) (unmanaged)\n"),
            "{text}"
        );
        let v = to_json(&membership(), Some(&cib));
        let fs = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "fs")
            .unwrap();
        assert_eq!(fs["parent"], "g");
        assert_eq!(fs["managed"], false);
        assert_eq!(fs["instances"][1]["state"], "FAILED");
        assert_eq!(v["failed_actions"][0]["rsc"], "fs");
        assert_eq!(v["view"], json!([0, 2]));
        let p = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "p_r0")
            .unwrap();
        assert_eq!(p["clone"], "ms_r0");
        assert_eq!(p["instances"][0]["state"], "Promoted");
        assert_eq!(p["instances"][1]["state"], "Unpromoted");
        let ping = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "ping")
            .unwrap();
        assert_eq!(ping["instances"][1]["node"], "beta");
        assert_eq!(ping["instances"][1]["online"], false);
        assert_eq!(ping["instances"][0]["online"], true);
    }
}
