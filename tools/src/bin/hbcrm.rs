//! hbcrm: crm_mon/crm for hablock's cluster layer.

use clap::{Parser, Subcommand};
use hablock::cluster::cib::{crmsh, validate, Cib, CibOp, Configuration, Status};
use hablock::control::{client, exit, Request};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Show the cluster as this node's hablockd sees it, the way crm_mon shows Pacemaker's.
#[derive(Parser)]
#[command(version, about = "Show the cluster as this node's hablockd sees it, the way crm_mon shows Pacemaker's.", after_help = EXIT_HELP)]
struct Args {
    /// The cluster file (default: $HABLOCK_CONFIG, then /etc/hablock/hablock.toml).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// This node's name in the file (default: $HABLOCK_NODE, then the hostname).
    #[arg(long, short = 'n', global = true)]
    node: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

const EXIT_HELP: &str = "Exit codes: 0 ok, 1 failed (or no [cluster] section for this node), \
11 change refused (no quorum, or invalid), 20 hablockd not reachable.";

#[derive(Subcommand)]
enum Cmd {
    /// Print the cluster summary and node list once, as `crm_mon -1`.
    Status {
        /// Machine-readable output (the daemon's membership status document).
        #[arg(long)]
        json: bool,
    },
    /// Node state in the CIB, as `crm node`.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The cluster configuration (the CIB), as `crm configure`.
    Configure {
        #[command(subcommand)]
        cmd: ConfigureCmd,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Put NODE in standby: it may run no resources (the `standby` node attribute).
    Standby {
        #[arg(value_name = "NODE")]
        uname: String,
        /// Without quorum: change this node's copy only (a partition with quorum overrides it).
        #[arg(long)]
        force: bool,
    },
    /// Take NODE out of standby.
    Online {
        #[arg(value_name = "NODE")]
        uname: String,
        /// Without quorum: change this node's copy only (a partition with quorum overrides it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ConfigureCmd {
    /// Print the configuration in crm shell syntax.
    Show {
        /// The whole CIB document (configuration and status) as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Set cluster options: `property stonith-enabled=false no-quorum-policy=ignore`.
    /// An empty value (`name=`) deletes the option.
    Property {
        #[arg(required = true, value_name = "NAME=VALUE")]
        assignments: Vec<String>,
        /// Without quorum: change this node's copy only (a partition with quorum overrides it).
        #[arg(long)]
        force: bool,
    },
}

fn fail(code: i32, msg: impl AsRef<str>) -> ExitCode {
    hablock_tools::fail("hbcrm", code, msg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (id, cfg) = match hablock_tools::load("hbcrm", args.config, args.node) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let socket = cfg.control_socket(&id.node);
    let call = |cmd: &str, force: bool, ops: Option<Vec<CibOp>>| {
        client::call(
            &socket,
            &Request {
                cmd: cmd.into(),
                resource: "all".into(),
                force,
                cib_ops: ops.map(|o| serde_json::to_value(o).expect("ops serialise")),
                tgt: None,
            },
            Duration::from_secs(30),
        )
    };
    let change = |ops: Vec<CibOp>, force: bool| {
        let resp = call("cib-change", force, Some(ops));
        if resp.code != exit::OK {
            return fail(resp.code, &resp.error);
        }
        for m in &resp.messages {
            println!("{m}");
        }
        ExitCode::SUCCESS
    };
    match args.cmd {
        Cmd::Node { cmd } => {
            let (node, standby, force) = match cmd {
                NodeCmd::Standby { uname, force } => (uname, true, force),
                NodeCmd::Online { uname, force } => (uname, false, force),
            };
            change(vec![CibOp::SetStandby { node, standby }], force)
        }
        Cmd::Configure {
            cmd: ConfigureCmd::Property { assignments, force },
        } => match property_ops(&assignments) {
            Ok(ops) => change(ops, force),
            Err(e) => fail(exit::FAILED, e),
        },
        Cmd::Configure {
            cmd: ConfigureCmd::Show { json },
        } => {
            let resp = call("cib-show", false, None);
            if resp.code != exit::OK {
                return fail(resp.code, &resp.error);
            }
            let Some(doc) = resp.cluster else {
                return fail(exit::FAILED, "hablockd answered without a CIB");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&doc["cib"]).expect("serialises"));
                return ExitCode::SUCCESS;
            }
            match serde_json::from_value::<Cib>(doc["cib"].clone()) {
                Ok(cib) => {
                    print!("{}", crmsh::show(&cib.configuration));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(exit::FAILED, format!("unreadable CIB from hablockd: {e}")),
            }
        }
        Cmd::Status { json } => {
            let resp = call("cluster-status", false, None);
            if resp.code != exit::OK {
                return fail(resp.code, &resp.error);
            }
            let Some(st) = resp.cluster else {
                return fail(exit::FAILED, "hablockd answered without a cluster status");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st).expect("status serializes"));
            } else {
                print!("{}", render(&st, cfg.resources.len()));
            }
            ExitCode::SUCCESS
        }
    }
}

/// `NAME=VALUE ...` as operations, checked here first (the DC checks again): names must be
/// ids, values must suit the option; unknown names are kept with a warning, as crm does.
fn property_ops(assignments: &[String]) -> Result<Vec<CibOp>, String> {
    let mut ops = Vec::new();
    let mut cfg = Configuration::default();
    for a in assignments {
        let Some((name, value)) = a.split_once('=') else {
            return Err(format!("{a:?}: expected NAME=VALUE, e.g. stonith-enabled=false"));
        };
        let name = name.trim();
        if !validate::valid_id(name) {
            return Err(format!("{name:?} is not a valid option name"));
        }
        if !validate::known_property(name) {
            eprintln!(
                "hbcrm: WARNING: {name} is not a cluster option hablock knows (kept as is); known: {}",
                validate::property_names().join(", ")
            );
        }
        let value = (!value.is_empty()).then(|| value.to_string());
        if let Some(v) = &value {
            cfg.properties.insert(name.to_string(), v.clone());
        }
        ops.push(CibOp::SetProperty {
            name: name.to_string(),
            value,
        });
    }
    if let Err(errs) = validate::validate(&cfg, &Status::default()) {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        return Err(msgs.join("; "));
    }
    Ok(ops)
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// `crm_mon -1`-shaped text from the membership status document.
fn render(st: &Value, resources: usize) -> String {
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
    match u64_of(&st["dc"]) {
        Some(dc) => {
            out += &format!(
                "  * Current DC: {} (version {version}) - partition {}\n",
                name_of(dc),
                if quorate { "with quorum" } else { "WITHOUT quorum" }
            )
        }
        None => {
            out += &format!(
                "  * Current DC: NONE - partition {}\n",
                if quorate { "with quorum" } else { "WITHOUT quorum" }
            )
        }
    }
    out += &format!(
        "  * Cluster: {} (this node: {}, incarnation {})\n",
        st["cluster"].as_str().unwrap_or("?"),
        name_of(local),
        st["incarnation"]
    );
    let cib = &st["cib"];
    if let Some(v) = cib["version"].as_str() {
        out += &format!(
            "  * CIB: version {v} (admin_epoch {}, epoch {}, num_updates {}), digest {}{}\n",
            cib["admin_epoch"],
            cib["epoch"],
            cib["num_updates"],
            cib["digest"].as_str().map_or("?", |d| &d[..d.len().min(12)]),
            if cib["origin_quorate"].as_bool() == Some(false) {
                " - unconfirmed (made or kept without quorum)"
            } else {
                ""
            }
        );
    }
    out += &format!("  * {} nodes configured\n", nodes.len());
    out += &format!("  * {resources} resource instances configured\n");
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
        cib[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(name)))
    };
    for (id, name, _) in &nodes {
        if view.contains(id) && in_list("standby", name) {
            out += &format!("  * Node {name}: standby\n");
        } else if view.contains(id) && in_list("maintenance", name) {
            out += &format!("  * Node {name}: maintenance\n");
        } else if view.contains(id) {
            online.push(name.as_str());
        } else if peer(*id).and_then(|p| p["state"].as_str()) == Some("pending") {
            pending.push(name.as_str());
        } else {
            offline.push(name.as_str());
        }
    }
    let list = |v: &[&str]| format!("[ {} ]", v.join(" "));
    if !online.is_empty() {
        out += &format!("  * Online: {}\n", list(&online));
    }
    if !pending.is_empty() {
        out += &format!("  * Pending: {}\n", list(&pending));
    }
    if !offline.is_empty() {
        out += &format!("  * OFFLINE: {}\n", list(&offline));
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
