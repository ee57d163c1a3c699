//! `blksnapctl`: parses the command line, runs the command, and on failure
//! prints one line with the error chain and exits with the error's code.

use std::process::ExitCode;

use blksnapctl::{cmd, error_chain, exit, Cli};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's report spans several lines; keep its first one.
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad command line");
            let reason = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("blksnapctl: {reason} (see --help)");
            return ExitCode::from(exit::USAGE);
        }
    };
    let ctx = cli.ctx();
    match cmd::run(&cli.command, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blksnapctl: {}", error_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
