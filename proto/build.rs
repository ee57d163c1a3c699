//! Compiles `csi.proto` with the system's protoc (Debian's protobuf-compiler)
//! into prost messages and tonic clients and servers, and writes the file
//! descriptor set that `csi_proto::FILE_DESCRIPTOR_SET` embeds; compiles
//! the kubelet's `pluginregistration.proto` the same way, apart, so the
//! descriptor set stays the CSI interface alone.
//!
//! Nothing is fetched: protoc comes from `PROTOC` or `PATH`, and the
//! well-known types (descriptor, timestamp, wrappers) from `PROTOC_INCLUDE`
//! or the usual include directories (Debian's libprotobuf-dev).

use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

const PROTO: &str = "csi.proto";
const REGISTRATION_PROTO: &str = "pluginregistration.proto";
const DESCRIPTOR_SET: &str = "csi_v1_descriptor.bin";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={REGISTRATION_PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=PROTOC_INCLUDE");
    println!("cargo:rerun-if-env-changed=PATH");

    let protoc = find_protoc().unwrap_or_else(|| {
        fail("protoc not found: install Debian's protobuf-compiler (tests/setup.sh does) or set PROTOC")
    });
    let include = find_well_known_types(&protoc).unwrap_or_else(|message| fail(&message));
    // prost-build reads the compiler from PROTOC. A build script runs single
    // threaded, so setting the variable here is sound.
    env::set_var("PROTOC", &protoc);

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));

    let result = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join(DESCRIPTOR_SET))
        .compile_protos(
            &[manifest_dir.join(PROTO)],
            &[manifest_dir.clone(), include],
        );
    if let Err(err) = result {
        fail(&format!("compiling {PROTO} failed: {err}"));
    }
    let result = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[manifest_dir.join(REGISTRATION_PROTO)], &[manifest_dir]);
    if let Err(err) = result {
        fail(&format!("compiling {REGISTRATION_PROTO} failed: {err}"));
    }
}

/// `PROTOC` if set, else the first executable `protoc` on `PATH`.
fn find_protoc() -> Option<PathBuf> {
    if let Some(path) = env::var_os("PROTOC").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return is_executable(&path).then_some(path);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("protoc"))
        .find(|candidate| is_executable(candidate))
}

/// The include directory that holds `google/protobuf/descriptor.proto`:
/// `PROTOC_INCLUDE` when set (prost-build uses it too, so it must be right),
/// else protoc's own `../include`, then the system directories.
fn find_well_known_types(protoc: &Path) -> Result<PathBuf, String> {
    const WKT: &str = "google/protobuf/descriptor.proto";
    if let Some(dir) = env::var_os("PROTOC_INCLUDE").filter(|p| !p.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.join(WKT).is_file() {
            Ok(dir)
        } else {
            Err(format!("PROTOC_INCLUDE={} has no {WKT}", dir.display()))
        };
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(prefix) = protoc.parent().and_then(Path::parent) {
        candidates.push(prefix.join("include"));
    }
    candidates.push("/usr/include".into());
    candidates.push("/usr/local/include".into());
    candidates
        .into_iter()
        .find(|dir| dir.join(WKT).is_file())
        .ok_or_else(|| {
            format!("{WKT} not found: install Debian's libprotobuf-dev (tests/setup.sh does) or set PROTOC_INCLUDE")
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn fail(message: &str) -> ! {
    eprintln!("error: csi-proto: {message}");
    exit(1);
}
