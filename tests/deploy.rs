//! The deployment files and the docs, tied to the code: no Docker engine, Kubernetes cluster
//! or Prometheus runs here, so these are static checks against the real binary.
//!
//! - every shipped config passes `check-config`, and every config key the docs and deploy
//!   files name (as `section.key` or `SENSORCAST__SECTION__KEY`) is one `config/default.toml`
//!   has (that file is tested against the config structs in `src/config`);
//! - the handbook's configuration reference lists exactly the keys of `config/default.toml`;
//! - Compose, Kubernetes and Prometheus YAML parse; every `sensorcast` invocation in them and
//!   in their scripts uses subcommands and flags the binary has; ports agree with `http.listen`;
//!   files they mount or list exist; probes use the real health paths;
//! - the example alert rules use only metrics `/metrics` exports;
//! - every relative link in the README, docs/ and deploy/ points inside the repository;
//! - the README's first command runs as written.
//!
//! (`systemd-analyze verify` of deploy/systemd runs in scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_sensorcast");

fn root() -> PathBuf {
    PathBuf::from(ROOT)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn deploy_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    files_under(&root().join("deploy"), &mut v);
    v.sort();
    v
}

/// Every key of config/default.toml as `section.key` (`streams.key` for the [[streams]]
/// entries; a table value such as `kafka.properties` is one key).
fn config_keys() -> BTreeSet<String> {
    let mut keys = toml_keys();
    // Documented in default.toml as comments (optional keys without a default).
    for k in [
        "streams.false_alarm_rate",
        "streams.alarm_budget",
        "streams.output",
        "influxdb.token_file",
        "influxdb.username",
        "influxdb.password",
        "influxdb.password_file",
        "influxdb.retention_policy",
        "influxdb.ca_file",
        "maintenance.stream",
        "maintenance.devices",
        "maintenance.from",
        "maintenance.until",
        "maintenance.reason",
    ] {
        keys.insert(k.to_string());
    }
    keys
}

/// The keys config/default.toml sets.
fn toml_keys() -> BTreeSet<String> {
    let doc: toml::Table = read(&root().join("config/default.toml"))
        .parse()
        .expect("default.toml");
    let mut keys = BTreeSet::new();
    for (section, v) in &doc {
        let tables: Vec<&toml::Table> = match v {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a.iter().filter_map(|x| x.as_table()).collect(),
            _ => continue,
        };
        for t in tables {
            for k in t.keys() {
                keys.insert(format!("{section}.{k}"));
            }
        }
    }
    keys
}

fn sections() -> BTreeSet<String> {
    config_keys()
        .iter()
        .filter_map(|k| k.split('.').next().map(str::to_string))
        .collect()
}

fn check_config(path: &Path) -> (bool, String) {
    let o = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("check-config");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn every_shipped_config_passes_check_config() {
    let mut configs: Vec<PathBuf> = deploy_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.push(root().join("config/default.toml"));
    assert!(configs.len() >= 3, "{configs:?}");
    for c in &configs {
        let (ok, out) = check_config(c);
        assert!(ok, "{}: {out}", c.display());
    }
    // The Kubernetes config is completed by the Secret's [kafka.properties] fragment.
    let k8s = root().join("deploy/k8s/sensorcast.toml");
    let secret = read(&root().join("deploy/k8s/secret.example.yaml"));
    let docs = YamlLoader::load_from_str(&secret).expect("secret YAML");
    let fragment = docs
        .iter()
        .find_map(|d| {
            d["stringData"]["kafka-properties.toml"]
                .as_str()
                .map(str::to_string)
        })
        .expect("secret.example.yaml has stringData.kafka-properties.toml");
    let dir = tempfile::tempdir().expect("tmp");
    let joined = dir.path().join("joined.toml");
    std::fs::write(&joined, format!("{}\n{fragment}", read(&k8s))).expect("write");
    let (ok, out) = check_config(&joined);
    assert!(ok, "k8s config + secret fragment: {out}");
}

/// `section.key` references in backticks, and SENSORCAST__SECTION__KEY variables.
fn named_keys(text: &str) -> Vec<String> {
    let sections = sections();
    let mut out = Vec::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let word = part.split([' ', '=']).next().unwrap_or_default();
        let Some((section, rest)) = word.split_once('.') else {
            continue;
        };
        let key: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        // `train.history_*` names a family; `x.y.z` is a file or a nested name.
        const FILE_TYPES: [&str; 12] = [
            "yaml", "yml", "toml", "json", "jsonl", "md", "sh", "service", "timer", "lp", "csv",
            "log",
        ];
        if sections.contains(section)
            && !key.is_empty()
            && !FILE_TYPES.contains(&key.as_str())
            && !rest[key.len()..].starts_with(['*', '.'])
            && rest[key.len()..]
                .chars()
                .all(|c| !c.is_ascii_alphanumeric())
        {
            out.push(format!("{section}.{key}"));
        }
    }
    let mut rest = text;
    while let Some(i) = rest.find("SENSORCAST__") {
        let var: String = rest[i + 12..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        let parts: Vec<&str> = var.split("__").collect();
        // SENSORCAST__SECTION__KEY is the pattern itself.
        if parts.len() >= 2 && parts.iter().all(|p| !p.is_empty()) && parts[0] != "SECTION" {
            out.push(format!(
                "{}.{}",
                parts[0].to_lowercase(),
                parts[1].to_lowercase()
            ));
        }
        rest = &rest[i + 12..];
    }
    out
}

#[test]
fn every_config_key_the_docs_and_deploy_files_name_exists() {
    let keys = config_keys();
    let mut texts = vec![root().join("README.md"), root().join("deploy/README.md")];
    let mut docs = Vec::new();
    files_under(&root().join("docs"), &mut docs);
    texts.extend(
        docs.into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    texts.extend(deploy_files().into_iter().filter(|p| {
        p.extension().is_some_and(|e| {
            ["md", "yaml", "yml", "sh", "service", "timer"]
                .contains(&e.to_str().unwrap_or_default())
        }) || p.file_name().is_some_and(|n| n == "Dockerfile")
    }));
    let mut unknown = Vec::new();
    let mut seen = 0;
    for t in &texts {
        for k in named_keys(&read(t)) {
            seen += 1;
            if !keys.contains(&k) {
                unknown.push(format!(
                    "{}: {k}",
                    t.strip_prefix(ROOT).unwrap_or(t).display()
                ));
            }
        }
    }
    assert!(seen > 50, "the scan finds the keys the docs name ({seen})");
    assert!(unknown.is_empty(), "keys that do not exist: {unknown:#?}");
}

#[test]
fn the_handbook_config_reference_lists_exactly_the_config_keys() {
    let text = read(&root().join("docs/OPERATIONS.md"));
    let at = text
        .find("## Configuration reference")
        .expect("docs/OPERATIONS.md has a ## Configuration reference");
    let section = &text[at..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let listed: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l[3..].split('`').next().map(str::to_string))
        .collect();
    let keys = toml_keys();
    let missing: Vec<_> = keys.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&keys).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not in the reference: {missing:?}; not config keys: {extra:?}"
    );
}

fn yaml_files() -> Vec<(PathBuf, Vec<Yaml>)> {
    deploy_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            let docs = YamlLoader::load_from_str(&read(&p))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, docs)
        })
        .collect()
}

fn walk<'a>(y: &'a Yaml, f: &mut dyn FnMut(&'a Yaml)) {
    f(y);
    match y {
        Yaml::Array(a) => a.iter().for_each(|x| walk(x, f)),
        Yaml::Hash(h) => h.iter().for_each(|(k, v)| {
            walk(k, f);
            walk(v, f);
        }),
        _ => {}
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `sensorcast <args>` invocations in shell text (continuation lines joined).
fn invocations(text: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.next() {
            if w.trim_matches(['"', '\'', '(']) != "sensorcast" || words.peek().is_none() {
                continue;
            }
            let args: Vec<String> = words
                .by_ref()
                .take_while(|w| !["|", "||", "&&", ";", ">", "2>&1"].contains(w))
                .map(|w| w.trim_matches(['"', '\'', ';', ')']).to_string())
                .collect();
            if args
                .first()
                .is_some_and(|a| a.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            {
                out.push(args);
            }
        }
    }
    out
}

/// Checks a sensorcast command line: its subcommands exist and every `--flag` is one of its.
fn check_invocation(args: &[String], whence: &str) {
    let mut sub = vec![args[0].clone()];
    if ["models", "state"].contains(&args[0].as_str()) {
        sub.push(args.get(1).cloned().unwrap_or_default());
    }
    let o = Command::new(BIN)
        .args(&sub)
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{whence}: no subcommand `sensorcast {}`",
        sub.join(" ")
    );
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap_or(a);
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}\n"))
                || help.contains(&format!("{flag} <")),
            "{whence}: `sensorcast {}` has no flag {flag}",
            sub.join(" ")
        );
    }
}

/// The port of `http.listen` in the image (its ENV) and the deploy configs.
fn metrics_port() -> u16 {
    let dockerfile = read(&root().join("deploy/docker/Dockerfile"));
    let listen = dockerfile
        .lines()
        .filter(|l| l.starts_with("ENV "))
        .find_map(|l| l.split("SENSORCAST__HTTP__LISTEN=").nth(1))
        .expect("the image sets SENSORCAST__HTTP__LISTEN");
    listen
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[test]
fn compose_and_kubernetes_use_only_what_exists() {
    let port = metrics_port();
    let files = yaml_files();
    assert!(
        files.len() >= 8,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let (mut commands, mut compose_commands) = (0, 0);
    for (path, docs) in &files {
        let whence = path
            .strip_prefix(ROOT)
            .unwrap_or(path)
            .display()
            .to_string();
        let dir = path.parent().expect("dir");
        for doc in docs {
            walk(doc, &mut |y| {
                let Yaml::Hash(h) = y else { return };
                let get = |k: &str| h.get(&Yaml::String(k.into()));
                // Compose services take their image from a merged anchor (`<<: *sensorcast`);
                // the parser keeps the merge key, so look there too.
                let merged = |k: &str| {
                    get(k).or_else(|| {
                        get("<<").and_then(|m| m.as_hash()?.get(&Yaml::String(k.into())))
                    })
                };
                // A container or Compose service running the sensorcast image.
                let image = merged("image").and_then(Yaml::as_str).unwrap_or_default();
                // Its arguments to the image's entrypoint (sensorcast): Kubernetes `args` unless
                // `command` replaces the entrypoint; Compose `command` unless `entrypoint` does.
                let argv = if whence.contains("k8s") {
                    get("command").is_none().then(|| get("args")).flatten()
                } else {
                    merged("entrypoint")
                        .is_none()
                        .then(|| get("command"))
                        .flatten()
                };
                if image.contains("sensorcast") {
                    let argv = argv.map(strings).unwrap_or_default();
                    if !argv.is_empty() {
                        check_invocation(&argv, &whence);
                        commands += 1;
                        if whence.contains("compose") {
                            compose_commands += 1;
                        }
                    }
                }
                // Shell run by a container.
                for key in ["command", "args", "entrypoint"] {
                    for s in get(key).map(strings).unwrap_or_default() {
                        for inv in invocations(&s) {
                            check_invocation(&inv, &whence);
                            commands += 1;
                        }
                    }
                }
                // Kubernetes: container ports and probes.
                if let Some(p) = get("containerPort").and_then(Yaml::as_i64) {
                    assert_eq!(
                        p, port as i64,
                        "{whence}: containerPort is not http.listen's port"
                    );
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(p) = get(probe) {
                        let path = p["httpGet"]["path"].as_str().unwrap_or_default();
                        assert!(
                            ["/health/live", "/health/ready"].contains(&path),
                            "{whence}: {probe} on {path:?}"
                        );
                    }
                }
                // Compose: what a sensorcast service publishes is http.listen's port, and
                // bind-mounted files exist.
                if image.contains("sensorcast") {
                    for p in get("ports").map(strings).unwrap_or_default() {
                        assert!(
                            p.ends_with(&format!(":{port}")),
                            "{whence}: publishes {p}, not http.listen's port {port}"
                        );
                    }
                }
                for v in get("volumes").map(strings).unwrap_or_default() {
                    if let Some(src) = v.split(':').next().filter(|s| s.starts_with('.')) {
                        assert!(
                            dir.join(src).exists(),
                            "{whence}: mounts {src}, which is not there"
                        );
                    }
                }
                for key in ["resources", "files"] {
                    for f in get(key).map(strings).unwrap_or_default() {
                        if !f.contains("://") {
                            assert!(
                                dir.join(&f).exists(),
                                "{whence}: lists {f}, which is not there"
                            );
                        }
                    }
                }
            });
        }
    }
    // Shell scripts beside them.
    for p in deploy_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
    {
        for inv in invocations(&read(&p)) {
            check_invocation(&inv, &p.display().to_string());
            commands += 1;
        }
    }
    // The systemd units.
    for p in deploy_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
    {
        for line in read(&p).lines().filter(|l| l.starts_with("ExecStart=")) {
            for inv in invocations(&line.replace("/usr/local/bin/sensorcast", "sensorcast")) {
                check_invocation(&inv, &p.display().to_string());
                commands += 1;
            }
        }
    }
    assert!(commands >= 8, "sensorcast invocations found: {commands}");
    // serve and retrain, as the Compose services' command lines.
    assert!(
        compose_commands >= 2,
        "Compose sensorcast commands checked: {compose_commands}"
    );
}

/// Metric names `/metrics` exports (sample names: counters end in _total, histograms in
/// _bucket/_sum/_count).
fn exported_metrics() -> BTreeSet<String> {
    let text = sensorcast::telemetry::Metrics::new().render();
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if w.next() == Some("#") && w.next() == Some("TYPE") {
            let (Some(name), Some(kind)) = (w.next(), w.next()) else {
                continue;
            };
            let base = name.strip_suffix("_total").unwrap_or(name);
            match kind {
                "counter" => {
                    out.insert(format!("{base}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

/// The demo plant runs the Apache Kafka version the tests run against.
#[test]
fn the_compose_broker_is_the_tested_apache_kafka() {
    let script = read(&root().join("scripts/kafka.sh"));
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=${KAFKA_VERSION:-"))
        .and_then(|v| v.strip_suffix('}'))
        .expect("scripts/kafka.sh pins KAFKA_VERSION");
    let compose = read(&root().join("deploy/compose/compose.yaml"));
    let images: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: apache/kafka:"))
        .collect();
    assert!(!images.is_empty(), "the demo plant runs apache/kafka");
    for image in images {
        assert_eq!(
            image, version,
            "deploy/compose/compose.yaml vs scripts/kafka.sh"
        );
    }
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let exported = exported_metrics();
    assert!(
        exported.contains("sensorcast_readings_total"),
        "{exported:?}"
    );
    let text = read(&root().join("deploy/prometheus/alerts.yml"));
    let docs = YamlLoader::load_from_str(&text).expect("alerts.yml");
    let mut rules = 0;
    for g in docs[0]["groups"].as_vec().expect("groups") {
        for r in g["rules"].as_vec().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
            rules += 1;
            let mut rest = expr;
            while let Some(i) = rest.find("sensorcast_") {
                let m: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(exported.contains(&m), "{name}: {m} is not exported");
                rest = &rest[i + m.len()..];
            }
        }
    }
    assert!(rules >= 8, "{rules} rules");
}

#[test]
fn relative_links_stay_inside_the_repository() {
    let mut texts = vec![root().join("README.md")];
    let mut more = Vec::new();
    files_under(&root().join("docs"), &mut more);
    more.extend(deploy_files());
    texts.extend(
        more.into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    for t in &texts {
        let text = read(t);
        let dir = t.parent().expect("dir");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            let target: String = rest[i + 2..].chars().take_while(|c| *c != ')').collect();
            rest = &rest[i + 2..];
            if target.starts_with("http")
                || target.starts_with('#')
                || target.starts_with("mailto:")
            {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let resolved = dir.join(file);
            assert!(
                resolved.exists(),
                "{}: link to {target}, which is not in the repository",
                t.display()
            );
            let canon = resolved.canonicalize().expect("canonical");
            assert!(
                canon.starts_with(Path::new(ROOT).canonicalize().expect("root")),
                "{}: link {target} leaves the repository",
                t.display()
            );
        }
    }
}

/// The README opens with the two commands; the first runs as written (cargo run builds the
/// binary this test runs, so the binary is run with the same arguments, in a fresh folder).
#[test]
fn the_readme_first_command_runs_as_written() {
    let readme = read(&root().join("README.md"));
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a first code block");
    let mut lines = block.lines();
    let first = lines.next().expect("first command");
    let second = lines.next().expect("second command");
    let cmd = first.split('#').next().unwrap_or_default().trim();
    assert_eq!(cmd, "cargo run --release -- demo");
    assert!(second.starts_with("scripts/test.sh"), "{second}");
    let args: Vec<&str> = cmd
        .split(" -- ")
        .nth(1)
        .expect("args")
        .split_whitespace()
        .collect();
    let dir = tempfile::tempdir().expect("tmp");
    let o = Command::new(BIN)
        .args(&args)
        .current_dir(dir.path())
        .output()
        .expect("demo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("faults detected: 8/8"), "{out}");
    for f in ["forecasts.lp", "chart.svg"] {
        assert!(dir.path().join("demo-out").join(f).exists(), "demo-out/{f}");
    }
}
