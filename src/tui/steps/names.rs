//! Step 5: names, version and where the files go.

use std::path::Path;

use super::{FieldDef, Report};
use crate::config::validate::sanitize_stem;
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "output.name",
        label: "Name",
        help: "Name shown in KoboldAI's soft-prompt list (default: the dataset's name)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "output.author",
        label: "Author",
        help: "Your name or handle, stored in the export",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "output.description",
        label: "Description",
        help: "One line on what the prompt does and what it was trained on",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "output.version",
        label: "Version",
        help: "Version of this prompt (default 1); part of the file name",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "output.folder",
        label: "Output folder",
        help: "Where the .zip and the PEFT adapter go (default softprompts); created if needed",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "output.stem",
        label: "File name",
        help: "File name without extension (default: name-vVERSION, sanitised)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "continue_from",
        label: "Continue from",
        help: "Optional: a checkpoint, KoboldAI .zip, PEFT folder or .mtjsp to continue training",
        choices: &[],
        lines: 1,
    },
];

/// The file stem the run will use.
pub fn stem(app: &App) -> String {
    let s = app.value("output.stem").trim();
    if !s.is_empty() {
        return sanitize_stem(s);
    }
    let name = match app.value("output.name").trim() {
        "" => Path::new(app.value("dataset.path").trim())
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "softprompt".into()),
        n => n.to_string(),
    };
    let version = match app.value("output.version").trim() {
        "" => "1",
        v => v,
    };
    sanitize_stem(&format!("{name}-v{version}"))
}

pub fn folder(app: &App) -> String {
    match app.value("output.folder").trim() {
        "" => "softprompts".to_string(),
        f => f.to_string(),
    }
}

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    let s = app.value("output.stem").trim();
    if !s.is_empty() && sanitize_stem(s) != s {
        r.error(
            "output.stem",
            format!(
                "use only letters, digits, '-', '_' and '.' (e.g. {})",
                sanitize_stem(s)
            ),
        );
    }
    match app.folder_check() {
        None => r.info("the folder is checked when you leave the field"),
        Some(Err(e)) => r.error("output.folder", e.clone()),
        Some(Ok(())) => {}
    }
    let c = app.value("continue_from").trim();
    if !c.is_empty() && !Path::new(c).exists() {
        r.error("continue_from", format!("{c}: no such file or folder"));
    } else if !c.is_empty() {
        match app.continue_check() {
            Some(Ok(info)) => r.info(info.clone()),
            Some(Err(e)) => r.error("continue_from", e.clone()),
            None => r.info(
                "continue-from is checked against the model once the model (step 3) is known",
            ),
        }
    }
    let stem = stem(app);
    let zip = Path::new(&folder(app)).join(format!("{stem}.zip"));
    r.info(format!("exports: {} and {stem}-peft/", zip.display()));
    if zip.exists() {
        r.warn(format!(
            "{} exists and will be overwritten; change the version or file name to keep it",
            zip.display()
        ));
    }
    r
}

/// Reads a continue-from file and checks it against the model's embedding width: our
/// checkpoint (full resume) or a prompt (KoboldAI zip, PEFT adapter, npz `.mtjsp`).
pub fn check_continue(path: &Path, d_embed: usize) -> Result<String, String> {
    use crate::train::checkpoint::Checkpoint;
    if Checkpoint::is_checkpoint(path) {
        let c = Checkpoint::load(path).map_err(|e| format!("{e:#}"))?;
        if c.dim != d_embed {
            return Err(format!(
                "the checkpoint's prompt is {} wide but the model's embedding width is {d_embed}: it belongs to another model",
                c.dim
            ));
        }
        return Ok(format!(
            "resumes a run at step {} of {} ({} soft tokens); the run's settings must match it",
            c.step, c.total_steps, c.rows
        ));
    }
    crate::prompt::load_for_width(path, d_embed)
        .map(|p| {
            format!(
                "starts from this prompt: {} soft tokens (it sets the soft-token count)",
                p.rows
            )
        })
        .map_err(|e| format!("{e:#}"))
}
