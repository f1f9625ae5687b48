//! Serves an in-memory (or plain file) block device over NBD, for trying the server
//! with real clients (`nbdinfo`, `nbdcopy`, `qemu-io`, `nbd-client`, fio's nbd engine).
//!
//! ```text
//! cargo run --release -p kernel-shim --example memserve -- [--file PATH] [--size BYTES]
//!     [--name NAME] [--read-only] [--unix PATH | ADDR]
//! ```
//!
//! ADDR defaults to 127.0.0.1:0; the bound address is printed as `listening on ...`.
//! Ctrl-C (or SIGTERM) shuts the server down gracefully.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use kernel_shim::nbd::{serve, Export, Listener};
use kernel_shim::{BlockDevice, BlockSizes, IoBuf};

const SIZES: BlockSizes = BlockSizes {
    minimum: 1,
    preferred: 4096,
    maximum: 32 * 1024 * 1024,
};

struct MemDevice {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }
    fn block_sizes(&self) -> BlockSizes {
        SIZES
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        let d = self.data.read().unwrap();
        let o = offset as usize;
        Ok(IoBuf::copy_from(&d[o..o + len as usize]))
    }
    async fn write(&self, offset: u64, data: IoBuf, _fua: bool) -> io::Result<()> {
        let mut d = self.data.write().unwrap();
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> io::Result<()> {
        self.write_zeroes(offset, len, false, true).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool, _unmap: bool) -> io::Result<()> {
        let mut d = self.data.write().unwrap();
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
}

/// A plain file, with blocking pread/pwrite on tokio's blocking pool.
struct FileDevice {
    file: Arc<File>,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(io::Error::other)?
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn block_sizes(&self) -> BlockSizes {
        SIZES
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        self.blocking(move |f| {
            let mut b = IoBuf::uninit(len as usize);
            f.read_exact_at(&mut b, offset)?;
            Ok(b)
        })
        .await
    }
    async fn write(&self, offset: u64, data: IoBuf, fua: bool) -> io::Result<()> {
        self.blocking(move |f| {
            f.write_all_at(&data, offset)?;
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }
    async fn flush(&self) -> io::Result<()> {
        self.blocking(|f| f.sync_data()).await
    }
    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> io::Result<()> {
        self.write_zeroes(offset, len, false, true).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool, may_unmap: bool) -> io::Result<()> {
        self.blocking(move |f| {
            let mode = if may_unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            fallocate(f, mode, offset, len).or_else(|_| {
                let zeroes = vec![0u8; len as usize];
                f.write_all_at(&zeroes, offset)
            })
        })
        .await
    }
}

fn usage() -> ! {
    eprintln!("usage: memserve [--file PATH] [--size BYTES] [--name NAME] [--read-only] [--unix PATH | ADDR]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let mut file = None;
    let mut size: u64 = 1 << 30;
    let mut name = "mem".to_string();
    let mut read_only = false;
    let mut unix = None;
    let mut addr = "127.0.0.1:0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--file" => file = Some(args.next().unwrap_or_else(|| usage())),
            "--size" => size = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            "--name" => name = args.next().unwrap_or_else(|| usage()),
            "--read-only" => read_only = true,
            "--unix" => unix = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            other if !other.starts_with('-') => addr = other.to_string(),
            _ => usage(),
        }
    }

    let listener = match &unix {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)?;
            println!("listening on unix:{path}");
            Listener::Unix(l)
        }
        None => {
            let l = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {}", l.local_addr()?);
            Listener::Tcp(l)
        }
    };

    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        let _ = stop.send(true);
    });

    let description = "kernel-shim example export".to_string();
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new().read(true).write(!read_only).open(&path)?;
            let size = f.metadata()?.len();
            let device = Arc::new(FileDevice {
                file: Arc::new(f),
                size,
                read_only,
            });
            serve(
                listener,
                Export {
                    name,
                    description,
                    device,
                },
                rx,
            )
            .await
        }
        None => {
            let device = Arc::new(MemDevice {
                data: RwLock::new(vec![0; size as usize]),
                read_only,
            });
            serve(
                listener,
                Export {
                    name,
                    description,
                    device,
                },
                rx,
            )
            .await
        }
    }
}
