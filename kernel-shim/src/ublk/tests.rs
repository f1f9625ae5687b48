//! Host-side tests of the ublk server that need no kernel driver.

use super::*;
use crate::{BlockSizes, IoBuf};

struct Nothing;

impl BlockDevice for Nothing {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 20,
        }
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, _offset: u64, len: u32) -> io::Result<IoBuf> {
        Ok(IoBuf::zeroed(len as usize))
    }
    async fn write(&self, _offset: u64, _data: IoBuf, _fua: bool) -> io::Result<()> {
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u32, _fua: bool) -> io::Result<()> {
        Ok(())
    }
    async fn write_zeroes(&self, _offset: u64, _len: u32, _fua: bool, _may_unmap: bool) -> io::Result<()> {
        Ok(())
    }
}

fn start_at(path: &str) -> Result<UblkDevice, UblkError> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    UblkDevice::start_at(path, Arc::new(Nothing), UblkConfig::default(), rt.handle().clone())
}

#[test]
fn missing_control_device_names_the_module_to_load() {
    let dir = std::env::temp_dir().join(format!("no-ublk-{}", std::process::id()));
    let path = dir.join("ublk-control");
    let err = start_at(path.to_str().unwrap()).err().expect("no control device");
    assert!(matches!(err, UblkError::NotAvailable), "{err:?}");
    assert_eq!(
        err.to_string(),
        "ublk is not available: load the ublk_drv module (modprobe ublk_drv, Linux 6.0+)"
    );
}

#[test]
fn the_real_control_device_is_missing_here_or_works() {
    // This host's kernel has no ublk: the real path gives the same clear error. (On a
    // kernel with ublk_drv loaded the device is created and removed again.)
    if std::path::Path::new(sys::CONTROL_PATH).exists() {
        return;
    }
    let err = start_at(sys::CONTROL_PATH).err().expect("no ublk here");
    assert_eq!(err.to_string(), sys::NOT_AVAILABLE);
}

#[test]
fn a_control_path_that_is_not_ublk_is_an_error_not_a_panic() {
    // /dev/null opens, but refuses URING_CMD: ADD_DEV fails with the kernel's errno.
    let err = start_at("/dev/null").err().expect("not a ublk control device");
    let msg = err.to_string();
    assert!(
        msg.starts_with("ublk ADD_DEV failed") || msg.contains("io_uring"),
        "{msg}"
    );
}

#[test]
fn owner_marks_are_stable_distinct_and_never_zero() {
    // Pinned: a restarted daemon must compute the same mark as the one that died.
    assert_eq!(owner_mark(&[]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(
        owner_mark(&["hablock", "alpha", "r0"]),
        owner_mark(&["hablock", "alpha", "r0"])
    );
    assert_ne!(
        owner_mark(&["hablock", "alpha", "r0"]),
        owner_mark(&["hablock", "alpha", "r1"])
    );
    assert_ne!(
        owner_mark(&["hablock", "alpha", "r0"]),
        owner_mark(&["hablock", "beta", "r0"])
    );
    // The separator keeps ("ab", "c") apart from ("a", "bc").
    assert_ne!(owner_mark(&["ab", "c"]), owner_mark(&["a", "bc"]));
    assert_ne!(owner_mark(&["hablock", "alpha", "r0"]), 0);
}
