//! `blksnapctl image verify IMAGE REFERENCE`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{read_at, BUF};
use crate::progress::{rate_mib_s, Progress};
use crate::units::{self, Size};
use crate::{device, Ctx, Error, Format, Report, Result};

/// Granularity at which differences are counted.
pub const BLOCK: usize = 4096;

/// Arguments of `image verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image (e.g. /dev/blksnap-image0), or any device or file.
    pub image: PathBuf,
    /// Reference device or file, e.g. a copy of the device made just
    /// before the take.
    pub reference: PathBuf,
    /// Compare only the first SIZE bytes (both must be at least that big);
    /// by default both must have the same size.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub length: Option<u64>,
}

/// Where two sources differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Comparison {
    /// 4 KiB blocks that differ.
    pub blocks: u64,
    /// Byte offset of the first differing block.
    pub first: Option<u64>,
}

/// Compares the first `len` bytes of `a` and `b`.
pub fn compare(
    (a, a_path): (&File, &Path),
    (b, b_path): (&File, &Path),
    len: u64,
    progress: &mut Progress,
) -> Result<Comparison> {
    let mut abuf = vec![0u8; BUF];
    let mut bbuf = vec![0u8; BUF];
    let mut cmp = Comparison::default();
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(BUF as u64) as usize;
        read_at(a, a_path, &mut abuf[..n], off)?;
        read_at(b, b_path, &mut bbuf[..n], off)?;
        if abuf[..n] != bbuf[..n] {
            for (i, (x, y)) in abuf[..n]
                .chunks(BLOCK)
                .zip(bbuf[..n].chunks(BLOCK))
                .enumerate()
            {
                if x != y {
                    cmp.blocks += 1;
                    cmp.first.get_or_insert(off + (i * BLOCK) as u64);
                }
            }
        }
        off += n as u64;
        progress.set(off);
    }
    Ok(cmp)
}

/// An equal comparison.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub image: PathBuf,
    pub reference: PathBuf,
    pub bytes: u64,
    pub equal: bool,
    pub differing_blocks: u64,
    pub first_difference: Option<u64>,
    pub seconds: f64,
    pub mib_per_s: f64,
}

impl Report for Verified {
    fn human(&self) -> String {
        let verdict = if self.equal { "equal" } else { "DIFFERENT" };
        format!(
            "{} and {}: {verdict} over {} ({:.1} MiB/s)",
            self.image.display(),
            self.reference.display(),
            Size(self.bytes),
            self.mib_per_s
        )
    }
}

/// The number of bytes to compare.
pub fn resolve_length(
    image: (&Path, u64),
    reference: (&Path, u64),
    asked: Option<u64>,
) -> Result<u64> {
    let mismatch = || Error::SizeMismatch {
        image: image.0.to_path_buf(),
        reference: reference.0.to_path_buf(),
        image_size: image.1,
        reference_size: reference.1,
    };
    match asked {
        Some(len) if len <= image.1 && len <= reference.1 => Ok(len),
        Some(_) => Err(mismatch()),
        None if image.1 == reference.1 => Ok(image.1),
        None => Err(mismatch()),
    }
}

/// Compares and reports; a difference fails with exit code 5.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let mut img = device::open_source(&args.image)?;
    let mut reference = device::open_source(&args.reference)?;
    let img_size = device::size_of(&mut img, &args.image)?;
    let ref_size = device::size_of(&mut reference, &args.reference)?;
    let len = resolve_length(
        (&args.image, img_size),
        (&args.reference, ref_size),
        args.length,
    )?;
    let t0 = Instant::now();
    let mut bar = Progress::new("verify", len, ctx.progress);
    let cmp = compare(
        (&img, &args.image),
        (&reference, &args.reference),
        len,
        &mut bar,
    )?;
    bar.finish();
    let elapsed = t0.elapsed();
    let report = Verified {
        image: args.image.clone(),
        reference: args.reference.clone(),
        bytes: len,
        equal: cmp.blocks == 0,
        differing_blocks: cmp.blocks,
        first_difference: cmp.first,
        seconds: elapsed.as_secs_f64(),
        mib_per_s: rate_mib_s(len, elapsed),
    };
    match cmp.first {
        None => ctx.emit(&report),
        Some(first) => {
            // Scripts get the numbers on stdout; everyone gets the reason
            // from main.
            if ctx.format == Format::Json {
                ctx.emit(&report)?;
            }
            Err(Error::Differs {
                image: args.image.clone(),
                reference: args.reference.clone(),
                blocks: cmp.blocks,
                first,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn finds_differing_blocks() {
        let len = BUF + 3 * BLOCK;
        let base: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let cases: Vec<(Vec<usize>, Comparison)> = vec![
            (vec![], Comparison::default()),
            (
                vec![5],
                Comparison {
                    blocks: 1,
                    first: Some(0),
                },
            ),
            (
                vec![BLOCK + 1, BLOCK + 7, BUF + BLOCK],
                Comparison {
                    blocks: 2,
                    first: Some(BLOCK as u64),
                },
            ),
            (
                vec![len - 1],
                Comparison {
                    blocks: 1,
                    first: Some((BUF + 2 * BLOCK) as u64),
                },
            ),
        ];
        let a = file_with(&base);
        for (flips, want) in cases {
            let mut other = base.clone();
            for &i in &flips {
                other[i] ^= 0xff;
            }
            let b = file_with(&other);
            let mut bar = Progress::new("t", len as u64, false);
            let got = compare(
                (a.as_file(), a.path()),
                (b.as_file(), b.path()),
                len as u64,
                &mut bar,
            )
            .unwrap();
            assert_eq!(got, want, "flips {flips:?}");
        }
    }

    #[test]
    fn lengths() {
        let (i, r) = (Path::new("/i"), Path::new("/r"));
        assert_eq!(resolve_length((i, 100), (r, 100), None).unwrap(), 100);
        assert_eq!(resolve_length((i, 100), (r, 200), Some(50)).unwrap(), 50);
        let e = resolve_length((i, 100), (r, 200), None).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::DIFFERS);
        assert!(resolve_length((i, 100), (r, 200), Some(150)).is_err());
    }
}
