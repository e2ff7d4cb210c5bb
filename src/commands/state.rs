//! `sensorcast state`: checkpoints inspected, and their costs measured.

use super::*;

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Partitions, devices, offsets, model versions, sizes and ages of the checkpoints.
    Inspect(InspectArgs),
    /// Measure checkpoint size and the time to take, write, load and restore one.
    Bench(StateBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Checkpoint directory (`state.dir` of `state.store = "dir"`).
    #[arg(long, conflicts_with_all = ["config", "topic"], required_unless_present_any = ["config", "topic"])]
    dir: Option<PathBuf>,
    /// Or a changelog topic (`state.store = "kafka"`); the whole topic is read.
    #[arg(long)]
    topic: Option<String>,
    /// The config whose store to read (with `--topic`: whose Kafka settings to use).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (with `--topic`; overrides the config's).
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct StateBenchArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    devices: Vec<usize>,
    /// Partitions the devices are spread over.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Hidden width.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Features.
    #[arg(long, default_value_t = 8)]
    features: usize,
    /// Forecast horizon.
    #[arg(long, default_value_t = 3)]
    horizon: usize,
    /// Where to write the checkpoints (a temporary folder inside it, removed afterwards).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Measure the Kafka changelog store instead, on these brokers (a topic of its own,
    /// deleted afterwards).
    #[arg(long)]
    brokers: Option<String>,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let InspectArgs {
        dir,
        topic,
        config,
        brokers,
    } = args;
    init_logging(None);
    let now = chrono::Utc::now().timestamp_millis();
    let cfg = match &config {
        Some(c) => Some(Config::load(Some(c))?),
        None => None,
    };
    let kafka_store = |cfg: &Config| {
        crate::state::KafkaStore::new(
            &crate::kafka::client_config(cfg, &[]),
            &cfg.state.changelog_topic,
            &cfg.kafka.group_id,
            crate::state::DirStore::new(&cfg.state.dir, 1),
            1,
        )
        .context("cannot create Kafka clients")
    };
    let report = match (dir, topic, cfg) {
        (Some(d), _, _) => crate::state::inspect(&d, now)
            .with_context(|| format!("cannot read checkpoints under {}", d.display()))?,
        (None, Some(t), cfg) => {
            let mut cfg = cfg.unwrap_or_default();
            if let Some(b) = brokers {
                cfg.kafka.brokers = b;
            }
            crate::state::inspect_topic(&kafka_store(&cfg)?, &t, now)
                .with_context(|| format!("cannot read changelog topic {t}"))?
        }
        (None, None, Some(cfg)) => match cfg.state.store {
            crate::config::StoreKind::Dir => crate::state::inspect(&cfg.state.dir, now)
                .with_context(|| {
                    format!("cannot read checkpoints under {}", cfg.state.dir.display())
                })?,
            crate::config::StoreKind::Kafka => {
                let store = kafka_store(&cfg)?;
                let mut out = String::new();
                for s in &cfg.streams {
                    let t = store.topic(&s.name);
                    out += &crate::state::inspect_topic(&store, &t, now)
                        .with_context(|| format!("cannot read changelog topic {t}"))?;
                }
                out
            }
        },
        (None, None, None) => anyhow::bail!("give --dir, --topic or --config"),
    };
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

pub fn bench(args: StateBenchArgs) -> anyhow::Result<ExitCode> {
    let StateBenchArgs {
        devices,
        partitions,
        hidden,
        features,
        horizon,
        dir,
        brokers,
    } = args;
    init_logging(None);
    anyhow::ensure!(partitions >= 1, "--partitions must be at least 1");
    let kafka = brokers.map(|b| {
        let mut cfg = Config::default();
        cfg.kafka.brokers = b;
        cfg.kafka.group_id = "bench".into();
        cfg.state.changelog_topic = format!("sensorcast-state-bench-{}", std::process::id());
        cfg
    });
    let shape = BenchSpec {
        devices: 0,
        steps: 2,
        hidden,
        features,
        layers: 1,
        horizon,
        batch: 4096,
    };
    println!("hidden={hidden} features={features} horizon={horizon} partitions={partitions}");
    println!(
        "{:>9} {:>12} {:>9} {:>12} {:>10} {:>10} {:>11}",
        "devices", "bytes", "B/device", "snapshot_ms", "write_ms", "load_ms", "restore_ms"
    );
    for n in devices {
        anyhow::ensure!(n >= 1, "--devices: {n} is not at least 1");
        let tmp = dir.join(format!("sensorcast-state-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let local = crate::state::DirStore::new(&tmp, 1);
        let r = match &kafka {
            None => crate::tools::state_bench::run(&shape, n, partitions, &local.into()),
            Some(cfg) => {
                let topic = cfg.state.changelog_topic.clone();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(crate::kafka::create_topic(
                    cfg,
                    &topic,
                    partitions as i32,
                    &[("cleanup.policy", "compact")],
                ))?;
                let store = crate::state::KafkaStore::new(
                    &crate::kafka::client_config(cfg, &[]),
                    &topic,
                    "bench",
                    local,
                    1,
                )?;
                let r = crate::tools::state_bench::run(
                    &shape,
                    n,
                    partitions,
                    &crate::state::Store::Kafka(std::sync::Arc::new(store)),
                );
                rt.block_on(crate::kafka::delete_topic(cfg, &topic));
                r
            }
        };
        let _ = std::fs::remove_dir_all(&tmp);
        let r = r?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:>9} {:>12} {:>9} {:>12.1} {:>10.1} {:>10.1} {:>11.1}",
            r.devices,
            r.bytes,
            r.bytes / r.devices,
            ms(r.snapshot),
            ms(r.write),
            ms(r.load),
            ms(r.restore)
        );
    }
    Ok(ExitCode::SUCCESS)
}
