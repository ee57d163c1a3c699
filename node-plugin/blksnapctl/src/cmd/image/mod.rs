//! `blksnapctl image ...`: work with snapshot images (or any block device
//! or file).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use clap::Subcommand;

use crate::{Ctx, Error, Result};

pub mod copy;
pub mod verify;

/// Bytes per read: large enough for sequential speed, small enough to keep
/// the progress bar moving.
pub const BUF: usize = 4 << 20;

/// The `image` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare an image with a reference device or file, byte for byte.
    Verify(verify::Args),
    /// Copy an image to a file (sparse) or a block device.
    Copy(copy::Args),
}

/// Runs an `image` subcommand.
pub fn run(cmd: &Command, ctx: &Ctx) -> Result<()> {
    match cmd {
        Command::Verify(a) => verify::run(a, ctx),
        Command::Copy(a) => copy::run(a, ctx),
    }
}

/// Fills `buf` from `file` at `offset`.
pub(crate) fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|source| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        offset,
        source,
    })
}
