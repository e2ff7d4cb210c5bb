//! `sensorcast models`: the registry (list, show, promote, roll back, prune).

use super::*;

#[derive(clap::Args, Debug)]
pub struct ModelsArgs {
    /// Config file (TOML): `model.registry` and the streams.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Registry folder (instead of the config's `model.registry`).
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    /// Stream (may be left out when there is one).
    #[arg(long, global = true)]
    stream: Option<String>,
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Every version with its training range and validation figures; `*` marks the current.
    List,
    /// One version's metadata (JSON).
    Show {
        /// Version (default: the current one).
        version: Option<String>,
    },
    /// Make a version current (it must load). A running `serve` swaps it in without a restart.
    Promote {
        /// Version.
        version: String,
    },
    /// Make the version that was current before the current one current again.
    Rollback,
    /// Remove old versions, keeping the newest N, the current one and those the last changes
    /// of `current` name.
    Prune {
        /// Versions to keep.
        #[arg(long)]
        keep: usize,
    },
}

pub fn run(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let ModelsArgs {
        config,
        registry,
        stream,
        command,
    } = args;
    init_logging(None);
    let cfg = match &config {
        Some(c) => Config::load(Some(c))?,
        None => Config::default(),
    };
    let reg = crate::model::registry::Registry::new(
        registry.unwrap_or_else(|| cfg.model.registry.clone()),
    );
    let stream = match (stream, &config) {
        (Some(s), _) => s,
        (None, Some(_)) => cfg.stream(None)?.name.clone(),
        (None, None) => {
            let streams = reg.streams();
            match streams.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("the registry holds no stream"),
                many => anyhow::bail!(
                    "the registry holds several streams ({}): choose one with --stream",
                    many.join(", ")
                ),
            }
        }
    };
    match command {
        ModelsCommand::List => {
            println!(
                "  {:<22} {:<20} {:<20} {:>9} {:>7} {:>9}",
                "version", "trained from", "to", "readings", "mase", "coverage"
            );
            for l in reg.list(&stream)? {
                let mark = if l.current { "*" } else { " " };
                match &l.meta {
                    Ok(m) => println!(
                        "{mark} {:<22} {:<20} {:<20} {:>9} {:>7.3} {:>9.3}",
                        l.version,
                        m.training.from,
                        m.training.to,
                        m.training.readings,
                        m.validation.mase,
                        m.validation.coverage_90
                    ),
                    Err(e) => println!("{mark} {:<22} unreadable: {e}", l.version),
                }
            }
            for c in reg.history(&stream)?.iter().rev().take(5) {
                println!("# {} {} {}", c.at, c.action, c.version);
            }
        }
        ModelsCommand::Show { version } => {
            let v = match version {
                Some(v) => v,
                None => reg.current(&stream)?,
            };
            println!("{}", serde_json::to_string_pretty(&reg.meta(&stream, &v)?)?);
        }
        ModelsCommand::Promote { version } => {
            reg.promote(&stream, &version)?;
            println!("{stream}: {version} is current");
        }
        ModelsCommand::Rollback => {
            let v = reg.rollback(&stream)?;
            println!("{stream}: rolled back to {v}");
        }
        ModelsCommand::Prune { keep } => {
            let removed = reg.prune(&stream, keep)?;
            println!(
                "{stream}: removed {} version(s): {}",
                removed.len(),
                removed.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
