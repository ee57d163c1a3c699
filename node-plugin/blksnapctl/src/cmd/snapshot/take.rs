//! `blksnapctl snapshot take ID`.

use std::time::Instant;

use blksnap::SnapshotId;
use serde::Serialize;

use crate::{Ctx, Report, Result};

/// Arguments of `snapshot take`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot id.
    pub id: SnapshotId,
}

/// A taken snapshot and how long the take command ran (the devices are
/// frozen within that window).
#[derive(Debug, Serialize)]
pub struct Taken {
    pub id: String,
    pub took_us: u64,
}

impl Report for Taken {
    fn human(&self) -> String {
        format!(
            "took snapshot {} in {:.3} ms",
            self.id,
            self.took_us as f64 / 1000.0
        )
    }
}

/// Takes the snapshot, timing the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let t0 = Instant::now();
    ctl.snapshot_take(args.id)?;
    let took = t0.elapsed();
    ctx.emit(&Taken {
        id: args.id.to_string(),
        took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};

    #[test]
    fn renders() {
        let t = Taken {
            id: "00000000-0000-0000-0000-000000000001".into(),
            took_us: 1234,
        };
        assert_eq!(
            render(&t, Format::Human),
            "took snapshot 00000000-0000-0000-0000-000000000001 in 1.234 ms"
        );
        assert_eq!(
            render(&t, Format::Json),
            r#"{"id":"00000000-0000-0000-0000-000000000001","took_us":1234}"#
        );
    }
}
