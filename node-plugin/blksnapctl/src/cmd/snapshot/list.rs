//! `blksnapctl snapshot list`.

use serde::Serialize;

use crate::{Ctx, Report, Result};

/// No arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// The snapshots the module holds.
#[derive(Debug, Serialize)]
pub struct Snapshots {
    pub snapshots: Vec<String>,
}

impl Report for Snapshots {
    /// One id per line; nothing when there is none.
    fn human(&self) -> String {
        self.snapshots.join("\n")
    }
}

/// Lists the snapshot ids.
pub fn run(_args: &Args, ctx: &Ctx) -> Result<()> {
    let ids = ctx.control()?.snapshot_collect()?;
    ctx.emit(&Snapshots {
        snapshots: ids.iter().map(ToString::to_string).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};

    #[test]
    fn table() {
        let cases: [(&[&str], &str, &str); 2] = [
            (&[], "", r#"{"snapshots":[]}"#),
            (&["a", "b"], "a\nb", r#"{"snapshots":["a","b"]}"#),
        ];
        for (ids, human, json) in cases {
            let s = Snapshots {
                snapshots: ids.iter().map(|s| s.to_string()).collect(),
            };
            assert_eq!(render(&s, Format::Human), human);
            assert_eq!(render(&s, Format::Json), json);
        }
    }
}
