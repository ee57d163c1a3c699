//! Table-driven tests of the command line: what parses, into what, and
//! what is refused as a usage error.

use clap::error::ErrorKind;
use clap::Parser;

use crate::cmd::{cbt, image, snapshot, Command};
use crate::device::StorageSpec;
use crate::Cli;

fn parse(line: &str) -> Result<Cli, ErrorKind> {
    let argv = std::iter::once("blksnapctl").chain(line.split_whitespace());
    Cli::try_parse_from(argv).map_err(|e| e.kind())
}

/// A command line and a check of what it parsed into.
type Case = (String, fn(&Cli) -> bool);

const ID: &str = "6f1c3a52-9d0e-4b7a-8c1f-2e3d4c5b6a79";

#[test]
fn accepted_lines() {
    let cases: Vec<Case> = vec![
        (
            "attach /dev/vda".into(),
            |c| matches!(&c.command, Command::Attach(a) if a.device.to_str() == Some("/dev/vda")),
        ),
        ("--json detach /dev/vdb".into(), |c| {
            c.json && matches!(c.command, Command::Detach(_))
        }),
        ("detach /dev/vdb --json".into(), |c| c.json),
        ("cbt info /dev/vda".into(), |c| {
            matches!(c.command, Command::Cbt(cbt::Command::Info(_)))
        }),
        (
            "cbt changes /dev/vda --since 3".into(),
            |c| matches!(&c.command, Command::Cbt(cbt::Command::Changes(a)) if a.since == 3),
        ),
        ("cbt dirty /dev/vda 0:4K 1M:64K".into(), |c| {
            matches!(&c.command, Command::Cbt(cbt::Command::Dirty(a))
                if a.ranges.len() == 2 && a.ranges[1].offset == 1 << 20 && a.ranges[1].length == 65536)
        }),
        ("snapshot create --storage /dev/vdc".into(), |c| {
            matches!(&c.command, Command::Snapshot(snapshot::Command::Create(a))
                if a.storage_spec() == StorageSpec::Path("/dev/vdc".into()) && a.limit.is_none())
        }),
        (
            "snapshot create --storage-dir /mnt --limit 2G".into(),
            |c| {
                matches!(&c.command, Command::Snapshot(snapshot::Command::Create(a))
                if a.storage_spec() == StorageSpec::TmpfileIn("/mnt".into()) && a.limit == Some(2 << 30))
            },
        ),
        (
            format!("snapshot add {ID} /dev/vda"),
            |c| matches!(&c.command, Command::Snapshot(snapshot::Command::Add(a)) if a.id.to_string() == ID),
        ),
        (format!("snapshot take {ID}"), |c| {
            matches!(c.command, Command::Snapshot(snapshot::Command::Take(_)))
        }),
        ("snapshot info /dev/vda".into(), |c| {
            matches!(c.command, Command::Snapshot(snapshot::Command::Info(_)))
        }),
        (format!("snapshot events {ID}"), |c| {
            matches!(&c.command, Command::Snapshot(snapshot::Command::Events(a))
                if a.timeout.is_zero() && a.count.is_none())
        }),
        (
            format!("snapshot events {ID} --timeout 1500ms --count 2"),
            |c| {
                matches!(&c.command, Command::Snapshot(snapshot::Command::Events(a))
                if a.timeout.as_millis() == 1500 && a.count == Some(2))
            },
        ),
        (format!("snapshot destroy {ID}"), |c| {
            matches!(c.command, Command::Snapshot(snapshot::Command::Destroy(_)))
        }),
        ("snapshot list".into(), |c| {
            matches!(c.command, Command::Snapshot(snapshot::Command::List(_)))
        }),
        (
            "image verify /dev/blksnap-image0 /tmp/ref".into(),
            |c| matches!(&c.command, Command::Image(image::Command::Verify(a)) if a.length.is_none()),
        ),
        (
            "image verify /dev/blksnap-image0 /tmp/ref --length 1G".into(),
            |c| matches!(&c.command, Command::Image(image::Command::Verify(a)) if a.length == Some(1 << 30)),
        ),
        (
            "image copy /dev/blksnap-image0 /tmp/out --no-sparse".into(),
            |c| matches!(&c.command, Command::Image(image::Command::Copy(a)) if a.no_sparse),
        ),
        ("--control /tmp/ctl version".into(), |c| {
            c.control.to_str() == Some("/tmp/ctl") && matches!(c.command, Command::Version(_))
        }),
    ];
    for (line, check) in cases {
        let cli = parse(&line).unwrap_or_else(|e| panic!("{line:?} refused: {e:?}"));
        assert!(check(&cli), "{line:?} parsed into {:?}", cli.command);
    }
}

#[test]
fn refused_lines() {
    let cases: Vec<(String, ErrorKind)> = vec![
        (
            "".into(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
        ),
        ("frobnicate".into(), ErrorKind::InvalidSubcommand),
        ("attach".into(), ErrorKind::MissingRequiredArgument),
        (
            "cbt changes /dev/vda".into(),
            ErrorKind::MissingRequiredArgument,
        ),
        (
            "cbt changes /dev/vda --since 256".into(),
            ErrorKind::ValueValidation,
        ),
        (
            "cbt changes /dev/vda --since -1".into(),
            ErrorKind::UnknownArgument,
        ),
        (
            "cbt dirty /dev/vda".into(),
            ErrorKind::MissingRequiredArgument,
        ),
        (
            "cbt dirty /dev/vda 0:100".into(),
            ErrorKind::ValueValidation,
        ),
        ("cbt dirty /dev/vda 4096".into(), ErrorKind::ValueValidation),
        (
            "snapshot create --limit 1G".into(),
            ErrorKind::MissingRequiredArgument,
        ),
        (
            "snapshot create --storage /dev/vdc --storage-dir /mnt".into(),
            ErrorKind::ArgumentConflict,
        ),
        (
            "snapshot create --storage /dev/vdc --limit 1000".into(),
            ErrorKind::ValueValidation,
        ),
        (
            "snapshot create --storage /dev/vdc --limit lots".into(),
            ErrorKind::ValueValidation,
        ),
        (
            "snapshot take not-a-uuid".into(),
            ErrorKind::ValueValidation,
        ),
        (
            format!("snapshot events {ID} --timeout 3d"),
            ErrorKind::ValueValidation,
        ),
        (
            "image verify /dev/blksnap-image0".into(),
            ErrorKind::MissingRequiredArgument,
        ),
    ];
    for (line, kind) in cases {
        match parse(&line) {
            Ok(c) => panic!("{line:?} accepted as {:?}", c.command),
            Err(k) => assert_eq!(k, kind, "{line:?}"),
        }
    }
}

#[test]
fn help_documents_exit_codes() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("Exit codes:"));
    assert!(help.contains("4  busy"));
    Cli::command().debug_assert();
}
