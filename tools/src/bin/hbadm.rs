//! hbadm: drbdadm for hablock.

use clap::{Parser, Subcommand};
use hablock::config::{ClusterConfig, NodeResource, ResourceConfig};
use hablock::control::{client, exit, NodeStatus, Request, Response};
use hablock::resource::meta_location;
use hablock::store::meta::{CreateOptions, MetaDisk};
use hablock::units::format_size;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Administer hablock resources, the way drbdadm administers DRBD's.
#[derive(Parser)]
#[command(version, about = "Administer hablock resources, the way drbdadm administers DRBD's.", after_help = EXIT_HELP)]
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

const EXIT_HELP: &str = "Exit codes: 0 ok, 1 failed, 10 no such resource, 11 state change refused, \
20 hablockd not reachable, 30 metadata missing/corrupt/exists.";

#[derive(Subcommand)]
enum Cmd {
    /// Write new metadata (refuses to overwrite valid metadata without --force).
    CreateMd {
        resource: String,
        #[arg(long)]
        force: bool,
    },
    /// Print the on-disk metadata (the resource must be down).
    DumpMd { resource: String },
    /// Attach the disk and start serving (and later, connect to peers).
    Up { resource: String },
    /// Stop serving, flush and release the disk.
    Down {
        resource: String,
        /// Cut off connected clients instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Attach the local disk of a resource that is up.
    Attach { resource: String },
    /// Detach the local disk; the resource stays up, Diskless.
    Detach {
        resource: String,
        #[arg(long)]
        force: bool,
    },
    /// Make this node Primary (--force: declare its data the good copy).
    Primary {
        resource: String,
        #[arg(long)]
        force: bool,
    },
    /// Make this node Secondary.
    Secondary { resource: String },
    /// Connect to the peer (leave StandAlone).
    Connect {
        resource: String,
        /// Resolve a split brain by dropping this node's changes (resync from the peer).
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Disconnect from the peer and stay StandAlone.
    Disconnect { resource: String },
    /// Show resources, as `drbdadm status`.
    Status {
        #[arg(default_value = "all")]
        resource: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the role: local/peer, e.g. Primary/Unknown.
    Role { resource: String },
    /// Print the disk state: local/peer, e.g. UpToDate/DUnknown.
    Dstate { resource: String },
    /// Print the connection state, e.g. StandAlone.
    Cstate { resource: String },
}

fn fail(code: i32, msg: impl AsRef<str>) -> ExitCode {
    hablock_tools::fail("hbadm", code, msg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (id, cfg) = match hablock_tools::load("hbadm", args.config, args.node) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let socket = cfg.control_socket(&id.node);
    let call = |cmd: &str, resource: &str, force: bool| {
        client::call(
            &socket,
            &Request {
                cmd: cmd.into(),
                resource: resource.into(),
                force,
                cib_ops: None,
                tgt: None,
            },
            Duration::from_secs(120),
        )
    };
    match args.cmd {
        Cmd::CreateMd { resource, force } => create_md(&cfg, &id.node, &resource, force, &call),
        Cmd::DumpMd { resource } => dump_md(&cfg, &id.node, &resource, &call),
        Cmd::Up { resource } => simple(call("up", &resource, false)),
        Cmd::Down { resource, force } => simple(call("down", &resource, force)),
        Cmd::Attach { resource } => simple(call("attach", &resource, false)),
        Cmd::Detach { resource, force } => simple(call("detach", &resource, force)),
        Cmd::Primary { resource, force } => simple(call("primary", &resource, force)),
        Cmd::Secondary { resource } => simple(call("secondary", &resource, false)),
        Cmd::Connect {
            resource,
            discard_my_data,
        } => simple(call("connect", &resource, discard_my_data)),
        Cmd::Disconnect { resource } => simple(call("disconnect", &resource, false)),
        Cmd::Status { resource, json } => with_status(call("status", &resource, false), |st| {
            if json {
                println!("{}", serde_json::to_string_pretty(st).expect("status serializes"));
            } else {
                print!("{}", render_status(st));
            }
        }),
        Cmd::Role { resource } => with_status(call("status", &resource, false), |st| {
            for r in &st.resources {
                let peer = r.peers.first().map(|p| p.role.as_str()).unwrap_or("Unknown");
                println!("{}/{}", r.role, peer);
            }
        }),
        Cmd::Dstate { resource } => with_status(call("status", &resource, false), |st| {
            for r in &st.resources {
                let peer = r.peers.first().map(|p| p.disk.as_str()).unwrap_or("DUnknown");
                println!("{}/{}", r.disk, peer);
            }
        }),
        Cmd::Cstate { resource } => with_status(call("status", &resource, false), |st| {
            for r in &st.resources {
                let c = if r.role == "Unconfigured" {
                    "Unconfigured"
                } else {
                    r.peers.first().map(|p| p.connection.as_str()).unwrap_or("StandAlone")
                };
                println!("{c}");
            }
        }),
    }
}

fn simple(resp: Response) -> ExitCode {
    if resp.code == exit::OK {
        for m in &resp.messages {
            println!("{m}");
        }
        ExitCode::SUCCESS
    } else {
        for m in resp.messages.iter().filter(|m| **m != resp.error) {
            println!("{m}");
        }
        fail(resp.code, &resp.error)
    }
}

fn with_status(resp: Response, print: impl FnOnce(&NodeStatus)) -> ExitCode {
    if resp.code != exit::OK {
        return fail(resp.code, &resp.error);
    }
    match &resp.status {
        Some(st) => {
            print(st);
            ExitCode::SUCCESS
        }
        None => fail(exit::FAILED, "hablockd answered without a status"),
    }
}

/// `drbdadm status`-shaped text.
fn render_status(st: &NodeStatus) -> String {
    let mut out = String::new();
    for r in &st.resources {
        out += &format!("{} role:{}\n", r.name, r.role);
        if r.role == "Unconfigured" {
            if !r.problem.is_empty() {
                out += &format!("  problem: {}\n", r.problem);
            }
            continue;
        }
        out += &format!("  disk:{}", r.disk);
        if r.size > 0 {
            out += &format!(" size:{}", format_size(r.size));
        }
        out += &format!(" protocol:{}\n", r.protocol);
        if let Some(b) = &r.backing {
            out += &format!(
                "  backing:{} meta-disk:{} direct-io:{}\n",
                b.disk,
                b.meta_disk,
                if b.direct_io { "yes" } else { "no" }
            );
        }
        if let Some(n) = &r.nbd {
            out += &format!("  nbd:{} clients:{}\n", n.uri, n.clients);
        }
        if let Some(u) = &r.ublk {
            out += &format!("  ublk:{u}\n");
        }
        let c = &r.counters;
        if r.size > 0 {
            out += &format!(
                "  read:{} written:{} flushes:{} io-errors:{}\n",
                format_size(c.read_bytes),
                format_size(c.written_bytes),
                c.flushes,
                c.io_errors
            );
        }
        if !r.problem.is_empty() {
            out += &format!("  problem: {}\n", r.problem);
        }
        for p in &r.peers {
            out += &format!("  {} role:{} connection:{}\n", p.name, p.role, p.connection);
            out += "   ";
            if let Some(repl) = &p.replication {
                out += &format!(" replication:{repl}");
            }
            out += &format!(" peer-disk:{} out-of-sync:{}\n", p.disk, format_size(p.out_of_sync));
            if let Some(s) = &p.resync {
                out += &format!("    {}\n", render_resync(s));
            }
            if !p.problem.is_empty() {
                out += &format!("    problem: {}\n", p.problem);
            }
        }
    }
    out
}

/// `/proc/drbd`'s resync line: a bar, percent, bytes, time left and speed.
fn render_resync(s: &hablock::control::ResyncStatus) -> String {
    let pct = if s.total == 0 {
        100.0
    } else {
        s.done as f64 * 100.0 / s.total as f64
    };
    let filled = ((pct / 5.0) as usize).min(20);
    let bar = format!(
        "[{}>{}]",
        "=".repeat(filled),
        ".".repeat(20usize.saturating_sub(filled + 1))
    );
    let eta = match s.eta_secs {
        Some(t) => format!("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60),
        None => "?".into(),
    };
    format!(
        "{bar} done:{pct:.1}% ({}/{}) finish:{eta} speed:{}/s",
        format_size(s.done),
        format_size(s.total),
        format_size(s.speed)
    )
}

/// The resource's section for this node, for the verbs that touch metadata directly:
/// refused (as drbdmeta refuses on a configured device) while hablockd has it attached.
fn offline_target<'a>(
    cfg: &'a ClusterConfig,
    node: &str,
    name: &str,
    call: &dyn Fn(&str, &str, bool) -> Response,
) -> Result<(&'a ResourceConfig, &'a NodeResource), ExitCode> {
    let r = match cfg.resource(name) {
        Some(r) => r,
        None => {
            return Err(fail(
                exit::NO_SUCH_RESOURCE,
                format!(
                    "{name}: no such resource in {} (metadata verbs take one resource, not \"all\")",
                    cfg.path.display()
                ),
            ))
        }
    };
    let Some(local) = r.on.get(node) else {
        return Err(fail(
            exit::NO_SUCH_RESOURCE,
            format!(
                "{name}: node {node} has no [resource.on.{node}] section in {}",
                cfg.path.display()
            ),
        ));
    };
    let resp = call("status", name, false);
    let attached = resp.status.as_ref().is_some_and(|s| {
        s.resources
            .iter()
            .any(|r| r.role != "Unconfigured" && r.disk != "Diskless")
    });
    if (resp.code != exit::NO_DAEMON && attached) || hablock::store::backing::in_use(&local.disk) {
        return Err(fail(
            exit::REFUSED,
            format!(
                "{name}: {} is attached in a running hablockd; run `hbadm down {name}` first",
                local.disk.display()
            ),
        ));
    }
    Ok((r, local))
}

fn create_md(
    cfg: &ClusterConfig,
    node: &str,
    name: &str,
    force: bool,
    call: &dyn Fn(&str, &str, bool) -> Response,
) -> ExitCode {
    let (r, local) = match offline_target(cfg, node, name, call) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let opts = CreateOptions {
        max_peers: (r.on.len() as u32 - 1).max(1),
        node_id: local.node_id,
        ..CreateOptions::default()
    };
    match MetaDisk::create(&local.disk, &meta_location(local), &opts, force) {
        Ok(md) => {
            println!(
                "{name}: new metadata written ({}); device size {} of {}",
                local.meta_disk,
                format_size(md.data_size()),
                local.disk.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::METADATA, format!("{name}: {e}")),
    }
}

fn dump_md(cfg: &ClusterConfig, node: &str, name: &str, call: &dyn Fn(&str, &str, bool) -> Response) -> ExitCode {
    let (_, local) = match offline_target(cfg, node, name, call) {
        Ok(t) => t,
        Err(c) => return c,
    };
    match MetaDisk::open(&local.disk, &meta_location(local)) {
        Ok(md) => {
            print!("{}", md.dump());
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::METADATA, format!("{name}: {e}")),
    }
}
