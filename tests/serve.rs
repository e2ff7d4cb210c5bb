//! End-to-end tests of `sensorcast serve` against real servers: an Apache Kafka broker
//! (started by scripts/test.sh through scripts/kafka.sh, address in SENSORCAST_TEST_BROKERS),
//! VictoriaMetrics (started here, per test, so a test can stop and restart it) and librdkafka's
//! mock cluster for broker faults.
#![cfg(feature = "integration")]

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn json_and_line_protocol_end_to_end_exactly_once_in_victoria_metrics() {
    end_to_end(Db::vm());
}

#[test]
fn json_and_line_protocol_end_to_end_exactly_once_in_influxdb_1_6() {
    end_to_end(Db::influx());
}

fn end_to_end(db: Db) {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (tj, tl, group) = (unique("e2e-json"), unique("e2e-line"), unique("g-e2e"));
    create_topics(&brokers, &[(&tj, 3), (&tl, 2)]);
    let streams = [
        Stream {
            name: "jsonpumps",
            topic: &tj,
            format: "json",
        },
        Stream {
            name: "linepumps",
            topic: &tl,
            format: "line",
        },
    ];
    let (cfg, port) = setup(dir.path(), &brokers, &db, &group, &streams, "");
    let end = now_rfc3339(-60);
    simulate(&brokers, &tj, "json", 25, 200, &end);
    simulate(&brokers, &tl, "line", 25, 200, &end);
    let serve = Serve::start(&cfg, dir.path(), port);
    let readings = 50 * 200;
    let forecasts = readings * HORIZON * FEATURES.len();
    // Per reading: the reading, the forecasts (both steps: output.horizons = "ends"), the
    // anomaly point.
    let points = readings * (2 + HORIZON * FEATURES.len());
    wait_until("all points written", Duration::from_secs(120), || {
        serve.metric("sensorcast_points_written_total") as usize >= points
    });
    wait_until("points visible", Duration::from_secs(30), || {
        db.points("anomaly", "score").0 >= readings
    });
    let name = db.name();
    assert_eq!(
        db.points("anomaly", "score"),
        (readings, readings),
        "{name}: exactly one anomaly point per reading"
    );
    let series = db.series("anomaly", "score");
    assert_eq!(
        series.len(),
        50,
        "{name}: one anomaly series per device and stream"
    );
    for tags in &series {
        let keys: Vec<_> = tags.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["device", "stream"],
            "{name}: the model is a field, not a tag"
        );
        assert!(tags["device"].starts_with("pump-"), "{tags:?}");
    }
    let fseries = db.series("forecast", "yhat");
    assert_eq!(fseries.len(), 50 * HORIZON * FEATURES.len(), "{name}");
    assert!(
        fseries
            .iter()
            .all(|t| t.keys().map(String::as_str).collect::<Vec<_>>()
                == ["device", "field", "horizon", "stream"]),
        "{name}: {fseries:?}"
    );
    for (m, f, want) in [
        ("forecast", "yhat", forecasts),
        ("forecast", "yhat_lower", forecasts),
        ("forecast", "yhat_upper", forecasts),
        ("anomaly", "likelihood", readings),
        ("anomaly", "is_anomaly", readings),
        ("reading", FEATURES[0], readings),
        ("reading", FEATURES[3], readings),
    ] {
        assert_eq!(db.points(m, f), (want, want), "{name}: {m} {f}");
    }
    if let Db::Influx(i) = &db {
        // String fields are there too (VictoriaMetrics drops them): every point names its model.
        assert_eq!(i.count("anomaly", "model"), readings);
        assert_eq!(i.count("forecast", "model"), forecasts);
    }
    for (topic, parts) in [(&tj, 3), (&tl, 2)] {
        wait_until(
            "offsets committed to the end",
            Duration::from_secs(30),
            || committed(&brokers, &group, topic, parts) == 5000,
        );
    }
    assert_eq!(serve.terminate(), 0);
}

/// The dead-letter topic disappears (deleted, and the broker creates no topic on its own):
/// each dead letter then takes librdkafka's delivery timeout (10 s) to be given up. That may
/// hold back the checkpoint and offsets of its own partition, never the points or offsets of
/// the others.
#[test]
fn an_undeliverable_dead_letter_holds_back_only_its_own_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path(), &["auto.create.topics.enable=false"]);
    let brokers = broker.addr();
    let vm = Vm::start();
    let (topic, dlq, group) = (unique("dl-stall"), unique("dlq-gone"), unique("g-dl-stall"));
    create_topics(&brokers, &[(&topic, 2), (&dlq, 1)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    add_keys(&cfg, "[kafka]", &format!("dead_letter_topic = \"{dlq}\""));
    let serve = Serve::start(&cfg, dir.path(), port);
    delete_topic(&brokers, &dlq);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let t0 = chrono::Utc::now().timestamp_millis() - 100_000;
    let good = |i: i64| {
        format!(
            r#"{{"ts":{},"values":{{"vibration":1,"temperature":60,"current":10,"pressure":4}}}}"#,
            t0 + i * 1000
        )
    };
    // Five bad messages on partition 0, then good readings of one device on partition 1.
    for _ in 0..5 {
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(0)
                    .key("pump-bad")
                    .payload("{not json"),
            )
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let sent = Instant::now();
    for i in 0..20 {
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(1)
                    .key("pump-good")
                    .payload(&good(i)),
            )
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    // Served one dead letter at a time behind the writes, the five would hold every
    // partition for 50 s; produced at once and waited for by their partition's checkpoint
    // alone, the good partition is written and committed while they are still on their way.
    let committed_1 = || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&topic, 1);
        c.committed_offsets(tpl, Duration::from_secs(5))
            .ok()
            .and_then(|t| t.find_partition(&topic, 1).map(|e| e.offset()))
    };
    wait_until(
        "the good partition written and committed",
        Duration::from_secs(60),
        || {
            vm.samples("anomaly_score").0 >= 20
                && committed_1() == Some(rdkafka::Offset::Offset(20))
        },
    );
    let undeliverable = serve.metric_with(
        "sensorcast_dead_letters_total",
        &[("reason", "undeliverable")],
    );
    assert_eq!(
        undeliverable,
        0.0,
        "the good partition was committed only after {undeliverable} of the other partition's dead letters were given up ({:?} after it was produced)",
        sent.elapsed()
    );
    wait_until("the dead letters given up", Duration::from_secs(60), || {
        serve.metric_with(
            "sensorcast_dead_letters_total",
            &[("reason", "undeliverable")],
        ) >= 5.0
    });
    let (_, ready) = http("GET", &serve.http, "/health/ready", "").expect("ready");
    assert!(
        ready.contains("dead letters cannot be produced") && ready.contains(&dlq),
        "{ready}"
    );
    assert_eq!(serve.terminate(), 0);
}

/// InfluxDB refuses a point for good (a field type conflict: `score` was first written as a
/// string). The point is not dropped: it goes to the dead-letter topic with the status,
/// InfluxDB's answer and the line, and its offset is committed only after that.
#[test]
fn points_influxdb_refuses_go_to_the_dead_letter_topic() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx::start();
    let (topic, dlq, group) = (
        unique("refused-in"),
        unique("dlq-refused"),
        unique("g-refused"),
    );
    create_topics(&brokers, &[(&topic, 1), (&dlq, 1)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &influx, &group, &streams, "");
    add_keys(&cfg, "[kafka]", &format!("dead_letter_topic = \"{dlq}\""));
    let ts = (chrono::Utc::now().timestamp() - 100) * 1_000_000_000;
    let (status, body) = http(
        "POST",
        &influx.addr(),
        &format!("/write?db={INFLUX_DB}"),
        &format!("anomaly,device=other,stream=pumps score=\"text\" {ts}\n"),
    )
    .expect("write");
    assert_eq!(status, 204, "{body}");
    let (devices, readings) = (4, 20);
    let total = devices * readings;
    simulate(
        &brokers,
        &topic,
        "json",
        devices,
        readings,
        &now_rfc3339(-100),
    );
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until("offsets committed", Duration::from_secs(60), || {
        committed(&brokers, &group, &topic, 1) == total as i64
    });
    // Everything committed: every refused point is in the dead-letter topic by now.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[&dlq]).expect("subscribe");
    let mut lines = Vec::new();
    let t = Instant::now();
    while lines.len() < total && t.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            let headers = m.headers().expect("headers");
            let get = |k: &str| {
                headers
                    .iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            };
            assert_eq!(
                get("sensorcast.reason").as_deref(),
                Some("refused_by_influxdb")
            );
            assert_eq!(get("sensorcast.influxdb.status").as_deref(), Some("400"));
            let error = get("sensorcast.error").unwrap_or_default();
            assert!(error.contains("field type conflict"), "{error}");
            lines.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    assert_eq!(lines.len(), total, "one dead letter per refused point");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("anomaly,") && l.contains("score=")),
        "{lines:?}"
    );
    assert_eq!(
        serve.metric_with(
            "sensorcast_dead_letters_total",
            &[("reason", "refused_by_influxdb")]
        ),
        total as f64
    );
    // The other measurements were written.
    assert!(influx.count("forecast", "model") > 0);
    assert_eq!(serve.terminate(), 0);
}

/// Secrets in every place they can be configured — credentials in `influxdb.url`, a token
/// parameter in its query, Kafka's SASL password and TLS private key — never appear in the
/// log with every crate at debug level, nor in `/health/ready`, `/metrics`, `check-config`'s
/// output or its errors.
#[test]
fn secrets_never_appear_in_logs_health_or_errors_with_debug_logging() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, group) = (unique("secrets-in"), unique("g-secrets"));
    create_topics(&brokers, &[(&topic, 1)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    const SECRETS: [&str; 4] = [
        "url-secret-1",
        "query-secret-2",
        "kafka-secret-3",
        "pem-secret-4",
    ];
    let vm_url = format!("url = \"http://{}\"", vm.addr());
    config_with(&cfg, |t| {
        t.replace(
            &vm_url,
            &format!(
                "url = \"http://admin:url-secret-1@{}/?token=query-secret-2\"",
                vm.addr()
            ),
        )
    });
    add_keys(
        &cfg,
        "[kafka.properties]",
        "\"sasl.password\" = \"kafka-secret-3\"\n\"ssl.key.pem\" = \"pem-secret-4\"",
    );
    let serve = Serve::start_logging(&cfg, dir.path(), port, "debug");
    simulate(&brokers, &topic, "json", 2, 20, &now_rfc3339(-100));
    wait_until("points written", Duration::from_secs(60), || {
        vm.samples("anomaly_score").0 >= 40
    });
    let (_, health) = http("GET", &serve.http, "/health/ready", "").expect("ready");
    let metrics = serve.metrics_text();
    let debug = [("RUST_LOG", "debug")];
    let (_, out, err) = with_config(&cfg, &["check-config"], &debug);
    // An InfluxDB that cannot be reached: the error names the URL, without its secrets.
    let closed = dir.path().join("closed.toml");
    std::fs::copy(&cfg, &closed).expect("copy");
    config_with(&closed, |t| {
        t.replace(&vm.addr(), &format!("127.0.0.1:{}", free_port()))
    });
    let (_, out_closed, err_closed) = with_config(&closed, &["check-config"], &debug);
    assert!(
        err_closed.contains("***@127.0.0.1") || out_closed.contains("***@127.0.0.1"),
        "the unreachable URL is named, redacted:\n{out_closed}\n{err_closed}"
    );
    let log_path = serve.log.clone();
    assert_eq!(serve.terminate(), 0);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains(" DEBUG "), "debug logging was on:\n{log}");
    for (what, text) in [
        ("the log", &log),
        ("/health/ready", &health),
        ("/metrics", &metrics),
        ("check-config", &format!("{out}{err}")),
        (
            "check-config's errors",
            &format!("{out_closed}{err_closed}"),
        ),
    ] {
        for s in SECRETS {
            assert!(!text.contains(s), "{s} appears in {what}:\n{text}");
        }
    }
}

/// InfluxDB accepts connections and never answers. SIGTERM must still end `serve` within
/// `service.shutdown_timeout` (plus the fixed five-second grace for calls that cannot be
/// cancelled), with exit code 1: the points were not written, their offsets stay uncommitted.
#[test]
fn shutdown_ends_within_its_timeout_when_the_database_never_answers() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, group) = (unique("silent-db"), unique("g-silent-db"));
    create_topics(&brokers, &[(&topic, 1)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    // Takes connections, reads nothing, answers nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    config_with(&cfg, |t| {
        t.replace(&vm.addr(), &silent_addr)
            .replace("shutdown_timeout = \"20s\"", "shutdown_timeout = \"3s\"")
    });
    add_keys(&cfg, "[influxdb]", "request_timeout = \"300s\"");
    let serve = Serve::start(&cfg, dir.path(), port);
    simulate(&brokers, &topic, "json", 4, 25, &now_rfc3339(-100));
    wait_until("the readings taken in", Duration::from_secs(60), || {
        serve.metric("sensorcast_readings_total") >= 100.0
    });
    let t = Instant::now();
    let log = serve.log.clone();
    let code = serve.terminate();
    let took = t.elapsed();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        took < Duration::from_secs(3 + 5 + 4),
        "shutdown took {took:?} with shutdown_timeout = 3s:\n{log}"
    );
    assert_eq!(code, 1, "unwritten points make the exit unclean:\n{log}");
    // The stages gave up at the deadline themselves: the watchdog that ends a shutdown still
    // blocked after the grace (a backstop for calls that cannot be cancelled) was not needed.
    assert!(
        !log.contains("shutdown still blocked"),
        "the write in flight held shutdown past its deadline:\n{log}"
    );
    assert_eq!(
        committed(&brokers, &group, &topic, 1),
        0,
        "nothing written, nothing committed"
    );
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_with_their_reason() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, dlq, group) = (unique("dlq-in"), unique("dlq"), unique("g-dlq"));
    create_topics(&brokers, &[(&topic, 1), (&dlq, 1)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    // Point dead letters at this test's topic and lower the size limit.
    let text = std::fs::read_to_string(&cfg).expect("cfg").replace(
        "commit_interval = \"500ms\"",
        &format!(
            "commit_interval = \"500ms\"\ndead_letter_topic = \"{dlq}\"\nmax_payload_bytes = 600"
        ),
    );
    std::fs::write(&cfg, text).expect("cfg");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let t0 = chrono::Utc::now().timestamp_millis() - 100_000;
    let good = |i: i64| {
        format!(
            r#"{{"ts":{},"values":{{"vibration":1,"temperature":60,"current":10,"pressure":4}}}}"#,
            t0 + i * 1000
        )
    };
    let bad: Vec<(&str, Option<&str>, String)> = vec![
        ("invalid_json", Some("pump-1"), "{not json".into()),
        ("missing_device", None, good(100)),
        ("missing_timestamp", Some("pump-1"), r#"{"values":{"vibration":1,"temperature":60,"current":10,"pressure":4}}"#.into()),
        ("wrong_type", Some("pump-1"), format!(r#"{{"ts":{t0},"values":{{"vibration":"x","temperature":60,"current":10,"pressure":4}}}}"#)),
        ("not_finite", Some("pump-1"), format!(r#"{{"ts":{t0},"values":{{"vibration":1e39,"temperature":60,"current":10,"pressure":4}}}}"#)),
        ("unknown_feature", Some("pump-1"), format!(r#"{{"ts":{t0},"values":{{"rpm":1,"vibration":1,"temperature":60,"current":10,"pressure":4}}}}"#)),
        ("missing_feature", Some("pump-1"), format!(r#"{{"ts":{t0},"values":{{"vibration":1}}}}"#)),
        ("bad_timestamp", Some("pump-1"), r#"{"ts":"yesterday","values":{"vibration":1,"temperature":60,"current":10,"pressure":4}}"#.into()),
        ("too_large", Some("pump-1"), format!("{}{}", good(101), " ".repeat(700))),
    ];
    let mut sent_good = 0;
    for i in 0..40 {
        let payload = good(i);
        producer
            .send(BaseRecord::to(&topic).key("pump-1").payload(&payload))
            .expect("send");
        sent_good += 1;
        if let Some((_, key, payload)) = bad.get(i as usize / 4).filter(|_| i % 4 == 1) {
            let mut rec = BaseRecord::<str, str>::to(&topic).payload(payload);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            producer.send(rec).expect("send bad");
        }
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until("good readings written", Duration::from_secs(60), || {
        vm.samples("anomaly_score").0 >= sent_good
    });
    assert_eq!(
        vm.samples("anomaly_score").0,
        sent_good,
        "every valid message around the bad ones is processed"
    );
    // Read the dead letters back.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[&dlq]).expect("subscribe");
    let mut reasons = HashMap::new();
    let t = Instant::now();
    while reasons.len() < bad.len() && t.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            let headers = m.headers().expect("headers");
            let get = |k: &str| {
                headers
                    .iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            };
            assert_eq!(
                get("sensorcast.source.topic").as_deref(),
                Some(topic.as_str())
            );
            assert!(get("sensorcast.source.offset").is_some() && get("sensorcast.error").is_some());
            reasons.insert(
                get("sensorcast.reason").expect("reason"),
                (m.key().map(|k| k.to_vec()), m.payload().map(|p| p.to_vec())),
            );
        }
    }
    for (reason, key, payload) in &bad {
        let (k, p) = reasons.get(*reason).unwrap_or_else(|| {
            panic!(
                "no dead letter with reason {reason}; got {:?}",
                reasons.keys()
            )
        });
        assert_eq!(
            k.as_deref(),
            key.map(str::as_bytes),
            "{reason}: original key kept"
        );
        assert_eq!(
            p.as_deref(),
            Some(payload.as_bytes()),
            "{reason}: original bytes kept"
        );
    }
    assert!(serve.metric("sensorcast_dead_letters_total") >= bad.len() as f64);
    let produced = (sent_good + bad.len()) as i64;
    wait_until(
        "offsets past the bad messages",
        Duration::from_secs(30),
        || committed(&brokers, &group, &topic, 1) == produced,
    );
    assert_eq!(serve.terminate(), 0);
}

// Pipeline bounds of the outage test, small so that the outage produces far more than they
// can hold.
const OUTAGE_MAX_BATCH: u64 = 128;
const OUTAGE_QUEUE_BATCHES: u64 = 2;
const OUTAGE_BATCH_BYTES: u64 = 128 * 1024;
const OUTAGE_CONCURRENCY: u64 = 2;
const OUTAGE_PREFETCH_KIB: u64 = 64;
const OUTAGE_PARTITION_FETCH_BYTES: u64 = 16 * 1024;
const OUTAGE_PARTITIONS: u64 = 2;

#[test]
fn a_victoria_metrics_outage_loses_and_duplicates_nothing_and_memory_stays_flat() {
    outage(Db::vm());
}

#[test]
fn an_influxdb_1_6_outage_loses_and_duplicates_nothing_and_memory_stays_flat() {
    outage(Db::influx());
}

fn outage(mut vm: Db) {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (topic, group) = (unique("outage"), unique("g-outage"));
    create_topics(&brokers, &[(&topic, OUTAGE_PARTITIONS as i32)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    add_keys(&cfg, "[engine]", &format!("max_batch = {OUTAGE_MAX_BATCH}"));
    add_keys(
        &cfg,
        "[influxdb]",
        &format!(
            "queue_batches = {OUTAGE_QUEUE_BATCHES}\nbatch_bytes = {OUTAGE_BATCH_BYTES}\nconcurrency = {OUTAGE_CONCURRENCY}"
        ),
    );
    add_keys(
        &cfg,
        "[kafka.properties]",
        &format!(
            "\"queued.max.messages.kbytes\" = \"{OUTAGE_PREFETCH_KIB}\"\n\"max.partition.fetch.bytes\" = \"{OUTAGE_PARTITION_FETCH_BYTES}\""
        ),
    );
    let serve = Serve::start(&cfg, dir.path(), port);

    // Warm-up: 20 devices × 150 readings written while InfluxDB is up. Afterwards nothing is
    // in flight, so this is the baseline: the process at work, its pipeline empty.
    let first = 20 * 150;
    simulate(&brokers, &topic, "json", 20, 150, &now_rfc3339(-1200));
    wait_until("warm-up written", Duration::from_secs(60), || {
        vm.points("anomaly", "score").0 >= first
    });
    let rss0 = serve.rss_kib();
    let decoded0 = serve.metric("sensorcast_readings_total");

    // The outage: 40 devices × 1000 readings produced while InfluxDB is down, several times
    // what the bounded pipeline holds, so that buffering everything would show.
    vm.down();
    let outage: usize = 40 * 1000;
    simulate(&brokers, &topic, "json", 40, 1000, &now_rfc3339(-100));
    let mut rss_max = rss0;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(serve.rss_kib());
    }
    assert!(
        serve.metric("sensorcast_sink_retries_total") > 0.0,
        "writes were retried"
    );
    let (_, live) = http("GET", &serve.http, "/health/live", "").expect("live");
    assert_eq!(live, "ok\n");

    // Nothing was written during the outage, so every reading decoded since the baseline is
    // still held somewhere in the process. Backpressure must stop consumption at what the
    // bounded pipeline holds (docs/ARCHITECTURE.md §3.5):
    //   max_batch × (1 being filled + 2 in the engine's queue + 1 in the engine + queue_batches)
    //   + (concurrency + 1 pending) requests × (batch_bytes / ≥ 1 KiB per reading + max_batch)
    // plus what librdkafka had handed over when the pause landed (one batch's worth here).
    let buffered = (serve.metric("sensorcast_readings_total") - decoded0) as u64;
    assert_eq!(serve.metric("sensorcast_paused"), 1.0, "consumption paused");
    let held_bound = OUTAGE_MAX_BATCH * (1 + 2 + 1 + OUTAGE_QUEUE_BATCHES)
        + (OUTAGE_CONCURRENCY + 1) * (OUTAGE_BATCH_BYTES / 1024 + OUTAGE_MAX_BATCH)
        + OUTAGE_MAX_BATCH;
    assert!(
        buffered <= held_bound,
        "{buffered} of the outage's {outage} readings taken in, more than the {held_bound} the pipeline's bounds allow"
    );
    // No micro-batch grew past its cap while the queues behind it were full: at most what
    // librdkafka had already handed over when the pause landed joins a full batch.
    let batches = serve.metric("sensorcast_batch_readings_count");
    let capped = serve.metric_with(
        "sensorcast_batch_readings_bucket",
        &[("le", &format!("{}.0", 2 * OUTAGE_MAX_BATCH))],
    );
    assert_eq!(
        capped,
        batches,
        "{} of {batches} micro-batches held more than twice engine.max_batch = {OUTAGE_MAX_BATCH} readings",
        batches - capped
    );
    // Memory may grow by what is held, and no more: each held reading costs at most 4 KiB (its
    // 9 output lines, doubled while a write request keeps a copy of its body, or the decoded
    // reading before the engine), librdkafka's prefetch (its queue plus one fetch per
    // partition) at most 4× its payload bytes, plus 16 MiB for the allocator's slack. A leak
    // per retry, or outputs kept after the pause, would exceed it.
    let prefetch_kib =
        OUTAGE_PREFETCH_KIB + OUTAGE_PARTITIONS * OUTAGE_PARTITION_FETCH_BYTES / 1024;
    let bound_kib = buffered * 4 + 4 * prefetch_kib + 16 * 1024;
    assert!(
        rss_max <= rss0 + bound_kib,
        "memory grew from {rss0} KiB to {rss_max} KiB during the outage, more than the {bound_kib} KiB that {buffered} held readings explain"
    );

    vm.up();
    let total = first + outage;
    let t = Instant::now();
    while vm.points("anomaly", "score").0 < total {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not everything written after the outage: {} of {total}; metrics written={} retries={}\n{}",
            vm.points("anomaly", "score").0,
            serve.metric("sensorcast_points_written_total"),
            serve.metric("sensorcast_sink_retries_total"),
            serve
                .log_text()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("the outage's backlog written in {:?}", t.elapsed());
    let (unique_n, raw) = vm.points("anomaly", "score");
    assert_eq!((unique_n, raw), (total, total), "every point present once");
    wait_until("offsets committed", Duration::from_secs(30), || {
        committed(&brokers, &group, &topic, OUTAGE_PARTITIONS as i32) == total as i64
    });
    assert_eq!(serve.terminate(), 0);
}

#[test]
fn sigterm_mid_stream_exits_0_commits_only_written_and_restart_finishes() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, group) = (unique("sigterm"), unique("g-sigterm"));
    create_topics(&brokers, &[(&topic, 3)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "line",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    let total = 40 * 400;
    let serve = Serve::start(&cfg, dir.path(), port);
    // Produce at a steady 4000 readings/s (4 s in all) so that SIGTERM lands mid-stream.
    let mut producer = Command::new(BIN)
        .args([
            "simulate",
            "--devices",
            "40",
            "--readings",
            "400",
            "--format",
            "line",
            "--interval",
            "1s",
            "--rate",
            "4000",
        ])
        .args([
            "--end",
            &now_rfc3339(-60),
            "--brokers",
            &brokers,
            "--topic",
            &topic,
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("simulate");
    wait_until("some points written", Duration::from_secs(60), || {
        serve.metric("sensorcast_points_written_total") > 0.0
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = serve.log.clone();
    assert_eq!(
        serve.terminate(),
        0,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let done = committed(&brokers, &group, &topic, 3);
    // VictoriaMetrics makes acknowledged samples searchable within a moment.
    let t = Instant::now();
    while (vm.samples("anomaly_score").0 as i64) < done && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = vm.samples("anomaly_score").0 as i64;
    assert!(
        done <= written,
        "committed offsets ({done}) ran ahead of written outputs ({written})"
    );
    assert!(
        done < total as i64,
        "the stream was interrupted mid-way ({done} of {total})"
    );
    assert!(producer.wait().expect("simulate").success());
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until(
        "restart finishes the stream",
        Duration::from_secs(120),
        || vm.samples("anomaly_score").0 >= total,
    );
    assert_eq!(vm.samples("anomaly_score").0, total);
    wait_until("offsets at the end", Duration::from_secs(30), || {
        committed(&brokers, &group, &topic, 3) == total as i64
    });
    assert_eq!(serve.terminate(), 0);
}

#[test]
fn broker_faults_from_the_mock_cluster_are_survived() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = MockCluster::new(3).expect("mock cluster");
    let mock = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, group) = ("mock-in".to_string(), unique("g-mock"));
    cluster.create_topic(&topic, 3, 1).expect("topic");
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &mock, &vm, &group, &streams, "");
    simulate(&mock, &topic, "json", 10, 100, &now_rfc3339(-600));
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until("first batch written", Duration::from_secs(60), || {
        vm.samples("anomaly_score").0 >= 1000
    });
    // Request errors on fetch and commit, then a broker down and up again.
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 5],
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3],
    );
    simulate(&mock, &topic, "json", 10, 100, &now_rfc3339(-400));
    cluster.broker_down(2).expect("down");
    std::thread::sleep(Duration::from_secs(3));
    cluster.broker_up(2).expect("up");
    simulate(&mock, &topic, "json", 10, 100, &now_rfc3339(-200));
    wait_until(
        "all readings written despite broker faults",
        Duration::from_secs(120),
        || vm.samples("anomaly_score").0 >= 3000,
    );
    assert_eq!(vm.samples("anomaly_score").0, 3000);
    wait_until("offsets committed", Duration::from_secs(60), || {
        committed(&mock, &group, &topic, 3) == 3000
    });
    assert_eq!(serve.terminate(), 0);
    drop(cluster);
}

#[test]
fn oversized_and_hostile_messages_never_stall_a_partition() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, dlq, group) = (
        unique("hostile"),
        unique("hostile-dlq"),
        unique("g-hostile"),
    );
    // The input topic takes messages up to 4 MB, so that the 3 MB ones reach the service.
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("admin");
        let big = NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
            .set("max.message.bytes", "4000000");
        let dl = NewTopic::new(&dlq, 1, TopicReplication::Fixed(1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for r in rt
            .block_on(admin.create_topics([&big, &dl], &AdminOptions::new()))
            .expect("create topics")
        {
            r.expect("topic created");
        }
    }
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    let text = std::fs::read_to_string(&cfg).expect("cfg").replace(
        "commit_interval = \"500ms\"",
        &format!("commit_interval = \"500ms\"\ndead_letter_topic = \"{dlq}\""),
    );
    std::fs::write(&cfg, text).expect("cfg");
    // What a new user throws at it: 3 MB payloads (over the broker's default limit), random
    // bytes, broken and deeply nested JSON, control characters and 100 KB device ids, absurd
    // timestamps, empty messages — mixed into a valid stream.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    let t0 = chrono::Utc::now().timestamp_millis() - 600_000;
    let (devices, per) = (50, 100);
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(3_000_000));
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let long_id = "p".repeat(100_000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut good, mut oversized, mut bad) = (0, 0, 0);
    for i in 0..per {
        for d in 0..devices {
            let payload = format!(
                r#"{{"ts":{},"values":{{"vibration":1,"temperature":60,"current":10,"pressure":4}}}}"#,
                t0 + i as i64 * 1000
            );
            send(
                &producer,
                &topic,
                Some(format!("pump-{d}").as_bytes()),
                payload.as_bytes(),
            );
            good += 1;
        }
        if i % 2 == 0 {
            send(&producer, &topic, Some(b"pump-0"), huge.as_bytes());
            oversized += 1;
        }
        let junk: Vec<u8> = (0..200).map(|_| rng.random()).collect();
        let hostile: [(Option<&[u8]>, &[u8]); 6] = [
            (Some(b"pump-1"), &junk),
            (Some(b"pump-1"), nested.as_bytes()),
            (Some(b"pump-1"), b"{\"ts\":1,\"values\":{"),
            (
                Some(b"pump\x07\x1b[2J"),
                b"{\"ts\":1795000000000,\"values\":{}}",
            ),
            (
                Some(long_id.as_bytes()),
                b"{\"ts\":99999999999999999999,\"values\":{}}",
            ),
            (None, b""),
        ];
        let (k, p) = hostile[i % hostile.len()];
        send(&producer, &topic, k, p);
        bad += 1;
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let (low, high) = producer
        .client()
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(
        (low, high),
        (0, (good + oversized + bad) as i64),
        "the broker holds every message, the 3 MB ones included"
    );
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until(
        "every valid reading written",
        Duration::from_secs(180),
        || vm.samples("anomaly_score").0 >= good,
    );
    assert_eq!(vm.samples("anomaly_score").0, good);
    let produced = (good + oversized + bad) as i64;
    wait_until(
        "offsets past every message",
        Duration::from_secs(60),
        || committed(&brokers, &group, &topic, 1) == produced,
    );
    // The oversized ones are in the dead-letter topic, cut to fit, saying so.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("hostile-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[&dlq]).expect("subscribe");
    let (mut truncated, mut letters) = (0, 0);
    let t = Instant::now();
    while letters < oversized + bad && t.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            letters += 1;
            let h = m.headers().expect("headers");
            let get = |k: &str| {
                h.iter()
                    .find(|x| x.key == k)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            };
            if get("sensorcast.truncated").as_deref() == Some("true") {
                truncated += 1;
                assert_eq!(get("sensorcast.reason").as_deref(), Some("too_large"));
                assert_eq!(
                    get("sensorcast.original_size"),
                    Some(huge.len().to_string())
                );
                assert!(m.payload().is_some_and(|p| p.len() <= 900_000));
            }
            if let Some(k) = m.key() {
                assert!(k.len() <= 1024, "keys are cut to 1 KiB");
            }
        }
    }
    assert_eq!(
        letters,
        oversized + bad,
        "every bad message is a dead letter"
    );
    assert_eq!(truncated, oversized);
    assert_eq!(
        serve.metric("sensorcast_dead_letters_total{reason=\"undeliverable\"}"),
        0.0
    );
    assert_eq!(serve.terminate(), 0);
}

fn send(producer: &BaseProducer, topic: &str, key: Option<&[u8]>, payload: &[u8]) {
    let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    let mut rec = rec;
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((_, back)) => {
                rec = back;
                producer.poll(Duration::from_millis(50));
            }
        }
    }
}

/// `check-config --probe` against the real InfluxDB 1.6: each way of getting it wrong is told
/// apart, with what to do.
#[test]
fn the_probe_tells_a_wrong_api_a_missing_database_and_bad_credentials_apart() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let open = Influx::start();
    let locked = Influx::start_with_auth();
    let topic = unique("probe");
    create_topics(&brokers, &[(&topic, 1)]);
    let probe = |influx: &str| {
        let cfg = dir.path().join(format!("{}.toml", free_port()));
        std::fs::write(
            &cfg,
            format!(
                "[[streams]]\nname = \"pumps\"\ntopic = \"{topic}\"\nfeatures = [\"x\"]\n[kafka]\nbrokers = \"{brokers}\"\n[influxdb]\n{influx}"
            ),
        )
        .expect("config");
        let o = Command::new(BIN)
            .args(["check-config", "--probe", "--config"])
            .arg(&cfg)
            .output()
            .expect("check-config");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let probe = out.split("# probe").nth(1).unwrap_or_default().to_string();
        (o.status.code(), probe)
    };
    let url = |db: &Influx| format!("url = \"http://{}\"\n", db.addr());

    let (code, out) = probe(&open.influx_config());
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok    influxdb: InfluxDB 1.6") && out.contains("/write"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ok    kafka: stream \"pumps\" reads topic \"{topic}\" (1 partitions)"
        )),
        "{out}"
    );

    let (code, out) = probe(&url(&open));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  influxdb:")
            && out.contains("404")
            && out.contains("influxdb.api = \"v1\""),
        "the default v2 API on InfluxDB 1.x: {out}"
    );

    let (code, out) = probe(&format!(
        "{}api = \"v1\"\ndatabase = \"nope\"\n",
        url(&open)
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("has no database \"nope\"") && out.contains("CREATE DATABASE"),
        "{out}"
    );

    let (code, out) = probe(&format!(
        "{}api = \"v1\"\ndatabase = \"{INFLUX_DB}\"\nusername = \"admin\"\npassword = \"wrong\"\n",
        url(&locked)
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refused the credentials (401") && out.contains("influxdb.username"),
        "{out}"
    );
    let (code, out) = probe(&format!(
        "{}api = \"v1\"\ndatabase = \"{INFLUX_DB}\"\nusername = \"admin\"\npassword = \"secret\"\n",
        url(&locked)
    ));
    assert_eq!(code, Some(0), "{out}");
}

/// `serve` pointed at InfluxDB 1.6 with the v2 API (the default) says so in the log and in
/// `/health/ready`, keeps retrying, and writes everything once the config is fixed.
#[test]
fn serve_on_the_wrong_api_says_so_and_is_not_ready() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx::start();
    let (topic, group) = (unique("wrongapi"), unique("g-wrongapi"));
    create_topics(&brokers, &[(&topic, 1)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &influx, &group, &streams, "");
    let right = std::fs::read_to_string(&cfg).expect("config");
    let wrong = right
        .replace("api = \"v1\"\n", "")
        .replace(&format!("database = \"{INFLUX_DB}\"\n"), "");
    std::fs::write(&cfg, wrong).expect("config");
    simulate(&brokers, &topic, "json", 5, 20, &now_rfc3339(-60));
    let serve = Serve::spawn(&cfg, dir.path(), port);
    let mut body = String::new();
    wait_until(
        "not ready, with the reason",
        Duration::from_secs(60),
        || {
            body = http("GET", &serve.http, "/health/ready", "")
                .filter(|(s, _)| *s == 503)
                .map(|(_, b)| b)
                .unwrap_or_default();
            body.contains("influxdb.api")
        },
    );
    assert!(body.contains("\"sink_reachable\":false"), "{body}");
    wait_until("the log says it", Duration::from_secs(30), || {
        serve.log_text().contains("set influxdb.api = \"v1\"")
    });
    assert!(
        !serve.log_text().contains("refused the token or bucket"),
        "the old, wrong diagnosis"
    );
    assert_eq!(serve.terminate(), 0);
    // Fixed: every reading is written.
    std::fs::write(&cfg, &right).expect("config");
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until("written", Duration::from_secs(60), || {
        influx.count("anomaly", "score") >= 100
    });
    assert_eq!(influx.count("anomaly", "score"), 100);
    assert_eq!(serve.terminate(), 0);
}

/// `train --source influxdb` reads back the `reading` points `serve` wrote (paged: a page of
/// one minute over 200 s of readings) and publishes a model trained on exactly them.
#[test]
fn train_reads_back_the_history_serve_wrote_to_influxdb() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx::start();
    let (topic, group) = (unique("history"), unique("g-history"));
    create_topics(&brokers, &[(&topic, 2)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(dir.path(), &brokers, &influx, &group, &streams, "");
    add_keys(&cfg, "[train]", "history_page = \"1m\"");
    let end = now_rfc3339(-120);
    simulate(&brokers, &topic, "json", 8, 200, &end);
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until("readings written", Duration::from_secs(60), || {
        influx.count("reading", FEATURES[0]) >= 1600
    });
    assert_eq!(serve.terminate(), 0);
    let train = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(["train", "--config"])
            .arg(&cfg)
            .args(args)
            .output()
            .expect("train");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, out, err) = train(&["--source", "influxdb", "--since", "1d"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("training stream \"pumps\" on 1600 readings of 8 devices"),
        "{err}"
    );
    assert!(out.contains("published"), "{out}");
    let current =
        std::fs::read_to_string(dir.path().join("models/pumps/current")).expect("current");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            dir.path()
                .join("models/pumps")
                .join(current.trim())
                .join("meta.json"),
        )
        .expect("meta"),
    )
    .expect("json");
    let input = meta["training"]["inputs"][0].as_str().unwrap_or_default();
    assert!(
        input.starts_with("influxdb ") && input.contains("measurement=reading"),
        "{input}"
    );
    assert_eq!(meta["training"]["readings"], 1600);
    // The same readings from a file (simulate is seeded) give the same model, bit for bit.
    let from_influx = current.trim().to_string();
    let file = dir.path().join("same.jsonl");
    run(&[
        "simulate",
        "--devices",
        "8",
        "--readings",
        "200",
        "--interval",
        "1s",
        "--end",
        &end,
        "--out",
        file.to_str().expect("utf-8"),
    ]);
    let (ok, out, err) = train(&["--input", file.to_str().expect("utf-8")]);
    assert!(ok, "{out}\n{err}");
    let from_file = std::fs::read_to_string(dir.path().join("models/pumps/current"))
        .expect("current")
        .trim()
        .to_string();
    assert_same_model(
        &cfg,
        &dir.path().join("models/pumps"),
        &from_influx,
        &from_file,
        &file,
    );
    // A window without readings, and a measurement that does not exist, say where they looked.
    let (ok, _, err) = train(&[
        "--source",
        "influxdb",
        "--since",
        "2020-01-01T00:00:00Z",
        "--until",
        "2020-01-02T00:00:00Z",
    ]);
    assert!(
        !ok && err.contains("no readings of stream \"pumps\"")
            && err.contains("measurement=reading"),
        "{err}"
    );
    let (ok, _, err) = train(&["--source", "influxdb", "--since", "soon"]);
    assert!(!ok && err.contains("--since \"soon\""), "{err}");
}

/// `retrain` against the history serve wrote: a deliberately worse challenger (one epoch on
/// four windows) is not published against a normally trained champion; against a
/// deliberately bad champion a normally trained challenger is; each decision is recorded with
/// both scores.
#[test]
fn retrain_publishes_a_better_challenger_and_keeps_a_worse_one() {
    // The MASE gate is what this test is about: on this small simulated fleet the share of
    // holdout readings over the alarm line is noisy (2–6 %), and the over-line gate (at most
    // 2 × the champion's) decided some runs on its own.
    let pumps = Pumps::with_partitions("retrain", 2, |_| {
        "\n[retrain]\nwindow = \"1h\"\nholdout = \"150s\"\nmargin = 0.02\nmax_over_line_ratio = 1000.0\n".into()
    });
    pumps.simulate(8, 400, &now_rfc3339(-30));
    let serve = pumps.serve();
    wait_until("readings written", Duration::from_secs(60), || {
        pumps.influx.count("reading", FEATURES[0]) >= 3200
    });
    assert_eq!(serve.terminate(), 0);
    let run = |args: &[&str], env: &[(&str, &str)]| with_config(&pumps.cfg, args, env);
    let current = || pumps.current();
    let dir = &pumps.dir;
    let weak = WEAK_TRAINING;
    // The champion: trained on the same history (holdout included) with the normal settings.
    let (ok, out, err) = run(&["train", "--source", "influxdb", "--since", "1h"], &[]);
    assert!(ok, "{out}\n{err}");
    let champion = current();
    let (ok, out, err) = run(&["retrain"], &weak);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.starts_with(&format!("kept {champion}:")),
        "{out}\n{err}"
    );
    assert_eq!(current(), champion, "a worse challenger is not published");

    // A bad champion (the weak settings, published by plain train), then a normal retrain.
    let (ok, out, err) = run(&["train", "--source", "influxdb", "--since", "1h"], &weak);
    assert!(ok, "{out}\n{err}");
    let bad = current();
    assert_ne!(bad, champion);
    let (ok, out, err) = run(&["retrain"], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.starts_with("published "), "{out}\n{err}");
    let better = current();
    assert_ne!(better, bad);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            dir.path()
                .join("models/pumps")
                .join(&better)
                .join("meta.json"),
        )
        .expect("meta"),
    )
    .expect("json");
    let d = &meta["decision"];
    assert_eq!(d["champion"], bad.as_str());
    assert_eq!(d["challenger"], better.as_str());
    assert!(
        d["challenger_mase"].as_f64().expect("mase") < d["champion_mase"].as_f64().expect("mase"),
        "{d}"
    );
    // The detection check, with both models scored with their own measured thresholds.
    let (co, ho) = (
        d["champion_over_line"]
            .as_f64()
            .expect("champion over-line share"),
        d["challenger_over_line"]
            .as_f64()
            .expect("challenger over-line share"),
    );
    // Both shares are measured and recorded. (Which model puts more over the line is not
    // asserted: on this small fleet both are far above the 0.1 % target — 2–6 % — and the
    // normally trained challenger is as often above twice the weak champion's share as below;
    // README "How good is it?" on the knob's per-reading promise.)
    assert!(
        (0.0..=1.0).contains(&co) && (0.0..=1.0).contains(&ho),
        "{d}"
    );
    let decisions = std::fs::read_to_string(dir.path().join("models/pumps/decisions.jsonl"))
        .expect("decisions");
    let published: Vec<bool> = decisions
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["published"] == true)
        .collect();
    assert_eq!(published, [false, true], "{decisions}");
    // And back.
    let (ok, out, _) = run(&["models", "rollback"], &[]);
    assert!(ok && out.contains(&bad), "{out}");
    assert_eq!(current(), bad);
}

/// `train --source kafka`: the topic is read from the offsets Kafka gives for `--since`
/// (offsets for times, on message timestamps), so readings produced before it are not read.
/// Apache Kafka answers offsets-for-times from its time index.
#[test]
fn train_reads_the_topic_from_the_offsets_for_since() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, group) = (unique("kafka-history"), unique("g-kafka-history"));
    create_topics(&brokers, &[(&topic, 2)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, _) = setup(dir.path(), &brokers, &vm, &group, &streams, "");
    // Old fleet (devices old-*), produced before `since`; new fleet (pump-*) after it.
    let produce = |prefix: &str, end: &str| {
        let o = Command::new(BIN)
            .args([
                "simulate",
                "--devices",
                "6",
                "--readings",
                "150",
                "--interval",
                "1s",
            ])
            .args(["--end", end, "--brokers", &brokers, "--topic", &topic])
            .args(["--device-prefix", prefix])
            .output()
            .expect("simulate");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    produce("old-", &now_rfc3339(-600));
    std::thread::sleep(Duration::from_millis(1500));
    let since = now_rfc3339(0);
    std::thread::sleep(Duration::from_millis(1500));
    let end = now_rfc3339(0);
    produce("pump-", &end);
    let o = Command::new(BIN)
        .args(["train", "--source", "kafka", "--since", &since, "--config"])
        .arg(&cfg)
        .output()
        .expect("train");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("readings of 6 devices"),
        "only the fleet produced after --since is read: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("training stream"))
        .unwrap_or_default()
        .to_string();
    let n: usize = line
        .split(" on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        n, 900,
        "every reading of the new fleet, none of the old: {line}"
    );
    assert!(out.contains("published"), "{out}");
    // The same readings from a file (simulate is seeded) give the same model, bit for bit.
    let registry = dir.path().join("models/pumps");
    let current = || current_model(dir.path());
    let from_kafka = current();
    let file = dir.path().join("same.jsonl");
    run(&[
        "simulate",
        "--devices",
        "6",
        "--readings",
        "150",
        "--interval",
        "1s",
        "--end",
        &end,
        "--device-prefix",
        "pump-",
        "--out",
        file.to_str().expect("utf-8"),
    ]);
    run(&[
        "train",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--input",
        file.to_str().expect("utf-8"),
    ]);
    assert_same_model(&cfg, &registry, &from_kafka, &current(), &file);
}

/// Two versions in a registry are the same model: the same normalisation and validation
/// figures, and bit-identical outputs when both replay `input` (the weights files differ only
/// in burn's random parameter ids).
fn assert_same_model(
    cfg: &std::path::Path,
    registry: &std::path::Path,
    a: &str,
    b: &str,
    input: &std::path::Path,
) {
    assert_ne!(a, b, "two trainings, two versions");
    let meta = |v: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(registry.join(v).join("meta.json")).expect("meta"),
        )
        .expect("json")
    };
    let (ma, mb) = (meta(a), meta(b));
    for key in ["mean", "std", "validation", "anomaly"] {
        assert_eq!(ma[key], mb[key], "{a} vs {b}: {key}");
    }
    assert_eq!(ma["training"]["readings"], mb["training"]["readings"]);
    let replay = |v: &str| {
        let out = registry.join(format!("replay-{v}.csv"));
        let o = Command::new(BIN)
            .args(["replay", "--config"])
            .arg(cfg)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&out)
            .args(["--model", v])
            .output()
            .expect("replay");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Without the model column.
        std::fs::read_to_string(&out)
            .expect("replay output")
            .lines()
            .map(|l| {
                let mut cols: Vec<&str> = l.split(',').collect();
                cols.remove(2);
                cols.join(",")
            })
            .collect::<Vec<_>>()
    };
    let (ra, rb) = (replay(a), replay(b));
    assert!(ra.len() > 100);
    assert!(ra == rb, "{a} and {b} forecast and score differently");
}

/// (time, model, likelihood) of every anomaly point, per device, in time order.
fn anomaly_models(influx: &Influx) -> std::collections::BTreeMap<String, Vec<(i64, String, f64)>> {
    let v = influx.query("SELECT \"model\", \"likelihood\" FROM \"anomaly\" GROUP BY \"device\"");
    let mut out = std::collections::BTreeMap::new();
    for s in v["results"][0]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let device = s["tags"]["device"].as_str().expect("device").to_string();
        let rows = s["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|r| {
                (
                    r[0].as_i64().expect("time"),
                    r[1].as_str().unwrap_or_default().to_string(),
                    r[2].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        out.insert(device, rows);
    }
    out
}

/// The version sequence of a device's points with the index where each run starts.
fn runs(points: &[(i64, String, f64)]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if out.last().is_none_or(|(_, m)| *m != p.1) {
            out.push((i, p.1.clone()));
        }
    }
    out
}

/// The issue's acceptance for retraining while serving, against Apache Kafka, InfluxDB 1.6 and the
/// real binary: `retrain --source influxdb` trains on what serve itself wrote and publishes;
/// serve swaps the model in without a restart (every reading keeps exactly one anomaly point,
/// each device's points change model once, with no gap, and its first points from the new
/// model are warm); checkpoints then name the new version; `models rollback` brings serve back
/// to the previous version; a missing, a corrupt and a wrong-schema model are each refused
/// while the model in use keeps serving.
#[test]
fn serve_swaps_in_a_retrained_model_without_a_restart_and_loses_no_reading() {
    let pumps = Pumps::with_partitions("swap", 2, |_| {
        "\n[retrain]\nwindow = \"1h\"\nholdout = \"100s\"\nmargin = 0.0\nmax_over_line_ratio = 1000.0\n".into()
    });
    let Pumps {
        brokers,
        dir,
        influx,
        topic,
        cfg,
        ..
    } = &pumps;
    add_keys(cfg, "[model]", "poll_interval = \"1s\"\nswap_warmup = 20");
    let registry = dir.path().join("models/pumps");
    let current = || pumps.current();
    let point_current_at = |v: &str| {
        let tmp = registry.join(".current.test");
        std::fs::write(&tmp, v).expect("write");
        std::fs::rename(&tmp, registry.join("current")).expect("rename");
    };
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let (ok, out, err) = with_config(cfg, args, env);
        assert!(ok, "{args:?}: {out}{err}");
        format!("{out}{err}")
    };
    // A deliberately weak first model, so that the retrained one is better.
    let history = dir.path().join("history.jsonl");
    run(
        &["train", "--input", history.to_str().expect("utf-8")],
        &WEAK_TRAINING,
    );
    let v1 = current();
    let t0 = chrono::Utc::now();
    let at = |s: i64| (t0 + chrono::Duration::seconds(s)).to_rfc3339();
    let (devices, per_device) = (8usize, [300usize, 100, 60]);
    let per_reading = 2 + HORIZON * FEATURES.len();
    simulate(brokers, topic, "json", devices, per_device[0], &at(-200));
    let serve = pumps.serve();
    let written = |n: usize| {
        wait_until("points written", Duration::from_secs(90), || {
            influx.count("anomaly", "score") >= n
        })
    };
    written(devices * per_device[0]);

    // Retrain from the history serve wrote, while it runs.
    let out = run(
        &["retrain", "--source", "influxdb", "--until", &at(-199)],
        &[],
    );
    assert!(out.contains("published "), "{out}");
    let v2 = current();
    assert_ne!(v2, v1);
    wait_until("the swap starts", Duration::from_secs(30), || {
        serve.log_text().contains("model swap started")
    });
    simulate(brokers, topic, "json", devices, per_device[1], &at(-60));
    written(devices * (per_device[0] + per_device[1]));
    wait_until("the swap ends", Duration::from_secs(30), || {
        serve
            .log_text()
            .contains("model swap finished (every device re-warmed)")
    });
    assert_eq!(serve.metric("sensorcast_model_swaps_total"), 1.0);
    assert_eq!(
        serve.metric(&format!(
            "sensorcast_model_version{{stream=\"pumps\",version=\"{v2}\"}}"
        )),
        1.0
    );
    // One series per stream: the replaced version's is removed, not left at 0 (a series per
    // swap, for as long as the process runs).
    let series = serve
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("sensorcast_model_version{"))
        .count();
    assert_eq!(series, 1, "sensorcast_model_version series after a swap");
    let by_device = anomaly_models(influx);
    assert_eq!(by_device.len(), devices);
    for (device, points) in &by_device {
        assert_eq!(
            points.len(),
            per_device[0] + per_device[1],
            "{device}: one anomaly point per reading, no gap"
        );
        let r = runs(points);
        assert_eq!(
            r.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            [v1.as_str(), v2.as_str()],
            "{device}: one change of model"
        );
        let switch = r[1].0;
        // The swap started before phase 2: the old model writes the 20 readings the new one
        // re-warms on (model.swap_warmup), the new one every reading after them.
        assert_eq!(
            switch,
            per_device[0] + 20,
            "{device}: switched at point {switch}, not after re-warming exactly 20 readings of phase 2"
        );
        // A cold start has a warm-up hole (likelihood 0 while the engine warms up); the
        // switch has none.
        assert_eq!(points[0].2, 0.0, "{device}: cold start");
        assert!(
            points[switch..switch + 5].iter().all(|p| p.2 > 0.0),
            "{device}: warm from its first {v2} point: {:?}",
            &points[switch..switch + 5]
        );
    }
    // Checkpoints written after the swap name the new version.
    std::thread::sleep(Duration::from_secs(2));
    let inspect = run(&["state", "inspect"], &[]);
    let newest: Vec<&str> = inspect.lines().filter(|l| l.contains(&v2)).collect();
    assert!(
        newest.len() >= 2,
        "both partitions checkpointed with {v2}:\n{inspect}"
    );

    // Refused models: missing, corrupt weights, wrong schema. The old one keeps serving.
    let copy = |name: &str| {
        let d = registry.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        for f in std::fs::read_dir(registry.join(&v2)).expect("v2") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, d.join(f.file_name().expect("name"))).expect("copy");
        }
        let meta = std::fs::read_to_string(d.join("meta.json"))
            .expect("meta")
            .replace(
                &format!("\"version\": \"{v2}\""),
                &format!("\"version\": \"{name}\""),
            )
            .replace(
                &format!("\"version\":\"{v2}\""),
                &format!("\"version\":\"{name}\""),
            );
        std::fs::write(d.join("meta.json"), meta).expect("meta");
        d
    };
    let corrupt = copy("corrupt");
    for f in std::fs::read_dir(&corrupt).expect("dir") {
        let f = f.expect("entry").path();
        if f.file_name().and_then(|n| n.to_str()) != Some("meta.json") {
            std::fs::write(&f, b"not weights at all").expect("garbage");
        }
    }
    let schema = copy("schema");
    let meta = std::fs::read_to_string(schema.join("meta.json")).expect("meta");
    std::fs::write(
        schema.join("meta.json"),
        meta.replacen(&format!("\"{}\"", FEATURES[0]), "\"humidity\"", 1),
    )
    .expect("meta");
    for (version, reason) in [
        ("missing", "load"),
        ("corrupt", "weights"),
        ("schema", "schema"),
    ] {
        let before = serve.metric("sensorcast_models_rejected_total");
        point_current_at(version);
        wait_until(
            &format!("{version} refused"),
            Duration::from_secs(20),
            || serve.metric("sensorcast_models_rejected_total") > before,
        );
        let log = serve.log_text();
        assert!(
            log.contains(&format!("version={version} reason={reason}")),
            "{version}: {}",
            log.lines()
                .filter(|l| l.contains("refused"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        serve.metric(&format!(
            "sensorcast_model_version{{stream=\"pumps\",version=\"{v2}\"}}"
        )) == 1.0
    );
    point_current_at(&v2);

    // Rollback: serve goes back to v1, asked at once with SIGHUP.
    let out = run(&["models", "rollback"], &[]);
    assert!(out.contains(&v1), "{out}");
    let _ = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status();
    wait_until("the swap back starts", Duration::from_secs(30), || {
        serve.metric("sensorcast_model_swaps_total") >= 2.0
    });
    assert!(serve.log_text().contains("SIGHUP: checking the registry"));
    simulate(brokers, topic, "json", devices, per_device[2], &at(0));
    let total: usize = per_device.iter().sum();
    written(devices * total);
    wait_until("all points counted", Duration::from_secs(30), || {
        serve.metric("sensorcast_points_written_total") as usize >= devices * total * per_reading
    });
    std::thread::sleep(Duration::from_millis(500));
    // Alarms write one anomaly_event line when raised and one more when cleared (the same
    // point, overwritten): every other point is one per reading.
    let events = influx.count("anomaly_event", "active");
    let cleared = influx.query("SELECT COUNT(\"active\") FROM \"anomaly_event\" WHERE \"active\" = false")
        ["results"][0]["series"][0]["values"][0][1]
        .as_u64()
        .unwrap_or(0) as usize;
    assert_eq!(
        serve.metric("sensorcast_points_written_total") as usize,
        devices * total * per_reading + events + cleared,
        "every point written once, across three models"
    );
    for (device, points) in &anomaly_models(influx) {
        assert_eq!(points.len(), total, "{device}");
        let r = runs(points);
        assert_eq!(
            r.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            [v1.as_str(), v2.as_str(), v1.as_str()],
            "{device}: back to {v1}"
        );
    }
    assert_eq!(serve.terminate(), 0);
}

/// A restart after a new model was published: the checkpoints name the old version, so the
/// devices come back in the old model (loaded from the registry) with their state, and are
/// re-warmed into the new one as in a live swap: no device starts cold.
#[test]
fn a_restart_onto_a_new_model_brings_device_state_back_and_re_warms_it() {
    let pumps = Pumps::with_partitions("reswap", 2, |_| String::new());
    add_keys(&pumps.cfg, "[model]", "swap_warmup = 15");
    let v1 = pumps.current();
    let t0 = chrono::Utc::now();
    let at = |s: i64| (t0 + chrono::Duration::seconds(s)).to_rfc3339();
    let devices = 6;
    pumps.simulate(devices, 150, &at(-100));
    let serve = pumps.serve();
    pumps.wait_scored("phase 1 written", devices * 150);
    assert_eq!(serve.terminate(), 0);
    // A new model while serve is down.
    let v2 = pumps.train();
    assert_ne!(v1, v2);
    let serve = pumps.serve();
    pumps.simulate(devices, 60, &at(-10));
    pumps.wait_scored("phase 2 written", devices * 210);
    let log = serve.log_text();
    assert!(log.contains("checkpoint of another model version"), "{log}");
    assert!(!log.contains("no usable checkpoint"), "{log}");
    for (device, points) in &anomaly_models(&pumps.influx) {
        assert_eq!(points.len(), 210, "{device}");
        let r = runs(points);
        assert_eq!(
            r.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            [v1.as_str(), v2.as_str()],
            "{device}"
        );
        assert_eq!(
            r[1].0,
            150 + 15,
            "{device}: re-warmed for 15 readings in {v2}"
        );
        // Its state came back: warm from the first reading after the restart, and again from
        // the first point of the new model.
        assert!(points[150].2 > 0.0, "{device}: restored warm, not cold");
        assert!(points[165].2 > 0.0, "{device}: warm in {v2}");
    }
    assert_eq!(serve.terminate(), 0);
}

/// The restore-into-another-version path when checkpoints are damaged or the version is gone:
/// after a new model is published while serve is down, the newest checkpoint of each
/// partition is damaged, so serve falls back to the one before — also of the old version —
/// restores its devices into the old model and re-warms them into the new one, none cold.
/// Then, with the checkpoints naming a version the registry no longer has, the devices start
/// cold, counted as skipped for `reason="model"`, and serving goes on.
#[test]
fn a_restore_into_another_version_falls_back_past_damage_and_starts_cold_without_its_model() {
    let pumps = Pumps::with_partitions("refall", 2, |_| String::new());
    add_keys(&pumps.cfg, "[model]", "swap_warmup = 15");
    let partitions = pumps
        .dir
        .path()
        .join("state")
        .join(&pumps.group)
        .join("pumps");
    // The newest checkpoint of each partition, damaged in its middle (a flipped byte).
    let damage_newest = || {
        let mut damaged = 0;
        for p in std::fs::read_dir(&partitions).expect("partitions") {
            let p = p.expect("entry").path();
            let mut files: Vec<_> = std::fs::read_dir(&p)
                .expect("checkpoints")
                .map(|f| f.expect("entry").path())
                .filter(|f| f.extension().is_some_and(|x| x == "ckpt"))
                .collect();
            files.sort();
            assert!(
                files.len() >= 2,
                "{}: an older checkpoint to fall back to",
                p.display()
            );
            let newest = files.last().expect("one");
            let mut bytes = std::fs::read(newest).expect("read");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
            std::fs::write(newest, bytes).expect("write");
            damaged += 1;
        }
        damaged
    };
    let v1 = pumps.current();
    let t0 = chrono::Utc::now();
    let at = |s: i64| (t0 + chrono::Duration::seconds(s)).to_rfc3339();
    let devices = 6;
    // Phase 1 in two parts more than a checkpoint interval apart, so that every partition
    // has two checkpoints (one is taken only when readings arrived since the last).
    pumps.simulate(devices, 100, &at(-250));
    let serve = pumps.serve();
    pumps.wait_scored("phase 1a written", devices * 100);
    std::thread::sleep(Duration::from_millis(2500));
    pumps.simulate(devices, 50, &at(-200));
    pumps.wait_scored("phase 1 written", devices * 150);
    assert_eq!(serve.terminate(), 0);
    let v2 = pumps.train();
    assert_ne!(v1, v2);
    assert_eq!(damage_newest(), 2);

    let serve = pumps.serve();
    pumps.simulate(devices, 60, &at(-100));
    pumps.wait_scored("phase 2 written", devices * 210);
    wait_until("the re-warm ends", Duration::from_secs(30), || {
        serve
            .log_text()
            .contains("model swap finished (every device re-warmed)")
    });
    let log = serve.log_text();
    assert!(
        log.contains("checkpoint skipped"),
        "the damaged ones: {log}"
    );
    assert!(log.contains("checkpoint of another model version"), "{log}");
    assert!(
        log.contains("restoring checkpoint and catching up"),
        "{log}"
    );
    assert_eq!(
        serve.metric("sensorcast_checkpoints_skipped_total{reason=\"damaged\"}"),
        2.0
    );
    for (device, points) in &anomaly_models(&pumps.influx) {
        assert_eq!(points.len(), 210, "{device}: one point per reading");
        let r = runs(points);
        assert_eq!(
            r.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            [v1.as_str(), v2.as_str()],
            "{device}"
        );
        // The older checkpoint lies 50 readings behind the group's committed offset: those
        // are caught up without writing, and they re-warm the devices into the new model
        // (15 readings), so every point written after the restart is the new model's.
        assert_eq!(r[1].0, 150, "{device}: re-warmed during the catch-up");
        assert!(
            points[150].2 > 0.0,
            "{device}: restored warm from the older checkpoint"
        );
    }
    // Let checkpoints in v2 be taken, then stop.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(serve.terminate(), 0);

    // A third version is published and v2, which the checkpoints name, is lost.
    let v3 = pumps.train();
    assert!(v3 != v2 && v3 != v1);
    std::fs::remove_dir_all(pumps.dir.path().join("models").join("pumps").join(&v2))
        .expect("remove v2");
    let serve = pumps.serve();
    pumps.simulate(devices, 30, &at(-20));
    pumps.wait_scored("phase 3 written", devices * 240);
    let log = serve.log_text();
    assert!(
        log.contains(&format!(
            "it was taken with model {v2}, which cannot be used"
        )),
        "{log}"
    );
    assert!(serve.metric("sensorcast_checkpoints_skipped_total{reason=\"model\"}") >= 1.0);
    for (device, points) in &anomaly_models(&pumps.influx) {
        assert_eq!(points.len(), 240, "{device}: one point per reading");
        assert_eq!(
            runs(points).last().map(|(_, m)| m.as_str()),
            Some(v3.as_str()),
            "{device}: scored by {v3}"
        );
        // Cold: the engine warms up again (likelihood 0) on the first readings after the start.
        assert_eq!(points[210].2, 0.0, "{device}: started cold");
    }
    assert_eq!(serve.terminate(), 0);
}

/// `[retrain] every` inside serve: the service retrains on its own schedule (here from the
/// Kafka topic), publishes the better challenger and swaps it in, without anyone running
/// anything.
#[test]
fn serve_retrains_on_its_schedule_and_swaps_the_result_in() {
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = Vm::start();
    let (topic, group) = (unique("scheduled"), unique("g-scheduled"));
    create_topics(&brokers, &[(&topic, 2)]);
    let streams = [Stream {
        name: "pumps",
        topic: &topic,
        format: "json",
    }];
    let (cfg, port) = setup(
        dir.path(),
        &brokers,
        &vm,
        &group,
        &streams,
        "\n[retrain]\nevery = \"6s\"\nsource = \"kafka\"\nwindow = \"1h\"\nholdout = \"60s\"\nmargin = 0.0\nmax_over_line_ratio = 1000.0\nthreads = 1\n",
    );
    add_keys(&cfg, "[model]", "poll_interval = \"1s\"");
    // A deliberately weak model to start from.
    let history = dir.path().join("history.jsonl");
    let (ok, _, err) = with_config(
        &cfg,
        &["train", "--input", history.to_str().expect("utf-8")],
        &WEAK_TRAINING,
    );
    assert!(ok, "{err}");
    let registry = dir.path().join("models/pumps");
    let current = || current_model(dir.path());
    let weak = current();
    simulate(&brokers, &topic, "json", 8, 300, &now_rfc3339(-5));
    let serve = Serve::start(&cfg, dir.path(), port);
    wait_until(
        "a scheduled retrain publishes",
        Duration::from_secs(90),
        || serve.metric("sensorcast_retrains_total{stream=\"pumps\",outcome=\"published\"}") >= 1.0,
    );
    assert_ne!(current(), weak);
    wait_until(
        "the retrained model is swapped in",
        Duration::from_secs(30),
        || serve.metric("sensorcast_model_swaps_total") >= 1.0,
    );
    let log = serve.log_text();
    assert!(log.contains("scheduled retrain started"), "{log}");
    // The training ran in a child process, whose progress lines serve relays.
    assert!(log.contains("a child process per run"), "{log}");
    assert!(
        log.contains("retrain: ") && log.contains("windows/s"),
        "{log}"
    );
    let decisions =
        std::fs::read_to_string(registry.join("decisions.jsonl")).expect("decisions.jsonl");
    let d: serde_json::Value =
        serde_json::from_str(decisions.lines().next().expect("a decision")).expect("json");
    assert_eq!(d["champion"], weak.as_str());
    assert!(d["challenger_over_line"].is_number(), "{d}");
    assert_eq!(serve.terminate(), 0);
}

/// A stuck sensor: one device's pressure holds one value for 40 readings while its other
/// readings move. serve raises an alarm of its own kind (`anomaly_event,kind=stuck`), from
/// the first flat reading to the last, and clears it when the value moves again; the other
/// device raises none.
#[test]
fn a_stuck_sensor_raises_an_alarm_of_its_own_kind_through_serve() {
    let pumps = Pumps::new("stuck", |_| String::new());
    let serve = pumps.serve();
    let t0 = chrono::Utc::now().timestamp_millis() - 200_000;
    let (readings, flat) = (120i64, 40..80i64);
    pumps.produce(
        (t0, readings, 2),
        |_, _| false,
        |i, d| d == 1 && flat.contains(&i),
    );
    wait_until("every reading scored", Duration::from_secs(60), || {
        pumps.influx.count("anomaly", "score") >= 2 * readings as usize
    });
    std::thread::sleep(Duration::from_millis(500));
    let rows = pumps.influx.rows(
        "SELECT \"active\", \"start\", \"end\", \"top_fields\", \"device\" FROM \"anomaly_event\" WHERE \"kind\" = 'stuck'",
    );
    let ns = |i: i64| (t0 + i * 1000) * 1_000_000;
    assert_eq!(rows.len(), 1, "one stuck alarm: {rows:?}");
    let row = &rows[0];
    assert_eq!(row[1], serde_json::json!(false), "cleared: {row:?}");
    assert_eq!(
        row[2].as_i64(),
        Some(ns(flat.start)),
        "starts at the first flat reading"
    );
    assert_eq!(
        row[3].as_i64(),
        Some(ns(flat.end - 1)),
        "ends at the last flat reading"
    );
    assert_eq!(row[4], serde_json::json!("pressure flat"));
    assert_eq!(row[5], serde_json::json!("pump-001"));
    assert_eq!(
        serve.metric("sensorcast_stuck_alarms_raised_total{stream=\"pumps\"}"),
        1.0
    );
    assert_eq!(
        serve.metric("sensorcast_stuck_alarms_active{stream=\"pumps\"}"),
        0.0
    );
    // Ordinary alarms are tagged too, so that the kinds never overwrite each other.
    assert!(
        pumps
            .influx
            .series("anomaly_event")
            .iter()
            .all(|tags| tags.contains_key("kind")),
        "{:?}",
        pumps.influx.series("anomaly_event")
    );
    assert_eq!(serve.terminate(), 0);
}

/// A restart in the middle of a stuck-sensor alarm: the alarm comes back with the device's
/// state and the active-alarm gauge counts it (it used to be raises minus clears since the
/// process started, so it read 0 here), until the sensor moves and the alarm clears. The
/// restore is applied while the partition is idle (it used to wait for its next message).
#[test]
fn an_alarm_active_across_a_restart_is_counted_by_its_gauge() {
    let pumps = Pumps::new("gauge", |_| String::new());
    let gauge = "sensorcast_stuck_alarms_active{stream=\"pumps\"}";
    let serve = pumps.serve();
    let t0 = chrono::Utc::now().timestamp_millis() - 300_000;
    // pump-001's pressure holds one value from reading 40 on.
    let sent = pumps.produce((t0, 80, 2), |_, _| false, |i, d| d == 1 && i >= 40);
    wait_until("every reading scored", Duration::from_secs(60), || {
        pumps.influx.count("anomaly", "score") >= sent
    });
    wait_until("the alarm is counted", Duration::from_secs(10), || {
        serve.metric(gauge) == 1.0
    });
    assert_eq!(serve.terminate(), 0);

    let serve = pumps.serve();
    wait_until(
        "the restored alarm is counted",
        Duration::from_secs(20),
        || serve.metric(gauge) == 1.0,
    );
    // 40 more readings: still flat for 20, then the pressure moves.
    let more = pumps.produce((t0 + 80_000, 40, 2), |_, _| false, |i, d| d == 1 && i < 20);
    wait_until("every reading scored", Duration::from_secs(60), || {
        pumps.influx.count("anomaly", "score") >= sent + more
    });
    wait_until(
        "the cleared alarm is no longer counted",
        Duration::from_secs(10),
        || serve.metric(gauge) == 0.0,
    );
    let rows = pumps
        .influx
        .rows("SELECT \"active\", \"end\" FROM \"anomaly_event\" WHERE \"kind\" = 'stuck'");
    assert_eq!(
        rows.len(),
        1,
        "one alarm, raised before the restart: {rows:?}"
    );
    assert_eq!(rows[0][0].as_i64(), Some((t0 + 40 * 1000) * 1_000_000));
    assert_eq!(rows[0][1], serde_json::json!(false), "cleared after it");
    assert_eq!(
        rows[0][2].as_i64(),
        Some((t0 + 99 * 1000) * 1_000_000),
        "at the last flat reading"
    );
    assert_eq!(serve.terminate(), 0);
}

/// A silent device: of three devices on one partition, one stops reporting for 20 s while the
/// others go on. serve raises an alarm of its own kind (`anomaly_event,kind=silent`) from its
/// last reading and clears it at the reading it comes back with; the others raise none.
#[test]
fn a_silent_device_raises_an_alarm_of_its_own_kind_through_serve() {
    let pumps = Pumps::new("silent", |_| String::new());
    let serve = pumps.serve();
    let t0 = chrono::Utc::now().timestamp_millis() - 200_000;
    let (readings, quiet) = (60i64, 20..40i64);
    let sent = pumps.produce(
        (t0, readings, 3),
        |i, d| d == 2 && quiet.contains(&i),
        |_, _| false,
    );
    wait_until("every reading scored", Duration::from_secs(60), || {
        pumps.influx.count("anomaly", "score") >= sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let rows = pumps.influx.rows(
        "SELECT \"active\", \"start\", \"end\", \"device\" FROM \"anomaly_event\" WHERE \"kind\" = 'silent'",
    );
    let ns = |i: i64| (t0 + i * 1000) * 1_000_000;
    assert_eq!(rows.len(), 1, "one silent alarm: {rows:?}");
    let row = &rows[0];
    assert_eq!(
        row[0].as_i64(),
        Some(ns(quiet.start - 1)),
        "at its last reading"
    );
    assert_eq!(row[1], serde_json::json!(false), "cleared: {row:?}");
    assert_eq!(row[2].as_i64(), Some(ns(quiet.start - 1)));
    assert_eq!(
        row[3].as_i64(),
        Some(ns(quiet.end)),
        "ends when it reports again"
    );
    assert_eq!(row[4], serde_json::json!("pump-002"));
    assert_eq!(
        serve.metric("sensorcast_silent_alarms_raised_total{stream=\"pumps\"}"),
        1.0
    );
    assert_eq!(
        serve.metric("sensorcast_silent_alarms_active{stream=\"pumps\"}"),
        0.0
    );
    assert_eq!(serve.terminate(), 0);
}

/// Maintenance windows, from the config and from the maintenance file written while serving:
/// a stuck pressure on one device and a silence of another, each inside its window, raise no
/// alarm, and the readings in the windows are marked `maintenance=true`.
#[test]
fn maintenance_windows_from_config_and_a_watched_file_hold_alarms_back_through_serve() {
    let t0 = chrono::Utc::now().timestamp_millis() - 200_000;
    let at = |i: i64| sensorcast::time::format_ts((t0 + i * 1000) * 1_000_000);
    let pumps = Pumps::new("maint", |dir| {
        let file = dir.join("maintenance.toml");
        std::fs::write(&file, "# no windows yet\n").expect("file");
        format!(
            "\n[anomaly]\nmaintenance_file = \"{}\"\n\n[[maintenance]]\ndevices = [\"pump-001\"]\nfrom = \"{}\"\nuntil = \"{}\"\nreason = \"pressure transmitter swapped\"\n",
            file.display(),
            at(5),
            at(55)
        )
    });
    let file = pumps.dir.path().join("maintenance.toml");
    let serve = pumps.serve();
    // A window for pump-002, added while serving.
    std::fs::write(
        &file,
        format!(
            "[[maintenance]]\nstream = \"pumps\"\ndevices = [\"pump-002\"]\nfrom = \"{}\"\nuntil = \"{}\"\n",
            at(15),
            at(45)
        ),
    )
    .expect("file");
    wait_until("the file is read again", Duration::from_secs(20), || {
        serve.log_text().contains("windows=1")
    });
    let sent = pumps.produce(
        (t0, 60, 3),
        |i, d| d == 2 && (20..40).contains(&i),
        |i, d| d == 1 && (10..50).contains(&i),
    );
    wait_until("every reading scored", Duration::from_secs(60), || {
        pumps.influx.count("anomaly", "score") >= sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let rows = pumps.influx.rows(
        "SELECT \"active\", \"device\", \"kind\" FROM \"anomaly_event\" WHERE \"kind\" = 'stuck' OR \"kind\" = 'silent'",
    );
    assert!(
        rows.is_empty(),
        "no stuck or silent alarm inside the windows: {rows:?}"
    );
    let v = pumps.influx.query(
        "SELECT COUNT(\"score\") FROM \"anomaly\" WHERE \"maintenance\" = true GROUP BY \"device\"",
    );
    let counts: std::collections::BTreeMap<String, u64> = v["results"][0]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["tags"]["device"].as_str().unwrap_or("").to_string(),
                s["values"][0][1].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // pump-001: readings 5..55; pump-002: 15..20 and 40..45 (it was silent in between).
    assert_eq!(
        counts,
        [("pump-001".to_string(), 50), ("pump-002".to_string(), 10)].into(),
        "{v}"
    );
    assert_eq!(
        serve.metric("sensorcast_stuck_alarms_raised_total{stream=\"pumps\"}"),
        0.0
    );
    assert_eq!(
        serve.metric("sensorcast_silent_alarms_raised_total{stream=\"pumps\"}"),
        0.0
    );
    assert_eq!(serve.terminate(), 0);
}

/// Operator feedback through `serve`: a stuck-pressure alarm is labelled false with
/// `sensorcast label` (which finds the alarm's end in InfluxDB), and serve, watching the labels
/// file, writes the verdict onto the alarm's own point. A fault confirmed earlier in the
/// history is then left out of the challenger's training by `retrain`, whose gate scores both
/// models against the verdict in the holdout and records it in the decision.
#[test]
fn operator_labels_reach_the_alarms_point_and_the_retrain_gate_through_serve() {
    let pumps = Pumps::new("labels", |dir| {
        format!(
            "\n[anomaly]\nlabels_file = \"{}\"\n\n[retrain]\nwindow = \"1h\"\nholdout = \"150s\"\nmargin = 0.0\nmax_over_line_ratio = 1000.0\n",
            dir.join("labels.toml").display()
        )
    });
    let labels = pumps.dir.path().join("labels.toml");
    let serve = pumps.serve();
    let t0 = chrono::Utc::now().timestamp_millis() - 400_000;
    let ns = |i: i64| (t0 + i * 1000) * 1_000_000;
    let (readings, flat) = (300i64, 200..240i64);
    let sent = pumps.produce(
        (t0, readings, 2),
        |_, _| false,
        |i, d| d == 1 && flat.contains(&i),
    );
    wait_until("every reading scored", Duration::from_secs(60), || {
        pumps.influx.count("anomaly", "score") >= sent
    });
    let run = |args: &[&str]| with_config(&pumps.cfg, args, &[]);
    let at = ns(flat.start).to_string();
    let (ok, out, err) = run(&[
        "label",
        "--device",
        "pump-001",
        "--kind",
        "stuck",
        "--at",
        &at,
        "--verdict",
        "false",
        "--by",
        "night shift",
        "--note",
        "transmitter \"held\" during calibration",
    ]);
    assert!(ok, "{out}\n{err}");
    let end = sensorcast::time::format_ts(ns(flat.end - 1));
    assert!(
        out.contains(&format!("to {end} as false")),
        "the end is looked up: {out}"
    );
    // An alarm that does not exist is refused, and nothing is recorded.
    let (ok, _, err) = run(&[
        "label",
        "--device",
        "pump-000",
        "--at",
        &at,
        "--verdict",
        "false",
    ]);
    assert!(!ok && err.contains("holds no anomaly alarm"), "{err}");
    wait_until(
        "the verdict is on the point",
        Duration::from_secs(20),
        || {
            pumps.influx.query(
            "SELECT \"verdict\" FROM \"anomaly_event\" WHERE \"kind\" = 'stuck'",
        )["results"][0]["series"]
            .is_array()
        },
    );
    let rows = pumps.influx.rows(
        "SELECT \"active\", \"start\", \"end\", \"verdict\", \"labelled_by\", \"label_note\" FROM \"anomaly_event\" WHERE \"kind\" = 'stuck'",
    );
    assert_eq!(rows.len(), 1, "the same point, not another: {rows:?}");
    let row = &rows[0];
    assert_eq!(row[0].as_i64(), Some(ns(flat.start)));
    assert_eq!(
        row[1],
        serde_json::json!(false),
        "the alarm's fields stay: {row:?}"
    );
    assert_eq!(row[2].as_i64(), Some(ns(flat.start)));
    assert_eq!(row[3].as_i64(), Some(ns(flat.end - 1)));
    assert_eq!(row[4], serde_json::json!("false"));
    assert_eq!(row[5], serde_json::json!("night shift"));
    assert_eq!(
        row[6],
        serde_json::json!("transmitter \"held\" during calibration")
    );
    assert_eq!(serve.terminate(), 0);

    // A fault confirmed in the training part (pump-000, readings 50..=69), recorded without
    // looking it up.
    let (ok, out, err) = run(&[
        "label",
        "--device",
        "pump-000",
        "--at",
        &ns(50).to_string(),
        "--until",
        &ns(69).to_string(),
        "--verdict",
        "confirmed",
    ]);
    assert!(ok, "{out}\n{err}");
    // A fault confirmed while its alarm was still raised (pump-001 from reading 100, labelled
    // at reading 110, no end): retrain completes it from InfluxDB, where the alarm is still
    // active, up to the retrain's end — so readings 100..=149 of the training part are left
    // out, not only 100..=110.
    let (status, body) = http(
        "POST",
        &pumps.influx.addr(),
        &format!("/write?db={INFLUX_DB}&precision=ns"),
        &format!(
            "anomaly_event,stream=pumps,device=pump-001,kind=anomaly active=true,start={}i {}\n",
            ns(100),
            ns(100)
        ),
    )
    .expect("write");
    assert_eq!(status, 204, "{body}");
    let open = format!(
        "\n[[label]]\nstream = \"pumps\"\ndevice = \"pump-001\"\nat = \"{}\"\nverdict = \"confirmed\"\nrecorded_at = \"{}\"\n",
        sensorcast::time::format_ts(ns(100)),
        sensorcast::time::format_ts(ns(110))
    );
    let mut text = std::fs::read_to_string(&labels).expect("labels");
    text.push_str(&open);
    std::fs::write(&labels, text).expect("labels");
    let until = sensorcast::time::format_ts(ns(readings) - 1);
    let (ok, out, err) = run(&["retrain", "--until", &until]);
    assert!(ok, "{out}\n{err}");
    let decisions = std::fs::read_to_string(pumps.dir.path().join("models/pumps/decisions.jsonl"))
        .expect("decisions");
    let d: serde_json::Value =
        serde_json::from_str(decisions.lines().last().expect("a decision")).expect("json");
    assert_eq!(d["confirmed_left_out"], 20 + 50, "{d}");
    // Both models raise the stuck alarm labelled false again (a flat 40 s is stuck for both).
    let score = serde_json::json!({
        "confirmed": 0, "confirmed_alarmed": 0, "false_alarms": 1, "false_alarmed": 1
    });
    assert_eq!(d["champion_labels"], score, "{d}");
    assert_eq!(d["challenger_labels"], score, "{d}");
}

/// `serve` embedded in the test process: `sensorcast::serve::serve` with a shutdown future of
/// the caller's (no signal, no process exit). It writes every reading's points, and once the
/// future resolves it drains and returns true with every offset committed.
#[test]
fn serve_runs_in_process_and_drains_when_its_shutdown_future_resolves() {
    let pumps = Pumps::new("inproc", |_| String::new());
    let t0 = chrono::Utc::now().timestamp_millis() - 300_000;
    let sent = pumps.produce((t0, 40, 3), |_, _| false, |_, _| false);
    let cfg = sensorcast::config::Config::load(Some(&pumps.cfg)).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(sensorcast::serve::serve(
        cfg,
        pumps.cfg.clone(),
        sensorcast::serve::Shutdown {
            requested: async {
                let _ = stopped.await;
            },
            exit_if_stuck: false,
        },
    ));
    wait_until(
        "every reading's anomaly point",
        Duration::from_secs(60),
        || pumps.influx.count("anomaly", "score") >= sent,
    );
    assert!(
        !serving.is_finished(),
        "serve returned before it was asked to stop"
    );
    stop.send(()).expect("serve is running");
    let clean = rt
        .block_on(serving)
        .expect("serve's task")
        .expect("serve's result");
    assert!(clean, "serve drained cleanly");
    assert_eq!(pumps.influx.count("anomaly", "score"), sent);
    assert_eq!(
        committed(&pumps.brokers, &pumps.group, &pumps.topic, 1),
        sent as i64,
        "every message's offset committed at shutdown"
    );
}

/// The scenario of the alarm-kind tests: stream `pumps` (JSON, one partition) on the test
/// broker, an InfluxDB 1.6, and a config with a model trained for the stream (`setup`), to
/// which `extra(folder)` is appended.
struct Pumps {
    brokers: String,
    group: String,
    dir: tempfile::TempDir,
    influx: Influx,
    topic: String,
    cfg: std::path::PathBuf,
    port: u16,
}

impl Pumps {
    fn new(name: &str, extra: impl FnOnce(&std::path::Path) -> String) -> Self {
        Self::with_partitions(name, 1, extra)
    }

    /// [`Pumps::new`] on a topic of `partitions` partitions.
    fn with_partitions(
        name: &str,
        partitions: i32,
        extra: impl FnOnce(&std::path::Path) -> String,
    ) -> Self {
        let brokers = brokers();
        let dir = tempfile::tempdir().expect("tempdir");
        let influx = Influx::start();
        let (topic, group) = (unique(name), unique(&format!("g-{name}")));
        create_topics(&brokers, &[(&topic, partitions)]);
        let streams = [Stream {
            name: "pumps",
            topic: &topic,
            format: "json",
        }];
        let extra = extra(dir.path());
        let (cfg, port) = setup(dir.path(), &brokers, &influx, &group, &streams, &extra);
        Self {
            brokers,
            group,
            dir,
            influx,
            topic,
            cfg,
            port,
        }
    }

    /// The stream's current model version.
    fn current(&self) -> String {
        current_model(self.dir.path())
    }

    /// Trains a new model of the stream on the scenario's history (seed 7) and publishes it;
    /// returns its version.
    fn train(&self) -> String {
        let history = self.dir.path().join("history.jsonl");
        let o = Command::new(BIN)
            .args(["train", "--config"])
            .arg(&self.cfg)
            .args(["--input", history.to_str().expect("utf-8")])
            .env("SENSORCAST__TRAIN__SEED", "7")
            .output()
            .expect("train");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        self.current()
    }

    /// `devices` pumps' simulated readings (`sensorcast simulate`, JSON, one a second, the
    /// last at `end`) produced to the scenario's topic.
    fn simulate(&self, devices: usize, readings: usize, end: &str) {
        simulate(&self.brokers, &self.topic, "json", devices, readings, end);
    }

    /// Waits (up to 60 s) until InfluxDB holds `n` anomaly points.
    fn wait_scored(&self, what: &str, n: usize) {
        wait_until(what, Duration::from_secs(60), || {
            self.influx.count("anomaly", "score") >= n
        });
    }

    /// `serve` on the scenario's config, ready.
    fn serve(&self) -> Serve {
        Serve::start(&self.cfg, self.dir.path(), self.port)
    }

    /// Produces readings of `devices` pumps (`pump-000`, …), one a second from `t0` (ms) for
    /// `readings` seconds, through one producer: pump `d`'s reading `i` is left out where
    /// `skip(i, d)`, and its pressure holds 4.25 where `flat(i, d)`. Returns how many were
    /// sent.
    fn produce(
        &self,
        (t0, readings, devices): (i64, i64, i64),
        skip: impl Fn(i64, i64) -> bool,
        flat: impl Fn(i64, i64) -> bool,
    ) -> usize {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("producer");
        let mut sent = 0;
        for i in 0..readings {
            for d in 0..devices {
                if skip(i, d) {
                    continue;
                }
                let wave = |k: f64| ((i as f64) * 0.3 + d as f64 + k).sin();
                let pressure = if flat(i, d) {
                    4.25
                } else {
                    5.0 + 0.5 * wave(3.0)
                };
                let payload = format!(
                    r#"{{"device":"pump-{d:03}","ts":{},"values":{{"vibration":{},"temperature":{},"current":{},"pressure":{}}}}}"#,
                    t0 + i * 1000,
                    1.0 + 0.1 * wave(0.0),
                    75.0 + 2.0 * wave(1.0),
                    12.0 + 3.0 * wave(2.0),
                    pressure
                );
                send(
                    &producer,
                    &self.topic,
                    Some(format!("pump-{d:03}").as_bytes()),
                    payload.as_bytes(),
                );
                sent += 1;
            }
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        sent
    }
}
