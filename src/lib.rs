//! sensorcast: streaming LSTM forecasting and anomaly scoring for sensor fleets.
//!
//! Layout mirrors the data flow (docs/ARCHITECTURE.md §7): [`decode`] turns messages and files into
//! readings, [`engine`] steps per-device LSTM state and scores, [`model`] and [`train`] build
//! models with burn, [`registry`] versions them, [`output`] writes points.
pub mod bench;
pub mod chart;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod evaluate;
pub mod history;
pub mod influx;
pub mod kafka;
pub mod labels;
pub mod model;
pub mod output;
pub mod registry;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod synth;
pub mod telemetry;
pub mod time;
pub mod train;
pub mod watched;
