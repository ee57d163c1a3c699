//! Loading blksnap.ko at start and checking that it speaks our interface.
//!
//! When the control device is missing, the module is loaded from a
//! configured `.ko` file with `finit_module(2)`, or else by `modprobe
//! blksnap` (for a DKMS install), with the configured parameters. Then its
//! version is read ([`Module::new`]): a module of another major interface
//! is refused, and the plugin does not start. The loaded module's
//! parameters are read from sysfs ([`parameter`]).

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blksnap::Control;
use nix::kmod::{finit_module, ModuleInitFlags};

use crate::kernel::Module;
use crate::{Error, Result};

/// How the module is found and loaded.
#[derive(Debug, Clone)]
pub struct ModuleSource {
    /// The control device; its presence means the module is loaded.
    pub control: PathBuf,
    /// A `.ko` to load with `finit_module`; `None` means `modprobe`.
    pub ko: Option<PathBuf>,
    /// Module parameters, `name=value`.
    pub params: Vec<String>,
}

/// How long the control device may take to appear after the load.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the loaded module shows its parameters (all read-only while it
/// is loaded, and clamped at its init).
const PARAMETERS: &str = "/sys/module/blksnap/parameters";

/// Loads the module if its control device is missing, opens the control
/// device and checks the module's version.
pub fn ensure_loaded(src: &ModuleSource) -> Result<Module> {
    for p in &src.params {
        if !p.contains('=') || p.chars().any(char::is_whitespace) {
            return Err(Error::Config(format!(
                "module parameter {p:?} must be name=value without spaces"
            )));
        }
    }
    if !src.control.exists() {
        match &src.ko {
            Some(ko) => load_ko(ko, &src.params)?,
            None => modprobe(&src.params)?,
        }
        wait_for(&src.control)?;
    }
    let module = Module::new(Control::open_path(&src.control)?)?;
    tracing::info!(control = %src.control.display(), "blksnap module ready");
    Ok(module)
}

/// The value of the loaded module's numeric parameter `name`.
pub fn parameter(name: &str) -> Result<u32> {
    parse_parameter(name, &Path::new(PARAMETERS).join(name))
}

fn parse_parameter(name: &str, path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    text.trim().parse().map_err(|_| {
        Error::Config(format!(
            "blksnap.ko parameter {name} reads {:?}, not a number",
            text.trim()
        ))
    })
}

/// `MODULE_INIT_COMPRESSED_FILE` (include/uapi/linux/module.h), which nix
/// does not name: the kernel decompresses the file itself.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// A compressed module (DKMS writes `blksnap.ko.xz` where the kernel's own
/// modules are compressed, as on Debian's 6.12) is handed to the kernel as
/// such; a kernel without CONFIG_MODULE_DECOMPRESS refuses it with
/// EOPNOTSUPP, which the error names.
fn init_flags(ko: &Path) -> ModuleInitFlags {
    match ko.extension().and_then(|e| e.to_str()) {
        Some("xz" | "gz" | "zst") => ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE),
        _ => ModuleInitFlags::empty(),
    }
}

fn load_ko(ko: &Path, params: &[String]) -> Result<()> {
    let file = File::open(ko).map_err(|e| Error::io("open", ko, e))?;
    let params = CString::new(params.join(" "))
        .map_err(|_| Error::Config("module parameters contain a NUL byte".into()))?;
    finit_module(&file, &params, init_flags(ko))
        .map_err(|errno| Error::Config(format!("finit_module {}: {errno}", ko.display())))?;
    tracing::info!(ko = %ko.display(), "loaded blksnap module");
    Ok(())
}

fn modprobe(params: &[String]) -> Result<()> {
    let out = Command::new("modprobe")
        .arg("blksnap")
        .args(params)
        .output()
        .map_err(|e| Error::io("run", "modprobe", e))?;
    if !out.status.success() {
        return Err(Error::Command {
            program: "modprobe blksnap".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    tracing::info!("loaded blksnap module with modprobe");
    Ok(())
}

/// devtmpfs creates the misc device at registration; give it a moment.
fn wait_for(control: &Path) -> Result<()> {
    let start = Instant::now();
    while !control.exists() {
        if start.elapsed() > APPEAR_TIMEOUT {
            return Err(Error::Config(format!(
                "the module loaded but {} did not appear",
                control.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_module_is_loaded_as_compressed() {
        let compressed = ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE);
        for ko in ["blksnap.ko.xz", "blksnap.ko.gz", "blksnap.ko.zst"] {
            assert_eq!(init_flags(Path::new(ko)), compressed, "{ko}");
        }
        assert_eq!(
            init_flags(Path::new("blksnap.ko")),
            ModuleInitFlags::empty()
        );
    }

    #[test]
    fn malformed_parameters_are_refused_before_loading() {
        let src = ModuleSource {
            control: "/nonexistent/blksnap-control".into(),
            ko: Some("/nonexistent/blksnap.ko".into()),
            params: vec!["no_equals".into()],
        };
        assert!(matches!(ensure_loaded(&src), Err(Error::Config(_))));
    }

    #[test]
    fn a_missing_ko_is_reported_with_its_path() {
        let src = ModuleSource {
            control: "/nonexistent/blksnap-control".into(),
            ko: Some("/nonexistent/blksnap.ko".into()),
            params: vec![],
        };
        let err = ensure_loaded(&src).expect_err("no such file");
        assert!(err.to_string().contains("/nonexistent/blksnap.ko"), "{err}");
    }

    #[test]
    fn parameters_are_read_as_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("snapshots_per_device_maximum");
        std::fs::write(&p, "16\n").expect("write");
        assert_eq!(parse_parameter("x", &p).expect("parses"), 16);
        std::fs::write(&p, "Y\n").expect("write");
        assert!(matches!(parse_parameter("x", &p), Err(Error::Config(_))));
        let missing = dir.path().join("none");
        let err = parse_parameter("x", &missing).expect_err("missing");
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn a_device_that_is_not_blksnap_is_refused() {
        // /dev/null exists, so nothing is loaded; its version ioctl fails.
        let src = ModuleSource {
            control: "/dev/null".into(),
            ko: None,
            params: vec![],
        };
        assert!(matches!(ensure_loaded(&src), Err(Error::Kernel(_))));
    }
}
