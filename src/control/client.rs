//! The tools' side of the admin API: one request, one answer, bounded in time.

use super::{exit, Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends `req` to the daemon at `socket` and returns its answer; a daemon that is not
/// there becomes a [`Response`] with [`exit::NO_DAEMON`] and advice.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Response {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return Response::err(
                exit::NO_DAEMON,
                format!(
                    "cannot reach hablockd at {}: {e}; start it with `hablockd --config FILE --node NAME`",
                    socket.display()
                ),
            )
        }
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    if let Err(e) = stream.write_all(line.as_bytes()) {
        return Response::err(exit::NO_DAEMON, format!("sending to hablockd failed: {e}"));
    }
    let mut answer = String::new();
    let mut reader = BufReader::new(stream).take(16 << 20);
    match reader.read_line(&mut answer) {
        Ok(0) => Response::err(exit::NO_DAEMON, "hablockd closed the connection without an answer"),
        Ok(_) => serde_json::from_str(&answer)
            .unwrap_or_else(|e| Response::err(exit::FAILED, format!("unreadable answer from hablockd: {e}"))),
        Err(e) => Response::err(
            exit::NO_DAEMON,
            format!("no answer from hablockd within {timeout:?}: {e}"),
        ),
    }
}

use std::io::Read as _;
