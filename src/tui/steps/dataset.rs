//! Step 1: the text to learn from.

use std::path::Path;

use super::{FieldDef, Report};
use crate::data::dataset::{Found, repaired_note, separated_note, wrapped_note};
use crate::inspect::human_bytes;
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "dataset.path",
        label: "Text file or folder",
        help: "The text to learn from: a file (text, EPUB, .docx, .odt, RTF, HTML) or a folder searched recursively",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "dataset.glob",
        label: "File pattern",
        help: "Which files of a folder are read (default *.txt; e.g. *.md, *.epub, *.docx, *.odt, *.rtf, *.htm*)",
        choices: &[
            "*.txt", "*.epub", "*.docx", "*.odt", "*.rtf", "*.htm*", "*.md", "*",
        ],
        lines: 1,
    },
    FieldDef {
        key: "dataset.unwrap",
        label: "Join wrapped lines",
        help: "yes: join the lines of hard-wrapped books (broken every ~70 characters) into paragraphs",
        choices: &["yes", "no"],
        lines: 1,
    },
];

/// Under this many bytes the guide warns that results will be poor.
pub const SMALL_DATASET: u64 = 8 * 1024 * 1024;

/// What a scan of the dataset found.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    pub files: usize,
    /// The text's size in UTF-8 (a UTF-16 file counts what it decodes to), the unit of the
    /// tokenizer's bytes per token.
    pub bytes: u64,
    /// The first [`SAMPLE_BYTES`] or so of text (whole files, then a cut at a line end),
    /// for measuring the model tokenizer's bytes per token.
    pub sample: String,
    /// What reading the files found: hard-wrapped files, stories, repaired characters.
    pub found: Found,
}

/// Size of the text sample kept for estimates.
pub const SAMPLE_BYTES: usize = 64 * 1024;

/// Scans the dataset and reads every file once as training reads it
/// ([`crate::data::read_dataset_text`], which also finds hard-wrapped files): errors name
/// an unreadable file, one that is not text, or a damaged or protected EPUB book or
/// document.
pub fn analyse(path: &str, glob: &str) -> Result<DatasetInfo, String> {
    let files = crate::data::dataset::scan(Path::new(path), glob).map_err(|e| format!("{e:#}"))?;
    let mut sample = String::new();
    let mut total = 0u64;
    let mut found = Found::default();
    for f in &files {
        let read = crate::data::read_dataset_text(&f.path, false).map_err(|e| format!("{e:#}"))?;
        found.add(&f.path, &read);
        let text = read.text;
        total += text.len() as u64;
        if sample.len() < SAMPLE_BYTES {
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
    }
    Ok(DatasetInfo {
        files: files.len(),
        bytes: total,
        sample,
        found,
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
    let unwrap = match parse_yes_no(app.value("dataset.unwrap")) {
        Ok(v) => v,
        Err(e) => {
            r.error("dataset.unwrap", e);
            None
        }
    };
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
            let joined = unwrap == Some(true);
            match wrapped_note(&d.found.wrapped, joined) {
                Some(note) if joined => r.info(note),
                Some(note) => r.warn(format!("{note}: set Join wrapped lines to yes")),
                None if joined => r.info("no file is hard-wrapped: there are no lines to join"),
                None => {}
            }
            if let Some(note) = separated_note(&d.found.separated) {
                r.info(note);
            }
            if let Some(note) = repaired_note(&d.found.repaired) {
                r.info(note);
            }
        }
    }
    r
}

/// A yes/no field: `None` when empty; `yes`, `no`, `true`, `false` (any case).
pub(crate) fn parse_yes_no(v: &str) -> Result<Option<bool>, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "yes" | "true" => Ok(Some(true)),
        "no" | "false" => Ok(Some(false)),
        _ => Err(format!("\"{}\": answer yes or no", v.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "Unicode" (UTF-16) file from Windows Notepad is a valid dataset; its size is what
    /// it decodes to in UTF-8 (the unit of the bytes-per-token estimate), not its own.
    #[test]
    fn utf16_files_count_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let text = "Zoë's café\nsecond line\n";
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        std::fs::write(dir.path().join("a.txt"), &utf16).unwrap();
        std::fs::write(dir.path().join("b.txt"), "plain\n").unwrap();
        let info = analyse(dir.path().to_str().unwrap(), "*.txt").unwrap();
        assert_eq!(info.files, 2);
        assert_eq!(info.bytes, (text.len() + "plain\n".len()) as u64);
        assert_eq!(info.sample, format!("{text}plain\n"));
        assert_eq!(info.found, Found::default());
    }

    /// Files whose text was decoded the wrong way before they were saved are named, with
    /// the characters put back; the size counts the text as it is read.
    #[test]
    fn mangled_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "Itâ€™s late.\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), "It’s late.\n").unwrap();
        let info = analyse(dir.path().to_str().unwrap(), "*.txt").unwrap();
        assert_eq!(info.bytes, 2 * "It’s late.\n".len() as u64);
        assert_eq!(
            repaired_note(&info.found.repaired).unwrap(),
            "1 file (a.txt) had text decoded the wrong way before it was saved (\"â€™\" for \"’\"): 1 character put back"
        );
    }

    /// Stories separated by `<|endoftext|>` are counted, in UTF-16 too; an HTML page's
    /// `<|endoftext|>` is its text, not a separator.
    #[test]
    fn separated_stories_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let stories = "One.\n<|endoftext|>\nTwo.\n<|endoftext|>\nThree.\n";
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(stories.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        std::fs::write(dir.path().join("a.txt"), &utf16).unwrap();
        std::fs::write(dir.path().join("b.txt"), "One.\n<|endoftext|>\nTwo.\n").unwrap();
        std::fs::write(
            dir.path().join("c.html"),
            "<p>The token &lt;|endoftext|&gt; ends a text.</p>",
        )
        .unwrap();
        let info = analyse(dir.path().to_str().unwrap(), "*").unwrap();
        assert_eq!(info.files, 3);
        assert!(info.found.repaired.is_empty());
        let counts: Vec<usize> = info.found.separated.iter().map(|s| s.1).collect();
        assert_eq!(counts, [3, 2]);
        assert_eq!(
            separated_note(&info.found.separated).unwrap(),
            "2 files (a.txt, b.txt) hold 5 stories separated by <|endoftext|>: each ends with the model's EOS token, as a file does"
        );
    }
}
