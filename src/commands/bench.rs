//! `sensorcast bench`: the engine alone on a synthetic fleet.

use super::*;

pub fn run(spec: BenchSpec) -> anyhow::Result<ExitCode> {
    init_logging(None);
    let r = crate::tools::bench::run(&spec).context("benchmark failed")?;
    let BenchSpec {
        devices,
        steps,
        hidden,
        features,
        layers,
        horizon,
        batch,
    } = spec;
    println!(
        "devices={devices} steps={steps} hidden={hidden} features={features} layers={layers} horizon={horizon} batch={batch} isa={:?}",
        r.isa
    );
    println!(
        "events={} fully_scored={} elapsed_s={:.3}",
        r.events,
        r.fully_scored,
        r.elapsed.as_secs_f64()
    );
    println!("events_per_s={:.0}", r.events_per_s);
    println!("state_bytes_per_device={}", r.state_bytes_per_device);
    println!("rss_bytes_per_device={}", r.rss_bytes_per_device);
    Ok(ExitCode::SUCCESS)
}
