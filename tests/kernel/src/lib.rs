//! Kernel tests of blksnap.ko, in `tests/`; this library is empty.
//!
//! The tests need root, real block devices and the module loaded, so they
//! run only inside the VM harness (`tests/vm/`), one at a time
//! (`--test-threads=1`: they share disks). Their device contract is
//! described at the top of `tests/common/mod.rs`.
