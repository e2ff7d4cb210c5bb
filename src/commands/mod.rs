//! The subcommands' bodies behind `main` (one file each): they read input files with their
//! problems reported by file and line, train, retrain, label, replay and check the
//! configuration. The binary parses the command line and calls them.

mod check_config;
mod inputs;
mod label;
mod replay;
mod retrain;
mod train;

pub use check_config::{check_config, probe};
pub use inputs::{InputIssue, Inputs, read_inputs, report_issues};
pub use label::run_label;
pub use replay::{OutputKind, ReplaySummary, load_model, replay_readings, run_replay};
pub use retrain::{read_verdicts, run_retrain};
pub use train::{
    TrainingProgress, run_train, run_train_from_influxdb, run_train_from_kafka, validation_report,
};

use crate::config::{Config, StreamConfig};
use crate::decode::{Reading, Schema, read_file};
use crate::engine::detect::Edge;
use crate::engine::{BatchOutput, Engine, EngineSettings, Outcome};
use crate::model::registry::{ModelMeta, Registry};
use crate::model::train::{ProgressEvent, Trained, train};
use crate::output::PointFormat;
use crate::time::format_ts;
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
