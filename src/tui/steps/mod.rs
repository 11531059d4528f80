//! The seven steps of the guide, one file each: fields, one-line help, validation.

pub mod dataset;
pub mod device;
pub mod model;
pub mod names;
pub mod parameters;
pub mod prompt;
pub mod run;

use super::app::App;

/// One input field: the RunConfig key it sets, its label, a one-line help (what it does,
/// typical value) and optional quick picks (cycled with ↑ / ↓).
#[derive(Debug, Clone, Copy)]
pub struct FieldDef {
    pub key: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub choices: &'static [&'static str],
    /// Rows of the input: 1 for a line; more for a multi-line editor (Enter breaks the line).
    pub lines: u16,
}

/// What a step's check found: errors per field, warnings and information lines.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub errors: Vec<(&'static str, String)>,
    pub warnings: Vec<String>,
    pub info: Vec<String>,
}

impl Report {
    pub fn error(&mut self, key: &'static str, msg: impl Into<String>) {
        self.errors.push((key, msg.into()));
    }
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
    pub fn info(&mut self, msg: impl Into<String>) {
        self.info.push(msg.into());
    }
}

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Dataset,
    Prompt,
    Model,
    Parameters,
    Names,
    Device,
    Run,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Dataset,
        Step::Prompt,
        Step::Model,
        Step::Parameters,
        Step::Names,
        Step::Device,
        Step::Run,
    ];

    pub fn index(self) -> usize {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    pub fn title(self) -> &'static str {
        match self {
            Step::Dataset => "Dataset",
            Step::Prompt => "Starter prompt",
            Step::Model => "Model",
            Step::Parameters => "Parameters",
            Step::Names => "Names and version",
            Step::Device => "Device",
            Step::Run => "Run",
        }
    }

    pub fn fields(self) -> &'static [FieldDef] {
        match self {
            Step::Dataset => dataset::FIELDS,
            Step::Prompt => prompt::FIELDS,
            Step::Model => model::FIELDS,
            Step::Parameters => parameters::FIELDS,
            Step::Names => names::FIELDS,
            Step::Device => device::FIELDS,
            Step::Run => run::FIELDS,
        }
    }

    pub fn check(self, app: &App) -> Report {
        match self {
            Step::Dataset => dataset::check(app),
            Step::Prompt => prompt::check(app),
            Step::Model => model::check(app),
            Step::Parameters => parameters::check(app),
            Step::Names => names::check(app),
            Step::Device => device::check(app),
            Step::Run => run::check(app),
        }
    }
}

/// Parses an optional positive integer field.
pub(crate) fn parse_usize(r: &mut Report, app: &App, key: &'static str) -> Option<usize> {
    let v = app.value(key).trim();
    if v.is_empty() {
        return None;
    }
    match v.parse::<usize>() {
        Ok(0) => {
            r.error(key, "must be at least 1");
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            r.error(key, format!("\"{v}\" is not a whole number"));
            None
        }
    }
}

/// Parses an optional positive number field.
pub(crate) fn parse_f64(r: &mut Report, app: &App, key: &'static str) -> Option<f64> {
    let v = app.value(key).trim();
    if v.is_empty() {
        return None;
    }
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Some(x),
        Ok(_) => {
            r.error(key, "must be a number above 0");
            None
        }
        Err(_) => {
            r.error(key, format!("\"{v}\" is not a number (e.g. 3e-5)"));
            None
        }
    }
}
