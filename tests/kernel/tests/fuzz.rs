//! The control device fuzzer (src/bin/blksnap-fuzz) for a short run in
//! every kernel suite: 50000 random calls from 4 threads with a fresh seed,
//! which the fuzzer prints first; the long runs are a documented command
//! (README). It fails on any broken invariant, and the harness on any
//! kernel report it provoked.

use std::process::Command;

#[test]
fn fuzz_control_device_50k_calls() {
    let status = Command::new(env!("CARGO_BIN_EXE_blksnap-fuzz"))
        .args(["--calls", "50000", "--threads", "4"])
        .status()
        .expect("run blksnap-fuzz");
    assert!(
        status.success(),
        "blksnap-fuzz failed ({status}); its seed is printed at its start"
    );
}
