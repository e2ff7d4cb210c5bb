//! sensorcast: streaming LSTM forecasting and anomaly scoring for sensor fleets.
//!
//! Layout mirrors the data flow (docs/ARCHITECTURE.md §7): [`decode`] turns messages and files into
//! readings, [`engine`] steps per-device LSTM state and scores, [`model`] and [`train`] build
//! models with burn, [`registry`] versions them, [`output`] writes points.
pub mod cli;
pub mod config;
pub mod decode;
pub mod engine;
pub mod history;
pub mod influx;
pub mod kafka;
pub mod labels;
pub mod model;
pub mod output;
pub mod registry;
pub mod serve;
pub mod state;
pub mod synth;
pub mod telemetry;
pub mod time;
pub mod tools;
pub mod train;
pub mod watched;
