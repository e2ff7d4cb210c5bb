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
    println!(
        "anomaly_thresholds={}",
        if r.calibrated { "measured" } else { "gaussian" }
    );
    println!("events_per_s={:.0}", r.events_per_s);
    println!("state_bytes_per_device={}", r.state_bytes_per_device);
    println!("rss_bytes_per_device={}", r.rss_bytes_per_device);
    let p = r.phases;
    let share =
        |d: std::time::Duration| 100.0 * d.as_secs_f64() / r.phases_of.as_secs_f64().max(1e-9);
    let rest = r
        .phases_of
        .saturating_sub(p.gather + p.step + p.head + p.detect + p.finish);
    println!(
        "phases_pct gather={:.1} step={:.1} head={:.1} detect={:.1} finish={:.1} other={:.1}",
        share(p.gather),
        share(p.step),
        share(p.head),
        share(p.detect),
        share(p.finish),
        share(rest)
    );
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / r.events.max(1) as f64;
    println!(
        "phases_ns_per_reading gather={:.0} step={:.0} head={:.0} detect={:.0} finish={:.0} other={:.0}",
        per(p.gather),
        per(p.step),
        per(p.head),
        per(p.detect),
        per(p.finish),
        per(rest)
    );
    Ok(ExitCode::SUCCESS)
}
