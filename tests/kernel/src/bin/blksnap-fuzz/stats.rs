//! What the calls returned: a histogram per command and one of errnos, and
//! the invariant violations, each with the thread and call that saw it.
//! Each command also gets the time its thread spent since its previous
//! record, so that the table shows where a thread's time goes (the call,
//! its waits on the module's locks, and for the side threads the pauses
//! before it).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// Violations printed in full; the rest are only counted.
const SHOWN: usize = 50;

/// One command's calls.
#[derive(Default)]
struct Command {
    calls: u64,
    ok: u64,
    /// Time since the thread's previous record, summed, and its maximum.
    time: Duration,
    max: Duration,
}

#[derive(Default)]
pub struct Stats {
    commands: BTreeMap<&'static str, Command>,
    /// errno name ("ok" for success) -> count
    errnos: BTreeMap<String, u64>,
    pub calls: u64,
    /// When the thread's previous record was (None before its first).
    last: Option<Instant>,
}

impl Stats {
    pub fn record<T>(&mut self, cmd: &'static str, r: &Result<T, Errno>) {
        let now = Instant::now();
        let took = self.last.map_or(Duration::ZERO, |t| now - t);
        self.last = Some(now);
        self.calls += 1;
        let c = self.commands.entry(cmd).or_default();
        c.calls += 1;
        c.time += took;
        c.max = c.max.max(took);
        let key = match r {
            Ok(_) => {
                c.ok += 1;
                "ok".to_owned()
            }
            Err(e) => format!("{e:?}"),
        };
        *self.errnos.entry(key).or_default() += 1;
    }

    /// `record` for a call through the `blksnap` crate; an answer it
    /// refused as malformed counts as EPROTO.
    pub fn record_api<T>(&mut self, cmd: &'static str, r: &blksnap::Result<T>) {
        let r: Result<(), Errno> = match r {
            Ok(_) => Ok(()),
            Err(e) => Err(e.errno().unwrap_or(Errno::EPROTO)),
        };
        self.record(cmd, &r);
    }

    pub fn merge(&mut self, other: &Stats) {
        self.calls += other.calls;
        for (k, v) in &other.commands {
            let c = self.commands.entry(k).or_default();
            c.calls += v.calls;
            c.ok += v.ok;
            c.time += v.time;
            c.max = c.max.max(v.max);
        }
        for (k, v) in &other.errnos {
            *self.errnos.entry(k.clone()).or_default() += v;
        }
    }

    pub fn print(&self, title: &str) {
        println!("{title}: {} calls", self.calls);
        println!(
            "  {:<28} {:>10} {:>10} {:>10} {:>9} {:>9}",
            "command", "calls", "ok", "time s", "mean ms", "max ms"
        );
        for (k, c) in &self.commands {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "  {k:<28} {:>10} {:>10} {:>10.1} {:>9.2} {:>9.1}",
                c.calls,
                c.ok,
                c.time.as_secs_f64(),
                ms(c.time) / c.calls as f64,
                ms(c.max)
            );
        }
        println!("  errno histogram:");
        let mut by_count: Vec<_> = self.errnos.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, n) in by_count {
            println!("  {k:<28} {n:>10}");
        }
    }
}

/// Invariant violations, shared by all threads.
#[derive(Default)]
pub struct Violations {
    list: Mutex<(u64, Vec<String>)>,
}

impl Violations {
    pub fn add(&self, msg: String) {
        let mut l = self.list.lock().expect("violations lock");
        l.0 += 1;
        if l.1.len() < SHOWN {
            eprintln!("blksnap-fuzz: VIOLATION: {msg}");
            l.1.push(msg);
        }
    }

    pub fn count(&self) -> u64 {
        self.list.lock().expect("violations lock").0
    }

    pub fn print(&self) {
        let l = self.list.lock().expect("violations lock");
        for m in &l.1 {
            println!("  violation: {m}");
        }
        if l.0 > l.1.len() as u64 {
            println!("  ... and {} more", l.0 - l.1.len() as u64);
        }
    }
}
