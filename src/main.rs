//! The `sensorcast` command line: the arguments (clap) and which subcommand runs; the
//! subcommands themselves are in `sensorcast::commands`.

use clap::Parser;
use sensorcast::commands;
use sensorcast::config::ConfigError;
use std::process::ExitCode;

/// Streaming LSTM forecasting and anomaly scoring for sensor fleets.
#[derive(Parser, Debug)]
#[command(name = "sensorcast", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run the whole pipeline on an embedded synthetic fleet (no servers needed).
    Demo(commands::demo::DemoArgs),
    /// Train a model from history (files, InfluxDB or Kafka) and publish it to the registry.
    Train(commands::train::TrainArgs),
    /// Train a challenger from the history (InfluxDB or Kafka) and publish it only if it beats
    /// the current model on a recent holdout (`[retrain]`); what a timer or CronJob runs. A
    /// running `serve` swaps a published model in without a restart.
    Retrain(commands::retrain::RetrainArgs),
    /// Record an operator's verdict on an alarm (appended to `anomaly.labels_file`): `serve`
    /// writes it onto the alarm's point; `retrain` and `evaluate labelled` use it.
    Label(commands::label::LabelArgs),
    /// Run the streaming engine over a file in time order and write its outputs.
    Replay(commands::replay::ReplayArgs),
    /// Measure the engine alone on a synthetic fleet (no I/O).
    Bench(commands::bench::BenchArgs),
    /// Run the service: consume readings from Kafka, write forecasts and scores to InfluxDB.
    Serve(commands::serve::ServeArgs),
    /// Produce the synthetic fleet to Kafka or write it to a file.
    Simulate(commands::simulate::SimulateArgs),
    /// Measure detection quality on labelled data with the service's own scoring.
    #[command(subcommand)]
    Evaluate(commands::evaluate::EvaluateCommand),
    /// Device state checkpoints.
    #[command(subcommand)]
    State(commands::state::StateCommand),
    /// The model registry: versions, which is current, promote, roll back, prune.
    Models(commands::models::ModelsArgs),
    /// Print the effective configuration (secrets masked) or every problem in it.
    CheckConfig(commands::check_config::CheckConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use commands::evaluate::EvaluateCommand;
    use commands::state::StateCommand;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.command {
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Label(args) => commands::label::run(args),
        Command::Retrain(args) => commands::retrain::run(args, tty),
        Command::Train(args) => commands::train::run(args, tty),
        Command::Replay(args) => commands::replay::run(args),
        Command::Bench(spec) => commands::bench::run(spec),
        Command::Serve(args) => commands::serve::run(args),
        Command::Simulate(args) => commands::simulate::run(args),
        Command::Models(args) => commands::models::run(args),
        Command::State(StateCommand::Inspect(args)) => commands::state::inspect(args),
        Command::State(StateCommand::Bench(args)) => commands::state::bench(args),
        Command::Evaluate(EvaluateCommand::Skab(args)) => commands::evaluate::skab(args, tty),
        Command::Evaluate(EvaluateCommand::Labelled(args)) => commands::evaluate::labelled(args),
        Command::Demo(args) => commands::demo::run(args, tty),
    }
}
