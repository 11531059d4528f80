//! Step 2: the starter prompt the soft tokens are initialised from.

use std::path::Path;

use super::{FieldDef, Report};
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "prompt.text",
        label: "Starter text",
        help: "Starting text for the soft prompt, e.g. a passage in the style. Enter: new line · Tab: next field",
        choices: &[],
        lines: 5,
    },
    FieldDef {
        key: "prompt.file",
        label: "…or starter file",
        help: "A UTF-8 file holding the starter text instead (leave both empty to sample the vocabulary)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "prompt.init",
        label: "Initialisation",
        help: "text (from the starter), vocab_sample (random vocabulary rows, the default without a starter) or random",
        choices: &["text", "vocab_sample", "random"],
        lines: 1,
    },
];

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    let text = app.value("prompt.text");
    let file = app.value("prompt.file").trim();
    let init = app.value("prompt.init").trim();
    let starter = match (text.is_empty(), file.is_empty()) {
        (false, false) => {
            r.error("prompt.file", "give starter text or a file, not both");
            None
        }
        (false, true) => Some(text.to_string()),
        (true, false) => match crate::data::read_text(Path::new(file)) {
            Ok(s) => Some(s),
            Err(e) => {
                r.error("prompt.file", format!("{e:#}"));
                None
            }
        },
        (true, true) => None,
    };
    if starter.as_deref().is_some_and(|s| s.trim().is_empty()) {
        r.error(
            "prompt.text",
            "the starter is empty: write some text or clear it",
        );
    }
    match init {
        "" | "text" | "vocab_sample" | "random" => {}
        other => r.error(
            "prompt.init",
            format!("\"{other}\": use text, vocab_sample or random"),
        ),
    }
    if init == "text" && starter.is_none() && text.is_empty() && file.is_empty() {
        r.error("prompt.init", "text needs starter text or a starter file");
    }
    match &starter {
        None if text.is_empty() && file.is_empty() && (init.is_empty() || init == "vocab_sample") => r.info(
            "no starter: the soft tokens start as random rows of the model's vocabulary embeddings",
        ),
        None => {}
        Some(s) => match app.model_info().and_then(|m| m.as_ref().ok()) {
            Some(m) => match &m.tokenizer {
                Some(tok) => match tok.encode(s) {
                    Ok(ids) => r.info(format!(
                        "{} token(s) with {}'s tokenizer; repeated or cut to the soft-token count",
                        ids.len(),
                        m.id
                    )),
                    Err(e) => r.error("prompt.text", format!("cannot tokenize: {e:#}")),
                },
                None => r.info("the model has no tokenizer.json on disk yet: token count unknown"),
            },
            None => r.info("token count shown once the model (step 3) is known"),
        },
    }
    r
}
