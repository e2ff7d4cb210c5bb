//! The offline tools: the demo, the evaluations (labelled CSV, SKAB) and their charts, the
//! fleet simulator, and the engine and state benchmarks. They drive the library the way
//! `serve` does, without Kafka or InfluxDB, and nothing below them imports them.

pub mod bench;
pub mod chart;
pub mod demo;
pub mod evaluate;
pub mod kernel_bench;
pub mod replay;
pub mod simulate;
pub mod state_bench;
pub mod training;
