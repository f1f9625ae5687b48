//! hablockd driven only by the NBD clients people use: nbdinfo, nbdcopy, fio, qemu-io.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

#[test]
fn nbdinfo_reports_size_flags_and_block_sizes() {
    let node = Node::ready(NodeOptions::default());
    let out = ok(Command::new("nbdinfo").arg("--json").arg(node.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "r0");
    let size = e["export-size"].as_u64().unwrap();
    // 64 MiB minus the internal metadata, a multiple of 4 KiB.
    assert!(
        size > 60 << 20 && size < 64 << 20 && size.is_multiple_of(4096),
        "size {size}"
    );
    assert_eq!(e["is_read_only"], false);
    for cap in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"] {
        assert_eq!(e[cap], true, "{cap} in {out}");
    }
    assert!(e["block_size_minimum"].as_u64().unwrap() >= 512);
    assert_eq!(e["block_size_preferred"], 4096);
    assert!(e["block_size_maximum"].as_u64().unwrap() >= 1 << 20);
    // The status reports the same size and the URI.
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert_eq!(st["resources"][0]["size"].as_u64().unwrap(), size);
    assert_eq!(st["resources"][0]["nbd"]["uri"], node.uri());
}

#[test]
fn nbdcopy_random_data_in_and_out() {
    let node = Node::ready(NodeOptions {
        size_mib: 80,
        ..Default::default()
    });
    let size = 64usize << 20;
    let src = node.path("in.bin");
    std::fs::write(&src, random_bytes(1, size)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(node.uri()));
    let back = node.path("out.bin");
    // Read back exactly what was written (the export is a little larger).
    let got = nbd_read_prefix(&node.uri(), &back, size);
    assert!(got == std::fs::read(&src).unwrap(), "data read back differs");
    // And the bytes are really in the backing file, at the start of the data area.
    let mut disk = std::fs::File::open(&node.disk).unwrap();
    let mut head = vec![0u8; size];
    disk.read_exact(&mut head).unwrap();
    assert!(
        head == std::fs::read(&src).unwrap(),
        "backing file differs from what was written"
    );
}

#[test]
fn nbdcopy_over_unix_socket() {
    let node = Node::ready(NodeOptions {
        unix_nbd: true,
        ..Default::default()
    });
    let src = node.path("in.bin");
    std::fs::write(&src, random_bytes(2, 8 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(node.uri()));
    let back = node.path("out.bin");
    let got = nbd_read_prefix(&node.uri(), &back, 8 << 20);
    assert!(got == std::fs::read(&src).unwrap(), "data read back differs");
}

#[test]
fn fio_nbd_engine_verifies_with_several_connections() {
    if !require("fio_nbd_engine_verifies_with_several_connections", &[("fio", "fio")]) {
        return;
    }
    let node = Node::ready(NodeOptions {
        size_mib: 80,
        ..Default::default()
    });
    // Four jobs = four NBD connections, each on its own 16 MiB region, verifying crc32c.
    let out = ok(Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
        ])
        .args(["--numjobs=4", "--size=16M", "--offset_increment=16M", "--verify=crc32c"])
        .args([
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--group_reporting",
        ])
        .arg("--output-format=json")
        .arg(format!("--uri={}", node.uri()))
        .current_dir(node.dir.path()));
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{out}");
    assert!(
        job["write"]["io_bytes"].as_u64().unwrap() >= 64 << 20,
        "wrote {}",
        job["write"]["io_bytes"]
    );
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 64 << 20,
        "verified {}",
        job["read"]["io_bytes"]
    );
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert_eq!(st["resources"][0]["counters"]["io_errors"], 0);
}

#[test]
fn qemu_io_and_qemu_img_over_nbd() {
    let node = Node::ready(NodeOptions::default());
    let info = ok(Command::new("qemu-img").args(["info", "--output=json"]).arg(node.uri()));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(v["virtual-size"].as_u64().unwrap() > 60 << 20);
    // Unaligned (512-byte) writes, pattern reads, write-zeroes and discard.
    let out = ok(Command::new("qemu-io").args(["-f", "raw"]).arg(node.uri()).args([
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "write -P 0xcd 512 512",
        "-c",
        "read -P 0xab 0 512",
        "-c",
        "read -P 0xcd 512 512",
        "-c",
        "read -P 0xab 1024 1047552",
        "-c",
        "write -z 65536 65536",
        "-c",
        "read -P 0 65536 65536",
        "-c",
        "discard 131072 131072",
        "-c",
        "flush",
        // Not even sector-aligned: read-modify-write under O_DIRECT keeps the neighbours.
        "-c",
        "write -P 0x22 1048576 8192",
        "-c",
        "write -P 0x33 1049577 3001",
        "-c",
        "read -P 0x22 1048576 1001",
        "-c",
        "read -P 0x33 1049577 3001",
        "-c",
        "read -P 0x22 1052578 4190",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
}

/// Does a fixed-newstyle handshake by hand and enters transmission with EXPORT_NAME.
fn handshake(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&2u32.to_be_bytes());
    opt.extend_from_slice(b"r0");
    s.write_all(&opt).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    s
}

fn closed(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
        }
    }
}

fn still_serves(node: &Node) {
    let out = ok(Command::new("nbdinfo").arg("--size").arg(node.uri()));
    assert!(out.trim().parse::<u64>().unwrap() > 0);
}

#[test]
fn malformed_handshakes_leave_the_daemon_serving() {
    let node = Node::ready(NodeOptions::default());
    // Garbage instead of client flags, then garbage option magic.
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xffu8; 4][..]] {
        let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(junk);
        assert!(closed(s), "server kept a connection that sent junk");
        still_serves(&node);
    }
    // An option claiming a 4 GiB payload.
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&u32::MAX.to_be_bytes());
    let _ = s.write_all(&opt);
    assert!(closed(s));
    // A client that vanishes halfway through the greeting.
    drop(TcpStream::connect(("127.0.0.1", node.port)).unwrap());
    still_serves(&node);
    // An unknown export name is refused by name, not by a crash.
    let out = run_timeout(
        Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{}/nosuch", node.port)),
        CLIENT_TIMEOUT,
    );
    assert!(!out.status.success());
    still_serves(&node);
}

#[test]
fn malformed_requests_leave_the_daemon_serving() {
    let node = Node::ready(NodeOptions::default());
    // Bad request magic: the connection is closed.
    let mut s = handshake(node.port);
    s.write_all(&[0x55u8; 28]).unwrap();
    assert!(closed(s));
    still_serves(&node);

    // A read far past the end gets an error reply (EINVAL), and the connection lives on.
    let mut s = handshake(node.port);
    let req = |typ: u16, handle: u64, off: u64, len: u32| {
        let mut r = Vec::new();
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&off.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    };
    s.write_all(&req(0, 7, u64::MAX - 100, 4096)).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes());
    assert_eq!(
        u32::from_be_bytes(reply[4..8].try_into().unwrap()),
        22,
        "EINVAL expected"
    );
    assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), 7);
    // Unknown command type: an error reply too.
    s.write_all(&req(77, 8, 0, 0)).unwrap();
    s.read_exact(&mut reply).unwrap();
    assert_ne!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), 0);
    // A good read still works on the same connection.
    s.write_all(&req(0, 9, 0, 512)).unwrap();
    s.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), 0);
    let mut data = vec![0u8; 512];
    s.read_exact(&mut data).unwrap();
    // Truncated request, then hang up.
    s.write_all(&req(1, 10, 0, 4096)[..20]).unwrap();
    drop(s);
    still_serves(&node);
    // A write header promising 64 MiB that never comes, then a hang-up.
    let mut s = handshake(node.port);
    s.write_all(&req(1, 11, 0, 64 << 20)).unwrap();
    drop(s);
    still_serves(&node);
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert_eq!(st["resources"][0]["nbd"]["clients"], 0, "connections not cleaned up");
}

#[test]
fn writeback_cache_mode_round_trips_and_survives_sigkill() {
    let mut node = Node::ready(NodeOptions {
        writeback: true,
        ..Default::default()
    });
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert_eq!(st["resources"][0]["backing"]["direct_io"], false);
    let src = node.path("in.bin");
    std::fs::write(&src, random_bytes(6, 8 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(node.uri()));
    // Unaligned writes and zeroes through qemu-io exercise the buffered paths too.
    let out = ok(Command::new("qemu-io").args(["-f", "raw"]).arg(node.uri()).args([
        "-c",
        "write -P 0x11 8389120 3000",
        "-c",
        "read -P 0x11 8389120 3000",
        "-c",
        "write -z 8392704 65536",
        "-c",
        "read -P 0 8392704 65536",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // The page cache belongs to the kernel: a killed daemon loses nothing written.
    node.kill();
    node.start();
    node.hbadm_ok(&["primary", "r0"]);
    let got = nbd_read_prefix(&node.uri(), &node.path("out.bin"), 8 << 20);
    assert!(got == std::fs::read(&src).unwrap(), "data read back differs");
}
