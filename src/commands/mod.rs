//! The subcommands' bodies behind `main` (one file each): they read input files with their
//! problems reported by file and line, train, retrain, label, replay and check the
//! configuration. The binary parses the command line and calls them.

pub mod bench;
pub mod check_config;
pub mod demo;
pub mod evaluate;
mod inputs;
pub mod label;
pub mod models;
pub mod replay;
pub mod retrain;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod train;

pub use check_config::{check_config, probe};
pub use inputs::{InputIssue, Inputs, read_inputs, report_issues};
pub use label::run_label;
pub use replay::run_replay;
pub use train::{run_train, run_train_from};

use crate::config::{Config, StreamConfig};
use crate::decode::{Reading, Schema, read_file};
use crate::model::registry::{ModelMeta, Registry};
use crate::model::train::{Trained, train};
use crate::output::PointFormat;
use crate::telemetry::init_logging;
use crate::time::format_ts;
use crate::tools::bench::BenchSpec;
use crate::tools::training::{TrainingProgress, validation_report};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Loads the config, starts logging as it says, and picks the stream.
pub(crate) fn setup(
    path: &std::path::Path,
    stream: Option<&str>,
) -> anyhow::Result<(Config, StreamConfig)> {
    let cfg = Config::load(Some(path))?;
    init_logging(Some(&cfg));
    let stream = cfg.stream(stream)?.clone();
    Ok((cfg, stream))
}

/// A time (RFC 3339) or a duration back from `until`, in ns since the epoch.
pub(crate) fn time_arg(text: &str, until: i64, key: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_nanos_opt().unwrap_or(i64::MAX));
    }
    let d: crate::config::HumanDuration = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{key} {text:?}: not an RFC 3339 time or a duration ({e})"))?;
    Ok(until.saturating_sub(d.as_nanos()))
}
