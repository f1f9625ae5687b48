//! NBD server: fixed newstyle handshake, options, transmission phase.
//!
//! The daemon calls [`serve`] with a listener, one [`Export`] and a shutdown signal.
//! Inside, the pieces are:
//! - [`proto`]: wire constants and codecs (pure);
//! - [`handshake`]: option negotiation as a pure state machine;
//! - [`transmission`]: request validation and error mapping (pure);
//! - `connection`: the per-client I/O driver (reader, request tasks, writer);
//! - `server`: the accept loop and graceful shutdown.
//!
//! What the server supports is described in `docs/nbd.md`.

pub mod handshake;
pub mod proto;
pub mod transmission;

mod connection;
mod server;

#[cfg(test)]
mod garbage_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::BlockDevice;

pub use connection::{serve_connection, HANDSHAKE_TIMEOUT, MAX_IN_FLIGHT, MAX_OPTIONS, SLOT_BYTES};
pub use server::SHUTDOWN_GRACE;

/// The one export a server offers. Its `name` is the resource name; clients that ask
/// for the empty name `""` get it too.
pub struct Export<D: BlockDevice> {
    pub name: String,
    pub description: String,
    pub device: Arc<D>,
}

/// Where clients connect.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves `export` on `listener` until `shutdown` turns true (or its sender is dropped);
/// then stops accepting, lets every connection finish its in-flight requests (for at
/// most [`SHUTDOWN_GRACE`]), closes them and returns.
///
/// Returns an error only if the listener itself fails.
pub async fn serve<D: BlockDevice>(
    listener: Listener,
    export: Export<D>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    server::serve(listener, export, shutdown).await
}
