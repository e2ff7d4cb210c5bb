//! `sensorcast serve`: the service, with its config loaded and logging started.

use super::*;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs { config } = args;
    let cfg = Config::load(Some(&config))?;
    init_logging(Some(&cfg));
    let clean = crate::serve::run(cfg, config)?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
