//! `sensorcast bench`: the engine alone on a synthetic fleet.

use super::*;
use crate::engine::kernel::Isa;

/// `sensorcast bench` arguments: the shape, and the kernel's instruction set.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub spec: BenchSpec,
    /// Instruction set of the kernel: the best this CPU has, or a lower one, to measure that
    /// code path on this machine (all give the same bits).
    #[arg(long, value_enum, default_value_t = IsaChoice::Best)]
    pub isa: IsaChoice,
    /// Measure the model core alone instead: the LSTM step and the forecast head on one
    /// micro-batch of `--batch` rows, again and again (no device state, detection or output),
    /// in FLOP per second and as a fraction of this core's measured multiply-add peak.
    #[arg(long)]
    pub kernel: bool,
}

/// `--isa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsaChoice {
    Best,
    Avx512,
    Avx2,
    Portable,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    init_logging(None);
    let isa = match args.isa {
        IsaChoice::Best => Some(Isa::detect()),
        IsaChoice::Avx512 => Isa::avx512(),
        IsaChoice::Avx2 => Isa::avx2(),
        IsaChoice::Portable => Some(Isa::PORTABLE),
    };
    let Some(isa) = isa else {
        anyhow::bail!("--isa {:?}: this CPU does not have it", args.isa);
    };
    let spec = args.spec;
    if args.kernel {
        print_kernel(&spec, isa);
        return Ok(ExitCode::SUCCESS);
    }
    let r = crate::tools::bench::run_on(&spec, isa).context("benchmark failed")?;
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
        "events={} learning_untimed={} elapsed_s={:.3}",
        r.events,
        r.learning,
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
    let d = p.detect_passes;
    println!(
        "detect_ns_per_reading measure={:.0} scores={:.0} joint={:.0} look_up={:.0} explain={:.0} verdict={:.0}",
        per(d.measure),
        per(d.scores),
        per(d.joint),
        per(d.look_up),
        per(d.explain),
        per(d.verdict)
    );
    Ok(ExitCode::SUCCESS)
}

/// `sensorcast bench --kernel`.
fn print_kernel(spec: &BenchSpec, isa: Isa) {
    let r = crate::tools::kernel_bench::run(spec, isa, std::time::Duration::from_secs(2));
    println!(
        "kernel hidden={} features={} layers={} horizon={} rows={} isa={isa:?}",
        spec.hidden, spec.features, spec.layers, spec.horizon, r.rows
    );
    println!(
        "kernel_ns_per_row step={:.1} head={:.1}",
        r.step_ns_per_row, r.head_ns_per_row
    );
    println!("kernel_flop_per_row={:.0}", r.flop_per_row);
    println!("kernel_gflops={:.1}", r.flops() / 1e9);
    println!("kernel_product_ns_per_row={:.1}", r.product_ns_per_row);
    match (r.peak_flops, r.fraction_of_peak()) {
        (Some(peak), Some(f)) => {
            println!("core_peak_gflops={:.1}", peak / 1e9);
            println!("kernel_fraction_of_peak={f:.2}");
        }
        _ => println!("core_peak_gflops=unknown (portable code)"),
    }
    if let Some(f) = r.product_fraction_of_peak() {
        println!("kernel_product_fraction_of_peak={f:.2}");
    }
}
