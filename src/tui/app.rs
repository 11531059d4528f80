//! The wizard's state, key handling and drawing. No terminal I/O here: tests drive
//! [`App::handle_key`] and draw into ratatui's `TestBackend`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::steps::dataset::{self, DatasetInfo};
use super::steps::device::GpuInfo;
use super::steps::model::{self, ModelInfo};
use super::steps::{FieldDef, Report, Step, names};
use super::theme::Theme;
use super::widgets::{Input, centered, draw_too_small, truncate, truncate_left};
use crate::config::RunConfig;

/// The smallest terminal the wizard draws in.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

/// What the caller should do after a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Continue,
    Quit,
    /// Every step validated: train with this configuration.
    Start(Box<RunConfig>),
}

/// What the machine offers (injected so tests do not depend on the host).
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `None` when NVML is not available.
    pub gpus: Option<Vec<GpuInfo>>,
    pub cpu_cores: usize,
}

impl Machine {
    /// The real machine: GPUs from NVML, CPU cores from the OS.
    pub fn probe() -> Machine {
        Machine {
            gpus: super::steps::device::probe_gpus(),
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

type Cached<T> = Option<(String, Result<T, String>)>;

pub struct App {
    base: RunConfig,
    values: BTreeMap<&'static str, Input>,
    step: Step,
    field: usize,
    /// Focus is in a text field (else on the step list).
    typing: bool,
    help: bool,
    confirm_quit: bool,
    save_prompt: Option<Input>,
    profile: Option<(String, PathBuf)>,
    saved: RunConfig,
    theme: Theme,
    machine: Machine,
    status: Option<(bool, String)>,
    dataset: Cached<DatasetInfo>,
    model: Cached<ModelInfo>,
    folder: Cached<()>,
    /// Bytes per token of the dataset sample with the model's tokenizer.
    bytes_per_token: Cached<f64>,
    /// The continue-from file checked against the model's embedding width.
    continue_from: Cached<String>,
    /// Set by the last draw: the terminal is below the minimum size.
    too_small: std::cell::Cell<bool>,
}

fn all_fields() -> impl Iterator<Item = &'static FieldDef> {
    Step::ALL.iter().flat_map(|s| s.fields().iter())
}

fn opt_str(v: Option<&str>) -> String {
    v.unwrap_or_default().to_string()
}

fn opt_num<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn opt_path(v: &Option<PathBuf>) -> String {
    v.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The text a field shows for what `cfg` sets.
fn value_of(cfg: &RunConfig, key: &str) -> String {
    let t = &cfg.training;
    match key {
        "dataset.path" => opt_path(&cfg.dataset.path),
        "dataset.glob" => opt_str(cfg.dataset.glob.as_deref()),
        "dataset.unwrap" => match cfg.dataset.unwrap {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => String::new(),
        },
        "prompt.text" => opt_str(cfg.prompt.text.as_deref()),
        "prompt.file" => opt_path(&cfg.prompt.file),
        "prompt.init" => opt_str(cfg.prompt.init.as_deref()),
        "prompt.soft_tokens" => opt_num(cfg.prompt.soft_tokens),
        "model.id" => opt_str(cfg.model.id.as_deref()),
        "model.revision" => opt_str(cfg.model.revision.as_deref()),
        "training.tokens_per_sequence" => opt_num(t.tokens_per_sequence),
        "training.batch_size" => opt_num(t.batch_size),
        "training.grad_accumulation" => opt_num(t.grad_accumulation),
        "training.epochs" => opt_num(t.epochs),
        "training.lr" => opt_num(t.lr),
        "training.optimizer" => opt_str(t.optimizer.as_deref()),
        "output.name" => opt_str(cfg.output.name.as_deref()),
        "output.author" => opt_str(cfg.output.author.as_deref()),
        "output.description" => opt_str(cfg.output.description.as_deref()),
        "output.version" => opt_str(cfg.output.version.as_deref()),
        "output.folder" => opt_path(&cfg.output.folder),
        "output.stem" => opt_str(cfg.output.stem.as_deref()),
        "continue_from" => opt_path(&cfg.continue_from),
        "samples.every" => opt_num(cfg.samples.every),
        "samples.prompt" => opt_str(cfg.samples.prompt.as_deref()),
        "device.device" => opt_str(cfg.device.device.as_deref()),
        "device.precision" => opt_str(cfg.device.precision.as_deref()),
        _ => String::new(),
    }
}

impl App {
    pub fn new(
        initial: RunConfig,
        profile: Option<(String, PathBuf)>,
        theme: Theme,
        machine: Machine,
    ) -> App {
        let values = all_fields()
            .map(|f| (f.key, Input::new(value_of(&initial, f.key))))
            .collect();
        let mut app = App {
            saved: initial.clone(),
            base: initial,
            values,
            step: Step::Dataset,
            field: 0,
            typing: true,
            help: false,
            confirm_quit: false,
            save_prompt: None,
            profile,
            theme,
            machine,
            status: None,
            dataset: None,
            model: None,
            folder: None,
            bytes_per_token: None,
            continue_from: None,
            too_small: std::cell::Cell::new(false),
        };
        app.refresh();
        app
    }

    /// The text of field `key` ("" when unknown).
    pub fn value(&self, key: &str) -> &str {
        self.values.get(key).map_or("", |i| i.value())
    }

    pub fn step(&self) -> Step {
        self.step
    }

    pub fn focused_field(&self) -> Option<&'static FieldDef> {
        if self.typing {
            self.step.fields().get(self.field)
        } else {
            None
        }
    }

    pub fn gpus(&self) -> Option<&[GpuInfo]> {
        self.machine.gpus.as_deref()
    }

    pub fn cpu_cores(&self) -> usize {
        self.machine.cpu_cores
    }

    pub fn theme(&self) -> &Theme {
        &self.theme
    }

    /// The dataset scan for the current path and pattern, once done.
    pub fn dataset_info(&self) -> Option<&Result<DatasetInfo, String>> {
        self.dataset
            .as_ref()
            .filter(|(k, _)| *k == self.dataset_key())
            .map(|(_, r)| r)
    }

    /// The model inspection for the current id, once done.
    pub fn model_info(&self) -> Option<&Result<ModelInfo, String>> {
        self.model
            .as_ref()
            .filter(|(k, _)| *k == self.model_key())
            .map(|(_, r)| r)
    }

    /// Bytes per token of the dataset with the model's tokenizer (measured on a sample),
    /// once both are known.
    pub fn bytes_per_token(&self) -> Option<f64> {
        let key = format!("{}\0{}", self.dataset_key(), self.model_key());
        self.bytes_per_token
            .as_ref()
            .filter(|(k, _)| *k == key)
            .and_then(|(_, r)| r.as_ref().ok().copied())
    }

    /// The continue-from file checked against the model, once both are known.
    pub fn continue_check(&self) -> Option<&Result<String, String>> {
        let key = format!(
            "{}\0{}",
            self.value("continue_from").trim(),
            self.model_key()
        );
        self.continue_from
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, r)| r)
    }

    /// The writability check of the current output folder, once done.
    pub fn folder_check(&self) -> Option<&Result<(), String>> {
        self.folder
            .as_ref()
            .filter(|(k, _)| *k == names::folder(self))
            .map(|(_, r)| r)
    }

    fn dataset_key(&self) -> String {
        format!(
            "{}\0{}",
            self.value("dataset.path").trim(),
            self.value("dataset.glob").trim()
        )
    }

    fn model_key(&self) -> String {
        format!(
            "{}\0{}",
            self.value("model.id").trim(),
            self.value("model.revision").trim()
        )
    }

    /// Re-runs the expensive checks whose input changed (called when focus leaves a field or
    /// the step changes, not on every key).
    pub fn refresh(&mut self) {
        let key = self.dataset_key();
        let path = self.value("dataset.path").trim().to_string();
        if !path.is_empty() && self.dataset.as_ref().is_none_or(|(k, _)| *k != key) {
            let glob = match self.value("dataset.glob").trim() {
                "" => "*.txt".to_string(),
                g => g.to_string(),
            };
            self.dataset = Some((key, dataset::analyse(&path, &glob)));
        }
        let key = self.model_key();
        let id = self.value("model.id").trim().to_string();
        if !id.is_empty() && self.model.as_ref().is_none_or(|(k, _)| *k != key) {
            let rev = self.value("model.revision").trim().to_string();
            self.model = Some((key, model::analyse(&id, &rev)));
        }
        let key = format!("{}\0{}", self.dataset_key(), self.model_key());
        if self.bytes_per_token.as_ref().is_none_or(|(k, _)| *k != key) {
            let measured = match (self.dataset_info(), self.model_info()) {
                (Some(Ok(d)), Some(Ok(m))) => match &m.tokenizer {
                    Some(tok) if !d.sample.is_empty() => Some(
                        tok.encode(&d.sample)
                            .map(|ids| d.sample.len() as f64 / ids.len().max(1) as f64)
                            .map_err(|e| format!("{e:#}")),
                    ),
                    _ => None,
                },
                _ => None,
            };
            if let Some(r) = measured {
                self.bytes_per_token = Some((key, r));
            }
        }
        let path = self.value("continue_from").trim().to_string();
        let key = format!("{path}\0{}", self.model_key());
        if !path.is_empty()
            && self.continue_from.as_ref().is_none_or(|(k, _)| *k != key)
            && let Some(Ok(m)) = self.model_info()
        {
            let r = names::check_continue(Path::new(&path), m.d_embed);
            self.continue_from = Some((key, r));
        }
        let folder = names::folder(self);
        if self.folder.as_ref().is_none_or(|(k, _)| *k != folder) {
            let r = crate::config::validate::check_writable_dir(Path::new(&folder))
                .map_err(|e| format!("{e:#}"));
            self.folder = Some((folder, r));
        }
    }

    /// The configuration as filled in: only what the user set (empty fields stay unset).
    pub fn to_config(&self) -> RunConfig {
        let mut c = self.base.clone();
        let s = |k: &str| -> Option<String> {
            let v = self.value(k);
            (!v.trim().is_empty()).then(|| v.to_string())
        };
        let t = |k: &str| s(k).map(|v| v.trim().to_string());
        let p = |k: &str| t(k).map(PathBuf::from);
        let u = |k: &str| t(k).and_then(|v| v.parse::<usize>().ok());
        let f = |k: &str| t(k).and_then(|v| v.parse::<f64>().ok());
        c.dataset.path = p("dataset.path");
        c.dataset.glob = t("dataset.glob");
        c.dataset.unwrap = dataset::parse_yes_no(self.value("dataset.unwrap"))
            .ok()
            .flatten();
        c.prompt.text = s("prompt.text");
        c.prompt.file = p("prompt.file");
        c.prompt.init = t("prompt.init");
        c.prompt.soft_tokens = u("prompt.soft_tokens");
        c.model.id = t("model.id");
        c.model.revision = t("model.revision");
        c.training.tokens_per_sequence = u("training.tokens_per_sequence");
        c.training.batch_size = u("training.batch_size");
        c.training.grad_accumulation = u("training.grad_accumulation");
        c.training.epochs = f("training.epochs");
        c.training.lr = f("training.lr");
        c.training.optimizer = t("training.optimizer");
        c.output.name = s("output.name");
        c.output.author = s("output.author");
        c.output.description = s("output.description");
        c.output.version = t("output.version");
        c.output.folder = p("output.folder");
        c.output.stem = t("output.stem");
        c.continue_from = p("continue_from");
        c.samples.every = t("samples.every").and_then(|v| v.parse::<usize>().ok());
        c.samples.prompt = s("samples.prompt");
        c.device.device = t("device.device");
        c.device.precision = t("device.precision");
        c
    }

    /// Whether the configuration differs from the one loaded or last saved.
    pub fn dirty(&self) -> bool {
        self.to_config() != self.saved
    }

    /// A step's check with the field errors of fields it shows, in field order.
    pub fn report(&self, step: Step) -> Report {
        step.check(self)
    }

    fn go_step(&mut self, step: Step) {
        self.refresh();
        self.step = step;
        self.field = 0;
        self.typing = !step.fields().is_empty();
    }

    fn next_step(&mut self, forward: bool) {
        let i = self.step.index();
        let j = if forward {
            (i + 1).min(6)
        } else {
            i.saturating_sub(1)
        };
        self.go_step(Step::ALL[j]);
    }

    fn move_field(&mut self, forward: bool) {
        self.refresh();
        let n = self.step.fields().len();
        if !self.typing {
            self.typing = n > 0;
            self.field = if forward { 0 } else { n.saturating_sub(1) };
            return;
        }
        if forward {
            if self.field + 1 < n {
                self.field += 1;
            } else if self.step != Step::Run {
                self.next_step(true);
            }
        } else if self.field > 0 {
            self.field -= 1;
        } else if self.step != Step::Dataset {
            self.next_step(false);
            let n = self.step.fields().len();
            self.field = n.saturating_sub(1);
        }
    }

    fn cycle_choice(&mut self, forward: bool) -> bool {
        let Some(f) = self.focused_field() else {
            return false;
        };
        if f.choices.is_empty() {
            return false;
        }
        let cur = self.value(f.key).trim();
        let n = f.choices.len();
        let next = match f.choices.iter().position(|c| *c == cur) {
            Some(i) if forward => (i + 1) % n,
            Some(i) => (i + n - 1) % n,
            None if forward => 0,
            None => n - 1,
        };
        if let Some(i) = self.values.get_mut(f.key) {
            i.set(f.choices[next]);
        }
        true
    }

    fn request_quit(&mut self) -> Action {
        if self.dirty() {
            self.confirm_quit = true;
            Action::Continue
        } else {
            Action::Quit
        }
    }

    /// Saves the profile in use, or asks for a name when there is none.
    fn save(&mut self) {
        match self.profile.clone() {
            Some((name, path)) => self.save_to(&name, &path),
            None => self.save_prompt = Some(Input::default()),
        }
    }

    /// Tab in a path field completes the path when there is something to complete.
    fn complete_path(&mut self) -> bool {
        const PATH_FIELDS: &[&str] = &[
            "dataset.path",
            "prompt.file",
            "model.id",
            "output.folder",
            "continue_from",
        ];
        let Some(def) = self.step.fields().get(self.field) else {
            return false;
        };
        if !PATH_FIELDS.contains(&def.key) {
            return false;
        }
        let Some(input) = self.values.get_mut(def.key) else {
            return false;
        };
        match super::widgets::complete_path(input.value()) {
            Some(done) => {
                input.set(done);
                true
            }
            None => false,
        }
    }

    fn save_to(&mut self, name: &str, path: &Path) {
        let cfg = absolutize(self.to_config());
        let r = (|| -> anyhow::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, cfg.to_toml()?)?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.saved = self.to_config();
                self.profile = Some((name.to_string(), path.to_path_buf()));
                self.status = Some((false, format!("saved profile {name}")));
            }
            Err(e) => self.status = Some((true, format!("cannot save {}: {e:#}", path.display()))),
        }
    }

    /// Start: refuses (and jumps to the first problem) unless every step validates and the
    /// headless validation accepts the configuration.
    fn try_start(&mut self) -> Action {
        self.refresh();
        for step in &Step::ALL[..6] {
            if let Some((key, msg)) = step.check(self).errors.first().cloned() {
                self.step = *step;
                self.field = step.fields().iter().position(|f| f.key == key).unwrap_or(0);
                self.typing = true;
                self.status = Some((true, format!("{}: {msg}", step.title())));
                return Action::Continue;
            }
        }
        let cfg = self.to_config();
        match cfg.validate() {
            Ok(_) => Action::Start(Box::new(cfg)),
            Err(e) => {
                self.status = Some((true, format!("{e:#}")));
                Action::Continue
            }
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Action {
        if key.kind != crossterm::event::KeyEventKind::Press {
            return Action::Continue;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if let Some(input) = &mut self.save_prompt {
            match key.code {
                KeyCode::Esc => self.save_prompt = None,
                KeyCode::Enter => {
                    let name = input.value().trim().to_string();
                    match crate::config::profile::profile_path(&name) {
                        Ok(path) => {
                            self.save_prompt = None;
                            self.save_to(&name, &path);
                        }
                        Err(e) => self.status = Some((true, format!("{e:#}"))),
                    }
                }
                _ => {
                    input.handle(key);
                }
            }
            return Action::Continue;
        }
        if self.confirm_quit {
            self.confirm_quit = false;
            return match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => Action::Quit,
                KeyCode::Char('s') if ctrl => {
                    self.save();
                    Action::Continue
                }
                _ => Action::Continue,
            };
        }
        if self.help {
            self.help = false;
            return Action::Continue;
        }
        self.status = None;
        if self.too_small.get() && matches!(key.code, KeyCode::Esc | KeyCode::Char('q')) {
            return self.request_quit();
        }
        match key.code {
            KeyCode::Char('c') if ctrl => return self.request_quit(),
            KeyCode::Char('s') if ctrl => self.save(),
            KeyCode::Char('n') if ctrl => self.next_step(true),
            KeyCode::Char('p') if ctrl => self.next_step(false),
            KeyCode::PageDown => self.next_step(true),
            KeyCode::PageUp => self.next_step(false),
            KeyCode::F(1) => self.help = true,
            KeyCode::Tab if self.typing && self.complete_path() => {}
            KeyCode::Tab => self.move_field(true),
            KeyCode::BackTab => self.move_field(false),
            KeyCode::Enter if self.step == Step::Run => return self.try_start(),
            KeyCode::Enter | KeyCode::Up | KeyCode::Down | KeyCode::Home | KeyCode::End
                if self.typing && self.focused_field().is_some_and(|f| f.lines > 1) =>
            {
                let k = self.step.fields()[self.field].key;
                let used = self
                    .values
                    .get_mut(k)
                    .is_some_and(|i| i.handle_multiline(key));
                // ↑ on the first line / ↓ on the last leave the editor.
                if !used {
                    self.move_field(key.code == KeyCode::Down);
                }
            }
            KeyCode::Enter if self.typing => self.move_field(true),
            KeyCode::Up | KeyCode::Down if self.typing => {
                self.cycle_choice(key.code == KeyCode::Down);
            }
            KeyCode::Esc if self.typing => {
                self.refresh();
                self.typing = false;
            }
            _ if self.typing => {
                let k = self.step.fields()[self.field].key;
                if let Some(i) = self.values.get_mut(k) {
                    i.handle(key);
                }
            }
            // Focus on the step list.
            KeyCode::Esc | KeyCode::Char('q') => return self.request_quit(),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Up => self.next_step(false),
            KeyCode::Down => self.next_step(true),
            KeyCode::Enter | KeyCode::Right => {
                self.typing = !self.step.fields().is_empty();
                self.field = 0;
            }
            _ => {}
        }
        Action::Continue
    }

    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        let th = &self.theme;
        self.too_small
            .set(area.width < MIN_WIDTH || area.height < MIN_HEIGHT);
        if self.too_small.get() {
            let hint = if self.confirm_quit {
                Line::styled("unsaved changes: y quits, any other key stays", th.warning)
            } else {
                Line::styled("enlarge the window, or press Esc to quit", th.muted)
            };
            draw_too_small(frame, th, hint);
            return;
        }
        let [top, body, status, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(0),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
        let profile = match &self.profile {
            Some((n, p)) => format!("profile {n} ({})", p.display()),
            None => "no profile (Ctrl-S saves one)".to_string(),
        };
        let dirty = if self.dirty() { " *" } else { "" };
        let left = format!(
            " softtune · step {}/7 {}",
            self.step.index() + 1,
            self.step.title()
        );
        let room = (top.width as usize).saturating_sub(left.chars().count() + 2);
        let right = truncate_left(&format!("{profile}{dirty} "), room);
        let pad = (top.width as usize).saturating_sub(left.chars().count() + right.chars().count());
        frame.render_widget(
            Line::from(vec![
                Span::styled(left, th.title),
                Span::raw(" ".repeat(pad)),
                Span::styled(right, th.muted),
            ]),
            top,
        );

        let [side, main] =
            Layout::horizontal([Constraint::Length(26), Constraint::Min(0)]).areas(body);
        self.draw_sidebar(frame, side);
        self.draw_step(frame, main);

        if let Some((err, msg)) = &self.status {
            let style = if *err { th.error } else { th.ok };
            frame.render_widget(Line::styled(format!(" {msg}"), style), status);
        }
        let keys = if self.typing {
            " Tab field · PgDn/PgUp step · ↑↓ pick · F1 help · ^S save · Esc leave field"
        } else if self.step == Step::Run {
            " Enter start · PgUp/↑ back · ? help · ^S save profile · Esc/q quit"
        } else {
            " ↑↓ step · Enter/Tab edit · ? help · ^S save profile · Esc/q quit"
        };
        frame.render_widget(Line::styled(keys, th.muted), footer);

        if self.help {
            self.draw_help(frame, area);
        } else if self.confirm_quit {
            let r = centered(area, 56, 5);
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled("You have unsaved changes.", th.warning),
                    Line::styled(
                        "y: quit anyway · Ctrl-S: save · any other key: stay",
                        th.text,
                    ),
                ])
                .block(Block::bordered().title(" Quit? ").border_style(th.border)),
                r,
            );
        } else if let Some(input) = &self.save_prompt {
            let r = centered(area, 56, 5);
            frame.render_widget(Clear, r);
            let (shown, col) = input.window(50);
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled("Profile name (letters, digits, - _ .):", th.text),
                    Line::styled(format!("{shown:<52}"), th.focus),
                ])
                .block(
                    Block::bordered()
                        .title(" Save profile ")
                        .border_style(th.border),
                ),
                r,
            );
            frame.set_cursor_position(Position::new(r.x + 1 + col as u16, r.y + 2));
        }
    }

    fn draw_sidebar(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let mut lines = Vec::new();
        for (i, s) in Step::ALL.iter().enumerate() {
            let errors = *s != Step::Run && !s.check(self).errors.is_empty();
            let (mark, mstyle) = if *s == self.step {
                ("›", th.current)
            } else if errors {
                ("✖", th.error)
            } else if *s == Step::Run {
                (" ", th.text)
            } else {
                ("✔", th.ok)
            };
            let style = if *s == self.step {
                if self.typing { th.current } else { th.focus }
            } else {
                th.text
            };
            let state = if *s == Step::Run {
                ""
            } else if errors {
                " invalid"
            } else {
                ""
            };
            lines.push(Line::from(vec![
                Span::styled(format!(" {mark} "), mstyle),
                Span::styled(format!("{}. {}", i + 1, s.title()), style),
                Span::styled(state, th.error),
            ]));
        }
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" Steps ").border_style(th.border)),
            area,
        );
    }

    fn draw_step(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let block = Block::new()
            .borders(Borders::ALL)
            .title(format!(
                " {}. {} ",
                self.step.index() + 1,
                self.step.title()
            ))
            .title_style(th.title)
            .border_style(th.border);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let [content, helpline] =
            Layout::vertical([Constraint::Min(0), Constraint::Length(2)]).areas(inner);
        let report = self.report(self.step);
        let label_w = 20usize;
        let box_w = (content.width as usize).saturating_sub(label_w + 2).max(4);
        let mut lines: Vec<Line> = Vec::new();
        let mut cursor = None;
        if self.step == Step::Run {
            self.summary(&mut lines);
        }
        for (i, f) in self.step.fields().iter().enumerate() {
            let focused = self.typing && i == self.field;
            let input = &self.values[f.key];
            // A one-line field shows the window around its cursor; a multi-line editor its
            // wrapped text, scrolled to the cursor.
            let (rows, (cr, cc)) = if f.lines > 1 {
                input.view(box_w.saturating_sub(1), f.lines as usize)
            } else {
                let (shown, col) = input.window(box_w.saturating_sub(1));
                (vec![shown], (0, col))
            };
            let empty = input.value().is_empty() && !focused;
            let style = if focused { th.focus } else { th.text };
            for r in 0..f.lines.max(1) as usize {
                let text = match rows.get(r) {
                    _ if empty && r == 0 => "—".to_string(),
                    Some(t) => t.clone(),
                    None => String::new(),
                };
                let (marker, label) = if r == 0 {
                    (if focused { "›" } else { " " }, f.label)
                } else {
                    (" ", "")
                };
                lines.push(Line::from(vec![
                    Span::styled(marker, th.current),
                    Span::styled(format!("{label:<label_w$} "), th.text),
                    Span::styled(
                        format!("{text:<box_w$}"),
                        if empty { th.muted } else { style },
                    ),
                ]));
                if focused && r == cr {
                    cursor = Some(Position::new(
                        content.x + label_w as u16 + 2 + cc as u16,
                        content.y + lines.len() as u16 - 1,
                    ));
                }
            }
            for (k, msg) in &report.errors {
                if k == &f.key {
                    lines.push(Line::styled(format!("   ✖ {msg}"), th.error));
                }
            }
        }
        if !lines.is_empty() {
            lines.push(Line::raw(""));
        }
        for w in &report.warnings {
            lines.push(Line::styled(format!(" ! {w}"), th.warning));
        }
        for i in &report.info {
            lines.push(Line::styled(format!(" {i}"), th.text));
        }
        frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), content);
        let help = match self.step.fields().get(self.field) {
            Some(f) if self.typing => f.help,
            _ if self.step == Step::Run => "Enter starts training when every step is valid",
            _ => "Enter or Tab edits this step's fields",
        };
        frame.render_widget(
            Paragraph::new(Line::styled(help, th.muted)).wrap(Wrap { trim: true }),
            helpline,
        );
        if let Some(c) = cursor
            && c.y < content.y + content.height
            && !self.help
            && !self.confirm_quit
            && self.save_prompt.is_none()
        {
            frame.set_cursor_position(c);
        }
    }

    fn summary(&self, lines: &mut Vec<Line<'static>>) {
        let th = &self.theme;
        let c = self.to_config();
        let or = |v: &str, d: &str| {
            if v.trim().is_empty() {
                format!("{d} (default)")
            } else {
                v.trim().to_string()
            }
        };
        let req = |v: &str| {
            if v.trim().is_empty() {
                "— (required)".to_string()
            } else {
                v.trim().to_string()
            }
        };
        let data = match self.dataset_info() {
            Some(Ok(d)) => format!(
                " ({} file(s), {})",
                d.files,
                crate::inspect::human_bytes(d.bytes as usize)
            ),
            _ => String::new(),
        };
        let model = match self.model_info() {
            Some(Ok(m)) => format!(" ({}, width {})", m.arch, m.d_embed),
            _ => String::new(),
        };
        let starter = match (&c.prompt.text, &c.prompt.file) {
            (Some(t), _) => format!("text \"{}\"", truncate(&t.replace('\n', " ↵ "), 30)),
            (None, Some(f)) => format!("file {}", f.display()),
            _ => "none (vocabulary sample)".into(),
        };
        let rows = [
            (
                "dataset",
                format!("{}{data}", req(self.value("dataset.path"))),
            ),
            ("starter", starter),
            ("model", format!("{}{model}", req(self.value("model.id")))),
            ("soft tokens", or(self.value("prompt.soft_tokens"), "80")),
            (
                "batch",
                format!(
                    "{} × {} accumulation, {} epoch(s), lr {}, {}",
                    or(self.value("training.batch_size"), "1"),
                    or(self.value("training.grad_accumulation"), "16"),
                    or(self.value("training.epochs"), "1"),
                    or(self.value("training.lr"), "3e-5"),
                    or(self.value("training.optimizer"), "adamw"),
                ),
            ),
            (
                "output",
                format!("{}/{}.zip", names::folder(self), names::stem(self)),
            ),
            (
                "device",
                format!(
                    "{}, precision {}",
                    or(self.value("device.device"), "auto"),
                    or(self.value("device.precision"), "auto")
                ),
            ),
            (
                "samples",
                match (c.samples.every, &c.samples.prompt) {
                    (Some(0), _) => "off".to_string(),
                    (every, text) => format!(
                        "every {} steps, continuing {}",
                        every.map_or("50 (each checkpoint)".to_string(), |n| n.to_string()),
                        text.as_deref()
                            .map_or("a held-out passage".to_string(), |t| format!(
                                "\"{}\"",
                                truncate(t, 24)
                            ))
                    ),
                },
            ),
        ];
        for (k, v) in rows {
            lines.push(Line::from(vec![
                Span::styled(format!(" {k:<12} "), th.muted),
                Span::styled(v, th.text),
            ]));
        }
        lines.push(Line::raw(""));
        lines.push(Line::styled("   [ Start: press Enter ]   ", th.focus));
    }

    fn draw_help(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let r = centered(area, 76, 20);
        frame.render_widget(Clear, r);
        let mut lines = vec![
            Line::styled("Keys", th.title),
            Line::raw(" Tab / Shift-Tab      next / previous field (and step)"),
            Line::raw(" PgDn / PgUp, ^N / ^P  next / previous step"),
            Line::raw(" ↑ / ↓                 quick picks in fields that have them"),
            Line::raw(" Esc                   leave the field (then Esc or q quits)"),
            Line::raw(" Ctrl-S                save the profile · F1 or ? this help"),
            Line::raw(" Enter on Run          start (only when every step is valid)"),
            Line::raw(""),
            Line::styled(format!("{} fields", self.step.title()), th.title),
        ];
        for f in self.step.fields() {
            lines.push(Line::from(vec![
                Span::styled(format!(" {}: ", f.label), th.current),
                Span::styled(f.help, th.text),
            ]));
        }
        lines.push(Line::raw(""));
        lines.push(Line::styled("any key closes this help", th.muted));
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(Block::bordered().title(" Help ").border_style(th.border)),
            r,
        );
    }
}

/// Relative paths made absolute against the current folder, so a saved profile (whose
/// relative paths are read relative to its own folder) points at the same files.
pub fn absolutize(mut c: RunConfig) -> RunConfig {
    let Ok(cwd) = std::env::current_dir() else {
        return c;
    };
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(x) = p
            && x.is_relative()
        {
            *x = cwd.join(&*x);
        }
    };
    fix(&mut c.dataset.path);
    fix(&mut c.prompt.file);
    fix(&mut c.output.folder);
    fix(&mut c.continue_from);
    if let Some(id) = &c.model.id
        && Path::new(id).is_relative()
        && Path::new(id).is_dir()
    {
        c.model.id = Some(cwd.join(id).display().to_string());
    }
    c
}
