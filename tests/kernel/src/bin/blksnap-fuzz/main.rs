//! blksnap-fuzz: malformed and out-of-order calls on `/dev/blksnap-control`
//! and on the snapshot images, from several threads, mixed with valid
//! calls that build real state, with writes and with hot removal of
//! devices. Runs as root in the VM harness (tests/vm), on the scratch disks
//! of `BLKSNAP_TEST_DISKS` (contract in tests/kernel/tests/common/mod.rs):
//! data disk A is the random threads' device, data disk B the strict
//! scenario's, the storage disk holds an ext4 for storage files, the spare
//! disk is a block device storage; null_blk disks come and go.
//!
//! The seed fixes every thread's sequence of choices; the interleaving of
//! threads (and so what a choice finds) is the scheduler's. `--threads 1`
//! reproduces a run's calls exactly, up to the timing of the hot removal
//! and the scenario, which run beside the random threads.
//!
//! Exit status 1 when any call broke an invariant (see `control.rs`,
//! `ctl.rs`, `image.rs` for what each answer may be).

mod control;
mod ctl;
mod hotplug;
mod image;
mod mem;
mod rng;
mod scenario;
mod stats;
mod world;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use blksnap::{Control, Error};
use clap::Parser;
use nix::libc;

use crate::stats::{Stats, Violations};
use crate::world::{open_dev, Snaps, World};

#[derive(Parser)]
#[command(
    name = "blksnap-fuzz",
    about = "Fuzz the blksnap control device (root, in the VM harness)"
)]
struct Args {
    /// Seed of the run (decimal or 0x hex); random when not given.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Random calls in all, shared evenly by the random threads.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Random threads (the scenario, hot removal and writer threads run
    /// beside them).
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("seed {s:?}: {e}"))
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("read /dev/urandom");
    u64::from_le_bytes(b)
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A directory with a file system mounted on it, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(tag: &str, args: &[&str]) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("blksnap-fuzz-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut a = args.to_vec();
        a.push(dir.to_str().expect("UTF-8 path"));
        run("mount", &a)?;
        Ok(Mount(dir))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        match run("umount", &[self.0.to_str().expect("UTF-8 path")]) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&self.0);
            }
            Err(e) => eprintln!("blksnap-fuzz: {e}"),
        }
    }
}

/// Destroys every snapshot and detaches `devs`: the state before and after.
fn clean(ctl: &Control, devs: &[&File]) -> Result<(), String> {
    for id in ctl.snapshot_collect().map_err(|e| e.to_string())? {
        match ctl.snapshot_destroy(id) {
            Ok(()) | Err(Error::NoSuchSnapshot { .. }) => {}
            Err(e) => return Err(format!("destroy {id}: {e}")),
        }
    }
    for d in devs {
        match ctl.detach(*d) {
            Ok(()) | Err(Error::NotAttached { .. }) => {}
            Err(e) => return Err(format!("detach: {e}")),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(random_seed);
    let threads = args.threads.max(1);
    println!(
        "blksnap-fuzz: seed {seed:#018x}, {} calls, {threads} threads \
         (reproduce: blksnap-fuzz --seed {seed:#x} --calls {} --threads {threads})",
        args.calls, args.calls
    );
    match fuzz(seed, args.calls, threads) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("blksnap-fuzz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fuzz(seed: u64, calls: u64, threads: usize) -> Result<bool, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("must run as root (in the VM harness)".into());
    }
    let disks = std::env::var("BLKSNAP_TEST_DISKS").map_err(|_| {
        "BLKSNAP_TEST_DISKS is not set: run in the VM harness (tests/vm)".to_owned()
    })?;
    let disks: Vec<&str> = disks.split_whitespace().collect();
    let [data_a, data_b, storage, spare, ..] = disks[..] else {
        return Err(format!(
            "BLKSNAP_TEST_DISKS names {} disks, 4 needed",
            disks.len()
        ));
    };
    let ctl = Control::open().map_err(|e| format!("{e} (is blksnap.ko loaded?)"))?;
    let open = |p: &str| open_dev(p).map_err(|e| format!("open {p}: {e}"));
    let (a, b, s) = (open(data_a)?, open(data_b)?, open(spare)?);
    clean(&ctl, &[&a, &b, &s])?;

    run(
        "mkfs.ext4",
        &["-q", "-F", "-E", "nodiscard,lazy_itable_init=1", storage],
    )?;
    let store_fs = Mount::new("store", &["-t", "ext4", storage])?;
    let scenario_fs = Mount::new(
        "scenario",
        &["-t", "tmpfs", "-o", "size=64m", "blksnap-fuzz"],
    )?;
    let hotplug = hotplug::available();
    if !hotplug {
        println!(
            "blksnap-fuzz: no null_blk in this guest: no hot removal, no shared storage check"
        );
    }
    // The scenario's second device, for the shared storage check.
    let second = if hotplug {
        Some(hotplug::make("bsfuzz-scenario", 64).map_err(|e| format!("null_blk: {e}"))?)
    } else {
        None
    };

    // Descriptors of every kind but a block device.
    let ro = std::env::temp_dir().join(format!("blksnap-fuzz-ro-{}", std::process::id()));
    std::fs::write(&ro, b"not a device").map_err(|e| format!("{}: {e}", ro.display()))?;
    let (pipe_r, _pipe_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let others: Vec<Arc<File>> = vec![
        Arc::new(File::open("/dev/null").map_err(|e| e.to_string())?),
        Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| e.to_string())?,
        ),
        Arc::new(File::open(&store_fs.0).map_err(|e| e.to_string())?),
        Arc::new(File::open(&ro).map_err(|e| e.to_string())?),
        Arc::new(File::from(pipe_r)),
        Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(Control::DEFAULT_PATH)
                .map_err(|e| e.to_string())?,
        ),
    ];
    let _ = std::fs::remove_file(&ro);
    let spare_excl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(spare)
        .map_err(|e| format!("open {spare} O_EXCL: {e}"))?;

    let w = World {
        ctl: OpenOptions::new()
            .read(true)
            .write(true)
            .open(Control::DEFAULT_PATH)
            .map_err(|e| e.to_string())?,
        devs: Mutex::new(Vec::new()),
        others,
        storages: Mutex::new(vec![Arc::new(spare_excl)]),
        storage_dir: store_fs.0.clone(),
        snaps: Mutex::new(Snaps::default()),
        images: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        violations: Violations::default(),
    };
    w.add_dev(
        a.try_clone().map_err(|e| e.to_string())?,
        "data-a".into(),
        false,
    );
    w.add_dev(
        s.try_clone().map_err(|e| e.to_string())?,
        "spare".into(),
        false,
    );
    let pages = mem::Pages::new();
    let done = AtomicU64::new(0);
    let t0 = Instant::now();

    let (fuzz_stats, aux_stats, cycles) = std::thread::scope(|sc| {
        let (w, pages, done) = (&w, &pages, &done);
        let second = second.as_ref().map(|(_, node)| node.as_path());
        let scen =
            sc.spawn(move || scenario::run(w, Path::new(data_b), second, &scenario_fs.0, seed));
        let hot = hotplug.then(|| sc.spawn(move || hotplug::run(w, seed)));
        let wr = sc.spawn(move || hotplug::writer(w, seed));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let quota = calls / threads as u64 + u64::from((t as u64) < calls % threads as u64);
                sc.spawn(move || {
                    let mut f = control::Fuzzer::new(w, pages, seed, t);
                    for _ in 0..quota {
                        f.one();
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % (calls / 10).max(1) == 0 {
                            eprintln!(
                                "blksnap-fuzz: {n} calls, {:.0}s",
                                t0.elapsed().as_secs_f64()
                            );
                        }
                    }
                    f.stats
                })
            })
            .collect();
        let mut fuzz_stats = Stats::default();
        for h in workers {
            fuzz_stats.merge(&h.join().expect("random thread panicked"));
        }
        w.stop.store(true, Ordering::Relaxed);
        let mut aux = Stats::default();
        let outcome = scen.join().expect("scenario thread panicked");
        aux.merge(&outcome.stats);
        if let Some(h) = hot {
            aux.merge(&h.join().expect("hot removal thread panicked"));
        }
        aux.merge(&wr.join().expect("writer thread panicked"));
        (fuzz_stats, aux, outcome.cycles)
    });
    let secs = t0.elapsed().as_secs_f64();

    // Everything the run left must go, and the module must still answer.
    w.images.lock().expect("images").clear();
    w.storages.lock().expect("storages").clear();
    let devs: Vec<_> = w.devs.lock().expect("devs").drain(..).collect();
    let files: Vec<&File> = devs.iter().map(|d| &d.file).chain([&b]).collect();
    if let Err(e) = clean(&ctl, &files) {
        w.violations.add(format!("teardown: {e}"));
    }
    match ctl.snapshot_collect() {
        Ok(ids) if ids.is_empty() => {}
        other => w
            .violations
            .add(format!("teardown: snapshots left: {other:?}")),
    }
    if let Err(e) = ctl.version() {
        w.violations.add(format!("teardown: version: {e}"));
    }
    drop(devs);

    fuzz_stats.print("random threads");
    aux_stats.print("scenario, hot removal and writer threads");
    println!("  scenario cycles: {cycles}");
    w.violations.print();
    let v = w.violations.count();
    println!(
        "blksnap-fuzz: seed {seed:#018x}: {} random calls + {} others in {secs:.1}s, \
         {v} violation(s), hot removal {}",
        fuzz_stats.calls,
        aux_stats.calls,
        if hotplug { "on" } else { "off" }
    );
    if let Some((cfg, _)) = &second {
        hotplug::unmake(cfg);
    }
    // The pool's descriptors keep the storage file system busy.
    drop(w);
    drop(store_fs);
    Ok(v == 0)
}
