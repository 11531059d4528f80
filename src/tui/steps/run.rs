//! Step 7: the summary, and Start.

use super::{FieldDef, Report, Step};
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[];

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    let invalid: Vec<&str> = Step::ALL[..6]
        .iter()
        .filter(|s| !s.check(app).errors.is_empty())
        .map(|s| s.title())
        .collect();
    if invalid.is_empty() {
        r.info("every step is valid: press Enter to start training");
    } else {
        r.warn(format!(
            "fix these steps first: {} (Enter jumps to the first problem)",
            invalid.join(", ")
        ));
    }
    r
}
