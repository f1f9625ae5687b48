//! In-process tests: a real server on 127.0.0.1:0 (or a Unix socket) serving an
//! in-memory device, driven by a small hand-written NBD client.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::proto::*;
use super::{serve, Export, Listener};
use crate::{BlockDevice, BlockSizes, IoBuf};

// ---------------------------------------------------------------------------------
// An in-memory device
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct MemDev {
    data: Mutex<Vec<u8>>,
    read_only: AtomicBool,
    refuse: Mutex<Option<String>>,
    opens: AtomicUsize,
    closes: AtomicUsize,
    flushes: AtomicUsize,
    fua_writes: AtomicUsize,
    unmap_zeroes: AtomicUsize,
    /// Reads touching this offset fail with EIO.
    bad_offset: Mutex<Option<u64>>,
}

const MAX_PAYLOAD: u32 = 1 << 20;

impl MemDev {
    fn new(size: usize) -> Arc<MemDev> {
        Arc::new(MemDev {
            data: Mutex::new(vec![0; size]),
            ..Default::default()
        })
    }
}

impl BlockDevice for MemDev {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_PAYLOAD,
        }
    }
    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }
    fn open(&self) -> Result<(), String> {
        if let Some(msg) = self.refuse.lock().unwrap().clone() {
            return Err(msg);
        }
        self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn close(&self) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        if let Some(bad) = *self.bad_offset.lock().unwrap() {
            if (offset..offset + u64::from(len)).contains(&bad) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        Ok(IoBuf::copy_from(&d[o..o + len as usize]))
    }
    async fn write(&self, offset: u64, data: IoBuf, fua: bool) -> io::Result<()> {
        // Yield once so requests really overlap.
        tokio::task::yield_now().await;
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool, may_unmap: bool) -> io::Result<()> {
        if may_unmap {
            self.unmap_zeroes.fetch_add(1, Ordering::SeqCst);
        }
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Server fixture
// ---------------------------------------------------------------------------------

struct Server {
    addr: std::net::SocketAddr,
    dev: Arc<MemDev>,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

const SIZE: usize = 4 << 20;

async fn start() -> Server {
    start_with(MemDev::new(SIZE)).await
}

async fn start_with(dev: Arc<MemDev>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let export = Export {
        name: "r0".into(),
        description: "test resource".into(),
        device: Arc::clone(&dev),
    };
    let task = tokio::spawn(serve(Listener::Tcp(l), export, rx));
    Server { addr, dev, stop, task }
}

impl Server {
    async fn stop(self) -> Arc<MemDev> {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        self.dev
    }
}

/// Runs a test body with a deadline so a protocol bug fails instead of hanging.
async fn deadline<F: std::future::Future<Output = T>, T>(f: F) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

// ---------------------------------------------------------------------------------
// A tiny client
// ---------------------------------------------------------------------------------

struct Client<S> {
    s: S,
    structured: bool,
    /// Outstanding read lengths by cookie (needed to frame simple read replies).
    reads: HashMap<u64, u32>,
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Data(Vec<u8>),
    Err(u32),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn greet(mut s: S, client_flags: u32) -> Client<S> {
        let mut g = [0u8; GREETING_LEN];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[0..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.write_all(&client_flags.to_be_bytes()).await.unwrap();
        Client {
            s,
            structured: false,
            reads: HashMap::new(),
        }
    }

    async fn send_option(&mut self, option: u32, data: &[u8]) {
        let h = OptionHeader {
            option,
            len: data.len() as u32,
        };
        self.s.write_all(&h.encode()).await.unwrap();
        self.s.write_all(data).await.unwrap();
    }

    async fn option_reply(&mut self) -> OptionReply {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
        let mut buf = h.to_vec();
        buf.resize(20 + len, 0);
        self.s.read_exact(&mut buf[20..]).await.unwrap();
        OptionReply::decode(&buf).unwrap().0
    }

    /// Sends an option and collects replies up to the final one (ACK or an error).
    async fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptionReply> {
        self.send_option(option, data).await;
        let mut v = Vec::new();
        loop {
            let r = self.option_reply().await;
            assert_eq!(r.option, option);
            let last = r.reply_type == REP_ACK || r.reply_type & (1 << 31) != 0;
            v.push(r);
            if last {
                return v;
            }
        }
    }

    fn go_data(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        for i in [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE] {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// Negotiates (optionally structured replies) and GOes; returns (size, flags).
    async fn go(&mut self, name: &str, structured: bool) -> (u64, u16) {
        if structured {
            let r = self.option(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(r[0].reply_type, REP_ACK);
            self.structured = true;
        }
        let r = self.option(OPT_GO, &Self::go_data(name)).await;
        assert_eq!(r.last().unwrap().reply_type, REP_ACK, "{r:?}");
        let export = r
            .iter()
            .find(|r| r.reply_type == REP_INFO && r.data[0..2] == INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(export.data[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes([export.data[10], export.data[11]]);
        (size, flags)
    }

    async fn send(&mut self, command: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let r = Request {
            flags,
            command,
            cookie,
            offset,
            len,
        };
        if command == CMD_READ {
            self.reads.insert(cookie, len);
        }
        let mut b = r.encode().to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).await.unwrap();
    }

    /// Reads one complete reply; returns its cookie and meaning.
    async fn reply(&mut self) -> (u64, Answer) {
        let mut magic = [0u8; 4];
        self.s.read_exact(&mut magic).await.unwrap();
        self.reply_after_magic(u32::from_be_bytes(magic)).await
    }

    async fn reply_after_magic(&mut self, magic: u32) -> (u64, Answer) {
        if magic == SIMPLE_REPLY_MAGIC {
            let mut rest = [0u8; 12];
            self.s.read_exact(&mut rest).await.unwrap();
            let error = u32::from_be_bytes(rest[0..4].try_into().unwrap());
            let cookie = u64::from_be_bytes(rest[4..12].try_into().unwrap());
            let read_len = self.reads.remove(&cookie);
            if error != 0 {
                return (cookie, Answer::Err(error));
            }
            match read_len {
                Some(len) => {
                    assert!(!self.structured, "simple reply to a structured read");
                    let mut d = vec![0u8; len as usize];
                    self.s.read_exact(&mut d).await.unwrap();
                    (cookie, Answer::Data(d))
                }
                None => (cookie, Answer::Ok),
            }
        } else {
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "unknown reply magic {magic:#x}");
            assert!(self.structured, "structured reply without negotiation");
            let mut rest = [0u8; 16];
            self.s.read_exact(&mut rest).await.unwrap();
            let flags = u16::from_be_bytes([rest[0], rest[1]]);
            let ty = u16::from_be_bytes([rest[2], rest[3]]);
            let cookie = u64::from_be_bytes(rest[4..12].try_into().unwrap());
            let len = u32::from_be_bytes(rest[12..16].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            self.s.read_exact(&mut payload).await.unwrap();
            assert_eq!(flags, REPLY_FLAG_DONE, "we always send one final chunk");
            self.reads.remove(&cookie);
            match ty {
                REPLY_TYPE_OFFSET_DATA => (cookie, Answer::Data(payload[8..].to_vec())),
                REPLY_TYPE_ERROR => {
                    let e = u32::from_be_bytes(payload[0..4].try_into().unwrap());
                    let mlen = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                    assert_eq!(payload.len(), 6 + mlen);
                    assert!(std::str::from_utf8(&payload[6..]).is_ok());
                    (cookie, Answer::Err(e))
                }
                REPLY_TYPE_NONE => (cookie, Answer::Ok),
                other => panic!("unexpected chunk type {other}"),
            }
        }
    }

    /// Like [`reply`](Self::reply), but `None` when the server closed between replies.
    async fn try_reply(&mut self) -> Option<(u64, Answer)> {
        let mut first = [0u8; 1];
        match self.s.read(&mut first).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        // Put the byte back by reading the rest of the magic ourselves.
        let mut rest = [0u8; 3];
        self.s.read_exact(&mut rest).await.unwrap();
        let magic = u32::from_be_bytes([first[0], rest[0], rest[1], rest[2]]);
        Some(self.reply_after_magic(magic).await)
    }

    /// One request, one reply.
    async fn call(&mut self, command: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> Answer {
        self.send(command, flags, 99, offset, len, payload).await;
        let (cookie, a) = self.reply().await;
        assert_eq!(cookie, 99);
        a
    }

    async fn expect_eof(&mut self) {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut b))
            .await
            .expect("server closes")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected the server to close the connection");
    }
}

async fn connect(addr: std::net::SocketAddr) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).await.unwrap();
    Client::greet(s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

async fn full_session(structured: bool) {
    let srv = start().await;
    let mut c = connect(srv.addr).await;
    let (size, flags) = c.go("", structured).await;
    assert_eq!(size, SIZE as u64);
    for f in [
        TFLAG_HAS_FLAGS,
        TFLAG_SEND_FLUSH,
        TFLAG_SEND_FUA,
        TFLAG_SEND_TRIM,
        TFLAG_SEND_WRITE_ZEROES,
        TFLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} missing");
    }
    assert_eq!(flags & TFLAG_READ_ONLY, 0);
    assert_eq!(flags & TFLAG_SEND_DF != 0, structured);
    assert_eq!(srv.dev.opens.load(Ordering::SeqCst), 1);

    // Write, read back.
    let data = pattern(8192, 7);
    assert_eq!(c.call(CMD_WRITE, 0, 4096, 8192, &data).await, Answer::Ok);
    assert_eq!(c.call(CMD_READ, 0, 4096, 8192, &[]).await, Answer::Data(data.clone()));
    // FUA write at the very end.
    let tail = pattern(512, 9);
    assert_eq!(
        c.call(CMD_WRITE, CMD_FLAG_FUA, SIZE as u64 - 512, 512, &tail).await,
        Answer::Ok
    );
    assert_eq!(srv.dev.fua_writes.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.call(CMD_READ, 0, SIZE as u64 - 512, 512, &[]).await,
        Answer::Data(tail)
    );
    // Flush.
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).await, Answer::Ok);
    assert_eq!(srv.dev.flushes.load(Ordering::SeqCst), 1);
    // Trim zeroes the first page here.
    assert_eq!(c.call(CMD_TRIM, 0, 4096, 4096, &[]).await, Answer::Ok);
    let back = c.call(CMD_READ, 0, 4096, 8192, &[]).await;
    let mut expect = data.clone();
    expect[..4096].fill(0);
    assert_eq!(back, Answer::Data(expect.clone()));
    // Write zeroes, with and without NO_HOLE.
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 8192, 100, &[]).await,
        Answer::Ok
    );
    assert_eq!(srv.dev.unmap_zeroes.load(Ordering::SeqCst), 0);
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 9000, 100, &[]).await, Answer::Ok);
    assert_eq!(srv.dev.unmap_zeroes.load(Ordering::SeqCst), 1);
    expect[4096..4196].fill(0);
    expect[4904..5004].fill(0);
    assert_eq!(c.call(CMD_READ, 0, 4096, 8192, &[]).await, Answer::Data(expect));

    // Out of range and malformed requests get errors, and the session goes on.
    let e = errno::EINVAL;
    assert_eq!(c.call(CMD_READ, 0, SIZE as u64, 1, &[]).await, Answer::Err(e));
    assert_eq!(c.call(CMD_READ, 0, u64::MAX - 10, 512, &[]).await, Answer::Err(e));
    assert_eq!(c.call(CMD_READ, 0, 0, 0, &[]).await, Answer::Err(e));
    assert_eq!(c.call(CMD_READ, 0, 0, MAX_PAYLOAD + 1, &[]).await, Answer::Err(e));
    assert_eq!(
        c.call(CMD_WRITE, 0, SIZE as u64 - 1, 2, &[1, 2]).await,
        Answer::Err(errno::ENOSPC)
    );
    assert_eq!(
        c.call(CMD_TRIM, 0, SIZE as u64, 4096, &[]).await,
        Answer::Err(errno::ENOSPC)
    );
    assert_eq!(c.call(77, 0, 0, 512, &[]).await, Answer::Err(e));
    assert_eq!(c.call(CMD_BLOCK_STATUS, 0, 0, 512, &[]).await, Answer::Err(e));
    assert_eq!(c.call(CMD_WRITE, 1 << 9, 0, 4, b"abcd").await, Answer::Err(e));
    // Oversize write: the payload is drained, the session stays in step.
    let big = vec![0xAB; MAX_PAYLOAD as usize + 4096];
    assert_eq!(c.call(CMD_WRITE, 0, 0, big.len() as u32, &big).await, Answer::Err(e));
    // Device errors map to EIO.
    *srv.dev.bad_offset.lock().unwrap() = Some(100_000);
    assert_eq!(c.call(CMD_READ, 0, 99_000, 4096, &[]).await, Answer::Err(errno::EIO));
    *srv.dev.bad_offset.lock().unwrap() = None;
    assert_eq!(c.call(CMD_READ, 0, 12288, 4, &[]).await, Answer::Data(vec![0; 4]));

    // Soft disconnect: no reply, connection closed, device closed exactly once.
    c.send(CMD_DISC, 0, 1, 0, 0, &[]).await;
    c.expect_eof().await;
    let dev = Arc::clone(&srv.dev);
    wait_for(|| dev.closes.load(Ordering::SeqCst) == 1).await;
    let dev = srv.stop().await;
    assert_eq!(dev.opens.load(Ordering::SeqCst), 1);
    assert_eq!(dev.closes.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_with_simple_replies() {
    deadline(full_session(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_with_structured_replies() {
    deadline(full_session(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_over_the_wire() {
    deadline(async {
        let srv = start().await;
        let mut c = connect(srv.addr).await;
        // LIST.
        let r = c.option(OPT_LIST, &[]).await;
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].reply_type, REP_SERVER);
        assert_eq!(&r[0].data[4..6], b"r0");
        // INFO by name, unknown name, STARTTLS, meta contexts, made-up options.
        let r = c.option(OPT_INFO, &Client::<TcpStream>::go_data("r0")).await;
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        assert!(r.iter().any(|r| r.reply_type == REP_INFO
            && r.data[0..2] == INFO_DESCRIPTION.to_be_bytes()
            && &r.data[2..] == b"test resource"));
        let r = c.option(OPT_GO, &Client::<TcpStream>::go_data("nope")).await;
        assert_eq!(r[0].reply_type, REP_ERR_UNKNOWN);
        for opt in [OPT_STARTTLS, OPT_SET_META_CONTEXT, OPT_LIST_META_CONTEXT, 0xdead_beef] {
            let r = c.option(opt, b"xyz").await;
            assert_eq!(r[0].reply_type, REP_ERR_UNSUP);
        }
        assert_eq!(srv.dev.opens.load(Ordering::SeqCst), 0);
        // ABORT: ACK, then the server closes.
        let r = c.option(OPT_ABORT, &[]).await;
        assert_eq!(r[0].reply_type, REP_ACK);
        c.expect_eof().await;

        // EXPORT_NAME without NO_ZEROES: size, flags, 124 zeroes, then transmission.
        let s = TcpStream::connect(srv.addr).await.unwrap();
        let mut c = Client::greet(s, FLAG_C_FIXED_NEWSTYLE).await;
        c.send_option(OPT_EXPORT_NAME, b"r0").await;
        let mut b = [0u8; 134];
        c.s.read_exact(&mut b).await.unwrap();
        assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), SIZE as u64);
        assert!(b[10..].iter().all(|&x| x == 0));
        assert_eq!(c.call(CMD_WRITE, 0, 0, 3, b"abc").await, Answer::Ok);
        assert_eq!(c.call(CMD_READ, 0, 0, 3, &[]).await, Answer::Data(b"abc".to_vec()));
        // Hang up without DISC: the server still closes the device.
        drop(c);
        let dev = Arc::clone(&srv.dev);
        wait_for(|| dev.closes.load(Ordering::SeqCst) == 1).await;

        // EXPORT_NAME for an unknown export: closed without a reply.
        let mut c = connect(srv.addr).await;
        c.send_option(OPT_EXPORT_NAME, b"other").await;
        c.expect_eof().await;

        // Unknown client flags: closed.
        let s = TcpStream::connect(srv.addr).await.unwrap();
        let mut c = Client::greet(s, 1 << 20).await;
        c.expect_eof().await;

        let dev = srv.stop().await;
        assert_eq!(dev.opens.load(Ordering::SeqCst), 1);
        assert_eq!(dev.closes.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refusal_and_read_only() {
    deadline(async {
        let srv = start().await;
        *srv.dev.refuse.lock().unwrap() = Some("resource r0 is Secondary".into());
        let mut c = connect(srv.addr).await;
        let r = c.option(OPT_GO, &Client::<TcpStream>::go_data("r0")).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reply_type, REP_ERR_POLICY);
        assert_eq!(r[0].data, b"resource r0 is Secondary");
        // The client may try again once the device accepts it.
        *srv.dev.refuse.lock().unwrap() = None;
        srv.dev.read_only.store(true, Ordering::SeqCst);
        let (_, flags) = c.go("r0", true).await;
        assert_ne!(flags & TFLAG_READ_ONLY, 0);
        assert_eq!(c.call(CMD_WRITE, 0, 0, 2, b"no").await, Answer::Err(errno::EPERM));
        assert_eq!(c.call(CMD_TRIM, 0, 0, 512, &[]).await, Answer::Err(errno::EPERM));
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, 0, 0, 512, &[]).await,
            Answer::Err(errno::EPERM)
        );
        assert_eq!(c.call(CMD_READ, 0, 0, 2, &[]).await, Answer::Data(vec![0, 0]));
        assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).await, Answer::Ok);
        c.send(CMD_DISC, 0, 1, 0, 0, &[]).await;
        c.expect_eof().await;
        let dev = srv.stop().await;
        assert_eq!(dev.opens.load(Ordering::SeqCst), 1);
        assert_eq!(dev.closes.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight() {
    deadline(async {
        let srv = start().await;
        let mut c = connect(srv.addr).await;
        c.go("r0", true).await;
        // 500 pipelined writes (more than MAX_IN_FLIGHT), then 500 pipelined reads.
        const N: u64 = 500;
        let mut all = Vec::new();
        for i in 0..N {
            let d = pattern(4096, i as u8);
            all.extend_from_slice(
                &Request {
                    flags: 0,
                    command: CMD_WRITE,
                    cookie: i,
                    offset: i * 4096,
                    len: 4096,
                }
                .encode(),
            );
            all.extend_from_slice(&d);
        }
        let (mut rd, mut wr) = tokio::io::split(c.s);
        let sender = tokio::spawn(async move {
            wr.write_all(&all).await.unwrap();
            wr
        });
        let mut c2 = Client {
            s: tokio::io::join(&mut rd, tokio::io::sink()),
            structured: true,
            reads: HashMap::new(),
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..N {
            let (cookie, a) = c2.reply().await;
            assert_eq!(a, Answer::Ok);
            assert!(seen.insert(cookie));
        }
        let wr = sender.await.unwrap();
        let mut c = Client {
            s: tokio::io::join(rd, wr),
            structured: true,
            reads: HashMap::new(),
        };
        for i in 0..N {
            c.send(CMD_READ, 0, 1000 + i, i * 4096, 4096, &[]).await;
        }
        let mut got = 0;
        for _ in 0..N {
            let (cookie, a) = c.reply().await;
            let i = cookie - 1000;
            assert_eq!(a, Answer::Data(pattern(4096, i as u8)));
            got += 1;
        }
        assert_eq!(got, N);
        c.send(CMD_DISC, 0, 1, 0, 0, &[]).await;
        c.expect_eof().await;
        srv.stop().await;
    })
    .await;
}

/// Hostile inputs close (or are refused on) one connection; other clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_hurt_others() {
    deadline(async {
        let srv = start().await;
        // A well-behaved client in transmission the whole time.
        let mut good = connect(srv.addr).await;
        good.go("r0", false).await;

        // 1. Bad option magic.
        let mut c = connect(srv.addr).await;
        c.s.write_all(&[0x55; 16]).await.unwrap();
        c.expect_eof().await;
        // 2. Absurd option length.
        let mut c = connect(srv.addr).await;
        c.s.write_all(
            &OptionHeader {
                option: OPT_GO,
                len: 0x7fff_ffff,
            }
            .encode(),
        )
        .await
        .unwrap();
        c.expect_eof().await;
        // 3. Truncated option, then hang up.
        let mut c = connect(srv.addr).await;
        c.s.write_all(
            &OptionHeader {
                option: OPT_GO,
                len: 100,
            }
            .encode(),
        )
        .await
        .unwrap();
        c.s.write_all(&[0; 10]).await.unwrap();
        drop(c);
        // 4. Garbage instead of a request header after GO.
        let mut c = connect(srv.addr).await;
        c.go("", false).await;
        c.s.write_all(&[0xff; REQUEST_LEN]).await.unwrap();
        c.expect_eof().await;
        // 5. Truncated request header, then hang up; and a truncated write payload.
        let mut c = connect(srv.addr).await;
        c.go("", true).await;
        c.s.write_all(
            &Request {
                flags: 0,
                command: CMD_READ,
                cookie: 5,
                offset: 0,
                len: 512,
            }
            .encode()[..13],
        )
        .await
        .unwrap();
        drop(c);
        let mut c = connect(srv.addr).await;
        c.go("", true).await;
        c.send(CMD_WRITE, 0, 6, 0, 4096, &[1; 100]).await;
        drop(c);
        // 6. A write claiming 4 GiB beyond the end, then hanging up mid-payload.
        let mut c = connect(srv.addr).await;
        c.go("", true).await;
        c.send(CMD_WRITE, 0, 7, u64::MAX - 4, u32::MAX, &[0; 4096]).await;
        drop(c);
        // 7. Huge offset read, bad command, zero length: errors, connection stays.
        let mut c = connect(srv.addr).await;
        c.go("", true).await;
        assert_eq!(
            c.call(CMD_READ, 0, u64::MAX, u32::MAX, &[]).await,
            Answer::Err(errno::EINVAL)
        );
        assert_eq!(c.call(0xffff, 0xffff, 0, 0, &[]).await, Answer::Err(errno::EINVAL));
        assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 0, 0, &[]).await, Answer::Err(errno::EINVAL));
        drop(c);
        // 8. Raw garbage right after connecting (not even client flags).
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink))
            .await
            .expect("closed");

        // The good client still works, and a new client can connect.
        assert_eq!(good.call(CMD_WRITE, 0, 0, 5, b"still").await, Answer::Ok);
        assert_eq!(good.call(CMD_READ, 0, 0, 5, &[]).await, Answer::Data(b"still".to_vec()));
        let mut again = connect(srv.addr).await;
        again.go("r0", true).await;
        assert_eq!(
            again.call(CMD_READ, 0, 0, 5, &[]).await,
            Answer::Data(b"still".to_vec())
        );
        again.send(CMD_DISC, 0, 1, 0, 0, &[]).await;
        again.expect_eof().await;

        // Every open was matched by a close once the hostile connections are gone.
        drop(good);
        let dev = Arc::clone(&srv.dev);
        wait_for(|| dev.opens.load(Ordering::SeqCst) == dev.closes.load(Ordering::SeqCst)).await;
        let dev = srv.stop().await;
        // good, #4, #5 (twice), #6, #7 and `again` entered transmission.
        assert_eq!(dev.opens.load(Ordering::SeqCst), 7);
        assert_eq!(dev.closes.load(Ordering::SeqCst), 7);
    })
    .await;
}

/// Shutdown stops accepting, lets in-flight requests finish, closes connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    deadline(async {
        let srv = start().await;
        let mut c = connect(srv.addr).await;
        c.go("r0", false).await;
        let mut idle = connect(srv.addr).await; // still negotiating
        let _ = &mut idle;
        // Queue writes, then ask for shutdown while they may still be running.
        for i in 0..64u64 {
            c.send(CMD_WRITE, 0, i, i * 4096, 4096, &pattern(4096, 1)).await;
        }
        // Read one reply so the server has surely received requests, then shut down.
        let mut answered = Vec::new();
        let (cookie, a) = c.reply().await;
        assert_eq!(a, Answer::Ok);
        answered.push(cookie);
        srv.stop.send(true).unwrap();
        // Requests the server had read complete and are answered; those still in the
        // socket are not read any more (the client retries them after failover).
        while let Some((cookie, a)) = c.try_reply().await {
            assert_eq!(a, Answer::Ok);
            answered.push(cookie);
        }
        answered.sort();
        answered.dedup();
        assert!(!answered.is_empty() && answered.len() <= 64);
        idle.expect_eof().await;
        let addr = srv.addr;
        tokio::time::timeout(Duration::from_secs(10), srv.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
        assert_eq!(srv.dev.closes.load(Ordering::SeqCst), 1);
        let d = srv.dev.data.lock().unwrap();
        for i in answered {
            let o = i as usize * 4096;
            assert_eq!(&d[o..o + 4096], &pattern(4096, 1)[..], "acknowledged write {i}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_export() {
    deadline(async {
        let dir = std::env::temp_dir().join(format!("hablock-nbd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nbd.sock");
        let _ = std::fs::remove_file(&path);
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let dev = MemDev::new(1 << 20);
        let (stop, rx) = watch::channel(false);
        let export = Export {
            name: "u".into(),
            description: String::new(),
            device: Arc::clone(&dev),
        };
        let task = tokio::spawn(serve(Listener::Unix(l), export, rx));
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut c = Client::greet(s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        let (size, _) = c.go("u", true).await;
        assert_eq!(size, 1 << 20);
        assert_eq!(c.call(CMD_WRITE, 0, 10, 3, b"xyz").await, Answer::Ok);
        assert_eq!(c.call(CMD_READ, 0, 9, 5, &[]).await, Answer::Data(b"\0xyz\0".to_vec()));
        c.send(CMD_DISC, 0, 1, 0, 0, &[]).await;
        c.expect_eof().await;
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(dev.closes.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// The pure connection driver also runs over an in-memory pipe.
#[tokio::test]
async fn serve_connection_over_duplex() {
    deadline(async {
        let dev = MemDev::new(65536);
        let export = Arc::new(Export {
            name: "d".into(),
            description: String::new(),
            device: Arc::clone(&dev),
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_stop, rx) = watch::channel(false);
        let (r, w) = tokio::io::split(server);
        let task = tokio::spawn(super::serve_connection(r, w, export, rx));
        let mut c = Client::greet(client, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        c.go("d", false).await;
        let data = pattern(65536, 3);
        assert_eq!(c.call(CMD_WRITE, 0, 0, 65536, &data).await, Answer::Ok);
        assert_eq!(c.call(CMD_READ, 0, 0, 65536, &[]).await, Answer::Data(data));
        c.send(CMD_DISC, 0, 1, 0, 0, &[]).await;
        task.await.unwrap();
        assert_eq!(dev.closes.load(Ordering::SeqCst), 1);
    })
    .await;
}
