//! Running one fence agent: find the executable, feed it `key=value` lines on stdin, capture
//! stdout and stderr in files, and kill its whole process group when it overruns its time.
//!
//! The child is a plain `std::process` child in a new process group, polled from tokio with a
//! short sleep, so this needs no tokio `process` feature and never blocks the runtime for long.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where fence-agents installs its agents; searched after the caller's directories.
pub const SYSTEM_AGENT_DIR: &str = "/usr/sbin";

/// The result of one agent run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRun {
    /// The exit code, when the agent exited by itself.
    pub rc: Option<i32>,
    /// The signal that ended it, if one did (SIGKILL after a timeout).
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Everything it wrote on stdout (also kept in `stdout_file`).
    pub stdout: String,
    /// Everything it wrote on stderr (also kept in `stderr_file`).
    pub stderr: String,
    pub stdout_file: PathBuf,
    pub stderr_file: PathBuf,
    pub elapsed_ms: u64,
}

impl AgentRun {
    /// Exit 0.
    pub fn success(&self) -> bool {
        self.rc == Some(0)
    }

    /// One line for logs and error messages: how it ended and the last thing it said.
    pub fn summary(&self) -> String {
        let how = if self.timed_out {
            format!("timed out after {} ms and was killed", self.elapsed_ms)
        } else if let Some(rc) = self.rc {
            format!("exited {rc}")
        } else {
            format!("was killed by signal {}", self.signal.unwrap_or(0))
        };
        match last_line(&self.stderr).or_else(|| last_line(&self.stdout)) {
            Some(l) => format!("{how}: {l}"),
            None => how,
        }
    }
}

fn last_line(s: &str) -> Option<String> {
    let l = s.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(if l.len() > 300 {
        let mut end = 300;
        while !l.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &l[..end])
    } else {
        l.to_string()
    })
}

/// The executable for agent `name`: the first of `dirs`, then [`SYSTEM_AGENT_DIR`], that has
/// an executable file of that name.
pub fn find_agent(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!("fence agent name {name:?} is not a plain file name"));
    }
    let mut searched = Vec::new();
    for dir in dirs.iter().map(PathBuf::as_path).chain([Path::new(SYSTEM_AGENT_DIR)]) {
        let p = dir.join(name);
        if is_executable(&p) {
            return Ok(p);
        }
        searched.push(dir.display().to_string());
    }
    Err(format!(
        "fence agent {name} not found (looked in {}); install fence-agents or configure the agent directory",
        searched.join(", ")
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `exe` with `stdin_lines` on its stdin, stdout and stderr going to `output_base` with
/// `.out` and `.err` appended (truncated first). After `timeout` the agent's whole process
/// group gets SIGKILL. An `Err` means the agent could not be started at all.
pub async fn run_agent(
    exe: &Path,
    stdin_lines: &[String],
    output_base: &Path,
    timeout: Duration,
) -> Result<AgentRun, String> {
    let stdout_file = with_suffix(output_base, "out");
    let stderr_file = with_suffix(output_base, "err");
    if let Some(dir) = output_base.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let out = File::create(&stdout_file).map_err(|e| format!("cannot create {}: {e}", stdout_file.display()))?;
    let err = File::create(&stderr_file).map_err(|e| format!("cannot create {}: {e}", stderr_file.display()))?;
    let start = Instant::now();
    let child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    // From here on, a dropped future (the caller's own timeout) still kills the agent.
    let mut guard = Running { child, done: false };
    let pgid = guard.child.id() as libc::pid_t;
    if let Some(mut stdin) = guard.child.stdin.take() {
        let mut text = stdin_lines.join("\n");
        text.push('\n');
        // The input is a few hundred bytes, well under a pipe's buffer, so this does not block.
        // An agent that exits without reading it gives EPIPE, which is its own business.
        let _ = stdin.write_all(text.as_bytes());
        // Dropping stdin closes it: the agent reads to EOF.
    }
    let mut poll = Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        match guard.child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {}: {e}", exe.display())),
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            kill_group(pgid);
            break guard
                .child
                .wait()
                .map_err(|e| format!("waiting for {} after killing it: {e}", exe.display()))?;
        }
        tokio::time::sleep(poll.min(timeout.saturating_sub(start.elapsed()))).await;
        poll = (poll * 2).min(Duration::from_millis(20));
    };
    guard.done = true;
    let elapsed_ms = start.elapsed().as_millis() as u64;
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Ok(AgentRun {
        rc: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: read(&stdout_file),
        stderr: read(&stderr_file),
        stdout_file,
        stderr_file,
        elapsed_ms,
    })
}

/// An agent that has not been waited for: dropping it kills its process group and reaps it.
struct Running {
    child: std::process::Child,
    done: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            kill_group(self.child.id() as libc::pid_t);
            // SIGKILL cannot be caught: this wait is short.
            let _ = self.child.wait();
        }
    }
}

fn with_suffix(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// A file-name-safe form of `s` (ids and node names are already safe; this guards the rest).
pub(super) fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
