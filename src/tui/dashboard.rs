//! The live dashboard of a run: progress with ETA, a loss chart (training loss per step,
//! held-out loss at each evaluation, the no-prompt baseline), tokens/s, learning rate,
//! gradient norm, last checkpoint, GPU use, the latest sample generation and recent log
//! lines. It only reads: the run's `events.jsonl` (folded into a [`RunView`]), its
//! `state.json` and NVML; the keys send requests to the worker ([`crate::runs::request`]).
//! Drawing is a pure function of that state, so the screens are snapshot-tested from
//! recorded event files.

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Clear, Dataset, GraphType, Paragraph};

use super::theme::Theme;
use super::widgets::{centered, draw_too_small, truncate, truncate_left};
use crate::runs::Request;
use crate::runs::state::{RunState, Status};
use crate::train::events::{Event, plain_text};

/// Log lines kept for the log pane.
const LOG_LINES: usize = 200;
/// Steps the ETA averages over.
const ETA_WINDOW: usize = 20;

/// One optimizer step as the dashboard keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPoint {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// The latest sample generation.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleView {
    pub step: usize,
    pub prompt: String,
    pub with_prompt: String,
    pub without_prompt: String,
}

/// A run's history, folded from its events. A `started` event begins a new history (a run
/// folder reused with `--run-dir` holds earlier runs; the last one counts), except when it
/// resumes the same run from a checkpoint (`softtune resume`): the history up to the
/// checkpoint's step stays, steps after it (done again after a crash) are dropped, and the
/// training time goes on from there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunView {
    pub started: bool,
    pub model: String,
    pub device: String,
    pub soft_tokens: usize,
    pub tokens_per_sequence: usize,
    pub batch_size: usize,
    pub grad_accumulation: usize,
    pub total_steps: usize,
    pub start_step: usize,
    pub sample_every: usize,
    pub steps: Vec<StepPoint>,
    /// (step, label, loss) of every held-out evaluation.
    pub evals: Vec<(usize, String, f64)>,
    pub checkpoint: Option<(usize, String)>,
    pub exports: Vec<String>,
    pub sample: Option<SampleView>,
    pub log: VecDeque<String>,
    pub paused: bool,
    /// `Some(stopped)` once the run has ended without an error.
    pub finished: Option<bool>,
    pub error: Option<String>,
    /// Training seconds before the latest resume (added to its steps' `elapsed_s`).
    pub elapsed_before: f64,
}

impl RunView {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut v = RunView::default();
        for e in events {
            v.apply(e);
        }
        v
    }

    fn push_log(&mut self, text: &str) {
        for line in text.lines() {
            if self.log.len() == LOG_LINES {
                self.log.pop_front();
            }
            self.log.push_back(line.to_string());
        }
    }

    pub fn apply(&mut self, e: &Event) {
        match e {
            Event::Started {
                model,
                device,
                soft_tokens,
                tokens_per_sequence,
                batch_size,
                grad_accumulation,
                total_steps,
                start_step,
                sample_every,
                ..
            } => {
                if *start_step > 0
                    && self.started
                    && self.total_steps == *total_steps
                    && self.start_step <= *start_step
                {
                    self.resume_at(*start_step);
                    self.push_log(&plain_text(e));
                    return;
                }
                *self = RunView {
                    started: true,
                    model: model.clone(),
                    device: device.clone(),
                    soft_tokens: *soft_tokens,
                    tokens_per_sequence: *tokens_per_sequence,
                    batch_size: *batch_size,
                    grad_accumulation: *grad_accumulation,
                    total_steps: *total_steps,
                    start_step: *start_step,
                    sample_every: *sample_every,
                    log: std::mem::take(&mut self.log),
                    ..RunView::default()
                };
            }
            Event::Step {
                step,
                total_steps,
                loss,
                grad_norm,
                lr,
                tokens_per_s,
                elapsed_s,
            } => {
                self.total_steps = *total_steps;
                self.steps.push(StepPoint {
                    step: *step,
                    loss: *loss,
                    grad_norm: *grad_norm,
                    lr: *lr,
                    tokens_per_s: *tokens_per_s,
                    elapsed_s: self.elapsed_before + *elapsed_s,
                });
                return;
            }
            Event::Eval { step, label, loss } => {
                // A resumed run measures its baselines again: one of each is kept, in place.
                let again = (label == "no_prompt" || label == "initial")
                    .then(|| self.evals.iter_mut().find(|(_, l, _)| l == label))
                    .flatten();
                match again {
                    Some(e) => *e = (*step, label.clone(), *loss),
                    None => self.evals.push((*step, label.clone(), *loss)),
                }
            }
            Event::Checkpoint {
                step,
                checkpoint,
                exports,
            } => {
                self.checkpoint = Some((*step, checkpoint.clone()));
                self.exports = exports.clone();
            }
            Event::Sample {
                step,
                prompt,
                with_prompt,
                without_prompt,
            } => {
                self.sample = Some(SampleView {
                    step: *step,
                    prompt: prompt.clone(),
                    with_prompt: with_prompt.clone(),
                    without_prompt: without_prompt.clone(),
                });
                return;
            }
            Event::Paused { .. } => self.paused = true,
            Event::Resumed { .. } => self.paused = false,
            Event::Finished {
                stopped, exports, ..
            } => {
                self.finished = Some(*stopped);
                self.paused = false;
                self.exports = exports.clone();
            }
            Event::Error { message } => {
                self.error = Some(message.clone());
                self.paused = false;
            }
            Event::Log { .. } => {}
        }
        self.push_log(&plain_text(e));
    }

    pub fn step(&self) -> usize {
        self.steps.last().map_or(self.start_step, |s| s.step)
    }

    /// The same run goes on from its checkpoint at `step`: what came after it is dropped
    /// (a crashed worker's steps past its last checkpoint are done again), the end of the
    /// earlier part is forgotten.
    fn resume_at(&mut self, step: usize) {
        self.steps.retain(|s| s.step <= step);
        self.evals.retain(|(s, _, _)| *s <= step);
        self.elapsed_before = self.steps.last().map_or(0.0, |s| s.elapsed_s);
        if self.sample.as_ref().is_some_and(|s| s.step > step) {
            self.sample = None;
        }
        self.paused = false;
        self.finished = None;
        self.error = None;
    }

    /// Seconds of training so far (pauses excluded).
    pub fn elapsed(&self) -> Option<f64> {
        self.steps.last().map(|s| s.elapsed_s)
    }

    /// Seconds left at the pace of the last `ETA_WINDOW` steps.
    pub fn eta(&self) -> Option<f64> {
        let last = self.steps.last()?;
        let remaining = self.total_steps.saturating_sub(last.step) as f64;
        let first = &self.steps[self.steps.len().saturating_sub(ETA_WINDOW + 1)];
        let per_step = if first.step < last.step {
            (last.elapsed_s - first.elapsed_s) / (last.step - first.step) as f64
        } else {
            last.elapsed_s / (last.step.saturating_sub(self.start_step)).max(1) as f64
        };
        Some(per_step.max(0.0) * remaining)
    }

    /// The held-out loss without any prompt (the baseline).
    pub fn no_prompt_loss(&self) -> Option<f64> {
        self.evals
            .iter()
            .find(|(_, l, _)| l == "no_prompt")
            .map(|e| e.2)
    }

    /// The latest held-out loss with the prompt: (step, loss).
    pub fn heldout(&self) -> Option<(usize, f64)> {
        self.evals
            .iter()
            .rev()
            .find(|(_, l, _)| l != "no_prompt")
            .map(|(s, _, l)| (*s, *l))
    }

    fn ended(&self) -> bool {
        self.finished.is_some() || self.error.is_some()
    }
}

/// GPU use as the dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuUse {
    /// Utilisation in percent, used and total memory in bytes (device level).
    Read { util: u32, used: u64, total: u64 },
    /// Why there is nothing to show ("CPU run", "no NVML", …).
    NotAvailable(String),
}

/// Reads GPU use through NVML, initialised once.
pub struct GpuMonitor {
    nvml: Option<Result<nvml_wrapper::Nvml, String>>,
}

impl Default for GpuMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl GpuMonitor {
    pub fn new() -> Self {
        Self { nvml: None }
    }

    /// The use of the device a run names (`cuda:N`); `remote` runs are on another machine.
    pub fn read(&mut self, device: &str, remote: bool) -> GpuUse {
        let Some(index) = device.strip_prefix("cuda:").and_then(|i| i.parse().ok()) else {
            return GpuUse::NotAvailable(if device.is_empty() {
                "n/a".into()
            } else {
                format!("n/a ({device} run)")
            });
        };
        if remote {
            return GpuUse::NotAvailable("n/a (another machine)".into());
        }
        let nvml = self
            .nvml
            .get_or_insert_with(|| nvml_wrapper::Nvml::init().map_err(|e| e.to_string()));
        let Ok(nvml) = nvml else {
            return GpuUse::NotAvailable("n/a (no NVML)".into());
        };
        let read = || -> Result<GpuUse, nvml_wrapper::error::NvmlError> {
            let d = nvml.device_by_index(index)?;
            let util = d.utilization_rates()?.gpu;
            let mem = d.memory_info()?;
            Ok(GpuUse::Read {
                util,
                used: mem.used,
                total: mem.total,
            })
        };
        read().unwrap_or_else(|e| GpuUse::NotAvailable(format!("n/a ({e})")))
    }
}

/// What the caller should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashAction {
    Continue,
    /// Leave the dashboard; the run goes on.
    Detach,
    /// Send this request to the worker.
    Send(Request),
    /// Start the stopped or failed run again from its checkpoint (`softtune resume`).
    Restart,
}

/// The dashboard's state: the run's history and state, GPU use, and the overlays.
pub struct Dashboard {
    pub id: String,
    pub state: RunState,
    pub view: RunView,
    pub gpu: GpuUse,
    theme: Theme,
    help: bool,
    confirm_stop: bool,
    notice: Option<(bool, String)>,
}

/// `1:02:03` or `12:03`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `12,345`.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Words of `text` in lines of at most `width` characters (long words are cut), at most
/// `max` lines; a cut text ends with `…`. Newlines show as `↵`.
pub fn wrap_text(text: &str, width: usize, max: usize) -> Vec<String> {
    let width = width.max(2);
    // Control characters (a random or young prompt produces them) would move the cursor.
    let flat: String = text
        .replace("\r\n", "\n")
        .replace('\n', " ↵ ")
        .chars()
        .map(|c| {
            if c.is_control() && !c.is_whitespace() {
                '·'
            } else {
                c
            }
        })
        .collect();
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in flat.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = cur.chars().count();
            let need = word.len() + usize::from(used > 0);
            if used + need <= width {
                if used > 0 {
                    cur.push(' ');
                }
                cur.extend(word.iter());
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut cur));
                continue;
            }
            cur = word.drain(..width).collect();
            lines.push(std::mem::take(&mut cur));
            if word.is_empty() {
                break;
            }
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    if lines.len() > max {
        lines.truncate(max);
        if let Some(last) = lines.last_mut() {
            *last = truncate(&format!("{last} …"), width);
            if !last.ends_with('…') {
                last.push('…');
            }
        }
    }
    lines
}

impl Dashboard {
    pub fn new(id: &str, state: RunState, view: RunView, gpu: GpuUse, theme: Theme) -> Self {
        Self {
            id: id.to_string(),
            state,
            view,
            gpu,
            theme,
            help: false,
            confirm_stop: false,
            notice: None,
        }
    }

    /// Whether the worker is alive and training (requests make sense).
    pub fn running(&self) -> bool {
        self.state.state == Status::Running && !self.view.ended()
    }

    pub fn paused(&self) -> bool {
        self.running() && (self.view.paused || self.state.paused)
    }

    /// A line for the footer: `ok` or an error.
    pub fn set_notice(&mut self, ok: bool, text: impl Into<String>) {
        self.notice = Some((ok, text.into()));
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> DashAction {
        if key.kind != KeyEventKind::Press {
            return DashAction::Continue;
        }
        if self.help {
            self.help = false;
            return DashAction::Continue;
        }
        if self.confirm_stop {
            self.confirm_stop = false;
            if matches!(key.code, KeyCode::Char('y') | KeyCode::Char('Y')) && self.running() {
                return DashAction::Send(Request::Stop);
            }
            self.set_notice(true, "not stopped; training goes on");
            return DashAction::Continue;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => DashAction::Detach,
            KeyCode::Char('q') | KeyCode::Esc => DashAction::Detach,
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.help = true;
                DashAction::Continue
            }
            KeyCode::Char('s') => {
                if self.running() {
                    self.confirm_stop = true;
                } else {
                    self.set_notice(false, format!("the run is {}", self.status_word()));
                }
                DashAction::Continue
            }
            KeyCode::Char('p') => {
                if self.running() {
                    DashAction::Send(if self.paused() {
                        Request::Resume
                    } else {
                        Request::Pause
                    })
                } else {
                    self.set_notice(false, format!("the run is {}", self.status_word()));
                    DashAction::Continue
                }
            }
            KeyCode::Char('r') => {
                if self.resumable() {
                    DashAction::Restart
                } else {
                    self.set_notice(false, format!("the run is {}", self.status_word()));
                    DashAction::Continue
                }
            }
            _ => DashAction::Continue,
        }
    }

    /// Whether the run has ended early (stopped, or failed) and `r` can start it again.
    pub fn resumable(&self) -> bool {
        matches!(self.state.state, Status::Stopped | Status::Failed)
    }

    fn status_word(&self) -> &'static str {
        if self.paused() {
            return "paused";
        }
        match (self.state.state, &self.view) {
            (Status::Running, v) if v.error.is_some() => "failed",
            (Status::Running, v) if v.finished == Some(true) => "stopped",
            (Status::Running, v) if v.finished == Some(false) => "finished",
            (s, _) => s.as_str(),
        }
    }

    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        let th = &self.theme;
        let hint = Line::styled(
            "enlarge the window, or press q to detach (training goes on)",
            th.muted,
        );
        if draw_too_small(frame, th, hint) {
            return;
        }
        let rest = area.height - 4;
        let sample_h: u16 = if area.height >= 34 { 9 } else { 6 };
        let mid_h = (rest.saturating_sub(sample_h) * 3 / 5).max(10);
        let [title, info, progress, middle, sample, log, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(mid_h),
            Constraint::Length(sample_h),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(area);
        self.draw_title(frame, title);
        self.draw_info(frame, info);
        self.draw_progress(frame, progress);
        let [chart, stats] =
            Layout::horizontal([Constraint::Min(30), Constraint::Length(32)]).areas(middle);
        self.draw_chart(frame, chart);
        self.draw_stats(frame, stats);
        self.draw_sample(frame, sample);
        self.draw_log(frame, log);
        self.draw_footer(frame, footer);
        if self.help {
            self.draw_help(frame, area);
        } else if self.confirm_stop {
            let r = centered(area, 60, 5);
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled(
                        "Stop after the current step, with a checkpoint and exports?",
                        th.warning,
                    ),
                    Line::styled("y: stop · any other key: keep training", th.text),
                ])
                .block(Block::bordered().title(" Stop? ").border_style(th.border)),
                r,
            );
        }
    }

    fn status_style(&self) -> Style {
        let th = &self.theme;
        match self.status_word() {
            "running" | "finished" => th.ok,
            "failed" => th.error,
            _ => th.warning,
        }
    }

    fn draw_title(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let left = " softtune · run ".to_string();
        let status = format!(" {} ", self.status_word());
        let room = (area.width as usize).saturating_sub(left.len() + status.len() + 1);
        let id = truncate(&self.id, room);
        let pad = (area.width as usize)
            .saturating_sub(left.chars().count() + id.chars().count() + status.chars().count());
        frame.render_widget(
            Line::from(vec![
                Span::styled(left, th.title),
                Span::styled(id, th.title),
                Span::raw(" ".repeat(pad)),
                Span::styled(
                    status,
                    self.status_style()
                        .add_modifier(ratatui::style::Modifier::REVERSED),
                ),
            ]),
            area,
        );
    }

    fn draw_info(&self, frame: &mut Frame, area: Rect) {
        let v = &self.view;
        let text = if v.started {
            format!(
                " {} on {} · {} soft tokens · {} × {} tokens, accumulation {}",
                v.model,
                v.device,
                v.soft_tokens,
                v.batch_size,
                v.tokens_per_sequence,
                v.grad_accumulation
            )
        } else if let Some(e) = &v.error {
            format!(" failed before training: {e}")
        } else {
            " waiting for the worker (loading the model, tokenizing the dataset)…".to_string()
        };
        frame.render_widget(
            Line::styled(truncate(&text, area.width as usize), self.theme.text),
            area,
        );
    }

    fn draw_progress(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let v = &self.view;
        let (step, total) = (v.step(), v.total_steps.max(1));
        let pct = 100.0 * step as f64 / total as f64;
        let mut label = format!(" step {step}/{} {pct:3.0}%", v.total_steps);
        let mut right = String::new();
        if let Some(e) = v.elapsed() {
            right += &format!("  elapsed {}", format_duration(e));
        }
        if self.running() && !self.paused() {
            if let Some(eta) = v.eta() {
                right += &format!("  ETA {}", format_duration(eta));
            }
        } else if self.paused() {
            right += "  paused";
        }
        right.push(' ');
        let bar_w = (area.width as usize)
            .saturating_sub(label.chars().count() + right.chars().count() + 2)
            .max(4);
        let filled = ((bar_w as f64) * (step as f64 / total as f64)).round() as usize;
        let filled = filled.min(bar_w);
        label.push(' ');
        frame.render_widget(
            Line::from(vec![
                Span::styled(label, th.text),
                Span::styled("█".repeat(filled), th.ok),
                Span::styled("░".repeat(bar_w - filled), th.muted),
                Span::styled(right, th.text),
            ]),
            area,
        );
    }

    fn draw_chart(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let v = &self.view;
        let block = Block::bordered()
            .title(" loss ")
            .border_style(th.border)
            .title_style(th.title);
        let train: Vec<(f64, f64)> = v.steps.iter().map(|s| (s.step as f64, s.loss)).collect();
        let held: Vec<(f64, f64)> = v
            .evals
            .iter()
            .filter(|(s, l, _)| l != "no_prompt" && *s >= v.start_step)
            .map(|(s, _, l)| (*s as f64, *l))
            .collect();
        if train.is_empty() && held.is_empty() {
            frame.render_widget(
                Paragraph::new(Line::styled(
                    "the chart starts with the first step",
                    th.muted,
                ))
                .block(block),
                area,
            );
            return;
        }
        let x0 = v.start_step as f64;
        let x1 = (v.total_steps as f64).max(x0 + 1.0);
        let base: Vec<(f64, f64)> = v
            .no_prompt_loss()
            .map(|l| vec![(x0, l), (x1, l)])
            .unwrap_or_default();
        let ys = train.iter().chain(&held).chain(&base).map(|p| p.1);
        let (mut lo, mut hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        if hi - lo < 1e-6 {
            lo -= 0.5;
            hi += 0.5;
        }
        let pad = (hi - lo) * 0.05;
        let (lo, hi) = (lo - pad, hi + pad);
        let mut sets = vec![
            Dataset::default()
                .name("train")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(th.current)
                .data(&train),
            Dataset::default()
                .name("held-out")
                .marker(Marker::Dot)
                .graph_type(GraphType::Scatter)
                .style(th.ok)
                .data(&held),
        ];
        if !base.is_empty() {
            sets.insert(
                0,
                Dataset::default()
                    .name("no prompt")
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(th.muted)
                    .data(&base),
            );
        }
        let mid = (x0 + x1) / 2.0;
        let chart = Chart::new(sets)
            .block(block)
            .x_axis(
                Axis::default()
                    .bounds([x0, x1])
                    .style(th.muted)
                    .labels(vec![
                        Span::raw(format!("{x0:.0}")),
                        Span::raw(format!("{mid:.0}")),
                        Span::raw(format!("{x1:.0}")),
                    ]),
            )
            .y_axis(
                Axis::default()
                    .bounds([lo, hi])
                    .style(th.muted)
                    .labels(vec![
                        Span::raw(format!("{lo:.2}")),
                        Span::raw(format!("{hi:.2}")),
                    ]),
            )
            .legend_position(Some(ratatui::widgets::LegendPosition::TopRight))
            .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)));
        frame.render_widget(chart, area);
    }

    fn draw_stats(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let v = &self.view;
        let last = v.steps.last();
        let row = |k: &str, val: String| {
            Line::from(vec![
                Span::styled(format!("{k:<10}"), th.muted),
                Span::styled(val, th.text),
            ])
        };
        let dash = || "–".to_string();
        let gpu = match &self.gpu {
            GpuUse::Read { util, used, total } => {
                format!("{util}% · {:.1}/{:.0} GiB", gib(*used), gib(*total))
            }
            GpuUse::NotAvailable(why) => why.clone(),
        };
        let lines = vec![
            row("loss", last.map_or_else(dash, |s| format!("{:.4}", s.loss))),
            row(
                "held-out",
                v.heldout()
                    .map_or_else(dash, |(s, l)| format!("{l:.4} (step {s})")),
            ),
            row(
                "no prompt",
                v.no_prompt_loss().map_or_else(dash, |l| format!("{l:.4}")),
            ),
            row(
                "tokens/s",
                last.map_or_else(dash, |s| thousands(s.tokens_per_s)),
            ),
            row("lr", last.map_or_else(dash, |s| format!("{:.3e}", s.lr))),
            row(
                "grad norm",
                last.map_or_else(dash, |s| format!("{:.4}", s.grad_norm)),
            ),
            row(
                "saved",
                v.checkpoint
                    .as_ref()
                    .map_or_else(|| "not yet".to_string(), |(s, _)| format!("at step {s}")),
            ),
            row("GPU", truncate(&gpu, 20)),
        ];
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::bordered()
                    .title(" now ")
                    .border_style(th.border)
                    .title_style(th.title),
            ),
            area,
        );
    }

    fn draw_sample(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let v = &self.view;
        let title = match &v.sample {
            Some(s) => format!(" sample at step {} ", s.step),
            None => " sample ".to_string(),
        };
        let block = Block::bordered()
            .title(title)
            .border_style(th.border)
            .title_style(th.title);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let Some(s) = &v.sample else {
            let msg = if v.sample_every == 0 && v.started {
                "samples are off (samples.every = 0)".to_string()
            } else if v.sample_every > 0 {
                format!(
                    "a continuation with and without the prompt appears every {} steps",
                    v.sample_every
                )
            } else {
                "a continuation with and without the prompt appears here".to_string()
            };
            frame.render_widget(
                Line::styled(truncate(&msg, inner.width as usize), th.muted),
                inner,
            );
            return;
        };
        const LABEL: usize = 9;
        let w = (inner.width as usize).saturating_sub(LABEL);
        let h = inner.height as usize;
        if h == 0 || w < 4 {
            return;
        }
        let prompt = wrap_text(&s.prompt, usize::MAX / 2, 1)
            .pop()
            .unwrap_or_default();
        let mut lines = vec![Line::from(vec![
            Span::styled(format!("{:<LABEL$}", "text"), th.muted),
            Span::styled(truncate_left(&prompt, w), th.muted),
        ])];
        let rest = h.saturating_sub(1);
        let with_h = rest.div_ceil(2);
        let without_h = rest - with_h;
        for (label, text, n, style) in [
            ("with", &s.with_prompt, with_h, th.current),
            ("without", &s.without_prompt, without_h, th.text),
        ] {
            let wrapped = wrap_text(text, w, n);
            if wrapped.is_empty() && n > 0 {
                lines.push(Line::from(vec![
                    Span::styled(format!("{label:<LABEL$}"), th.muted),
                    Span::styled("(ended at once)", th.muted),
                ]));
            }
            for (i, l) in wrapped.into_iter().enumerate() {
                let lab = if i == 0 { label } else { "" };
                lines.push(Line::from(vec![
                    Span::styled(format!("{lab:<LABEL$}"), th.muted),
                    Span::styled(l, style),
                ]));
            }
        }
        lines.truncate(h);
        frame.render_widget(Paragraph::new(lines), inner);
    }

    fn draw_log(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let block = Block::bordered()
            .title(" log ")
            .border_style(th.border)
            .title_style(th.title);
        let inner = block.inner(area);
        let n = inner.height as usize;
        let w = inner.width as usize;
        let log = &self.view.log;
        let lines: Vec<Line> = log
            .iter()
            .skip(log.len().saturating_sub(n))
            .map(|l| {
                let style = if l.starts_with("error") {
                    th.error
                } else {
                    th.text
                };
                Line::styled(truncate(l, w), style)
            })
            .collect();
        frame.render_widget(Paragraph::new(lines).block(block), area);
    }

    fn draw_footer(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let keys = if self.running() {
            if self.paused() {
                " q detach · s stop · p resume · ? help"
            } else {
                " q detach · s stop · p pause · ? help"
            }
        } else if self.resumable() {
            " q quit · r resume · ? help"
        } else {
            " q quit · ? help"
        };
        let mut spans = vec![Span::styled(keys, th.muted)];
        let room = (area.width as usize).saturating_sub(keys.chars().count() + 3);
        let note = match &self.notice {
            Some((ok, text)) => Some((if *ok { th.ok } else { th.error }, text.clone())),
            None if !self.running() => self.end_note(),
            None => None,
        };
        if let Some((style, text)) = note {
            let text = truncate(&text, room);
            let pad = room.saturating_sub(text.chars().count()) + 2;
            spans.push(Span::raw(" ".repeat(pad)));
            spans.push(Span::styled(text, style));
        }
        frame.render_widget(Line::from(spans), area);
    }

    /// The footer note for a run that has ended.
    fn end_note(&self) -> Option<(Style, String)> {
        let th = &self.theme;
        let st = &self.state;
        match st.state {
            Status::Failed => Some((
                th.error,
                format!(
                    "failed: {}",
                    st.message.as_deref().unwrap_or("no reason recorded")
                ),
            )),
            Status::Stopped => Some((
                th.warning,
                format!(
                    "stopped at step {}; r goes on from its checkpoint",
                    self.view.step()
                ),
            )),
            Status::Finished => self
                .view
                .exports
                .first()
                .map(|e| (th.ok, format!("wrote {e}"))),
            Status::Running => None,
        }
    }

    fn draw_help(&self, frame: &mut Frame, area: Rect) {
        let th = &self.theme;
        let key = |k: &str, what: &str| {
            Line::from(vec![
                Span::styled(format!("  {k:<6}"), th.current),
                Span::styled(what.to_string(), th.text),
            ])
        };
        let lines = vec![
            key("q", "detach: close the dashboard, training goes on"),
            key("", "(come back with `softtune attach`)"),
            key("s", "stop after the current step: checkpoint + exports"),
            key("p", "pause after the current step / resume"),
            key("r", "a stopped or failed run: go on from its checkpoint"),
            key("?", "this help; any key closes it"),
            Line::raw(""),
            Line::styled(
                "  The run lives in its own worker process: closing the",
                th.muted,
            ),
            Line::styled(
                "  terminal or losing the SSH connection does not stop it.",
                th.muted,
            ),
            Line::styled(
                format!(
                    "  Samples: with vs without the prompt, every {} steps.",
                    self.view.sample_every
                ),
                th.muted,
            ),
            Line::styled(
                "  From any shell: softtune runs · attach · pause · resume · stop",
                th.muted,
            ),
        ];
        let r = centered(area, 68, lines.len() as u16 + 2);
        frame.render_widget(Clear, r);
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" Keys ").border_style(th.border)),
            r,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_numbers() {
        assert_eq!(format_duration(0.0), "0:00");
        assert_eq!(format_duration(725.4), "12:05");
        assert_eq!(format_duration(3723.0), "1:02:03");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn wrapping_cuts_long_words_and_marks_truncation() {
        assert_eq!(wrap_text("a bb ccc", 4, 5), vec!["a bb", "ccc"]);
        assert_eq!(wrap_text("abcdefghij", 4, 5), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap_text("one\ntwo", 20, 5), vec!["one ↵ two"]);
        assert_eq!(wrap_text("a\u{1b}[2Jb\tc", 20, 5), vec!["a·[2Jb c"]);
        let cut = wrap_text("aa bb cc dd ee", 5, 2);
        assert_eq!(cut.len(), 2);
        assert!(cut[1].ends_with('…'), "{cut:?}");
        assert!(cut.iter().all(|l| l.chars().count() <= 5), "{cut:?}");
    }

    fn step(step: usize, elapsed_s: f64) -> Event {
        Event::Step {
            step,
            total_steps: 10,
            loss: 3.0,
            grad_norm: 1.0,
            lr: 1e-3,
            tokens_per_s: 100.0,
            elapsed_s,
        }
    }

    #[test]
    fn eta_follows_the_recent_pace() {
        let mut v = RunView {
            total_steps: 10,
            ..RunView::default()
        };
        assert_eq!(v.eta(), None);
        v.apply(&step(1, 10.0));
        assert_eq!(v.eta(), Some(90.0));
        v.apply(&step(2, 12.0));
        v.apply(&step(3, 14.0));
        assert_eq!(
            v.eta(),
            Some(14.0),
            "2 s a step over the last steps, 7 left"
        );
    }

    /// A `started` event of a 10-step run.
    fn started(start_step: usize) -> Event {
        Event::Started {
            model: "m".into(),
            device: "cpu".into(),
            soft_tokens: 4,
            d_embed: 8,
            tokens_per_sequence: 16,
            batch_size: 1,
            grad_accumulation: 1,
            train_rows: 10,
            eval_rows: 1,
            total_steps: 10,
            start_step,
            sample_every: 5,
        }
    }

    #[test]
    fn a_new_start_begins_a_new_history_and_pauses_show() {
        let started = started(0);
        let mut v = RunView::from_events(&[started.clone(), step(1, 1.0)]);
        v.apply(&Event::Paused { step: 1 });
        assert!(v.paused);
        v.apply(&Event::Resumed {
            step: 1,
            paused_s: 3.0,
        });
        assert!(!v.paused);
        v.apply(&started);
        assert!(v.steps.is_empty());
        assert_eq!(v.log.len(), 4, "{:?}", v.log);
    }

    #[test]
    fn a_resumed_run_keeps_its_history_up_to_the_checkpoint() {
        let eval = |step: usize, label: &str, loss: f64| Event::Eval {
            step,
            label: label.into(),
            loss,
        };
        let sample = |step: usize| Event::Sample {
            step,
            prompt: "p".into(),
            with_prompt: "w".into(),
            without_prompt: "o".into(),
        };
        // Steps 1–6, a checkpoint at 4, then the worker dies; resumed from step 4.
        let mut events = vec![
            started(0),
            eval(0, "no_prompt", 5.0),
            eval(0, "initial", 4.5),
        ];
        events.extend((1..=6).map(|i| step(i, i as f64)));
        events.push(eval(4, "step", 4.0));
        events.push(sample(5));
        events.extend([
            started(4),
            eval(0, "no_prompt", 5.0),
            eval(0, "initial", 4.5),
            sample(4),
        ]);
        events.extend((5..=10).map(|i| step(i, 2.0 * (i - 4) as f64)));
        events.push(Event::Finished {
            step: 10,
            stopped: false,
            eval_no_prompt: Some(5.0),
            eval_initial: Some(4.5),
            eval_final: Some(3.0),
            exports: vec!["a.zip".into()],
        });
        let v = RunView::from_events(&events);
        let steps: Vec<usize> = v.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, (1..=10).collect::<Vec<_>>());
        let elapsed: Vec<f64> = v.steps.iter().map(|s| s.elapsed_s).collect();
        assert_eq!(
            elapsed,
            vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0],
            "training time goes on from the checkpoint's step"
        );
        assert_eq!(v.start_step, 0);
        assert_eq!(v.finished, Some(false));
        let labels: Vec<&str> = v.evals.iter().map(|(_, l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            vec!["no_prompt", "initial", "step"],
            "{:?}",
            v.evals
        );
        assert_eq!(v.heldout(), Some((4, 4.0)));
        assert_eq!(v.sample.as_ref().map(|s| s.step), Some(4));

        // A stopped run resumed: the ending is forgotten.
        let mut v = RunView::from_events(&[started(0), step(1, 1.0), step(2, 2.0)]);
        v.apply(&Event::Finished {
            step: 2,
            stopped: true,
            eval_no_prompt: None,
            eval_initial: None,
            eval_final: None,
            exports: vec![],
        });
        assert!(v.ended());
        v.apply(&started(2));
        assert!(!v.ended());
        assert_eq!(v.steps.len(), 2);
        // A different run in the same folder still begins a new history.
        let mut other = started(2);
        if let Event::Started { total_steps, .. } = &mut other {
            *total_steps = 20;
        }
        v.apply(&other);
        assert!(v.steps.is_empty());
    }
}
