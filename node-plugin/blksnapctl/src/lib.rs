//! `blksnapctl`: the operator's command line for the blksnap kernel module.
//!
//! This crate owns the vocabulary of the tool: the [`Error`] enum and its
//! exit codes, the [`Ctx`] every command runs with, and the output
//! convention (a human text by default, one JSON object per line with
//! `--json`). `main.rs` only parses and wires. Each subcommand is a module
//! under [`cmd`] exposing `Args` and `run()`.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Parser;
use nix::errno::Errno;
use serde::Serialize;

pub mod cmd;
pub mod device;
pub mod progress;
pub mod units;

#[cfg(test)]
mod cli_tests;

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Process exit codes; documented in `--help` by [`EXIT_CODES_HELP`].
pub mod exit {
    /// Success (for `image verify`: the contents are equal).
    pub const OK: u8 = 0;
    /// Any failure without a more specific code.
    pub const GENERAL: u8 = 1;
    /// Bad command line or argument.
    pub const USAGE: u8 = 2;
    /// A named object does not exist: device or file path, snapshot id,
    /// device not attached, image not yet taken, module not loaded.
    pub const NOT_FOUND: u8 = 3;
    /// The object is in use: device already attached or held by a
    /// snapshot, storage device opened elsewhere.
    pub const BUSY: u8 = 4;
    /// `image verify`: the contents differ.
    pub const DIFFERS: u8 = 5;
}

/// The exit code table shown at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (image verify: contents equal)
  1  general failure (kernel or I/O error)
  2  usage: bad command line or argument
  3  not found: no such device, file or snapshot, device not attached,
     image not taken yet, or the blksnap module is not loaded
  4  busy: device already attached or held by a snapshot, storage in use
  5  image verify: contents differ";

/// Everything that can make a command fail. The messages are single lines
/// that name the object; `main` appends the chain of sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command of the kernel module failed.
    #[error(transparent)]
    Blksnap(#[from] blksnap::Error),
    /// The control device does not exist.
    #[error("{} does not exist: is blksnap.ko loaded?", path.display())]
    ModuleNotLoaded { path: PathBuf },
    /// A path could not be opened.
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// I/O on an open path failed.
    #[error("{op} {} at byte {offset}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A path that must be a block device is something else.
    #[error("{}: not a block device", path.display())]
    NotBlockDevice { path: PathBuf },
    /// A storage path that is neither a block device nor a regular file.
    #[error("{}: a difference storage must be a block device or a regular file", path.display())]
    BadStorage { path: PathBuf },
    /// An argument that clap accepted but the command cannot use.
    #[error("{what}")]
    Usage { what: &'static str },
    /// The device's snapshot is not taken, so it has no image.
    #[error("{}: no snapshot image (device not in a taken snapshot)", device.display())]
    NoImage { device: PathBuf },
    /// `image verify` found a difference.
    #[error("{} differs from {}: {blocks} block(s) of 4 KiB differ, first at byte {first}", image.display(), reference.display())]
    Differs {
        image: PathBuf,
        reference: PathBuf,
        blocks: u64,
        first: u64,
    },
    /// `image verify` of two sources of different sizes.
    #[error("{} is {image_size} bytes but {} is {reference_size}", image.display(), reference.display())]
    SizeMismatch {
        image: PathBuf,
        reference: PathBuf,
        image_size: u64,
        reference_size: u64,
    },
    /// Writing the command's output failed (e.g. a closed pipe).
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

impl Error {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Blksnap(e) => match e {
                blksnap::Error::NotAttached { .. } | blksnap::Error::NoSuchSnapshot { .. } => {
                    exit::NOT_FOUND
                }
                blksnap::Error::AlreadyAttached { .. } | blksnap::Error::Busy { .. } => exit::BUSY,
                blksnap::Error::BadInput { .. } => exit::USAGE,
                blksnap::Error::Open { errno, .. } => errno_exit_code(*errno),
                _ => exit::GENERAL,
            },
            Error::ModuleNotLoaded { .. } | Error::NoImage { .. } => exit::NOT_FOUND,
            Error::Open { source, .. } => source
                .raw_os_error()
                .map_or(exit::GENERAL, |e| errno_exit_code(Errno::from_raw(e))),
            Error::Io { .. } | Error::Output(_) => exit::GENERAL,
            Error::NotBlockDevice { .. } | Error::BadStorage { .. } | Error::Usage { .. } => {
                exit::USAGE
            }
            Error::Differs { .. } | Error::SizeMismatch { .. } => exit::DIFFERS,
        }
    }
}

fn errno_exit_code(errno: Errno) -> u8 {
    match errno {
        Errno::ENOENT | Errno::ENXIO | Errno::ENODEV => exit::NOT_FOUND,
        Errno::EBUSY => exit::BUSY,
        _ => exit::GENERAL,
    }
}

/// The whole error chain on one line: the error, then each source.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text for a person.
    Human,
    /// One JSON object per line, for scripts.
    Json,
}

/// A command's result: printed as text or serialised as JSON.
pub trait Report: Serialize {
    /// The text for a person, without a trailing newline.
    fn human(&self) -> String;
}

/// Renders `report` in `format`, without a trailing newline.
pub fn render(report: &impl Report, format: Format) -> String {
    match format {
        Format::Human => report.human(),
        // Serialising plain data structs cannot fail.
        Format::Json => serde_json::to_string(report).unwrap_or_else(|e| {
            serde_json::json!({ "error": format!("cannot serialise the report: {e}") }).to_string()
        }),
    }
}

/// What every command runs with.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// How to print results.
    pub format: Format,
    /// Path of the control device.
    pub control: PathBuf,
    /// Whether long commands may draw a progress bar on stderr.
    pub progress: bool,
}

impl Ctx {
    /// Opens the control device.
    pub fn control(&self) -> Result<blksnap::Control> {
        blksnap::Control::open_path(&self.control).map_err(|e| match e {
            blksnap::Error::Open {
                errno: Errno::ENOENT,
                path,
            } => Error::ModuleNotLoaded { path },
            e => Error::Blksnap(e),
        })
    }

    /// Prints `report` on stdout.
    pub fn emit(&self, report: &impl Report) -> Result<()> {
        let mut out = io::stdout().lock();
        let text = render(report, self.format);
        if text.is_empty() {
            return Ok(());
        }
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "blksnapctl",
    version,
    about = "Operate the blksnap kernel module: change tracking, snapshots and their images",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Print results as JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Path of the blksnap control device.
    #[arg(long, global = true, env = "BLKSNAP_CONTROL", value_name = "PATH",
          default_value = blksnap::Control::DEFAULT_PATH)]
    pub control: PathBuf,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: cmd::Command,
}

impl Cli {
    /// The context the command runs with.
    pub fn ctx(&self) -> Ctx {
        use std::io::IsTerminal;
        Ctx {
            format: if self.json {
                Format::Json
            } else {
                Format::Human
            },
            control: self.control.clone(),
            progress: !self.no_progress && io::stderr().is_terminal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_table() {
        let id: blksnap::SnapshotId = "00000000-0000-0000-0000-000000000001".parse().unwrap();
        let path = || PathBuf::from("/dev/x");
        let cases: Vec<(Error, u8)> = vec![
            (
                blksnap::Error::NotAttached { op: "x" }.into(),
                exit::NOT_FOUND,
            ),
            (
                blksnap::Error::NoSuchSnapshot { op: "x", id }.into(),
                exit::NOT_FOUND,
            ),
            (
                blksnap::Error::AlreadyAttached { op: "x" }.into(),
                exit::BUSY,
            ),
            (blksnap::Error::Busy { op: "x" }.into(), exit::BUSY),
            (
                blksnap::Error::InvalidArgument { op: "x" }.into(),
                exit::GENERAL,
            ),
            (
                blksnap::Error::Ioctl {
                    op: "x",
                    errno: Errno::EIO,
                }
                .into(),
                exit::GENERAL,
            ),
            (Error::ModuleNotLoaded { path: path() }, exit::NOT_FOUND),
            (
                Error::Open {
                    path: path(),
                    source: io::Error::from_raw_os_error(nix::libc::ENOENT),
                },
                exit::NOT_FOUND,
            ),
            (
                Error::Open {
                    path: path(),
                    source: io::Error::from_raw_os_error(nix::libc::EBUSY),
                },
                exit::BUSY,
            ),
            (
                Error::Open {
                    path: path(),
                    source: io::Error::from_raw_os_error(nix::libc::EACCES),
                },
                exit::GENERAL,
            ),
            (Error::NotBlockDevice { path: path() }, exit::USAGE),
            (Error::NoImage { device: path() }, exit::NOT_FOUND),
            (
                Error::Differs {
                    image: path(),
                    reference: path(),
                    blocks: 1,
                    first: 0,
                },
                exit::DIFFERS,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.exit_code(), code, "{err}");
        }
    }

    #[test]
    fn error_chain_is_one_line_with_each_source_once() {
        let err = Error::Open {
            path: PathBuf::from("/dev/vdz"),
            source: io::Error::from_raw_os_error(nix::libc::ENOENT),
        };
        let line = error_chain(&err);
        assert!(line.starts_with("cannot open /dev/vdz: No such file or directory"));
        assert!(!line.contains('\n'));
        assert_eq!(line.matches("No such file").count(), 1);
        // A transparent kernel error is printed once, not twice.
        let err: Error = blksnap::Error::Busy { op: "detach" }.into();
        assert_eq!(error_chain(&err), "detach: busy");
    }

    #[test]
    fn exit_code_table_lists_every_code() {
        for code in [
            exit::OK,
            exit::GENERAL,
            exit::USAGE,
            exit::NOT_FOUND,
            exit::BUSY,
            exit::DIFFERS,
        ] {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {code}  ")),
                "code {code} missing from the help"
            );
        }
    }
}
