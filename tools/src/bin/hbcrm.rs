//! hbcrm: crm_mon/crm for hablock's cluster layer.

use clap::{Parser, Subcommand};
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
20 hablockd not reachable.";

#[derive(Subcommand)]
enum Cmd {
    /// Print the cluster summary and node list once, as `crm_mon -1`.
    Status {
        /// Machine-readable output (the daemon's membership status document).
        #[arg(long)]
        json: bool,
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
    match args.cmd {
        Cmd::Status { json } => {
            let resp = client::call(
                &socket,
                &Request {
                    cmd: "cluster-status".into(),
                    resource: "all".into(),
                    force: false,
                    tgt: None,
                },
                Duration::from_secs(30),
            );
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
        None => out += "  * Current DC: NONE\n",
    }
    out += &format!(
        "  * Cluster: {} (this node: {}, incarnation {})\n",
        st["cluster"].as_str().unwrap_or("?"),
        name_of(local),
        st["incarnation"]
    );
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
    for (id, name, _) in &nodes {
        if view.contains(id) {
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
