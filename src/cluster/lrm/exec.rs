//! The edge: runs one agent process. Its own process group, stdin `/dev/null`, stdout and stderr
//! into a file (not a pipe: IPaddr2 leaves a background `send_arp` holding its output open, and a
//! pipe would make us wait for it), the whole group killed with SIGKILL on timeout.

use super::rules::{tail_text, Exit};
use super::OUTPUT_TAIL_BYTES;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One process to run.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// stdout (and stderr unless `stderr` is set) go here; an existing file is replaced.
    pub output: PathBuf,
    /// A separate file for stderr (for `meta-data`, whose stdout is the answer).
    pub stderr: Option<PathBuf>,
    pub timeout: Duration,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Ran {
    pub exit: Exit,
    /// The tail of `output` (or the spawn error).
    pub output: String,
    /// The tail of `stderr` when it was separate.
    pub stderr: String,
    pub elapsed: Duration,
}

/// A fresh file at `path` (unlinked first, so a background process still writing to the old one
/// does not scribble into the new one).
fn fresh_file(path: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    File::create(path)
}

/// The last [`OUTPUT_TAIL_BYTES`] of a file, as text.
pub fn read_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(OUTPUT_TAIL_BYTES as u64);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::with_capacity(OUTPUT_TAIL_BYTES);
    let _ = f.take(OUTPUT_TAIL_BYTES as u64).read_to_end(&mut buf);
    tail_text(&buf, OUTPUT_TAIL_BYTES)
}

/// The first `max` bytes of a file, as text (for `meta-data`, whose answer is all of stdout).
pub fn read_head(path: &Path, max: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    let _ = f.take(max as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `s` to completion or timeout. Never panics; a process that cannot be started is
/// `Exit::SpawnFailed`.
pub async fn run(s: Spawn) -> Ran {
    let started = Instant::now();
    // `errno` only for exec failures: a missing output directory is our problem (status
    // Error, rc 1), not a missing agent (NotInstalled, rc 5).
    let failed = |e: std::io::Error, what: &str, errno: i32| Ran {
        exit: Exit::SpawnFailed(errno),
        output: format!("cannot {what}: {e}"),
        stderr: String::new(),
        elapsed: started.elapsed(),
    };
    let out = match fresh_file(&s.output) {
        Ok(f) => f,
        Err(e) => return failed(e, &format!("create {}", s.output.display()), 0),
    };
    let err = match &s.stderr {
        Some(p) => fresh_file(p),
        None => out.try_clone(),
    };
    let err = match err {
        Ok(f) => f,
        Err(e) => return failed(e, "open the agent's stderr file", 0),
    };
    let mut cmd = Command::new(&s.program);
    cmd.args(&s.args)
        .env_clear()
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .current_dir("/")
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            return failed(e, &format!("run {}", s.program.display()), errno);
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut waiter = tokio::task::spawn_blocking(move || child.wait());
    let status = match tokio::time::timeout(s.timeout, &mut waiter).await {
        Ok(r) => r,
        Err(_) => {
            if !waiter.is_finished() {
                // SAFETY: kill(2) with a negative pid signals that process group. The group
                // leader is our child and (as far as we know) not reaped yet, so its id has not
                // been reused; the window between the check and the kill is microseconds.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = waiter.await;
            return Ran {
                exit: Exit::TimedOut,
                output: read_tail(&s.output),
                stderr: s.stderr.as_deref().map(read_tail).unwrap_or_default(),
                elapsed: started.elapsed(),
            };
        }
    };
    let exit = match status {
        Ok(Ok(st)) => match (st.code(), st.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(1),
        },
        Ok(Err(e)) => Exit::SpawnFailed(e.raw_os_error().unwrap_or(0)),
        Err(_) => Exit::SpawnFailed(0),
    };
    Ran {
        exit,
        output: read_tail(&s.output),
        stderr: s.stderr.as_deref().map(read_tail).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}
