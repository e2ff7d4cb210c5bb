//! `sensorcast simulate`: the synthetic fleet to Kafka or a file.

use super::*;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Devices.
    #[arg(long, default_value_t = 24)]
    devices: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 1000)]
    readings: usize,
    /// Payload format.
    #[arg(long, value_enum, default_value = "json")]
    format: crate::config::Format,
    /// Faults to inject.
    #[arg(long, default_value_t = 0)]
    faults: usize,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Time between a device's readings, e.g. 1s, 1m.
    #[arg(long, default_value = "1m")]
    interval: crate::config::HumanDuration,
    /// Time of the last reading (RFC 3339); default now.
    #[arg(long)]
    end: Option<String>,
    /// Line-protocol measurement name.
    #[arg(long, default_value = "pump")]
    measurement: String,
    /// Kafka bootstrap servers (with --topic).
    #[arg(long, requires = "topic", conflicts_with = "out")]
    brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
    /// Output file instead of Kafka.
    #[arg(long, required_unless_present = "brokers")]
    out: Option<PathBuf>,
    /// Messages per second to Kafka (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Device ids start with this instead of `pump-` (e.g. a new fleet per run, for
    /// device churn).
    #[arg(long, default_value = "pump-")]
    device_prefix: String,
    /// A librdkafka producer property, `KEY=VALUE` (repeatable), e.g.
    /// `batch.num.messages=1`.
    #[arg(long = "producer-property", value_parser = key_value)]
    producer_properties: Vec<(String, String)>,
}

/// `KEY=VALUE`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let SimulateArgs {
        devices,
        readings,
        format,
        faults,
        seed,
        interval,
        end,
        measurement,
        brokers,
        topic,
        out,
        rate,
        device_prefix,
        producer_properties,
    } = args;
    init_logging(None);
    let end_ts = match end {
        Some(t) => crate::time::parse_ts_text(&t).map_err(|e| anyhow::anyhow!("--end: {e}"))?,
        None => chrono::Utc::now()
            .timestamp_nanos_opt()
            .context("clock out of range")?,
    };
    let target = match (brokers, topic, out) {
        (Some(brokers), Some(topic), None) => {
            crate::tools::simulate::Target::Kafka { brokers, topic }
        }
        (None, None, Some(path)) => crate::tools::simulate::Target::File(path),
        _ => anyhow::bail!("give either --brokers and --topic, or --out"),
    };
    let spec = crate::tools::simulate::SimulateSpec {
        fleet: crate::synth::FleetSpec {
            devices,
            readings,
            interval_ns: interval.as_nanos(),
            end_ts,
            faults,
            seed,
            ..crate::synth::FleetSpec::default()
        },
        format,
        measurement,
        target,
        rate,
        device_prefix,
        producer_properties,
    };
    let n = crate::tools::simulate::run(&spec)?;
    println!("wrote {n} readings of {devices} devices");
    Ok(ExitCode::SUCCESS)
}
