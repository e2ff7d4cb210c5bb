//! The Grafana dashboard (deploy/grafana/) against what sensorcast really writes and exports:
//! every InfluxQL query of the dashboard (panel targets, template variables, annotations) runs
//! against a real InfluxDB 1.6 that `serve` has just filled, and every Prometheus expression
//! names only metrics that `serve`'s `/metrics` exports.
#![cfg(feature = "integration")]

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/sensorcast.json"
);
const DATASOURCES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/provisioning/datasources/sensorcast.yaml"
);
const PROVIDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/provisioning/dashboards/sensorcast.yaml"
);
const INFLUX_UID: &str = "sensorcast-influxdb";
const PROM_UID: &str = "sensorcast-prometheus";
const DEVICES: usize = 10;
const READINGS: usize = 200;
/// What `$__interval` becomes.
const INTERVAL: &str = "10s";

// ---------------------------------------------------------------------------------------------
// What the sink writes (src/output.rs).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Float,
    Int,
    Bool,
    Str,
}

impl Type {
    /// As `SHOW FIELD KEYS` names it.
    fn influx(self) -> &'static str {
        match self {
            Type::Float => "float",
            Type::Int => "integer",
            Type::Bool => "boolean",
            Type::Str => "string",
        }
    }
}

struct Measurement {
    tags: BTreeSet<String>,
    fields: BTreeMap<String, Type>,
}

/// Measurements, tags and fields (with their types) the sink writes.
fn schema() -> BTreeMap<&'static str, Measurement> {
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let fields = |f: &[(&str, Type)], contrib: bool| {
        let mut m: BTreeMap<String, Type> = f.iter().map(|(k, t)| (k.to_string(), *t)).collect();
        if contrib {
            for feature in FEATURES {
                m.insert(format!("contrib_{feature}"), Type::Float);
            }
        }
        m
    };
    let device = tags(&["stream", "device"]);
    BTreeMap::from([
        (
            "reading",
            Measurement {
                tags: device.clone(),
                fields: FEATURES
                    .iter()
                    .map(|f| (f.to_string(), Type::Float))
                    .collect(),
            },
        ),
        (
            "forecast",
            Measurement {
                tags: tags(&["stream", "device", "field", "horizon"]),
                fields: fields(
                    &[
                        ("yhat", Type::Float),
                        ("yhat_lower", Type::Float),
                        ("yhat_upper", Type::Float),
                        ("model", Type::Str),
                    ],
                    false,
                ),
            },
        ),
        (
            "anomaly",
            Measurement {
                tags: device.clone(),
                fields: fields(
                    &[
                        ("score", Type::Float),
                        ("forecast_score", Type::Float),
                        ("deviation_score", Type::Float),
                        ("likelihood", Type::Float),
                        ("over_line", Type::Bool),
                        ("is_anomaly", Type::Bool),
                        ("top_field", Type::Str),
                        ("model", Type::Str),
                    ],
                    true,
                ),
            },
        ),
        (
            "anomaly_event",
            Measurement {
                tags: tags(&["stream", "device", "kind"]),
                fields: fields(
                    &[
                        ("active", Type::Bool),
                        ("start", Type::Int),
                        ("end", Type::Int),
                        ("duration_s", Type::Float),
                        ("peak_score", Type::Float),
                        ("top_fields", Type::Str),
                        ("model", Type::Str),
                        // An operator's verdict (`sensorcast label`), written onto the point.
                        ("verdict", Type::Str),
                        ("labelled_by", Type::Str),
                        ("label_note", Type::Str),
                        ("labelled_at", Type::Int),
                    ],
                    true,
                ),
            },
        ),
    ])
}

// ---------------------------------------------------------------------------------------------
// The dashboard's queries.

#[derive(Debug, Clone)]
enum Place {
    /// A panel target: panel title and refId.
    Panel(String, String),
    /// A template variable.
    Variable(String),
    /// An annotation query.
    Annotation(String),
}

#[derive(Debug, Clone)]
struct Query {
    place: Place,
    text: String,
}

struct Dashboard {
    json: Value,
    influxql: Vec<Query>,
    promql: Vec<(String, String)>,
}

fn uid(ds: &Value) -> Option<&str> {
    ds.get("uid").and_then(Value::as_str)
}

fn load_dashboard() -> Dashboard {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    let json: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut d = Dashboard {
        json,
        influxql: Vec::new(),
        promql: Vec::new(),
    };
    let panels = d.json["panels"].as_array().expect("panels").clone();
    collect_panels(&panels, &mut d);
    for v in d.json["templating"]["list"].as_array().expect("templating") {
        let name = v["name"].as_str().expect("variable name").to_string();
        if v["type"] == "query" {
            assert_eq!(
                uid(&v["datasource"]),
                Some(INFLUX_UID),
                "variable {name}: on the InfluxDB datasource"
            );
            let q = match &v["query"] {
                Value::String(s) => s.clone(),
                other => other["query"].as_str().expect("query").to_string(),
            };
            d.influxql.push(Query {
                place: Place::Variable(name),
                text: q,
            });
        }
    }
    for a in d.json["annotations"]["list"]
        .as_array()
        .expect("annotations")
    {
        if a["builtIn"] == 1 {
            continue;
        }
        let name = a["name"].as_str().expect("annotation name").to_string();
        assert_eq!(uid(&a["datasource"]), Some(INFLUX_UID), "annotation {name}");
        assert_eq!(a["rawQuery"], true, "annotation {name}: raw InfluxQL");
        d.influxql.push(Query {
            place: Place::Annotation(name),
            text: a["query"].as_str().expect("annotation query").to_string(),
        });
    }
    d
}

fn collect_panels(panels: &[Value], d: &mut Dashboard) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("").to_string();
        if p["type"] == "row" {
            collect_panels(p["panels"].as_array().map_or(&[][..], |v| v), d);
            continue;
        }
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let ref_id = t["refId"].as_str().expect("refId").to_string();
            let ds = if t.get("datasource").is_some() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            match uid(ds) {
                Some(INFLUX_UID) => {
                    assert_eq!(t["rawQuery"], true, "{title} {ref_id}: raw InfluxQL");
                    d.influxql.push(Query {
                        place: Place::Panel(title.clone(), ref_id),
                        text: t["query"].as_str().expect("query").to_string(),
                    });
                }
                Some(PROM_UID) => d.promql.push((
                    format!("{title} {ref_id}"),
                    t["expr"].as_str().expect("expr").to_string(),
                )),
                other => panic!("{title} {ref_id}: unknown datasource {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small InfluxQL tokenizer, enough to name what a query reads.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `"identifier"`.
    Quoted(String),
    /// `/regex/`.
    Regex(String),
    /// `'string'`.
    Str(String),
    /// A bare word (keyword, function, `$variable`, `time`).
    Word(String),
    Num(String),
    Punct(String),
}

fn tokenize(q: &str) -> Vec<Tok> {
    let c: Vec<char> = q.chars().collect();
    let mut out: Vec<Tok> = Vec::new();
    let mut i = 0;
    let until = |i: &mut usize, end: char| {
        let mut s = String::new();
        *i += 1;
        while *i < c.len() && c[*i] != end {
            if c[*i] == '\\' && *i + 1 < c.len() {
                s.push(c[*i]);
                *i += 1;
            }
            s.push(c[*i]);
            *i += 1;
        }
        assert!(*i < c.len(), "unterminated {end} in {q}");
        *i += 1;
        s
    };
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' {
            out.push(Tok::Quoted(until(&mut i, '"')));
        } else if ch == '\'' {
            out.push(Tok::Str(until(&mut i, '\'')));
        } else if ch == '/'
            && matches!(out.last(), None | Some(Tok::Punct(_)))
            && !matches!(out.last(), Some(Tok::Punct(p)) if p == ")")
        {
            // After an operator, `(` or `,`: a regex literal; after an operand: division.
            out.push(Tok::Regex(until(&mut i, '/')));
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == '$' {
            let s: String = c[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == '$')
                .collect();
            i += s.chars().count();
            out.push(Tok::Word(s));
        } else if ch.is_ascii_digit() || ch == '.' {
            let s: String = c[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '.')
                .collect();
            i += s.chars().count();
            out.push(Tok::Num(s));
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if ["=~", "!~", "!=", "<=", ">=", "<>"].contains(&two.as_str()) {
                out.push(Tok::Punct(two));
                i += 2;
            } else {
                out.push(Tok::Punct(ch.to_string()));
                i += 1;
            }
        }
    }
    out
}

fn is_word(t: &Tok, w: &str) -> bool {
    matches!(t, Tok::Word(s) if s.eq_ignore_ascii_case(w))
}

/// Fields a `/regex/` field key selects (only `^literal` / `^literal$` prefixes are used).
fn regex_fields<'a>(re: &str, m: &'a Measurement) -> Vec<&'a String> {
    let body = re
        .strip_prefix('^')
        .unwrap_or_else(|| panic!("field regex /{re}/: anchor it with ^"));
    let (lit, exact) = match body.strip_suffix('$') {
        Some(l) => (l, true),
        None => (body, false),
    };
    assert!(
        lit.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "field regex /{re}/: only literal prefixes are checked"
    );
    m.fields
        .keys()
        .filter(|f| if exact { *f == lit } else { f.starts_with(lit) })
        .collect()
}

/// Asserts that a query names only measurements, tags and fields the sink writes, and
/// aggregates only fields of a type the function takes. Returns the measurement.
fn check_names(q: &Query, schema: &BTreeMap<&'static str, Measurement>) -> String {
    let what = format!("{:?}: {}", q.place, q.text);
    // `"$field"` is a feature name (the values of the forecast's `field` tag).
    let toks = tokenize(&q.text.replace("$field", FEATURES[0]));
    let from = toks
        .iter()
        .position(|t| is_word(t, "FROM"))
        .unwrap_or_else(|| panic!("no FROM: {what}"));
    let Some(Tok::Quoted(name)) = toks.get(from + 1) else {
        panic!("FROM \"measurement\" expected: {what}");
    };
    let m = schema
        .get(name.as_str())
        .unwrap_or_else(|| panic!("measurement {name:?} is not written by the sink: {what}"));
    let tag = |t: &str, ctx: &str| {
        assert!(
            m.tags.contains(t),
            "{ctx}: {t:?} is no tag of {name} (tags: {:?}): {what}",
            m.tags
        );
    };
    let field = |f: &str| -> Type {
        *m.fields
            .get(f)
            .unwrap_or_else(|| panic!("{f:?} is no field of {name}: {what}"))
    };
    let clause = |kw: &[&str]| {
        (0..toks.len()).find(|&i| {
            kw.iter()
                .enumerate()
                .all(|(k, w)| toks.get(i + k).is_some_and(|t| is_word(t, w)))
        })
    };
    let where_at = clause(&["WHERE"]);
    let group_at = clause(&["GROUP", "BY"]);
    let end_of_where = group_at.unwrap_or(toks.len());
    if is_word(&toks[0], "SHOW") {
        assert!(
            toks[..from]
                .iter()
                .zip(["SHOW", "TAG", "VALUES"])
                .all(|(t, w)| is_word(t, w)),
            "only SHOW TAG VALUES is used: {what}"
        );
        let key = clause(&["WITH", "KEY"]).unwrap_or_else(|| panic!("WITH KEY: {what}"));
        let Some(Tok::Quoted(k)) = toks.get(key + 3) else {
            panic!("WITH KEY = \"tag\" expected: {what}");
        };
        tag(k, "WITH KEY");
    } else {
        assert!(is_word(&toks[0], "SELECT"), "SELECT or SHOW: {what}");
        let sel = &toks[1..from];
        let mut fields_read = 0;
        for (i, t) in sel.iter().enumerate() {
            let prev = if i > 0 { sel.get(i - 1) } else { None };
            if prev.is_some_and(|p| is_word(p, "AS")) {
                continue; // an alias
            }
            let func = if i >= 2 && sel[i - 1] == Tok::Punct("(".into()) {
                match &sel[i - 2] {
                    Tok::Word(f) => Some(f.to_ascii_lowercase()),
                    _ => None,
                }
            } else {
                None
            };
            let types: Vec<(String, Type)> = match t {
                // InfluxQL returns a tag beside the fields a query reads, outside functions.
                Tok::Quoted(k) if func.is_none() && m.tags.contains(k) => continue,
                Tok::Quoted(f) => vec![(f.clone(), field(f))],
                Tok::Regex(re) => {
                    let matched = regex_fields(re, m);
                    assert!(
                        !matched.is_empty(),
                        "/{re}/ matches no field of {name}: {what}"
                    );
                    matched.into_iter().map(|f| (f.clone(), field(f))).collect()
                }
                _ => continue,
            };
            fields_read += 1;
            for (f, ty) in types {
                if let Some(func) = &func {
                    let any_type = ["count", "first", "last", "distinct", "mode"];
                    assert!(
                        any_type.contains(&func.as_str()) || matches!(ty, Type::Float | Type::Int),
                        "{func}({f:?}): {f} is {ty:?}, InfluxQL cannot take its {func}: {what}"
                    );
                }
            }
        }
        assert!(fields_read > 0, "the query reads no field: {what}");
    }
    if let Some(w) = where_at {
        let cond = &toks[w + 1..end_of_where];
        for (i, t) in cond.iter().enumerate() {
            if let Tok::Quoted(k) = t {
                let op = cond.get(i + 1);
                assert!(
                    matches!(op, Some(Tok::Punct(_))),
                    "{k:?} without an operator: {what}"
                );
                if matches!(op, Some(Tok::Punct(o)) if o == "=~" || o == "!~") {
                    tag(k, "WHERE regex");
                } else if !m.tags.contains(k) {
                    field(k);
                }
            }
        }
    }
    if let Some(g) = group_at {
        for t in &toks[g + 2..] {
            if let Tok::Quoted(k) = t {
                tag(k, "GROUP BY");
            }
        }
    }
    name.clone()
}

// ---------------------------------------------------------------------------------------------
// Grafana's variable interpolation.

/// Regex-escapes a value the way Grafana does for `/^$x$/` (and `/` for the regex literal).
fn regex_escape(v: &str) -> String {
    let mut s = String::new();
    for ch in v.chars() {
        if r"\^$.|?*+()[]{}/-".contains(ch) {
            s.push('\\');
        }
        s.push(ch);
    }
    s
}

struct Vars {
    values: BTreeMap<String, String>,
    time_filter: String,
}

impl Vars {
    fn interpolate(&self, q: &str) -> String {
        let mut s = q
            .replace("$timeFilter", &self.time_filter)
            .replace("$__interval", INTERVAL);
        // Longest names first, so no name is replaced inside a longer one.
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for n in names {
            let v = &self.values[n];
            s = s.replace(&format!("/^${n}$/"), &format!("/^{}$/", regex_escape(v)));
            s = s.replace(
                &format!("/^${{{n}}}$/"),
                &format!("/^{}$/", regex_escape(v)),
            );
            s = s
                .replace(&format!("${{{n}}}"), v)
                .replace(&format!("${n}"), v);
        }
        assert!(
            !s.char_indices().any(|(i, c)| c == '$'
                && s[i + 1..]
                    .starts_with(|n: char| n.is_ascii_alphabetic() || n == '_' || n == '{')),
            "a variable the test does not know, or one defined after its use: {s}"
        );
        s
    }
}

// ---------------------------------------------------------------------------------------------
// PromQL metric names and the exposition.

/// Metric names a PromQL expression selects.
fn promql_metrics(expr: &str) -> Vec<String> {
    // Drop label matchers, range selectors, strings and `by (...)`/`without (...)` lists.
    let mut s = String::new();
    let mut depth: Option<char> = None;
    for ch in expr.chars() {
        match (depth, ch) {
            (None, '{') => depth = Some('}'),
            (None, '[') => depth = Some(']'),
            (None, '"') => depth = Some('"'),
            (Some(end), c) if c == end => depth = None,
            (Some(_), _) => {}
            (None, c) => s.push(c),
        }
    }
    let mut words: Vec<(String, char)> = Vec::new();
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_ascii_alphabetic() || c[i] == '_' || c[i] == ':' {
            let w: String = c[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == ':')
                .collect();
            i += w.len();
            let next = c[i..]
                .iter()
                .find(|c| !c.is_whitespace())
                .copied()
                .unwrap_or(' ');
            words.push((w, next));
        } else if c[i].is_ascii_digit() || c[i] == '.' {
            // A number (0.99, 1e3): skip it whole.
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    let keywords = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ];
    let grouping = ["by", "without", "on", "ignoring"];
    let mut out = Vec::new();
    let mut skip_list = false;
    for (j, (w, next)) in words.iter().enumerate() {
        if skip_list {
            // Inside `by (a, b)`: label names up to the closing parenthesis.
            if *next == ')' {
                skip_list = false;
            }
            continue;
        }
        if grouping.contains(&w.as_str()) {
            skip_list = *next == '(';
            continue;
        }
        let aggregation = words
            .get(j + 1)
            .is_some_and(|(n, _)| n == "by" || n == "without")
            && next.is_ascii_alphabetic();
        if *next == '(' || aggregation || keywords.contains(&w.as_str()) {
            continue; // a function or an aggregation
        }
        out.push(w.clone());
    }
    out
}

/// Every sample name an exposition can hold: its samples, and the samples each `# TYPE`
/// declares (a family without label sets yet has no samples but is exported).
fn exported_metrics(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut names = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, ty) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(family.to_string(), ty.to_string());
            let suffixes: &[&str] = match ty {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{family}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| *c != '{' && *c != ' ')
                .collect();
            names.insert(name);
        }
    }
    (names, types)
}

/// Asserts that every Prometheus expression names only metrics `/metrics` exports, histograms
/// through their `_bucket` series.
fn check_promql(d: &Dashboard, exposition: &str) {
    let (exported, types) = exported_metrics(exposition);
    assert!(
        exported.contains("sensorcast_points_written_total"),
        "not sensorcast's exposition: {exposition}"
    );
    assert!(!d.promql.is_empty(), "no Prometheus panels");
    for (place, expr) in &d.promql {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for n in names {
            assert!(
                exported.contains(&n),
                "{place}: {n} is not exported by /metrics ({expr}); exported: {exported:?}"
            );
            if let Some(base) = n.strip_suffix("_bucket") {
                assert_eq!(
                    types.get(base).map(String::as_str),
                    Some("histogram"),
                    "{place}: {n}"
                );
                assert!(expr.contains("histogram_quantile"), "{place}: {expr}");
            }
            if n.ends_with("_total") || n.ends_with("_bucket") {
                assert!(
                    expr.contains(&format!("rate({n}")) || expr.contains(&format!("increase({n}")),
                    "{place}: counter {n} outside rate(): {expr}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// What the dashboard's structure and provisioning promise, and the names its queries use;
/// needs no server.
fn check_static(d: &Dashboard) {
    let j = &d.json;
    assert_eq!(j["uid"], "sensorcast");
    let schema_version = j["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema_version), "{schema_version}");
    let vars: BTreeMap<&str, &Value> = j["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().expect("name"), v))
        .collect();
    for v in ["stream", "device", "field", "horizon", "threshold"] {
        assert!(vars.contains_key(v), "variable {v}");
    }
    assert_eq!(vars["horizon"]["current"]["value"], "1");
    // The score threshold: 1 − anomaly.false_alarm_rate.
    let rate = sensorcast::config::AnomalyConfig::default().false_alarm_rate;
    let threshold: f64 = vars["threshold"]["current"]["value"]
        .as_str()
        .expect("threshold")
        .parse()
        .expect("a number");
    assert!(
        (threshold - (1.0 - rate)).abs() < 1e-12,
        "{threshold} vs 1 − {rate}"
    );
    // Panel titles by row.
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut row = String::new();
    for p in j["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("").to_string();
        if p["type"] == "row" {
            row = title
                .split(':')
                .next()
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string();
        } else {
            rows.entry(row.clone()).or_default().push(title);
        }
    }
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Device", "Fleet", "Service"],
        "{rows:?}"
    );
    // The ranked table sorts by likelihood, highest first.
    let ranked = j["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Devices ranked by anomaly likelihood")
        .expect("ranked table");
    assert_eq!(
        ranked["options"]["sortBy"][0],
        serde_json::json!({"displayName": "likelihood", "desc": true})
    );
    // The band: yhat_upper fills down to yhat_lower.
    let text = serde_json::to_string(&j["panels"]).expect("JSON");
    assert!(
        text.contains(r#"{"id":"custom.fillBelowTo","value":"yhat_lower"}"#),
        "band"
    );
    // Provisioning: the uids the panels use, the provider's folder.
    let ds = std::fs::read_to_string(DATASOURCES).expect("datasources");
    for needle in [
        "uid: sensorcast-influxdb",
        "type: influxdb",
        "url: ${INFLUXDB_URL}",
        "dbName: ${INFLUXDB_DB}",
        "uid: sensorcast-prometheus",
        "type: prometheus",
        "url: ${PROMETHEUS_URL}",
        "httpHeaderName1: Authorization",
        "httpHeaderValue1: Token ${INFLUXDB_TOKEN}",
    ] {
        assert!(ds.contains(needle), "datasources: {needle}");
    }
    let provider = std::fs::read_to_string(PROVIDER).expect("provider");
    assert!(provider.contains("path: /var/lib/grafana/dashboards/sensorcast"));
    // Every InfluxQL query names only what the sink writes.
    let schema = schema();
    let mut measurements = BTreeSet::new();
    for q in &d.influxql {
        measurements.insert(check_names(q, &schema));
    }
    assert_eq!(
        measurements,
        schema.keys().map(|m| m.to_string()).collect(),
        "every measurement has a panel"
    );
}

#[test]
fn the_dashboard_names_only_what_sensorcast_writes_and_exports() {
    let d = load_dashboard();
    check_static(&d);
    // The metrics the registry declares (also without samples): the live check is below.
    check_promql(&d, &sensorcast::telemetry::Metrics::new().render());
}

/// Columns (and series count, `None`: one per device) each InfluxQL panel query and the
/// annotation must answer with; queries on `anomaly_event` may answer with no series (the
/// simulated data need not raise an alarm) but must not fail.
fn expected_columns(place: &Place) -> Option<(Vec<String>, Option<usize>)> {
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut features: Vec<&str> = FEATURES.to_vec();
    features.sort_unstable();
    let contrib = |f: &str| {
        let mut c = vec!["time".to_string()];
        c.extend(features.iter().map(|x| format!("{f}_contrib_{x}")));
        c
    };
    Some(match place {
        Place::Panel(t, r) => match (t.as_str(), r.as_str()) {
            ("Actual vs forecast: $field, step $horizon", "A") => {
                (cols(&["time", "actual"]), Some(1))
            }
            ("Actual vs forecast: $field, step $horizon", "B") => {
                (cols(&["time", "yhat", "yhat_lower", "yhat_upper"]), Some(1))
            }
            ("Anomaly score", "A") => (
                cols(&[
                    "time",
                    "score",
                    "forecast_score",
                    "deviation_score",
                    "likelihood",
                ]),
                Some(1),
            ),
            ("Anomaly score", "B") => (cols(&["time", "threshold"]), Some(1)),
            ("Top features (contributions)", "A") => (contrib("mean"), Some(1)),
            ("Latest contributions", "A") => (contrib("last"), Some(1)),
            ("Alarms of the device", "A") => (
                cols(&[
                    "time",
                    "active",
                    "kind",
                    "peak_score",
                    "duration_s",
                    "top_fields",
                    "verdict",
                    "labelled_by",
                ]),
                Some(1),
            ),
            ("Devices ranked by anomaly likelihood", "A") => {
                (cols(&["time", "likelihood", "score", "top_field"]), None)
            }
            ("Alarms per device", "A") => (cols(&["time", "alarms"]), None),
            ("Anomaly score by device", "A") => (cols(&["time", "score"]), None),
            _ => return None,
        },
        Place::Annotation(n) if n == "Alarms" => (
            cols(&["time", "peak_score", "top_fields", "duration_s", "end_ms"]),
            Some(1),
        ),
        _ => return None,
    })
}

fn f64s(row: &Value, cols: &[&str], columns: &[String]) -> Vec<f64> {
    cols.iter()
        .map(|c| {
            let i = columns.iter().position(|x| x == c).expect("column");
            row[i].as_f64().unwrap_or_else(|| panic!("{c}: {row}"))
        })
        .collect()
}

#[test]
fn every_dashboard_query_runs_against_what_serve_wrote() {
    let d = load_dashboard();
    check_static(&d);
    let schema = schema();

    let brokers = brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx::start();
    let (topic, group) = (unique("dash"), unique("g-dash"));
    create_topics(&brokers, &[(&topic, 2)]);
    let stream = "dashpumps";
    let streams = [Stream {
        name: stream,
        topic: &topic,
        format: "json",
    }];
    // An operator's verdict on pump-000 (the device the panels show), so that the alarm
    // table's verdict columns exist.
    let labels = dir.path().join("labels.toml");
    std::fs::write(
        &labels,
        format!(
            "[[label]]\nstream = \"{stream}\"\ndevice = \"pump-000\"\nat = \"{}\"\nuntil = \"{}\"\nverdict = \"false\"\nby = \"ops\"\nrecorded_at = \"{}\"\n",
            now_rfc3339(-90),
            now_rfc3339(-80),
            now_rfc3339(0)
        ),
    )
    .expect("labels");
    let extra = format!("\n[anomaly]\nlabels_file = \"{}\"\n", labels.display());
    let (cfg, port) = setup(dir.path(), &brokers, &influx, &group, &streams, &extra);
    simulate(
        &brokers,
        &topic,
        "json",
        DEVICES,
        READINGS,
        &now_rfc3339(-60),
    );
    let serve = Serve::start(&cfg, dir.path(), port);
    let readings = DEVICES * READINGS;
    // Per reading: the reading, its forecasts (steps 1 and H) and the anomaly point.
    let points = readings * (2 + HORIZON * FEATURES.len());
    wait_until("all points written", Duration::from_secs(180), || {
        serve.metric("sensorcast_points_written_total") as usize >= points
    });
    wait_until("anomaly points visible", Duration::from_secs(30), || {
        influx.count("anomaly", "score") >= readings
    });
    assert_eq!(influx.count("anomaly", "score"), readings);

    // The schema the test checks names against is what InfluxDB holds.
    for (m, want) in &schema {
        let v = influx.query(&format!("SHOW FIELD KEYS FROM \"{m}\""));
        let Some(rows) = v["results"][0]["series"][0]["values"].as_array() else {
            assert_eq!(*m, "anomaly_event", "{m}: no fields in InfluxDB");
            continue;
        };
        for r in rows {
            let (f, ty) = (r[0].as_str().expect("key"), r[1].as_str().expect("type"));
            let expect = want
                .fields
                .get(f)
                .unwrap_or_else(|| panic!("{m}.{f} is written but not in the test's schema"));
            assert_eq!(ty, expect.influx(), "{m}.{f}");
        }
        if *m != "anomaly_event" {
            assert_eq!(rows.len(), want.fields.len(), "{m}: fields {rows:?}");
        }
        let v = influx.query(&format!("SHOW TAG KEYS FROM \"{m}\""));
        if let Some(rows) = v["results"][0]["series"][0]["values"].as_array() {
            let tags: BTreeSet<String> = rows
                .iter()
                .map(|r| r[0].as_str().expect("tag").to_string())
                .collect();
            assert_eq!(tags, want.tags, "{m}: tags");
        }
    }

    // Prometheus: every metric the dashboard uses is on the live /metrics.
    let (status, exposition) = http("GET", &serve.http, "/metrics", "").expect("GET /metrics");
    assert_eq!(status, 200);
    check_promql(&d, &exposition);

    // Template variables, in dashboard order (each may use the ones before it).
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut vars = Vars {
        values: BTreeMap::new(),
        time_filter: format!(
            "time >= {}ms and time <= {}ms",
            now_ms - 3_600_000,
            now_ms + 3_600_000
        ),
    };
    let templating = d.json["templating"]["list"].as_array().expect("templating");
    let mut options: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in templating {
        let name = v["name"].as_str().expect("name").to_string();
        let current = v["current"]["value"].as_str().unwrap_or("").to_string();
        if v["type"] != "query" {
            assert!(!current.is_empty(), "{name}: a default value");
            vars.values.insert(name, current);
            continue;
        }
        let q = d
            .influxql
            .iter()
            .find(|q| matches!(&q.place, Place::Variable(n) if *n == name))
            .expect("variable query");
        let text = vars.interpolate(&q.text);
        let res = influx.query(&text);
        assert!(res["results"][0].get("error").is_none(), "{text}: {res}");
        let values: BTreeSet<String> = res["results"][0]["series"][0]["values"]
            .as_array()
            .unwrap_or_else(|| panic!("variable {name}: no values from {text}: {res}"))
            .iter()
            .map(|r| r[1].as_str().expect("tag value").to_string())
            .collect();
        println!("variable {name}: {text} → {values:?}");
        let pick = if current.is_empty() {
            values.iter().next().expect("a value").clone()
        } else {
            assert!(
                values.contains(&current),
                "{name}: default {current:?} in {values:?}"
            );
            current
        };
        vars.values.insert(name.clone(), pick);
        options.insert(name, values);
    }
    assert_eq!(options["stream"], BTreeSet::from([stream.to_string()]));
    assert_eq!(options["device"].len(), DEVICES, "{:?}", options["device"]);
    assert_eq!(
        options["field"],
        FEATURES.iter().map(|f| f.to_string()).collect()
    );
    assert_eq!(
        options["horizon"],
        BTreeSet::from(["1".to_string(), HORIZON.to_string()])
    );
    println!("variables: {:?}", vars.values);

    // Every panel and annotation query: no error, the series and columns the panel draws.
    let mut ran = 0;
    for q in &d.influxql {
        if matches!(q.place, Place::Variable(_)) {
            continue;
        }
        let measurement = check_names(q, &schema);
        let (columns, series_count) = expected_columns(&q.place)
            .unwrap_or_else(|| panic!("{:?}: add what it answers to expected_columns", q.place));
        let text = vars.interpolate(&q.text);
        let res = influx.query(&text);
        let r = &res["results"][0];
        assert!(r.get("error").is_none(), "{:?}: {text}: {res}", q.place);
        ran += 1;
        let series = r["series"].as_array().cloned().unwrap_or_default();
        println!("{:?}: {} series — {text}", q.place, series.len());
        if measurement == "anomaly_event" {
            // Alarms only occur when the data has anomalies: no series is fine, an error not.
            for s in &series {
                let got: Vec<String> =
                    serde_json::from_value(s["columns"].clone()).expect("columns");
                assert_eq!(got, columns, "{:?}", q.place);
            }
            continue;
        }
        assert_eq!(
            series.len(),
            series_count.unwrap_or(DEVICES),
            "{:?}: {text}: {res}",
            q.place
        );
        let mut devices = BTreeSet::new();
        for s in &series {
            let got: Vec<String> = serde_json::from_value(s["columns"].clone()).expect("columns");
            assert_eq!(got, columns, "{:?}: {text}", q.place);
            let rows = s["values"].as_array().expect("values");
            assert!(!rows.is_empty(), "{:?}: no rows", q.place);
            if let Some(dev) = s["tags"]["device"].as_str() {
                devices.insert(dev.to_string());
            }
            for row in rows {
                match got.iter().skip(1).map(String::as_str).collect::<Vec<_>>()[..] {
                    ["yhat", "yhat_lower", "yhat_upper"] => {
                        let v = f64s(row, &["yhat", "yhat_lower", "yhat_upper"], &got);
                        assert!(v[1] <= v[0] && v[0] <= v[2], "band around yhat: {row}");
                    }
                    ["threshold"] => {
                        let v = f64s(row, &["threshold"], &got)[0];
                        let want: f64 = vars.values["threshold"].parse().expect("threshold");
                        assert!((v - want).abs() < 1e-9, "{row}");
                    }
                    _ => {}
                }
                for c in ["score", "likelihood", "forecast_score", "deviation_score"] {
                    if got.iter().any(|x| x == c) {
                        let v = f64s(row, &[c], &got)[0];
                        assert!((0.0..=1.0).contains(&v), "{c} in [0, 1]: {row}");
                    }
                }
            }
        }
        if series_count.is_none() {
            assert_eq!(
                devices, options["device"],
                "{:?}: one series per device",
                q.place
            );
        }
    }
    assert!(ran >= 10, "{ran} queries");

    assert_eq!(serve.terminate(), 0);
}

#[test]
fn the_query_parsers_find_the_names() {
    assert_eq!(
        promql_metrics(
            "histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{job=\"x\"}[5m])))"
        ),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        promql_metrics("max by (topic, partition) (lag) / on (topic) group_left sum(b_total)"),
        ["lag", "b_total"]
    );
    let toks =
        tokenize(r#"SELECT "end" / 1000000 AS "e", mean(/^c_/) FROM "m" WHERE "d" =~ /^a\/b$/"#);
    assert!(toks.contains(&Tok::Punct("/".into())), "{toks:?}");
    assert!(toks.contains(&Tok::Regex("^c_".into())), "{toks:?}");
    assert!(toks.contains(&Tok::Regex(r"^a\/b$".into())), "{toks:?}");
}
