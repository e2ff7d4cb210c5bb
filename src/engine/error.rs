//! Why the engine refuses a model or a reading: its pieces do not fit together.

/// A model the engine refuses, and why (the message names the pieces that do not fit).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Layer, head or input widths that do not match each other or the features.
    #[error("{0}")]
    Shape(String),
    /// Normalisation statistics that are missing, not finite or not positive.
    #[error("{0}")]
    Normalisation(String),
    /// Anomaly calibration tables that do not match the features.
    #[error("{0}")]
    Calibration(String),
}

/// A reading whose shape does not fit the model.
#[derive(Debug, thiserror::Error)]
#[error(
    "reading {index} of the batch (device {device:?}) has {got} values, the model expects {want}"
)]
pub struct ShapeError {
    /// Position in the batch.
    pub index: usize,
    /// Device.
    pub device: String,
    /// Values found.
    pub got: usize,
    /// Features expected.
    pub want: usize,
}

/// Why readings could not be run through a new engine.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The engine refused the model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A batch does not fit the model.
    #[error(transparent)]
    Batch(#[from] ShapeError),
}

impl From<ModelError> for String {
    fn from(e: ModelError) -> String {
        e.to_string()
    }
}
