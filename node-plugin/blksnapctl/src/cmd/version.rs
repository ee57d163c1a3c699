//! `blksnapctl version`: the module's interface version.

use serde::Serialize;

use crate::{Ctx, Report, Result};

/// No arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// The module's version and whether this tool speaks its interface.
#[derive(Debug, Serialize)]
pub struct VersionReport {
    pub module: String,
    pub compatible: bool,
}

impl Report for VersionReport {
    fn human(&self) -> String {
        let note = if self.compatible {
            ""
        } else {
            " (incompatible with this blksnapctl)"
        };
        format!("blksnap module interface {}{note}", self.module)
    }
}

/// Asks the module for its version.
pub fn run(_args: &Args, ctx: &Ctx) -> Result<()> {
    let v = ctx.control()?.version()?;
    ctx.emit(&VersionReport {
        module: v.to_string(),
        compatible: v.is_compatible(),
    })
}
