//! `blksnapctl image copy IMAGE DEST`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{read_at, BUF};
use crate::progress::{rate_mib_s, Progress};
use crate::units::Size;
use crate::{device, Ctx, Error, Report, Result};

/// Granularity at which zeros are skipped in a sparse copy.
const HOLE: usize = 64 << 10;

/// Arguments of `image copy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image (e.g. /dev/blksnap-image0), or any device or file.
    pub image: PathBuf,
    /// Destination: a regular file (created or truncated; zero ranges are
    /// left as holes) or a block device at least as large (overwritten).
    pub dest: PathBuf,
    /// Write zeros to a file destination instead of leaving holes.
    #[arg(long)]
    pub no_sparse: bool,
}

/// What a copy did.
#[derive(Debug, Serialize)]
pub struct Copied {
    pub image: PathBuf,
    pub dest: PathBuf,
    pub bytes: u64,
    pub written: u64,
    pub seconds: f64,
    pub mib_per_s: f64,
}

impl Report for Copied {
    fn human(&self) -> String {
        format!(
            "copied {} of {} to {} ({} written, {:.1} MiB/s)",
            Size(self.bytes),
            self.image.display(),
            self.dest.display(),
            Size(self.written),
            self.mib_per_s
        )
    }
}

/// Copies `len` bytes from `src` to `dst`; with `sparse`, 64 KiB blocks of
/// zeros are skipped (the destination must read zeros there). Returns the
/// bytes written.
pub fn copy(
    (src, src_path): (&File, &Path),
    (dst, dst_path): (&File, &Path),
    len: u64,
    sparse: bool,
    progress: &mut Progress,
) -> Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut off = 0u64;
    let mut written = 0u64;
    while off < len {
        let n = (len - off).min(BUF as u64) as usize;
        read_at(src, src_path, &mut buf[..n], off)?;
        let mut i = 0usize;
        while i < n {
            let end = (i + HOLE).min(n);
            let block = &buf[i..end];
            if !(sparse && block.iter().all(|&b| b == 0)) {
                let at = off + i as u64;
                dst.write_all_at(block, at).map_err(|source| Error::Io {
                    op: "write",
                    path: dst_path.to_path_buf(),
                    offset: at,
                    source,
                })?;
                written += block.len() as u64;
            }
            i = end;
        }
        off += n as u64;
        progress.set(off);
    }
    dst.sync_all().map_err(|source| Error::Io {
        op: "sync",
        path: dst_path.to_path_buf(),
        offset: len,
        source,
    })?;
    Ok(written)
}

/// Opens the destination; returns it and whether holes read as zeros.
fn open_dest(path: &Path, len: u64) -> Result<(File, bool)> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let is_block = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if is_block {
        let mut f = OpenOptions::new()
            .write(true)
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(path)
            .map_err(open_err)?;
        let size = device::size_of(&mut f, path)?;
        if size < len {
            return Err(Error::Usage {
                what: "the destination device is smaller than the image",
            });
        }
        return Ok((f, false));
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(open_err)?;
    f.set_len(len).map_err(|source| Error::Io {
        op: "set the length of",
        path: path.to_path_buf(),
        offset: len,
        source,
    })?;
    Ok((f, true))
}

/// Copies the image with a progress bar.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let mut src = device::open_source(&args.image)?;
    let len = device::size_of(&mut src, &args.image)?;
    let (dst, holes_are_zero) = open_dest(&args.dest, len)?;
    let t0 = Instant::now();
    let mut bar = Progress::new("copy", len, ctx.progress);
    let written = copy(
        (&src, &args.image),
        (&dst, &args.dest),
        len,
        holes_are_zero && !args.no_sparse,
        &mut bar,
    )?;
    bar.finish();
    let elapsed = t0.elapsed();
    ctx.emit(&Copied {
        image: args.image.clone(),
        dest: args.dest.clone(),
        bytes: len,
        written,
        seconds: elapsed.as_secs_f64(),
        mib_per_s: rate_mib_s(len, elapsed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn copies_and_leaves_holes() {
        let len = BUF + 3 * HOLE + 100;
        let mut data = vec![0u8; len];
        // Data in the second hole-sized block and the last partial one.
        data[HOLE + 5] = 1;
        data[len - 1] = 2;
        let mut src = tempfile::NamedTempFile::new().unwrap();
        src.write_all(&data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (sparse, want_written) in [(true, (HOLE + 100) as u64), (false, len as u64)] {
            let dest = dir.path().join(format!("out-{sparse}"));
            let (dst, holes) = open_dest(&dest, len as u64).unwrap();
            assert!(holes);
            let mut bar = Progress::new("t", len as u64, false);
            let written = copy(
                (src.as_file(), src.path()),
                (&dst, &dest),
                len as u64,
                sparse,
                &mut bar,
            )
            .unwrap();
            assert_eq!(written, want_written, "sparse {sparse}");
            assert_eq!(std::fs::read(&dest).unwrap(), data);
        }
    }
}
