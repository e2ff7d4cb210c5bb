//! Input files read in order, with every skipped line reported by file and line.

use super::*;

/// A line of input that was skipped, with its location.
#[derive(Debug, Clone)]
pub struct InputIssue {
    /// File.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InputIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Readings of several files in order, with every skipped line.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Readings, each device's in strictly increasing time order.
    pub readings: Vec<Reading>,
    /// Source of each reading (parallel to `readings`).
    pub lines: Vec<(usize, usize)>,
    /// Skipped lines.
    pub issues: Vec<InputIssue>,
    /// Files, by index used in `lines`.
    pub files: Vec<PathBuf>,
}

/// Reads files in order. Lines that do not decode, and readings whose timestamp is not after
/// the same device's previous reading (duplicates and out-of-order lines), are skipped and
/// reported with file and line. A missing or empty file, or a bad CSV header, is an error.
pub fn read_inputs(paths: &[PathBuf], schema: &Schema) -> anyhow::Result<Inputs> {
    let mut out = Inputs::default();
    let mut last: HashMap<String, (i64, usize, usize)> = HashMap::new();
    for (fi, path) in paths.iter().enumerate() {
        let fr = read_file(path, schema)?;
        out.files.push(path.clone());
        for e in fr.errors {
            out.issues.push(InputIssue {
                path: e.path,
                line: e.line,
                message: format!("{} ({})", e.error, e.error.reason()),
            });
        }
        for (line, r) in fr.readings {
            if let Some(&(ts, pf, pl)) = last.get(&r.device)
                && r.ts <= ts
            {
                let what = if r.ts == ts {
                    "duplicate"
                } else {
                    "out-of-order"
                };
                out.issues.push(InputIssue {
                        path: path.clone(),
                        line,
                        message: format!(
                            "{what} timestamp {} for device {:?}: not after its previous reading at {}:{} ({}); skipped",
                            format_ts(r.ts),
                            r.device,
                            paths[pf].display(),
                            pl,
                            format_ts(ts)
                        ),
                    });
                continue;
            }
            last.insert(r.device.clone(), (r.ts, fi, line));
            out.readings.push(r);
            out.lines.push((fi, line));
        }
    }
    out.issues
        .sort_by(|a, b| a.path.cmp(&b.path).then(a.line.cmp(&b.line)));
    Ok(out)
}

/// Prints skipped lines to stderr (the first `limit`, then a count) and fails in strict mode.
pub fn report_issues(issues: &[InputIssue], strict: bool, limit: usize) -> anyhow::Result<()> {
    for i in issues.iter().take(limit) {
        eprintln!("warning: {i}");
    }
    if issues.len() > limit {
        eprintln!("warning: … and {} more skipped lines", issues.len() - limit);
    }
    if strict && !issues.is_empty() {
        bail!(
            "{} bad input lines (--strict); the first: {}",
            issues.len(),
            issues[0]
        );
    }
    Ok(())
}
