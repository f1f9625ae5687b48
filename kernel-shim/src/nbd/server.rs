//! The accept loop: one task per client, graceful shutdown.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};

use super::connection::{serve_connection, shutdown_requested};
use super::{Export, Listener};
use crate::BlockDevice;

/// How long connections get, after shutdown was requested, to finish their in-flight
/// requests and flush replies before they are cut (a client that stops reading its
/// replies must not hold the daemon forever).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Accept errors that say nothing about the listening socket itself: log and go on.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EAGAIN
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ETIMEDOUT
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

impl Listener {
    async fn accept_one(&self) -> io::Result<(ClientStream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                if let Err(e) = s.set_nodelay(true) {
                    warn!(peer = %addr, "cannot set TCP_NODELAY: {e}");
                }
                Ok((ClientStream::Tcp(s), addr.to_string()))
            }
            Listener::Unix(l) => {
                let (s, addr) = l.accept().await?;
                let peer = match addr.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix".to_string(),
                };
                Ok((ClientStream::Unix(s), peer))
            }
        }
    }
}

enum ClientStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

pub(super) async fn serve<D: BlockDevice>(
    listener: Listener,
    export: Export<D>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let export = Arc::new(export);
    let mut conns: JoinSet<()> = JoinSet::new();
    info!(export = %export.name, "NBD server accepting clients");

    let result = loop {
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break Ok(()),
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        error!("NBD connection task panicked: {e}");
                    }
                }
            }
            accepted = listener.accept_one() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "client connected");
                    let span = tracing::info_span!("nbd", %peer, export = %export.name);
                    let export = Arc::clone(&export);
                    let rx = shutdown.clone();
                    conns.spawn(
                        async move {
                            match stream {
                                ClientStream::Tcp(s) => {
                                    let (r, w) = s.into_split();
                                    serve_connection(r, w, export, rx).await
                                }
                                ClientStream::Unix(s) => {
                                    let (r, w) = s.into_split();
                                    serve_connection(r, w, export, rx).await
                                }
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(e) if transient(&e) => {
                    warn!("accept failed: {e}; retrying");
                    // EMFILE and friends would spin: give the system a moment.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    error!("accept failed: {e}; stopping the NBD server");
                    break Err(e);
                }
            },
        }
    };

    // Stop accepting, then let every connection finish its in-flight work.
    drop(listener);
    info!(
        connections = conns.len(),
        "NBD server stopping; waiting for connections to finish"
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = conns.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    error!("NBD connection task panicked: {e}");
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = conns.len(),
            "connections still busy after {SHUTDOWN_GRACE:?}; cutting them"
        );
        conns.shutdown().await;
    }
    info!("NBD server stopped");
    result
}
