//! `sensorcast demo`: the whole pipeline on an embedded synthetic fleet.

use super::*;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output folder for line protocol, chart, model and data.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Devices in the fleet.
    #[arg(long, default_value_t = 24)]
    devices: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 1000)]
    readings: usize,
    /// Faults to inject.
    #[arg(long, default_value_t = 8)]
    faults: usize,
    /// Seed for data and training.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Move every device's operating point in the live part by this many standard
    /// deviations per feature (a slow change of normal; 0: none).
    #[arg(long, default_value_t = 0.0)]
    shift: f64,
    /// Days the move takes (linear), after which it stays.
    #[arg(long, default_value_t = 7.0)]
    shift_days: f64,
}

pub fn run(args: DemoArgs, tty: bool) -> anyhow::Result<ExitCode> {
    let DemoArgs {
        out,
        devices,
        readings,
        faults,
        seed,
        shift,
        shift_days,
    } = args;
    init_logging(None);
    anyhow::ensure!(
        devices >= 1 && readings >= 100,
        "the demo needs at least 1 device and 100 readings per device"
    );
    anyhow::ensure!(
        shift.is_finite() && shift_days.is_finite() && shift_days > 0.0,
        "--shift must be a number and --shift-days a number of days above 0"
    );
    let spec = crate::tools::demo::DemoSpec {
        out: out.clone(),
        devices,
        readings,
        faults,
        seed,
        shift_sigmas: shift,
        shift_days,
    };
    let summary = crate::tools::demo::run(&spec, tty)?;
    println!("{summary}");
    println!(
        "wrote {}/forecasts.lp (InfluxDB line protocol), {}/chart.svg, model in {}/models, data in {}/history.jsonl and live.jsonl",
        out.display(),
        out.display(),
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
