//! SCSI block device emulation (to be written).
