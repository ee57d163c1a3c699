//! `blksnapctl snapshot events ID [--timeout D]`.

use std::time::{Duration, Instant};

use blksnap::{Event, SnapshotId};
use serde::Serialize;

use crate::units::{self, Size, SECTOR};
use crate::{Ctx, Report, Result};

/// Arguments of `snapshot events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot id.
    pub id: SnapshotId,
    /// How long to wait for events in all (e.g. 500ms, 10s, 5m); 0 only
    /// drains the events already queued.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = units::parse_duration)]
    pub timeout: Duration,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// One event, flattened for JSON.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventReport {
    Corrupted {
        id: String,
        major: u32,
        minor: u32,
        error: String,
    },
    LowSpace {
        id: String,
        free_bytes: u64,
        limit_bytes: u64,
    },
    Unknown {
        id: String,
        code: u32,
    },
}

impl EventReport {
    /// The report of `ev` of snapshot `id`.
    pub fn new(id: SnapshotId, ev: &Event) -> Self {
        let id = id.to_string();
        match *ev {
            Event::Corrupted {
                major,
                minor,
                errno,
            } => EventReport::Corrupted {
                id,
                major,
                minor,
                error: format!("{errno:?}"),
            },
            Event::LowSpace {
                free_sectors,
                limit_sectors,
            } => EventReport::LowSpace {
                id,
                free_bytes: free_sectors.saturating_mul(SECTOR),
                limit_bytes: limit_sectors.saturating_mul(SECTOR),
            },
            Event::Unknown { code } => EventReport::Unknown { id, code },
        }
    }
}

impl Report for EventReport {
    fn human(&self) -> String {
        match self {
            EventReport::Corrupted {
                id,
                major,
                minor,
                error,
            } => format!("{id}: corrupted: image of device {major}:{minor} failed with {error}"),
            EventReport::LowSpace {
                id,
                free_bytes,
                limit_bytes,
            } => format!(
                "{id}: low space: {} free, storage at its limit of {}",
                Size(*free_bytes),
                Size(*limit_bytes)
            ),
            EventReport::Unknown { id, code } => format!("{id}: event with unknown code {code}"),
        }
    }
}

/// The closing line when no event came (human output only).
#[derive(Debug, Serialize)]
struct NoEvent {
    #[serde(skip)]
    text: String,
}

impl Report for NoEvent {
    fn human(&self) -> String {
        self.text.clone()
    }
}

/// Prints events as they come until the timeout passes or `count` came.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let deadline = Instant::now() + args.timeout;
    let mut seen = 0u64;
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match ctl.wait_event(args.id, remaining)? {
            Some(ev) => {
                seen += 1;
                ctx.emit(&EventReport::new(args.id, &ev))?;
            }
            None => break,
        }
    }
    if seen == 0 && ctx.format == crate::Format::Human {
        ctx.emit(&NoEvent {
            text: format!("{}: no event within {:?}", args.id, args.timeout),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};
    use nix::errno::Errno;

    #[test]
    fn table() {
        let id: SnapshotId = "00000000-0000-0000-0000-00000000000a".parse().unwrap();
        let cases = [
            (
                Event::Corrupted {
                    major: 254,
                    minor: 16,
                    errno: Errno::ENOSPC,
                },
                "corrupted: image of device 254:16 failed with ENOSPC",
                r#""event":"corrupted""#,
            ),
            (
                Event::LowSpace {
                    free_sectors: 2048,
                    limit_sectors: 4 << 21,
                },
                "low space: 1 MiB free, storage at its limit of 4 GiB",
                r#""free_bytes":1048576"#,
            ),
            (
                Event::Unknown { code: 9 },
                "event with unknown code 9",
                r#""code":9"#,
            ),
        ];
        for (ev, human, json) in cases {
            let r = EventReport::new(id, &ev);
            assert_eq!(render(&r, Format::Human), format!("{id}: {human}"));
            let j = render(&r, Format::Json);
            assert!(j.contains(json), "{j}");
            assert!(!j.contains('\n'));
        }
    }
}
