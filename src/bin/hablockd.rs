//! hablockd: the hablock node daemon.

use clap::Parser;
use hablock::cluster::crmd::controller::{default_agents_dir, Controller, ControllerConfig};
use hablock::cluster::driver::ClusterDriver;
use hablock::config::Identity;
use hablock::daemon::{bind_control, serve_control, Node};
use hablock::iscsi::server::Server;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Runs one hablock node: its resources, their NBD exports and the admin socket.
#[derive(Parser)]
#[command(
    version,
    about = "Runs one hablock node: its resources, their NBD exports and the admin socket."
)]
struct Args {
    /// The cluster file (default: $HABLOCK_CONFIG, then /etc/hablock/hablock.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// This node's name in the file (default: $HABLOCK_NODE, then the hostname).
    #[arg(long, short = 'n')]
    node: Option<String>,
    /// Do not bring resources up at start (wait for `hbadm up`).
    #[arg(long)]
    no_up: bool,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HABLOCK_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let id = Identity::resolve(args.config, args.node);
    let config = match id.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hablockd: {e}");
            std::process::exit(2);
        }
    };
    let threads: usize = std::env::var("HABLOCK_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()
    }
    .expect("tokio runtime");
    let code = rt.block_on(run(config, id.node, !args.no_up));
    std::process::exit(code);
}

async fn run(config: hablock::config::ClusterConfig, node_name: String, up: bool) -> i32 {
    let sock = config.control_socket(&node_name);
    let state = config.state_dir(&node_name);
    if let Err(e) = std::fs::create_dir_all(&state) {
        eprintln!("hablockd: cannot create state directory {}: {e}", state.display());
        return 2;
    }
    let listener = match bind_control(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hablockd: {e}");
            return 2;
        }
    };
    // Membership runs when a [cluster] section names this node; without one, nothing changes.
    let in_cluster = config
        .cluster
        .as_ref()
        .filter(|c| c.nodes.contains(&node_name))
        .cloned();
    let mut node = Node::new(config, &node_name);
    if let Some(section) = in_cluster {
        match ClusterDriver::start(&section, &node_name, &state).await {
            Ok(d) => {
                let ccfg = ControllerConfig {
                    node: node_name.clone(),
                    state_dir: state.clone(),
                    config_path: node.config.path.clone(),
                    agents_dir: default_agents_dir(),
                    shutdown_timeout: Duration::from_secs(60),
                };
                if section.resource_manager {
                    match Controller::start(d.clone(), ccfg) {
                        Ok(c) => node = node.with_controller(c),
                        Err(e) => tracing::error!("resource manager not started: {e}"),
                    }
                } else {
                    tracing::info!("resource manager off (cluster.resource_manager = false)");
                }
                node = node.with_cluster(d)
            }
            Err(e) => {
                eprintln!("hablockd: cluster membership: {e}");
                let _ = std::fs::remove_file(&sock);
                return 2;
            }
        }
    }
    let node = Arc::new(node);
    tracing::info!("node {node_name}: admin socket {}", sock.display());
    if up {
        node.up_all().await;
    }
    // The iSCSI target runs when the cluster file gives this node a portal ([iscsi.on.NODE]).
    let portal = node
        .config
        .iscsi
        .as_ref()
        .and_then(|s| s.on.get(&node_name))
        .map(|n| n.portal);
    let mut iscsi = None;
    match (portal, node.iscsi()) {
        (Some(portal), Some(admin)) => {
            match Server::start(portal, admin.clone(), node.resources().to_vec(), state.clone()).await {
                Ok(s) => iscsi = Some(s),
                Err(e) => tracing::error!("iSCSI portal {portal}: {e}; the target is not served"),
            }
        }
        (Some(portal), None) => tracing::error!("iSCSI portal {portal}: targets not loaded; the target is not served"),
        _ => {}
    }
    let control = tokio::spawn(serve_control(node.clone(), listener));
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("hablockd: cannot install signal handlers");
            return 2;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    control.abort();
    if let Some(s) = iscsi {
        s.shutdown().await;
    }
    if let Some(c) = node.controller() {
        // Hands this node's resources over (or stops them) before leaving the membership.
        c.shutdown().await;
    }
    if let Some(d) = node.cluster() {
        d.leave().await;
    }
    node.down_all().await;
    let _ = std::fs::remove_file(&sock);
    tracing::info!("node {node_name}: stopped");
    0
}
