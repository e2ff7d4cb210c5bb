//! End-to-end tests: run the real `sensorcast` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sensorcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sensorcast"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run sensorcast")
}

fn replay(cfg: &Path, input: &Path, output: &Path) -> Output {
    sensorcast(&[
        "replay",
        "--config",
        path(cfg),
        "--input",
        path(input),
        "--output",
        path(output),
    ])
}

fn train(cfg: &Path, input: &Path) -> Output {
    sensorcast(&["train", "--config", path(cfg), "--input", path(input)])
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const FEATURES: [&str; 4] = ["vibration", "temperature", "current", "pressure"];

/// `meta.json` of the current `pumps` model in `<dir>/models`.
fn current_meta(dir: &Path) -> serde_json::Value {
    let stream = dir.join("models/pumps");
    let version = std::fs::read_to_string(stream.join("current")).expect("current pointer");
    let text =
        std::fs::read_to_string(stream.join(version.trim()).join("meta.json")).expect("meta.json");
    serde_json::from_str(&text).expect("meta.json parses")
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("sensorcast.toml");
    let text = format!(
        r#"[[streams]]
name = "pumps"
topic = "sensors.pumps"
features = ["vibration", "temperature", "current", "pressure"]
interval = "5m"

[model]
registry = "{}"
hidden = 16
horizon = 2

[train]
window = 24
epochs = 15
batch_size = 32
learning_rate = 0.01
"#,
        dir.join("models").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A CSV history: `devices × steps` smooth readings, 5 minutes apart.
fn write_csv(path: &Path, devices: usize, steps: usize) {
    let mut s = String::from("device,ts,vibration,temperature,current,pressure\n");
    for t in 0..steps {
        for d in 0..devices {
            let ts = 1_795_000_000_000i64 + (t as i64) * 300_000;
            let x = t as f64 * 0.13 + d as f64;
            let noise = ((t * 7919 + d * 104_729) % 1000) as f64 / 1000.0 - 0.5;
            s.push_str(&format!(
                "pump-{d},{ts},{:.4},{:.4},{:.4},{:.4}\n",
                1.0 + 0.3 * x.sin() + 0.02 * noise,
                60.0 + 5.0 * (x * 0.5).sin() + 0.1 * noise,
                10.0 + 2.0 * x.sin() + 0.05 * noise,
                4.0 + 0.5 * x.cos() + 0.01 * noise
            ));
        }
    }
    std::fs::write(path, s).expect("write csv");
}

#[test]
fn demo_in_reduced_size_detects_the_faults_it_injects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let o = sensorcast(&[
        "demo",
        "--out",
        out.to_str().expect("utf-8"),
        "--devices",
        "12",
        "--readings",
        "600",
        "--faults",
        "4",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("devices: 12") && stdout.contains("readings: 7200"),
        "{stdout}"
    );
    assert!(stdout.contains("faults injected: 4"), "{stdout}");
    assert!(
        stdout.contains("faults detected: 4/4"),
        "every injected fault is caught:\n{stdout}"
    );
    assert!(stdout.contains("events/s"), "{stdout}");
    let false_alarms: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("false alarm events: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("false alarm event count");
    assert!(
        false_alarms <= 3,
        "too many false alarms: {false_alarms}\n{stdout}"
    );
    let events: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("alarm events: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("alarm event count");
    assert!(events >= 4, "one alarm event per fault at least:\n{stdout}");
    let lp = std::fs::read_to_string(out.join("forecasts.lp")).expect("line protocol");
    assert_eq!(
        lp.lines().filter(|l| l.starts_with("anomaly,")).count(),
        7200,
        "one anomaly point per reading"
    );
    assert_eq!(
        lp.lines().filter(|l| l.starts_with("forecast,")).count(),
        7200 * 2 * 4,
        "2 of the 3 steps (output.horizons = \"ends\") × features forecasts per reading"
    );
    assert_eq!(
        lp.lines().filter(|l| l.starts_with("reading,")).count(),
        7200,
        "the readings themselves (output.readings)"
    );
    // Each alarm writes its event point when raised and again (same time, overwriting) when
    // it clears.
    let event_points = lp
        .lines()
        .filter(|l| l.starts_with("anomaly_event,"))
        .count();
    assert!(
        event_points >= events && event_points <= 2 * events,
        "{event_points} event points for {events} alarms"
    );
    let svg = std::fs::read_to_string(out.join("chart.svg")).expect("chart");
    assert!(
        svg.starts_with("<svg") && svg.contains("pump-"),
        "chart is an SVG with device panels"
    );
    assert!(out.join("models/pumps/current").is_file());
}

#[test]
fn train_then_replay_writes_points_and_is_deterministic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let csv = dir.path().join("history.csv");
    write_csv(&csv, 4, 300);
    let o = train(&cfg, &csv);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "train failed:\n{stdout}\n{stderr}");
    for key in ["MAE", "RMSE", "MASE", "90% band coverage", "published"] {
        assert!(stdout.contains(key), "report lacks {key}:\n{stdout}");
    }
    let meta = current_meta(dir.path());
    let version = meta["version"].as_str().expect("version").to_string();
    assert_eq!(meta["features"], serde_json::json!(FEATURES));
    assert!(
        meta["validation"]["mase"].as_f64().expect("mase") < 1.0,
        "{}",
        meta["validation"]
    );
    assert!(
        dir.path()
            .join("models/pumps")
            .join(version.trim())
            .join("model.bpk")
            .is_file()
    );

    let mut outputs = Vec::new();
    for name in ["a.lp", "b.lp"] {
        let out = dir.path().join(name);
        let o = replay(&cfg, &csv, &out);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "replay failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("replayed 1200 readings of 4 devices: 1200 stepped"),
            "{stdout}"
        );
        outputs.push(std::fs::read(&out).expect("output"));
    }
    assert_eq!(outputs[0], outputs[1], "replays are bit-identical");
    let lp = String::from_utf8(outputs.remove(0)).expect("utf-8");
    assert_eq!(
        lp.lines()
            .filter(|l| l.starts_with("anomaly,stream=pumps,device=pump-0 "))
            .count(),
        300
    );
    assert_eq!(
        lp.lines().filter(|l| l.starts_with("forecast,")).count(),
        1200 * 2 * 4
    );
    let first = lp
        .lines()
        .find(|l| l.starts_with("forecast,"))
        .expect("a forecast");
    assert!(
        first.contains(&format!("model=\"{}\"", version.trim())) && first.contains("yhat_lower="),
        "{first}"
    );

    let csv_out = dir.path().join("out.csv");
    let o = replay(&cfg, &csv, &csv_out);
    assert!(o.status.success(), "{:?}", text(&o));
    let rows = std::fs::read_to_string(&csv_out).expect("csv");
    assert!(rows.starts_with(
        "device,ts,model,score,forecast_score,deviation_score,likelihood,over_line,is_anomaly,alarm,top_field"
    ));
    assert_eq!(rows.lines().count(), 1201);
}

#[test]
fn bad_input_lines_are_named_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let csv = dir.path().join("history.csv");
    write_csv(&csv, 3, 200);
    let o = train(&cfg, &csv);
    assert!(o.status.success(), "{:?}", text(&o));

    let bad = dir.path().join("bad.jsonl");
    let good = |ts: i64| {
        format!(
            r#"{{"device":"pump-9","ts":{ts},"values":{{"vibration":1,"temperature":60,"current":10,"pressure":4}}}}"#
        )
    };
    let lines = [
        good(1_795_000_000_000),
        "{not json".to_string(),
        r#"{"device":"pump-9","ts":1795000600000,"values":{"vibration":1e39,"temperature":60,"current":10,"pressure":4}}"#.into(),
        r#"{"device":"pump-9","ts":1795000600000,"values":{"vibration":1,"temperature":60,"current":10,"pressure":4,"rpm":3}}"#.into(),
        r#"{"device":"pump-9","ts":1795000600000,"values":{"vibration":1,"temperature":60,"current":10}}"#.into(),
        good(1_795_000_300_000),
        good(1_794_999_000_000),
        good(1_795_000_300_000),
        r#"{"device":"pump-9","ts":1795000900000,"values":{"vibration":"high","temperature":60,"current":10,"pressure":4}}"#.into(),
    ];
    std::fs::write(&bad, lines.join("\n") + "\n").expect("write");
    let out = dir.path().join("out.lp");
    let args = [
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--input",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    let o = sensorcast(&args);
    let (stdout, stderr) = text(&o);
    assert!(
        o.status.success(),
        "bad lines are skipped, not fatal:\n{stderr}"
    );
    let at = |line: usize| format!("bad.jsonl:{line}:");
    for (line, what) in [
        (2, "invalid JSON"),
        (3, "not a finite number"),
        (4, "unknown feature \"rpm\""),
        (5, "missing feature \"pressure\""),
        (7, "out-of-order timestamp"),
        (8, "duplicate timestamp"),
        (9, "wrong type"),
    ] {
        let hit = stderr
            .lines()
            .any(|l| l.contains(&at(line)) && l.contains(what));
        assert!(hit, "expected {what:?} at line {line}:\n{stderr}");
    }
    assert!(
        stdout.contains("replayed 2 readings of 1 devices: 2 stepped, 7 skipped lines"),
        "{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut strict = args.to_vec();
    strict.push("--strict");
    let o = sensorcast(&strict);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--strict") && stderr.contains("bad.jsonl:2:"),
        "{stderr}"
    );

    // CSV with NaN and infinity.
    let nan = dir.path().join("nan.csv");
    std::fs::write(&nan, "device,ts,vibration,temperature,current,pressure\nd,1795000000000,NaN,1,1,1\nd,1795000300000,1,inf,1,1\nd,1795000600000,1,1,1,1\n").expect("write");
    let o = replay(&cfg, &nan, &out);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("nan.csv:2: feature \"vibration\" is not a finite number"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nan.csv:3: feature \"temperature\" is not a finite number"),
        "{stderr}"
    );
}

#[test]
fn empty_and_missing_files_and_bad_headers_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").expect("write");
    let o = train(&cfg, &empty);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("empty.jsonl") && stderr.contains("contains no readings"),
        "{stderr}"
    );

    let o = sensorcast(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--input",
        "/nonexistent/x.csv",
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/x.csv"), "{stderr}");

    let header = dir.path().join("h.csv");
    std::fs::write(
        &header,
        "device,ts,vibration,temperature,current\nd,1795000000000,1,1,1\n",
    )
    .expect("write");
    let o = train(&cfg, &header);
    let (_, stderr) = text(&o);
    assert!(
        stderr.contains("h.csv:1: missing feature column \"pressure\""),
        "{stderr}"
    );

    let o = sensorcast(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--input",
        header.to_str().unwrap(),
        "--output",
        "x.lp",
    ]);
    let (_, stderr) = text(&o);
    assert!(
        stderr.contains("no model for stream \"pumps\""),
        "replay without a model explains itself: {stderr}"
    );
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nhidden = 64\nhorizon_steps = 3\n").expect("write");
    let o = sensorcast(&["check-config", "--config", bad.to_str().unwrap()]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("horizon_steps") && stderr.contains("bad.toml"),
        "{stderr}"
    );

    std::fs::write(
        &bad,
        "[model]\nhidden = 0\n[engine]\nmax_gap = \"soonish\"\n",
    )
    .expect("write");
    let o = sensorcast(&["check-config", "--config", bad.to_str().unwrap()]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr.contains("soonish"), "{stderr}");

    std::fs::write(&bad, "[model]\nhidden = 0\n").expect("write");
    let o = sensorcast(&[
        "train",
        "--config",
        bad.to_str().unwrap(),
        "--input",
        "x.csv",
    ]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr.contains("model.hidden: 0 is out of range"),
        "{stderr}"
    );

    let good = write_config(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_sensorcast"))
        .args(["check-config", "--config", good.to_str().unwrap()])
        .env("SENSORCAST__MODEL__LAYERS", "2")
        .output()
        .expect("run");
    let (stdout, _) = text(&o);
    assert!(o.status.success());
    assert!(
        stdout.contains("layers = 2")
            && stdout.contains("hidden = 16")
            && stdout.contains("[anomaly]"),
        "{stdout}"
    );
}

#[test]
fn bench_prints_its_numbers() {
    let o = sensorcast(&[
        "bench",
        "--devices",
        "300",
        "--steps",
        "5",
        "--hidden",
        "16",
        "--features",
        "3",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let value = |key: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= line in:\n{stdout}"))
    };
    // Every reading of every device went through the engine (counted from its outcomes).
    let events = stdout
        .lines()
        .find_map(|l| l.strip_prefix("events="))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok());
    assert_eq!(events, Some(300 * 5), "{stdout}");
    assert!(value("events_per_s").is_finite());
    let bytes = value("state_bytes_per_device");
    assert!(bytes > 0.0 && bytes < 2048.0, "{bytes}");
}

#[test]
fn a_short_history_trains_with_shorter_windows_and_a_warning() {
    // Default configuration (train.window 48, model.horizon 3, 20% validation), but one device
    // with 200 readings: the validation part (40) cannot hold 48 + 3.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("sensorcast.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[streams]]
name = "pumps"
topic = "sensors.pumps"
features = ["vibration", "temperature", "current", "pressure"]
interval = "5m"

[model]
registry = "{}"
"#,
            dir.path().join("models").display()
        ),
    )
    .expect("write config");
    let csv = dir.path().join("short.csv");
    write_csv(&csv, 1, 200);
    let o = train(&cfg, &csv);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "train failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("WARN")
            && l.contains("train.window 48 does not fit")
            && l.contains("windows of 37")),
        "{stderr}"
    );
    assert!(
        stdout.contains("MASE") && stdout.contains("published"),
        "{stdout}"
    );
    let meta = current_meta(dir.path());
    assert_eq!(
        meta["training"]["window"], 37,
        "the window used is recorded"
    );
    assert!(meta["validation"]["points"].as_u64().expect("points") > 0);
}

/// A folder laid out like SKAB (`;`-separated, `datetime`, sensors, `anomaly`, `changepoint`):
/// an anomaly-free file and three experiments whose flow drops by 8σ from row 500 to 600.
fn write_skab_like(dir: &Path) {
    let header =
        "datetime;Accelerometer1RMS;Pressure;Temperature;Volume Flow RateRMS;anomaly;changepoint";
    let row = |t: usize, seed: usize, fault: bool| {
        let n =
            |k: usize| (((t * 7919 + seed * 104_729 + k * 31) % 1000) as f64 / 1000.0 - 0.5) * 0.2;
        let secs = 1_583_748_873 + t; // 2020-03-09T10:14:33Z
        let dt = chrono_like(secs);
        let flow = 32.0 + n(3) - if fault { 1.6 } else { 0.0 };
        format!(
            "{dt};{:.4};{:.4};{:.4};{:.4};{};0",
            0.03 + n(0) * 0.01,
            0.5 + n(1),
            70.0 + t as f64 * 0.001 + n(2),
            flow,
            fault as u8
        )
    };
    std::fs::create_dir_all(dir.join("anomaly-free")).expect("mkdir");
    let free: Vec<String> = (0..800).map(|t| row(t, 99, false)).collect();
    let free_header = header.replace(";anomaly;changepoint", "");
    let free_rows: Vec<String> = free
        .iter()
        .map(|r| r.rsplitn(3, ';').nth(2).expect("columns").to_string())
        .collect();
    std::fs::write(
        dir.join("anomaly-free/anomaly-free.csv"),
        format!("{free_header}\n{}\n", free_rows.join("\n")),
    )
    .expect("write");
    for (i, (group, n)) in [("valve1", 0), ("valve1", 1), ("other", 1)]
        .iter()
        .enumerate()
    {
        std::fs::create_dir_all(dir.join(group)).expect("mkdir");
        let rows: Vec<String> = (0..700)
            .map(|t| row(t, i, (500..600).contains(&t)))
            .collect();
        std::fs::write(
            dir.join(format!("{group}/{n}.csv")),
            format!("{header}\n{}\n", rows.join("\n")),
        )
        .expect("write");
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of seconds since the epoch, for days in 2020-03.
fn chrono_like(secs: usize) -> String {
    let day0 = 1_583_020_800; // 2020-03-01T00:00:00Z
    let d = (secs - day0) / 86_400;
    let s = (secs - day0) % 86_400;
    format!(
        "2020-03-{:02} {:02}:{:02}:{:02}",
        d + 1,
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[test]
fn evaluate_skab_follows_the_protocol_on_a_skab_shaped_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("skab");
    write_skab_like(&data);
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_sensorcast"))
        .args([
            "evaluate",
            "skab",
            "--data",
            path(&data),
            "--out",
            path(&out),
            "--sweep",
            "0.01,0.0001",
        ])
        .env("SENSORCAST__TRAIN__EPOCHS", "4")
        .env("SENSORCAST__ANOMALY__LEARNING_READINGS", "150")
        .output()
        .expect("run sensorcast");
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "evaluate failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("training on 2000 rows (3 experiment training parts of 400 rows"),
        "trains on the training parts and anomaly-free.csv only:\n{stderr}"
    );
    assert!(
        stdout.contains("pooled over 900 test rows of 3 files"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| Conv-AE | 0.78 | 13.55 | 28.02 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("**sensorcast (causal, streaming)**"),
        "{stdout}"
    );
    assert!(
        stdout.contains("events: 3/3 detected"),
        "an 8σ flow drop is caught:\n{stdout}"
    );
    for file in ["valve1/0", "valve1/1", "other/1"] {
        assert!(
            stdout.contains(&format!("| {file} | 300 | 100 |")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("| 0.0001 |"),
        "the sweep is printed:\n{stdout}"
    );
    assert!(out.join("charts/valve1_0.svg").is_file());
    assert!(out.join("tradeoff.svg").is_file());
}

/// A config with a model trained on 4 devices × 400 readings, and a CSV of the same fleet
/// over 700 readings with a sustained level shift on pump-2's pressure from reading 500 to
/// 560, labelled in a `label` column when `label` is set.
fn trained_with_a_fault(dir: &Path, label: bool) -> (PathBuf, PathBuf) {
    let cfg = write_config(dir);
    let history = dir.join("history.csv");
    write_csv(&history, 4, 400);
    assert!(train(&cfg, &history).status.success());
    let all = dir.join("all.csv");
    write_csv(&all, 4, 700);
    let text_in = std::fs::read_to_string(&all).expect("csv");
    let mut lines = text_in.lines();
    let header = lines.next().expect("header");
    let mut out = if label {
        format!("{header},label\n")
    } else {
        format!("{header}\n")
    };
    let mut per_device = std::collections::HashMap::<String, usize>::new();
    for l in lines {
        let mut cols: Vec<String> = l.split(',').map(str::to_string).collect();
        let n = per_device.entry(cols[0].clone()).or_default();
        let fault = cols[0] == "pump-2" && (500..560).contains(n);
        if fault {
            let v: f64 = cols[5].parse().expect("pressure");
            cols[5] = format!("{}", v + 3.0);
        }
        *n += 1;
        if label {
            cols.push((fault as u8).to_string());
        }
        out.push_str(&cols.join(","));
        out.push('\n');
    }
    let input = dir.join(if label {
        "labelled.csv"
    } else {
        "unlabelled.csv"
    });
    std::fs::write(&input, out).expect("write");
    (cfg, input)
}

#[test]
fn evaluate_labelled_counts_events_delays_and_false_alarms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, input) = trained_with_a_fault(dir.path(), true);
    let charts = dir.path().join("charts");
    let o = sensorcast(&[
        "evaluate",
        "labelled",
        "--config",
        path(&cfg),
        "--input",
        path(&input),
        "--out",
        path(&charts),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "evaluate failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("4 devices, 2800 rows"), "{stdout}");
    assert!(stdout.contains("events: 1/1 detected"), "{stdout}");
    assert!(stdout.contains("points: F1 "), "{stdout}");
    let fa: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("false-alarm events: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("false alarm count");
    assert!(fa <= 2, "{stdout}");
    assert!(charts.join("002-pump-2.svg").is_file());
}

/// Operators' verdicts as the truth of `evaluate labelled`: the fault on pump-2 recorded as
/// confirmed with `sensorcast label` (its end given, so no database is asked), and a CSV with
/// no `label` column. Labels are refused with a clear error without a labels file, and with a
/// time that is not one.
#[test]
fn evaluate_labelled_takes_operators_verdicts_as_the_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, csv) = trained_with_a_fault(dir.path(), false);
    let ts = |n: i64| (1_795_000_000_000i64 + n * 300_000).to_string();
    let labels = dir.path().join("labels.toml");
    let label = |env: bool, at: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sensorcast"));
        c.args([
            "label",
            "--config",
            path(&cfg),
            "--device",
            "pump-2",
            "--at",
            at,
        ])
        .args(["--until", &ts(559), "--verdict", "confirmed", "--by", "ops"]);
        if env {
            c.env("SENSORCAST__ANOMALY__LABELS_FILE", &labels);
        }
        c.output().expect("label")
    };
    let o = label(false, &ts(500));
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("anomaly.labels_file is not set"),
        "{:?}",
        text(&o)
    );
    let o = label(true, "yesterday");
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--at"), "{:?}", text(&o));
    let o = label(true, &ts(500));
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("as confirmed"), "{:?}", text(&o));
    let o = sensorcast(&[
        "evaluate",
        "labelled",
        "--config",
        path(&cfg),
        "--input",
        path(&csv),
        "--labels",
        path(&labels),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "evaluate failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("verdicts set the label of 60 rows: 60 in confirmed faults"),
        "{stdout}"
    );
    assert!(stdout.contains("events: 1/1 detected"), "{stdout}");
    // Without verdicts the `label` column is needed, and its absence is named.
    let o = sensorcast(&[
        "evaluate",
        "labelled",
        "--config",
        path(&cfg),
        "--input",
        path(&csv),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no `label` column"), "{:?}", text(&o));
}

#[test]
fn models_list_promote_rollback_and_prune() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path());
    let csv = dir.path().join("history.csv");
    write_csv(&csv, 2, 200);
    let mut versions = Vec::new();
    for _ in 0..3 {
        let o = train(&cfg, &csv);
        assert!(o.status.success(), "{:?}", text(&o));
        versions.push(
            current_meta(dir.path())["version"]
                .as_str()
                .expect("version")
                .to_string(),
        );
    }
    let models = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_sensorcast"))
            .arg("models")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("models");
        let (out, err) = text(&o);
        (o.status.success(), out, err)
    };
    let (ok, out, err) = models(&["list"]);
    assert!(ok, "{err}");
    let current: Vec<_> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{out}");
    let names = |l: &str, v: &str| l.split_whitespace().any(|w| w == v);
    assert!(
        names(current[0], &versions[2]),
        "the newest is current: {out}"
    );
    assert_eq!(
        out.lines().filter(|l| names(l, &versions[0])).count(),
        2,
        "listed and in the history: {out}"
    );

    let (ok, out, _) = models(&["rollback"]);
    assert!(ok && out.ends_with(&format!("{}\n", versions[1])), "{out}");
    assert_eq!(current_meta(dir.path())["version"], versions[1].as_str());
    let (ok, out, err) = models(&["promote", &versions[0]]);
    assert!(ok, "{out}{err}");
    assert_eq!(current_meta(dir.path())["version"], versions[0].as_str());
    let (ok, _, err) = models(&["promote", "no-such-version"]);
    assert!(!ok && err.contains("no-such-version"), "{err}");
    let (ok, out, _) = models(&["show"]);
    assert!(ok && out.contains("\"validation\""), "{out}");
    // The last changes name all three versions, so pruning to 0 removes none of them.
    let (ok, out, err) = models(&["prune", "--keep", "0"]);
    assert!(ok && out.contains("removed 0"), "{out}{err}");
    let (ok, out, _) = models(&["rollback"]);
    assert!(
        ok && out.ends_with(&format!("{}\n", versions[1])),
        "back to what was current before: {out}"
    );
}
