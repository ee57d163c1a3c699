//! What both daemons (`blksnap-node-plugin`, `blksnap-csi-driver`) do
//! alike: read a CSI endpoint as the sidecars write it, set up logging,
//! and serve their metrics ([`metrics`]). Kept apart from `node-api`, the
//! contract, which does no I/O and knows no command line.

use std::path::PathBuf;

pub mod metrics;

use clap::ValueEnum;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The socket path of a CSI endpoint: `/path` or `unix:///path` (a clap
/// value parser).
pub fn socket_path(v: &str) -> Result<PathBuf, String> {
    let path = match v.split_once("://") {
        None => v,
        Some(("unix", path)) => path,
        Some((scheme, _)) => return Err(format!("{scheme}:// is not a unix socket endpoint")),
    };
    let path = PathBuf::from(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!(
            "{v:?} is not an absolute path (unix:///... has three slashes)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_absolute_unix_paths() {
        for (v, want) in [
            ("/csi/csi.sock", Some("/csi/csi.sock")),
            ("unix:///csi/csi.sock", Some("/csi/csi.sock")),
            ("unix://csi.sock", None),
            ("tcp://127.0.0.1:9", None),
            ("csi.sock", None),
        ] {
            assert_eq!(socket_path(v).ok(), want.map(PathBuf::from), "{v}");
        }
    }
}
