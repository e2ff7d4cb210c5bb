//! sensorcast: streaming LSTM forecasting and anomaly scoring for sensor fleets.
//!
//! The modules form layers; a module imports only from its own layer or the layers below it,
//! never from above, and no two modules import each other (`tests/layers.rs` checks both on
//! every test run). From the bottom:
//!
//! 1. [`time`], [`watched`]: event times and their text forms; files watched for edits.
//! 2. [`config`]: the configuration, each section validated on its own.
//! 3. [`decode`] (messages and files → readings), [`telemetry`] (metrics, health, logs),
//!    [`labels`] (operators' verdicts on alarms), [`synth`] (a synthetic fleet for the demo and
//!    the tests).
//! 4. [`engine`]: per-device LSTM state, forecasts, anomaly evidence and alarms.
//! 5. [`model`] (burn training, the registry, history), [`output`] (readings and results →
//!    points), [`state`] (checkpoints and their stores), [`kafka`] and [`influx`] (clients
//!    outside the pipeline: admin, probes, targets).
//! 6. [`serve`]: the pipeline, one stage after another — source, engine stage, sink — with
//!    model swaps and rebalances.
//! 7. [`tools`]: replay, demo, evaluations, benchmarks, the simulator, training's progress
//!    and report.
//! 8. [`commands`]: the subcommands' bodies, which only the binary uses.
pub mod commands;
pub mod config;
pub mod decode;
pub mod engine;
pub mod influx;
pub mod kafka;
pub mod labels;
pub mod model;
pub mod output;
pub mod serve;
pub mod state;
pub mod synth;
pub mod telemetry;
pub mod time;
pub mod tools;
pub mod watched;
