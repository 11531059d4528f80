//! Step 1: the text to learn from.

use std::path::Path;

use super::{FieldDef, Report};
use crate::inspect::human_bytes;
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "dataset.path",
        label: "Text file or folder",
        help: "The text to learn from: a UTF-8 file, or a folder searched recursively (e.g. data/novels)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "dataset.glob",
        label: "File pattern",
        help: "Which files of a folder are read (default *.txt; e.g. *.md)",
        choices: &["*.txt", "*.md", "*"],
        lines: 1,
    },
];

/// Under this many bytes the guide warns that results will be poor.
pub const SMALL_DATASET: u64 = 8 * 1024 * 1024;

/// What a scan of the dataset found.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    pub files: usize,
    pub bytes: u64,
    /// The first [`SAMPLE_BYTES`] or so of text (whole files, then a cut at a line end),
    /// for measuring the model tokenizer's bytes per token.
    pub sample: String,
}

/// Size of the text sample kept for estimates.
pub const SAMPLE_BYTES: usize = 64 * 1024;

/// Scans the dataset and reads every file once: errors name an unreadable or non-UTF-8 file.
pub fn analyse(path: &str, glob: &str) -> Result<DatasetInfo, String> {
    let files = crate::data::dataset::scan(Path::new(path), glob).map_err(|e| format!("{e:#}"))?;
    let mut sample = String::new();
    for f in &files {
        let bytes = std::fs::read(&f.path)
            .map_err(|e| format!("{}: cannot read ({e})", f.path.display()))?;
        match std::str::from_utf8(&bytes) {
            Err(e) => {
                return Err(format!(
                    "{}: not valid UTF-8 at byte offset {}",
                    f.path.display(),
                    e.valid_up_to()
                ));
            }
            Ok(text) if sample.len() < SAMPLE_BYTES => {
                let room = SAMPLE_BYTES - sample.len();
                let cut = if text.len() <= room {
                    text.len()
                } else {
                    text[..text.floor_char_boundary(room)]
                        .rfind('\n')
                        .map_or(text.floor_char_boundary(room), |i| i + 1)
                };
                sample.push_str(&text[..cut]);
            }
            Ok(_) => {}
        }
    }
    Ok(DatasetInfo {
        files: files.len(),
        bytes: files.iter().map(|f| f.size).sum(),
        sample,
    })
}

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    let path = app.value("dataset.path").trim();
    let glob = app.value("dataset.glob").trim();
    if !glob.is_empty()
        && let Err(e) = glob::Pattern::new(glob)
    {
        r.error("dataset.glob", format!("not a valid pattern ({e})"));
    }
    if path.is_empty() {
        r.error("dataset.path", "required: name a text file or a folder");
        return r;
    }
    match app.dataset_info() {
        None => r.info("checked when you leave the field"),
        Some(Err(e)) => r.error("dataset.path", e.clone()),
        Some(Ok(d)) => {
            r.info(format!(
                "{} file(s), {} in total",
                d.files,
                human_bytes(d.bytes as usize)
            ));
            if d.bytes < SMALL_DATASET {
                r.warn("under 8 MB of text: the guide recommends at least ~8 MB of well-written, thematically unified text");
            }
        }
    }
    r
}
