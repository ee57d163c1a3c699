//! A one-line progress bar on stderr, redrawn at most ten times a second.
//!
//! Hand-rolled rather than a dependency: two commands need a bar of fixed
//! form (bytes done of a known total, and a rate), which is a screenful of
//! code; a disabled bar costs one branch per update.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::units::Size;

const WIDTH: usize = 30;
const REDRAW: Duration = Duration::from_millis(100);

/// Progress of a job of `total` bytes.
pub struct Progress {
    label: &'static str,
    total: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` bytes; draws nothing unless `enabled`.
    pub fn new(label: &'static str, total: u64, enabled: bool) -> Self {
        Progress {
            label,
            total,
            start: Instant::now(),
            last: None,
            enabled,
        }
    }

    /// Reports `done` bytes; redraws when the last draw is old enough.
    pub fn set(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < REDRAW) && done < self.total {
            return;
        }
        self.last = Some(now);
        let line = render(self.label, done, self.total, now.duration_since(self.start));
        let mut err = std::io::stderr().lock();
        // A progress bar that cannot be drawn is not worth failing for.
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    /// Clears the bar's line.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
        self.enabled = false;
    }
}

/// The bar's text: `label [#####-----]  50% 1 GiB/2 GiB 100.0 MiB/s`.
pub fn render(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done.min(total) as f64) / (total as f64)
    };
    let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
    let rate = rate_mib_s(done, elapsed);
    format!(
        "{label} [{}{}] {:3.0}% {}/{} {rate:.1} MiB/s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        frac * 100.0,
        Size(done),
        Size(total),
    )
}

/// Throughput in MiB/s; 0 before any time has passed.
pub fn rate_mib_s(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        bytes as f64 / (1u64 << 20) as f64 / s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_text() {
        let cases = [
            (
                0,
                100 << 20,
                Duration::ZERO,
                "copy [------------------------------]   0% 0 B/100 MiB 0.0 MiB/s",
            ),
            (
                50 << 20,
                100 << 20,
                Duration::from_secs(1),
                "copy [###############---------------]  50% 50 MiB/100 MiB 50.0 MiB/s",
            ),
            (
                100 << 20,
                100 << 20,
                Duration::from_secs(4),
                "copy [##############################] 100% 100 MiB/100 MiB 25.0 MiB/s",
            ),
            (
                0,
                0,
                Duration::from_secs(1),
                "copy [##############################] 100% 0 B/0 B 0.0 MiB/s",
            ),
        ];
        for (done, total, elapsed, want) in cases {
            assert_eq!(render("copy", done, total, elapsed), want);
        }
    }
}
