//! The `syncd` command line. Exit codes: 0 ok/identical, 1 a difference or a failed check
//! was found, 2 a usage or runtime error (one line on stderr).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};

mod cli;

use cli::*;

/// What a command concluded.
pub(crate) enum Outcome {
    Ok,
    Found,
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
        .map_err(|e| e.exit())
        .and_then(|cli| with_rules(cli, &matches))
    {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("syncd: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Found) => ExitCode::from(1),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("syncd: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error chain on one line, without repeating a cause already in its context.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// A write to our stdout failed because its reader went away (`syncd diff | head`): not an
/// error. Only an error that *is* an IO error counts, the way `writeln!` returns it; a
/// broken pipe inside the push (a peer or an internal pipe gone) is wrapped in a
/// [`syncd::push::PushError`] and is a failure like any other.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

pub(crate) fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Init { home } => cmd_init(&home.dir()?),
        Command::Id { home } => {
            let home = home.dir()?;
            let id = syncd::identity::Identity::load(&home)?;
            writeln!(std::io::stdout().lock(), "{}", id.peer_id())?;
            Ok(Outcome::Ok)
        }
        Command::Serve {
            root,
            listen,
            allow,
            timeout,
            shutdown_timeout,
            control,
            metrics,
            verbose,
            quiet,
            home,
        } => cmd_serve(
            root,
            listen,
            allow,
            &home.dir()?,
            timeout,
            shutdown_timeout,
            (
                control,
                metrics,
                if quiet { -1 } else { verbose.min(9) as i8 },
            ),
        ),
        Command::Status {
            control,
            json,
            home,
        } => {
            let path = match control {
                Some(p) => p,
                None => home.dir()?.join("control.sock"),
            };
            cmd_status(&path, json)
        }
        Command::Push {
            src,
            dest,
            peer_id,
            delete,
            delete_excluded,
            max_delete,
            quiet,
            itemize_changes,
            verbose,
            null,
            bwlimit,
            compress_level,
            dry_run,
            json,
            timeout,
            connect_timeout,
            verify_dest,
            progress,
            no_progress,
            continuous,
            home,
            filters,
        } => {
            let opts = PushArgs {
                peer_id,
                json,
                quiet,
                null,
                progress: progress || (!no_progress && std::io::stderr().is_terminal()),
                push: syncd::push::PushOptions {
                    delete,
                    delete_excluded,
                    max_delete: max_delete.unwrap_or(0),
                    itemize: itemize_changes || verbose,
                    dry_run,
                    scan: options(&home.dir()?, &filters),
                    bwlimit: bwlimit
                        .as_ref()
                        .and_then(|b| b.rate_at(syncd::bwlimit::local_now())),
                    scavenger: bwlimit.as_ref().is_some_and(|b| b.is_auto()),
                    compress_level,
                    progress: None,
                    verify_dest,
                    connect_timeout,
                    idle_timeout: timeout,
                },
            };
            if let Some(b) = &bwlimit {
                let local = matches!(syncd::dest::parse(&dest), Ok(syncd::dest::Dest::Local(_)));
                b.check_dest(!local)?;
            }
            let table = match bwlimit {
                Some(syncd::bwlimit::BwLimit::Timetable(t)) => Some(t),
                _ => None,
            };
            if continuous.watch {
                return cmd_watch(&src, &dest, &home.dir()?, opts, continuous, table);
            }
            cmd_push(&src, &dest, &home.dir()?, opts, table)
        }
        Command::Manifest {
            dir,
            json,
            home,
            filters,
        } => cmd_manifest(&dir, json, &home.dir()?, &filters),
        Command::Diff {
            a,
            b,
            json,
            cached,
            null,
            home,
            filters,
        } => cmd_diff(&a, &b, (json, null), cached, &home.dir()?, &filters),
        Command::Verify { dir, json, home } => cmd_verify(&dir, json, &home.dir()?),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "syncd", &mut std::io::stdout().lock());
            Ok(Outcome::Ok)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout().lock())?;
            Ok(Outcome::Ok)
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

// ------------------------------------------------------------------ continuous mode
