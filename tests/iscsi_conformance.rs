//! A bounded subset of libiscsi's conformance suite through benches/iscsi-conformance: the same
//! tests against Debian's tgtd and against hablock on the same backing file, and (with
//! `--replicated`) against a `--bstype hablock` LUN on a replicated resource whose Primary has
//! a connected, in-sync peer; the script fails when a test that passes on tgtd does not pass on
//! hablock's file LUN, or one that passes there does not pass on the replicated LUN. The full
//! run is `benches/iscsi-conformance` (tables in docs/iscsi.md and the README).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Suites that cover the data path, residuals, reservations and what tgt lacks (COMPARE AND
/// WRITE), and run in seconds.
const SUBSET: &str = "ALL.Inquiry,ALL.ReadCapacity16,ALL.Read10,ALL.Write10,ALL.WriteSame10,\
                      ALL.CompareAndWrite,ALL.iSCSIResiduals,ALL.ProutRegister,ALL.PrinReadKeys,\
                      ALL.ReportSupportedOpcodes,ALL.iSCSITMF";

#[test]
fn conformance_subset_hablock_passes_what_tgtd_passes() {
    if !require(
        "conformance_subset_hablock_passes_what_tgtd_passes",
        &[
            ("iscsi-test-cu", "libiscsi-bin"),
            ("tgtd", "tgt"),
            ("tgtadm", "tgt"),
            ("python3", "python3"),
        ],
    ) {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/iscsi-conformance");
    let bins = bin("hablockd").parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = run_timeout(
        Command::new(&script)
            .args(["--replicated", "--tests", SUBSET, "--size", "16M", "--bin"])
            .arg(&bins)
            .arg("--dir")
            .arg(dir.path()),
        Duration::from_secs(360),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "conformance subset:\n{text}");
    println!("{text}");
    let total = text.lines().find(|l| l.starts_with("total")).expect("a total line");
    let nums: Vec<u32> = total
        .split_whitespace()
        .skip(1)
        .flat_map(|c| c.split('/').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<_>>())
        .collect();
    // tgtd, hablock's file LUN, the replicated LUN: pass/fail/skip each.
    assert_eq!(nums.len(), 9, "{total}");
    assert!(
        nums[0] > 0 && nums[3] >= nums[0],
        "hablock passes fewer than tgtd: {total}\n{text}"
    );
    assert_eq!(nums[4], 0, "hablock failures:\n{text}");
    assert!(
        text.contains("CompareAndWrite.Simple"),
        "CAW should pass on hablock only:\n{text}"
    );
    // The replicated LUN passes every test the file LUN passes, and fails none.
    assert!(
        text.contains("passes on hablock's file LUN, not on the replicated LUN: none"),
        "the replicated LUN passes less than the file LUN:\n{text}"
    );
    assert!(nums[6] >= nums[3] && nums[7] == 0, "replicated LUN: {total}\n{text}");
}
