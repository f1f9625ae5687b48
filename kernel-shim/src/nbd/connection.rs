//! One client connection: the I/O driver around [`handshake`](super::handshake) and
//! [`transmission`](super::transmission).
//!
//! Transmission runs as three kinds of task:
//! - the *reader* (this connection's task) parses request headers, reads WRITE
//!   payloads straight into an [`IoBuf`], and spawns each request as its own task;
//! - one *request task* per request calls the device and queues its reply;
//! - one *writer* task drains the reply queue into a buffer and writes it out, flushing
//!   when the queue runs empty, so replies to many small requests share a syscall while
//!   large read payloads go out with one vectored write and no copy.
//!
//! A semaphore bounds the requests (and payload bytes) in flight per connection.

use std::borrow::Cow;
use std::io::{self, IoSlice};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, trace, warn};

use super::handshake::{greeting, EnterKind, ExportInfo, Negotiator, Step, TxParams};
use super::proto::*;
use super::transmission::{check, errno_of, Command};
use super::Export;
use crate::{BlockDevice, IoBuf};

/// Requests in flight per connection.
pub const MAX_IN_FLIGHT: u32 = 128;
/// Payload bytes one in-flight slot stands for: a request costs
/// `max(1, ceil(len / SLOT_BYTES))` slots, so a connection holds at most about
/// `MAX_IN_FLIGHT * SLOT_BYTES` (256 MiB) of payload at once.
pub const SLOT_BYTES: u32 = 2 * 1024 * 1024;
/// Options one client may send before entering transmission.
pub const MAX_OPTIONS: u32 = 1024;
/// Time a client gets to finish option negotiation (idle sockets must not pile up).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

const READ_BUF: usize = 128 * 1024;
const WRITE_BUF: usize = 256 * 1024;
/// Read payloads up to this size are copied into the write buffer (coalescing many
/// small replies into one syscall); larger ones are written from their own buffer.
const INLINE_DATA_MAX: usize = 64 * 1024;

/// Calls [`BlockDevice::close`] once, when the last holder goes away: the connection
/// and every request task of it hold a clone, so the device is closed only after the
/// connection ended and its in-flight requests completed (even if the task is aborted).
struct OpenGuard<D: BlockDevice>(Arc<D>);

impl<D: BlockDevice> Drop for OpenGuard<D> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Resolves once shutdown is requested (or the sender is gone, which we treat alike).
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn export_info<D: BlockDevice>(export: &Export<D>) -> ExportInfo {
    let d = &export.device;
    ExportInfo {
        name: export.name.clone(),
        description: export.description.clone(),
        size: d.size(),
        read_only: d.read_only_once_open(),
        multi_conn: d.multi_conn_safe(),
        block_sizes: d.block_sizes(),
    }
}

/// Serves one client on an already-split stream until it disconnects, breaks the
/// protocol, or `shutdown` turns true (then in-flight requests finish first).
///
/// `serve` calls this for every accepted socket; tests call it on in-memory pipes.
pub async fn serve_connection<D, R, W>(rd: R, mut wr: W, export: Arc<Export<D>>, mut shutdown: watch::Receiver<bool>)
where
    D: BlockDevice,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut rd = BufReader::with_capacity(READ_BUF, rd);
    let negotiated = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut rd, &mut wr, &export)) => match r {
            Ok(r) => r,
            Err(_) => {
                info!("client did not finish negotiation within {HANDSHAKE_TIMEOUT:?}; closing");
                return;
            }
        },
        _ = shutdown_requested(&mut shutdown) => {
            debug!("shutdown during handshake; closing");
            return;
        }
    };
    let (params, guard) = match negotiated {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            debug!("handshake ended: {e}");
            return;
        }
    };
    info!(
        size = params.size,
        flags = format_args!("{:#x}", params.flags),
        structured = params.structured,
        "client entered transmission"
    );
    match transmit(rd, wr, params, Arc::new(guard), shutdown).await {
        Ok(()) => info!("client disconnected"),
        Err(e) => info!("connection closed: {e}"),
    }
}

/// Runs option negotiation. `Ok(None)` means the client went away politely (ABORT) or
/// was refused; errors are I/O or protocol violations.
async fn negotiate<D, R, W>(rd: &mut R, wr: &mut W, export: &Export<D>) -> io::Result<Option<(TxParams, OpenGuard<D>)>>
where
    D: BlockDevice,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&greeting()).await?;
    wr.flush().await?;

    let mut flags = [0u8; 4];
    rd.read_exact(&mut flags).await?;
    let mut neg =
        Negotiator::new(u32::from_be_bytes(flags)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if !neg.fixed_newstyle() {
        debug!("client did not set NBD_FLAG_C_FIXED_NEWSTYLE; answering as fixed anyway");
    }

    for _ in 0..MAX_OPTIONS {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        rd.read_exact(&mut hdr).await?;
        let h = OptionHeader::decode(&hdr).map_err(|e| {
            warn!("bad option header: {e}; closing");
            io::Error::new(io::ErrorKind::InvalidData, e)
        })?;
        let mut data = vec![0u8; h.len as usize];
        rd.read_exact(&mut data).await?;
        debug!(option = option_name(h.option), len = h.len, "option");

        // Open before describing the export: opening may change what the description
        // says (a resource that auto-promotes on open stops being read-only).
        let opened = if wants_this_export(export, h.option, &data) {
            Some(export.device.open())
        } else {
            None
        };
        let step = neg.option(&export_info(export), h.option, &data);
        if matches!(opened, Some(Ok(()))) && !matches!(step, Step::Enter(_)) {
            export.device.close();
        }
        match step {
            Step::Reply(bytes) => {
                wr.write_all(&bytes).await?;
                wr.flush().await?;
            }
            Step::ReplyThenClose(bytes) => {
                wr.write_all(&bytes).await?;
                wr.flush().await?;
                let _ = wr.shutdown().await;
                debug!("client aborted negotiation");
                return Ok(None);
            }
            Step::Close(why) => {
                info!("{why}; closing");
                return Ok(None);
            }
            Step::Enter(entry) => match opened.unwrap_or_else(|| export.device.open()) {
                Ok(()) => {
                    let guard = OpenGuard(Arc::clone(&export.device));
                    wr.write_all(&entry.reply).await?;
                    wr.flush().await?;
                    return Ok(Some((entry.params, guard)));
                }
                Err(msg) => {
                    info!("device refused the client: {msg}");
                    match entry.kind {
                        EnterKind::Go => {
                            wr.write_all(&neg.refusal(entry.option, &msg)).await?;
                            wr.flush().await?;
                        }
                        EnterKind::ExportName => return Ok(None),
                    }
                }
            },
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("more than {MAX_OPTIONS} options without entering transmission"),
    ))
}

/// True when `option` asks to enter transmission on this export (GO or EXPORT_NAME
/// with our name or the default name "").
fn wants_this_export<D: BlockDevice>(export: &Export<D>, option: u32, data: &[u8]) -> bool {
    let name = match option {
        OPT_EXPORT_NAME => data,
        OPT_GO => {
            let Some(len) = data
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            else {
                return false;
            };
            match data.get(4..4 + len) {
                Some(n) => n,
                None => return false,
            }
        }
        _ => return false,
    };
    name.is_empty() || name == export.name.as_bytes()
}

/// What a request task hands to the writer.
enum ReplyBody {
    Ok,
    Data { offset: u64, data: IoBuf },
    Error { error: u32, message: Cow<'static, str> },
}

struct Outgoing {
    cookie: u64,
    body: ReplyBody,
    /// Released once the reply has left (or been copied into) the write buffer.
    _permit: OwnedSemaphorePermit,
}

fn slots_for(len: u32) -> u32 {
    len.div_ceil(SLOT_BYTES).clamp(1, MAX_IN_FLIGHT)
}

async fn transmit<D, R, W>(
    mut rd: BufReader<R>,
    wr: W,
    params: TxParams,
    guard: Arc<OpenGuard<D>>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    D: BlockDevice,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT as usize);
    let writer = tokio::spawn(write_replies(wr, rx, params.structured));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));

    let read_result = read_requests(&mut rd, &tx, &slots, params, &guard, &mut shutdown).await;
    // The writer ends once every request task has dropped its sender clone.
    drop(tx);
    let write_result = match writer.await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("reply writer failed: {e}"))),
    };
    read_result.and(write_result)
}

/// Waits for `fut` unless shutdown is requested or the writer has gone away first.
async fn interruptible<T>(
    fut: impl std::future::Future<Output = io::Result<T>>,
    shutdown: &mut watch::Receiver<bool>,
    tx: &mpsc::Sender<Outgoing>,
) -> io::Result<Option<T>> {
    tokio::select! {
        biased;
        r = fut => r.map(Some),
        _ = shutdown_requested(shutdown) => Ok(None),
        _ = tx.closed() => Err(io::Error::new(io::ErrorKind::BrokenPipe, "reply stream closed")),
    }
}

async fn read_requests<D, R>(
    rd: &mut BufReader<R>,
    tx: &mpsc::Sender<Outgoing>,
    slots: &Arc<Semaphore>,
    params: TxParams,
    guard: &Arc<OpenGuard<D>>,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<()>
where
    D: BlockDevice,
    R: AsyncRead + Unpin,
{
    let dev = &guard.0;
    loop {
        let mut hdr = [0u8; REQUEST_LEN];
        let got = interruptible(
            async {
                match rd.read_exact(&mut hdr).await {
                    Ok(_) => Ok(true),
                    // A client may hang up between requests without NBD_CMD_DISC.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
                    Err(e) => Err(e),
                }
            },
            shutdown,
            tx,
        )
        .await?;
        match got {
            None => {
                info!("shutting down: no new requests accepted from this client");
                return Ok(());
            }
            Some(false) => {
                debug!("client hung up without NBD_CMD_DISC");
                return Ok(());
            }
            Some(true) => {}
        }
        let req = Request::decode(&hdr).map_err(|e| {
            warn!("bad request header: {e}; closing");
            io::Error::new(io::ErrorKind::InvalidData, e)
        })?;
        trace!(
            cmd = command_name(req.command),
            cookie = req.cookie,
            offset = req.offset,
            len = req.len,
            "request"
        );

        let checked = check(&req, &params, dev.read_only());
        let cost = match checked {
            Ok(Command::Read { len, .. } | Command::Write { len, .. }) => slots_for(len),
            _ => 1,
        };
        // Taken before a WRITE payload is read, so the slots bound memory too.
        let permit = interruptible(
            async { slots.clone().acquire_many_owned(cost).await.map_err(io::Error::other) },
            shutdown,
            tx,
        )
        .await?;
        let Some(permit) = permit else { return Ok(()) };
        let reply = Reply {
            tx: tx.clone(),
            cookie: req.cookie,
            permit,
        };

        let cmd = match checked {
            Ok(cmd) => cmd,
            Err(rej) => {
                let what = format!(
                    "refused {} offset={} len={} error={}: {}",
                    command_name(req.command),
                    req.offset,
                    req.len,
                    ErrnoName(rej.error),
                    rej.message
                );
                // A refused write is data the client meant to store: the operator must see
                // it (a kernel client ignoring the block size limit lost ext4 data that way).
                if req.command == CMD_WRITE {
                    warn!("{what}");
                } else {
                    debug!("{what}");
                }
                if rej.discard > 0 {
                    let mut sink = tokio::io::sink();
                    let mut payload = (&mut *rd).take(u64::from(rej.discard));
                    let copied =
                        interruptible(async { tokio::io::copy(&mut payload, &mut sink).await }, shutdown, tx).await?;
                    match copied {
                        None => return Ok(()),
                        Some(n) if n < u64::from(rej.discard) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Some(_) => {}
                    }
                }
                reply
                    .send(ReplyBody::Error {
                        error: rej.error,
                        message: Cow::Borrowed(rej.message),
                    })
                    .await;
                continue;
            }
        };

        let g = Arc::clone(guard);
        match cmd {
            Command::Disconnect => {
                debug!("client sent NBD_CMD_DISC");
                return Ok(());
            }
            Command::Read { offset, len } => reply.spawn(async move {
                match g.0.read(offset, len).await {
                    Ok(data) if data.len() == len as usize => ReplyBody::Data { offset, data },
                    Ok(data) => {
                        warn!(offset, len, got = data.len(), "device returned a short read");
                        ReplyBody::Error {
                            error: errno::EIO,
                            message: Cow::Borrowed("device returned a short read"),
                        }
                    }
                    Err(e) => io_error_body("read", offset, len, e),
                }
            }),
            Command::Write { offset, len, fua } => {
                let mut buf = IoBuf::uninit(len as usize);
                let done = interruptible(async { rd.read_exact(buf.as_mut_slice()).await }, shutdown, tx).await?;
                if done.is_none() {
                    // Shutdown mid-payload: the write was never acknowledged; drop it.
                    return Ok(());
                }
                reply.spawn(async move {
                    match g.0.write(offset, buf, fua).await {
                        Ok(()) => ReplyBody::Ok,
                        Err(e) => io_error_body("write", offset, len, e),
                    }
                })
            }
            Command::Flush => reply.spawn(async move {
                match g.0.flush().await {
                    Ok(()) => ReplyBody::Ok,
                    Err(e) => io_error_body("flush", 0, 0, e),
                }
            }),
            Command::Trim { offset, len, fua } => reply.spawn(async move {
                match g.0.trim(offset, len, fua).await {
                    Ok(()) => ReplyBody::Ok,
                    Err(e) => io_error_body("trim", offset, len, e),
                }
            }),
            Command::WriteZeroes {
                offset,
                len,
                fua,
                may_unmap,
            } => reply.spawn(async move {
                match g.0.write_zeroes(offset, len, fua, may_unmap).await {
                    Ok(()) => ReplyBody::Ok,
                    Err(e) => io_error_body("write_zeroes", offset, len, e),
                }
            }),
        }
    }
}

/// Everything a request needs to answer: where replies go, its cookie, its slots.
struct Reply {
    tx: mpsc::Sender<Outgoing>,
    cookie: u64,
    permit: OwnedSemaphorePermit,
}

impl Reply {
    async fn send(self, body: ReplyBody) {
        let out = Outgoing {
            cookie: self.cookie,
            body,
            _permit: self.permit,
        };
        // A closed queue means the client is gone; the reader notices via `closed()`.
        let _ = self.tx.send(out).await;
    }

    /// Runs `work` (which holds the device) as its own task and queues its reply.
    fn spawn<F>(self, work: F)
    where
        F: std::future::Future<Output = ReplyBody> + Send + 'static,
    {
        tokio::spawn(async move {
            let body = work.await;
            self.send(body).await;
        });
    }
}

fn io_error_body(what: &str, offset: u64, len: u32, e: io::Error) -> ReplyBody {
    let error = errno_of(&e);
    warn!(offset, len, error = %ErrnoName(error), "device {what} failed: {e}");
    ReplyBody::Error {
        error,
        message: Cow::Owned(format!("{what} failed: {e}")),
    }
}

/// Writes `a` then `b` with as few (vectored) writes as the stream allows.
async fn write_both<W: AsyncWrite + Unpin>(wr: &mut W, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = wr.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    wr.write_all(b).await
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    structured: bool,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUF + 64);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            match &msg.body {
                ReplyBody::Ok => put_simple_reply(&mut buf, msg.cookie, 0),
                ReplyBody::Error { error, message } => {
                    if structured {
                        put_error_chunk(&mut buf, msg.cookie, *error, message);
                    } else {
                        put_simple_reply(&mut buf, msg.cookie, *error);
                    }
                }
                ReplyBody::Data { offset, data } => {
                    if structured {
                        put_offset_data_header(&mut buf, msg.cookie, *offset, data.len() as u32);
                    } else {
                        put_simple_reply(&mut buf, msg.cookie, 0);
                    }
                    if data.len() <= INLINE_DATA_MAX {
                        buf.extend_from_slice(data);
                    } else {
                        write_both(&mut wr, &buf, data).await?;
                        buf.clear();
                    }
                }
            }
            drop(msg);
            if buf.len() >= WRITE_BUF {
                wr.write_all(&buf).await?;
                buf.clear();
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
        }
        wr.flush().await?;
    }
    wr.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_costs() {
        assert_eq!(slots_for(0), 1);
        assert_eq!(slots_for(4096), 1);
        assert_eq!(slots_for(SLOT_BYTES), 1);
        assert_eq!(slots_for(SLOT_BYTES + 1), 2);
        assert_eq!(slots_for(32 << 20), 16);
        assert_eq!(slots_for(u32::MAX), MAX_IN_FLIGHT);
    }

    #[tokio::test]
    async fn write_both_handles_short_writes() {
        // A duplex with a tiny buffer forces partial writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut v = Vec::new();
            b.read_to_end(&mut v).await.unwrap();
            v
        });
        write_both(&mut a, b"hello ", b"vectored world").await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), b"hello vectored world");
    }
}
