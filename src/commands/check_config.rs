//! `sensorcast check-config`: the effective configuration or every problem in it, and the
//! probes of InfluxDB and Kafka.

use super::*;

/// `sensorcast check-config`: the effective config with secrets masked.
pub fn check_config(path: Option<&Path>) -> Result<String, crate::config::ConfigError> {
    let cfg = Config::load(path)?;
    let mut out = cfg.to_masked_toml();
    out.push_str("\n# output per stepped reading (model.horizon and the stream's features)\n");
    for s in &cfg.streams {
        let output = cfg.output_for(s);
        let fmt = PointFormat::new(&s.name, "model", &s.features, cfg.model.horizon, &output);
        let v = fmt.volume();
        let every = output.forecast_every.max(1);
        let _ = writeln!(
            out,
            "# stream {:?}: {} points, {} samples{}; an alarm raised or cleared adds 1 point",
            s.name,
            v.points,
            v.samples,
            if every > 1 {
                let thin = PointFormat::new(
                    &s.name,
                    "model",
                    &s.features,
                    cfg.model.horizon,
                    &crate::config::OutputConfig {
                        horizons: crate::config::Horizons::Steps(Vec::new()),
                        ..output.clone()
                    },
                )
                .volume();
                format!(
                    " on every {every}th reading, {} points, {} samples on the others",
                    thin.points, thin.samples
                )
            } else {
                String::new()
            }
        );
    }
    Ok(out)
}

/// What `check-config --probe` found: one line per check.
#[derive(Debug)]
pub struct ProbeReport {
    /// The lines, each starting `ok` or `FAIL`.
    pub lines: String,
    /// Every check passed.
    pub ok: bool,
}

/// `sensorcast check-config --probe`: whether InfluxDB takes writes as configured and the
/// Kafka brokers answer with the streams' topics.
pub fn probe(cfg: &Config) -> anyhow::Result<ProbeReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = String::new();
    let mut ok = true;
    match rt.block_on(crate::influx::probe(&cfg.influxdb)) {
        Ok(s) => out.push_str(&format!("ok    influxdb: {s}\n")),
        Err(e) => {
            ok = false;
            out.push_str(&format!("FAIL  influxdb: {e}\n"));
        }
    }
    for line in crate::kafka::probe(cfg) {
        ok &= line.starts_with("ok");
        out.push_str(&line);
        out.push('\n');
    }
    Ok(ProbeReport { lines: out, ok })
}

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// Config file (TOML); defaults and environment only when left out.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also check that InfluxDB takes writes as configured (an empty write) and that the
    /// Kafka brokers answer with the streams' topics; exit 1 if not.
    #[arg(long)]
    probe: bool,
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let CheckConfigArgs { config, probe } = args;
    init_logging(None);
    let text = match crate::commands::check_config(config.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{text}");
    if !probe {
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = Config::load(config.as_deref())?;
    let report = crate::commands::probe(&cfg)?;
    // As comments, so that the output stays a valid config.
    println!("\n# probe");
    for line in report.lines.lines() {
        println!("# {line}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
