//! The CIB on disk: `<state_dir>/<node>/cib.json`, one JSON object:
//!
//! ```text
//! {"format":"hablock-cib","version":1,"origin_quorate":true,
//!  "sha256":"<hex SHA-256 of the cib string>","cib":"<the document as a JSON string>"}
//! ```
//!
//! The document is kept as a string so the checksum covers its exact bytes. A save writes
//! `cib.json.tmp` and fsyncs it, moves the current file to `cib.json.prev`, renames the new one
//! into place and fsyncs the directory. A load reads all three names, ignores any that is torn,
//! corrupt or invalid (logging why), and returns the newest valid one, so a crash at any point
//! of a save leaves the old or the new document, never neither.

use super::{Cib, CibVersion};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "cib.json";
const FORMAT: &str = "hablock-cib";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    version: u32,
    origin_quorate: bool,
    sha256: String,
    cib: String,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of the file for `cib`.
pub fn encode(cib: &Cib, origin_quorate: bool) -> Vec<u8> {
    let doc = cib.to_json();
    let f = OnDisk {
        format: FORMAT.into(),
        version: VERSION,
        origin_quorate,
        sha256: sha256_hex(doc.as_bytes()),
        cib: doc,
    };
    let mut b = serde_json::to_vec(&f).expect("serialises");
    b.push(b'\n');
    b
}

/// Reads one file's bytes: format, checksum, then the document and its validation.
pub fn decode(b: &[u8]) -> Result<(Cib, bool), String> {
    let f: OnDisk = serde_json::from_slice(b).map_err(|e| format!("not a CIB file ({e})"))?;
    if f.format != FORMAT || f.version != VERSION {
        return Err(format!(
            "format {:?} version {} is not {FORMAT:?} version {VERSION}",
            f.format, f.version
        ));
    }
    if sha256_hex(f.cib.as_bytes()) != f.sha256 {
        return Err("checksum mismatch (the file is corrupt)".into());
    }
    let cib = Cib::from_json(&f.cib).map_err(|e| e.to_string())?;
    Ok((cib, f.origin_quorate))
}

fn names(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(FILE_NAME),
        dir.join(format!("{FILE_NAME}.prev")),
        dir.join(format!("{FILE_NAME}.tmp")),
    ]
}

/// Writes `cib` durably into `dir` (see the module notes).
pub fn save(dir: &Path, cib: &Cib, origin_quorate: bool) -> Result<(), String> {
    let [cur, prev, tmp] = names(dir);
    let io = |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
        f.write_all(&encode(cib, origin_quorate))
            .map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
    }
    if cur.exists() {
        std::fs::rename(&cur, &prev).map_err(|e| io("rename", &cur, e))?;
    }
    std::fs::rename(&tmp, &cur).map_err(|e| io("rename", &tmp, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

/// What [`load`] found.
#[derive(Debug)]
pub struct Loaded {
    pub cib: Cib,
    pub origin_quorate: bool,
    pub path: PathBuf,
    /// Files that were there but unusable, with the reason.
    pub skipped: Vec<String>,
}

/// The newest valid document in `dir`, if any.
pub fn load(dir: &Path) -> Option<Loaded> {
    let mut best: Option<Loaded> = None;
    let mut skipped = Vec::new();
    for p in names(dir) {
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                skipped.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        match decode(&bytes) {
            Ok((cib, origin_quorate)) => {
                let v: CibVersion = cib.version();
                if best.as_ref().is_none_or(|b| v > b.cib.version()) {
                    best = Some(Loaded {
                        cib,
                        origin_quorate,
                        path: p,
                        skipped: Vec::new(),
                    });
                }
            }
            Err(e) => skipped.push(format!("{}: {e}", p.display())),
        }
    }
    best.map(|mut b| {
        b.skipped = skipped;
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::cib::CibOp;

    fn cib(v: &str) -> Cib {
        let mut c = Cib::new();
        c.apply(&[CibOp::SetProperty {
            name: "cluster-name".into(),
            value: Some(v.into()),
        }])
        .unwrap();
        c
    }

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let c = cib("x");
        let b = encode(&c, true);
        assert_eq!(decode(&b).unwrap(), (c.clone(), true));
        // Flip a byte inside the document string: the checksum catches it.
        let s = String::from_utf8(b.clone()).unwrap();
        let bad = s.replacen("cluster-name", "cluster-nbme", 1);
        assert!(decode(bad.as_bytes()).unwrap_err().contains("checksum"));
        assert!(decode(&b[..b.len() / 2]).is_err());
        assert!(decode(b"").is_err());
        let other = s.replacen("hablock-cib", "something-else", 1);
        assert!(decode(other.as_bytes()).is_err());
    }

    #[test]
    fn newest_valid_copy_survives() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        let mut a = cib("a");
        save(dir.path(), &a, false).unwrap();
        a.apply(&[CibOp::SetProperty {
            name: "cluster-name".into(),
            value: Some("b".into()),
        }])
        .unwrap();
        save(dir.path(), &a, true).unwrap();
        let l = load(dir.path()).unwrap();
        assert_eq!(l.cib, a);
        assert!(l.origin_quorate);
        // A torn current file: the previous copy is used and the damage reported.
        std::fs::write(dir.path().join(FILE_NAME), b"{\"format\":\"hablock-ci").unwrap();
        let l = load(dir.path()).unwrap();
        assert_eq!(l.cib.configuration.property("cluster-name"), Some("a"));
        assert_eq!(l.skipped.len(), 1);
        // A crash between the renames: the new copy is still in the temporary file.
        std::fs::write(dir.path().join(format!("{FILE_NAME}.tmp")), encode(&a, true)).unwrap();
        assert_eq!(load(dir.path()).unwrap().cib, a);
    }
}
