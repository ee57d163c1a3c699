//! The Rust mirror in `src/sys.rs` against the real UAPI header.
//!
//! The header is read to list its structs (with their fields), enums,
//! constants and `IOCTL_*` request codes; a C program generated from that
//! list is compiled with the system compiler (`$CC`, else `cc`) and prints
//! what C makes of each. Every one of those must have a Rust counterpart
//! with the same value, and every Rust entry must exist in the header, so a
//! field, struct or command added to the header without the mirror fails
//! here. `mismatches_are_detected` proves the comparison can fail.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use blksnap::sys;

fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kmod/include/uapi/linux/blksnap.h")
}

/// What the header declares, in order.
#[derive(Default, Debug)]
struct Header {
    /// Struct name and its field names.
    structs: Vec<(String, Vec<String>)>,
    /// Enumerator names.
    enumerators: Vec<String>,
    /// `#define`d names with a value, other than `IOCTL_*`.
    constants: Vec<String>,
    /// `IOCTL_*` names.
    ioctls: Vec<String>,
}

fn parse_header(text: &str) -> Header {
    let mut h = Header::default();
    // Strip comments first so that kernel-doc text is never taken for code.
    let mut code = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = match rest[start..].find("*/") {
            Some(end) => &rest[start + end + 2..],
            None => "",
        };
    }
    code.push_str(rest);

    enum In {
        Nothing,
        Struct,
        Enum,
    }
    let mut state = In::Nothing;
    for line in code.lines() {
        let line = line.trim();
        if let Some(def) = line.strip_prefix("#define ") {
            let mut parts = def.split_whitespace();
            let name = parts.next().unwrap_or_default().to_owned();
            let has_value = parts.next().is_some();
            if name.starts_with("IOCTL_") {
                h.ioctls.push(name);
            } else if has_value {
                h.constants.push(name);
            }
            continue;
        }
        match state {
            In::Nothing => {
                if let Some(name) = line
                    .strip_prefix("struct ")
                    .and_then(|l| l.strip_suffix(" {"))
                {
                    h.structs.push((name.to_owned(), Vec::new()));
                    state = In::Struct;
                } else if line.starts_with("enum ") && line.ends_with('{') {
                    state = In::Enum;
                }
            }
            In::Struct => {
                if line.starts_with('}') {
                    state = In::Nothing;
                } else if let Some(decl) = line.strip_suffix(';') {
                    // `__u8 data[4096 - 32]`: the name is the last word
                    // before any array bound.
                    let decl = decl.split('[').next().unwrap_or_default();
                    let field = decl.split_whitespace().last().unwrap_or_default();
                    if let Some((_, fields)) = h.structs.last_mut() {
                        fields.push(field.to_owned());
                    }
                }
            }
            In::Enum => {
                if line.starts_with('}') {
                    state = In::Nothing;
                } else {
                    let name = line.trim_end_matches(',').split('=').next().unwrap_or("");
                    let name = name.trim();
                    if !name.is_empty() {
                        h.enumerators.push(name.to_owned());
                    }
                }
            }
        }
    }
    h
}

fn c_program(header: &Path, h: &Header) -> String {
    let mut c = String::new();
    c.push_str("#include <stdio.h>\n#include <stddef.h>\n");
    c.push_str(&format!("#include \"{}\"\n", header.display()));
    c.push_str(
        "static void num(const char *k, long long v) { printf(\"%s=%lld\\n\", k, v); }\n\
         static void str(const char *k, const char *v) { printf(\"%s=%s\\n\", k, v); }\n\
         #define ANY(k, x) _Generic((x), char *: str, const char *: str, default: num)(k, x)\n\
         #define TYPE(x) _Generic((x), unsigned char: \"u8\", unsigned short: \"u16\", \
         unsigned int: \"u32\", unsigned long long: \"u64\", signed char: \"i8\", short: \"i16\", \
         int: \"i32\", long long: \"i64\", default: \"other\")\n\
         int main(void) {\n",
    );
    for (s, fields) in &h.structs {
        c.push_str(&format!(
            "num(\"sizeof {s}\", (long long)sizeof(struct {s}));\n"
        ));
        for f in fields {
            c.push_str(&format!(
                "num(\"offsetof {s}.{f}\", (long long)offsetof(struct {s}, {f}));\n\
                 num(\"sizeof {s}.{f}\", (long long)sizeof(((struct {s} *)0)->{f}));\n\
                 str(\"type {s}.{f}\", TYPE(((struct {s} *)0)->{f}));\n"
            ));
        }
    }
    for e in &h.enumerators {
        c.push_str(&format!("num(\"enum {e}\", (long long){e});\n"));
    }
    for k in &h.constants {
        c.push_str(&format!("ANY(\"define {k}\", {k});\n"));
    }
    for i in &h.ioctls {
        c.push_str(&format!(
            "num(\"ioctl {i}\", (long long)(unsigned long)({i}));\n"
        ));
    }
    c.push_str("return 0;\n}\n");
    c
}

/// Compiles and runs the program for `header`; returns its `key=value` lines.
fn c_values(header: &Path, workdir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| panic!("read {}: {e}", header.display()));
    let h = parse_header(&text);
    assert!(
        !h.structs.is_empty() && !h.ioctls.is_empty(),
        "header parser found nothing in {}: {h:?}",
        header.display()
    );
    let src = workdir.join("layout.c");
    let exe = workdir.join("layout");
    std::fs::write(&src, c_program(header, &h)).expect("write C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e} (a C compiler is required)"));
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().expect("run layout program");
    assert!(out.status.success(), "layout program failed");
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn field_size<S, F>(_: fn(&S) -> &F) -> usize {
    size_of::<F>()
}

/// The scalar type of a field in the C program's terms ("other" for arrays
/// and structs), so that a signedness change is caught too.
fn field_type<S, F>(_: fn(&S) -> &F) -> &'static str {
    match std::any::type_name::<F>() {
        t @ ("u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64") => t,
        _ => "other",
    }
}

/// What the Rust side says about every item of the header.
fn rust_values() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    macro_rules! layout {
        ($t:ident { $($f:ident),* $(,)? }) => {
            m.insert(format!("sizeof {}", stringify!($t)), size_of::<sys::$t>().to_string());
            $(
                let key = format!("{}.{}", stringify!($t), stringify!($f));
                m.insert(format!("offsetof {key}"), offset_of!(sys::$t, $f).to_string());
                m.insert(format!("sizeof {key}"), field_size(|s: &sys::$t| &s.$f).to_string());
                m.insert(format!("type {key}"), field_type(|s: &sys::$t| &s.$f).to_owned());
            )*
        };
    }
    layout!(blksnap_uuid { b });
    layout!(blksnap_cbtinfo {
        device_capacity,
        block_size,
        block_count,
        generation_id,
        changes_number
    });
    layout!(blksnap_cbtmap {
        offset,
        length,
        buffer
    });
    layout!(blksnap_sectors { offset, count });
    layout!(blksnap_cbtdirty {
        count,
        dirty_sectors
    });
    layout!(blksnap_snapshotadd { id });
    layout!(blksnap_snapshotinfo { error_code, image });
    layout!(blksnap_snapshotinfo_of {
        id,
        info,
        storage_used_sect,
        storage_filled_sect
    });
    layout!(blksnap_version {
        major,
        minor,
        revision,
        build
    });
    layout!(blksnap_snapshot_create {
        diff_storage_limit_sect,
        diff_storage_fd,
        id
    });
    layout!(blksnap_snapshot_collect { count, ids });
    layout!(blksnap_snapshot_event {
        id,
        timeout_ms,
        code,
        time_label,
        data
    });
    layout!(blksnap_event_corrupted {
        dev_id_mj,
        dev_id_mn,
        err_code
    });
    layout!(blksnap_event_low_space {
        free_sectors,
        limit_sectors
    });
    layout!(blksnap_bdev { fd, flags });
    layout!(blksnap_ctl {
        fd,
        cmd,
        optlen,
        reserved,
        opt
    });

    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), v);
    };
    for (name, v) in [
        ("blkfilter_ctl_blksnap_cbtinfo", sys::ctl_cmd::CBTINFO),
        ("blkfilter_ctl_blksnap_cbtmap", sys::ctl_cmd::CBTMAP),
        ("blkfilter_ctl_blksnap_cbtdirty", sys::ctl_cmd::CBTDIRTY),
        (
            "blkfilter_ctl_blksnap_snapshotadd",
            sys::ctl_cmd::SNAPSHOTADD,
        ),
        (
            "blkfilter_ctl_blksnap_snapshotinfo",
            sys::ctl_cmd::SNAPSHOTINFO,
        ),
        (
            "blkfilter_ctl_blksnap_snapshotinfo_of",
            sys::ctl_cmd::SNAPSHOTINFO_OF,
        ),
        ("blksnap_event_code_corrupted", sys::event_code::CORRUPTED),
        ("blksnap_event_code_low_space", sys::event_code::LOW_SPACE),
    ] {
        put(&format!("enum {name}"), v.to_string());
    }
    for (name, v) in [
        ("blksnap_ioctl_version", sys::nr::VERSION),
        ("blksnap_ioctl_snapshot_create", sys::nr::SNAPSHOT_CREATE),
        ("blksnap_ioctl_snapshot_destroy", sys::nr::SNAPSHOT_DESTROY),
        ("blksnap_ioctl_snapshot_take", sys::nr::SNAPSHOT_TAKE),
        ("blksnap_ioctl_snapshot_collect", sys::nr::SNAPSHOT_COLLECT),
        (
            "blksnap_ioctl_snapshot_wait_event",
            sys::nr::SNAPSHOT_WAIT_EVENT,
        ),
        ("blksnap_ioctl_attach", sys::nr::ATTACH),
        ("blksnap_ioctl_detach", sys::nr::DETACH),
        ("blksnap_ioctl_ctl", sys::nr::CTL),
    ] {
        put(&format!("enum {name}"), v.to_string());
    }
    for (name, v) in [
        ("BLKSNAP_CTL", sys::BLKSNAP_CTL.to_owned()),
        ("BLKSNAP_IMAGE_NAME", sys::BLKSNAP_IMAGE_NAME.to_owned()),
        ("BLKSNAP", sys::BLKSNAP.to_string()),
        (
            "BLKSNAP_VERSION_MAJOR",
            sys::BLKSNAP_VERSION_MAJOR.to_string(),
        ),
        (
            "BLKSNAP_VERSION_MINOR",
            sys::BLKSNAP_VERSION_MINOR.to_string(),
        ),
        ("UUID_SIZE", sys::UUID_SIZE.to_string()),
        (
            "BLKSNAP_CBTDIRTY_MAX_COUNT",
            sys::BLKSNAP_CBTDIRTY_MAX_COUNT.to_string(),
        ),
        ("IMAGE_DISK_NAME_LEN", sys::IMAGE_DISK_NAME_LEN.to_string()),
    ] {
        put(&format!("define {name}"), v);
    }
    for (name, v) in [
        ("IOCTL_BLKSNAP_VERSION", sys::IOCTL_BLKSNAP_VERSION),
        (
            "IOCTL_BLKSNAP_SNAPSHOT_CREATE",
            sys::IOCTL_BLKSNAP_SNAPSHOT_CREATE,
        ),
        (
            "IOCTL_BLKSNAP_SNAPSHOT_DESTROY",
            sys::IOCTL_BLKSNAP_SNAPSHOT_DESTROY,
        ),
        (
            "IOCTL_BLKSNAP_SNAPSHOT_TAKE",
            sys::IOCTL_BLKSNAP_SNAPSHOT_TAKE,
        ),
        (
            "IOCTL_BLKSNAP_SNAPSHOT_COLLECT",
            sys::IOCTL_BLKSNAP_SNAPSHOT_COLLECT,
        ),
        (
            "IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT",
            sys::IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT,
        ),
        ("IOCTL_BLKSNAP_ATTACH", sys::IOCTL_BLKSNAP_ATTACH),
        ("IOCTL_BLKSNAP_DETACH", sys::IOCTL_BLKSNAP_DETACH),
        ("IOCTL_BLKSNAP_CTL", sys::IOCTL_BLKSNAP_CTL),
    ] {
        // Printed by C as a signed long long of the unsigned long.
        put(&format!("ioctl {name}"), (v as i64).to_string());
    }
    m
}

/// Every disagreement between C's view of `header` and the Rust mirror.
fn mismatches(header: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = c_values(header, dir.path());
    let rust = rust_values();
    let mut out = Vec::new();
    for (k, cv) in &c {
        match rust.get(k) {
            Some(rv) if rv == cv => {}
            Some(rv) => out.push(format!("{k}: C says {cv}, Rust says {rv}")),
            None => out.push(format!(
                "{k}: in the header (= {cv}) but not mirrored in Rust"
            )),
        }
    }
    for k in rust.keys().filter(|k| !c.contains_key(*k)) {
        out.push(format!("{k}: in Rust but not in the header"));
    }
    out
}

#[test]
fn rust_mirror_matches_the_header() {
    let bad = mismatches(&header_path());
    assert!(bad.is_empty(), "UAPI mismatches:\n  {}", bad.join("\n  "));
}

#[test]
fn request_codes_encode_direction_and_size() {
    // Independent of the C compiler: the directions the header documents.
    use nix::sys::ioctl::ioctl_num_type as T;
    const READ: T = 2;
    const WRITE: T = 1;
    let dir = |code: T| code >> 30;
    let size = |code: T| ((code >> 16) & 0x3fff) as usize;
    assert_eq!(dir(sys::IOCTL_BLKSNAP_VERSION), READ);
    assert_eq!(dir(sys::IOCTL_BLKSNAP_SNAPSHOT_DESTROY), WRITE);
    assert_eq!(dir(sys::IOCTL_BLKSNAP_SNAPSHOT_TAKE), WRITE);
    assert_eq!(dir(sys::IOCTL_BLKSNAP_ATTACH), WRITE);
    assert_eq!(dir(sys::IOCTL_BLKSNAP_DETACH), WRITE);
    for rw in [
        sys::IOCTL_BLKSNAP_SNAPSHOT_CREATE,
        sys::IOCTL_BLKSNAP_SNAPSHOT_COLLECT,
        sys::IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT,
        sys::IOCTL_BLKSNAP_CTL,
    ] {
        assert_eq!(dir(rw), READ | WRITE);
    }
    // The 4 KiB event still fits the 14-bit size field.
    assert_eq!(size(sys::IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT), 4096);
}

#[test]
fn mismatches_are_detected() {
    // A header whose struct field, command number and constant were changed
    // must be caught, else the test above proves nothing.
    let text = std::fs::read_to_string(header_path()).expect("read header");
    let mutated = text
        .replacen("__u8 changes_number;", "__u16 changes_number;", 1)
        .replacen("__s32 error_code;", "__u32 error_code;", 1)
        .replacen("blksnap_ioctl_attach = 16", "blksnap_ioctl_attach = 20", 1)
        .replacen(
            "#define IMAGE_DISK_NAME_LEN 32",
            "#define IMAGE_DISK_NAME_LEN 64",
            1,
        )
        .replacen(
            "\t__u32 reserved;\n",
            "\t__u32 reserved;\n\t__u32 extra;\n",
            1,
        );
    assert_ne!(mutated, text, "mutations no longer apply to the header");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blksnap.h");
    std::fs::write(&path, mutated).expect("write mutated header");
    let bad = mismatches(&path).join("\n");
    for expect in [
        "sizeof blksnap_cbtinfo.changes_number",
        "type blksnap_cbtinfo.changes_number",
        "type blksnap_snapshotinfo.error_code",
        "ioctl IOCTL_BLKSNAP_ATTACH",
        "enum blksnap_ioctl_attach",
        "define IMAGE_DISK_NAME_LEN",
        "offsetof blksnap_ctl.extra",
        "offsetof blksnap_ctl.opt",
    ] {
        assert!(bad.contains(expect), "{expect} not reported in:\n{bad}");
    }
}
