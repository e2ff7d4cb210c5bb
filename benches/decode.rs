//! Criterion benchmark of decoding one message: a typical JSON reading (string device id,
//! integer epoch, 8 features) and a typical line-protocol line as Telegraf writes it, by the
//! schema alone and through the decoder as `serve` calls it (routed by topic). Reports
//! messages per second; targets live here, never in timed tests.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensorcast::config::{Format, StreamConfig};
use sensorcast::decode::{Decoder, Schema};
use std::hint::black_box;

const FEATURES: [&str; 8] = [
    "vibration",
    "temp",
    "pressure",
    "flow",
    "current",
    "voltage",
    "rpm",
    "humidity",
];

const JSON: &[u8] = br#"{"device":"pump-0007","ts":1795748248123,"values":{"vibration":0.1234,"temp":71.31,"pressure":2.875,"flow":13.52,"current":4.017,"voltage":229.8,"rpm":1487,"humidity":41.25}}"#;

const LINE: &[u8] = b"pumps,device=pump-0007,site=plant-a vibration=0.1234,temp=71.31,pressure=2.875,flow=13.52,current=4.017,voltage=229.8,rpm=1487i,humidity=41.25 1795748248123000000";

fn decode(c: &mut Criterion) {
    let schema = Schema::new(
        FEATURES.iter().map(|f| f.to_string()).collect(),
        "device".into(),
    );
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("json_8_features", |b| {
        b.iter(|| schema.decode_json(None, black_box(JSON)).expect("json"))
    });
    group.bench_function("line_8_features", |b| {
        b.iter(|| schema.decode_line(None, black_box(LINE)).expect("line"))
    });
    // The path `serve` takes: the message routed by its topic to its stream's schema, its
    // size and its timestamp checked.
    let stream = |name: &str, format| StreamConfig {
        name: name.into(),
        topic: name.into(),
        format,
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        device_key: "device".into(),
        ..StreamConfig::default()
    };
    let decoder = Decoder::new(
        &[
            stream("pumps", Format::Json),
            stream("pumps-lp", Format::Line),
        ],
        1 << 20,
        i64::MAX / 2,
    );
    group.bench_function("decoder_json_8_features", |b| {
        b.iter(|| {
            decoder
                .decode(black_box("pumps"), None, Some(black_box(JSON)))
                .expect("json")
        })
    });
    group.bench_function("decoder_line_8_features", |b| {
        b.iter(|| {
            decoder
                .decode(black_box("pumps-lp"), None, Some(black_box(LINE)))
                .expect("line")
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
