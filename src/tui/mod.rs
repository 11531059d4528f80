//! The wizard: `softtune` with no arguments, on a terminal. Seven guided steps with
//! up-front validation, profiles and themes. The wizard never trains: Start hands the
//! configuration back to the caller.

pub mod app;
pub mod dashboard;
pub mod steps;
pub mod theme;
pub mod widgets;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use crossterm::event::{self, Event};

pub use app::{Action, App, Machine};
pub use dashboard::{DashAction, Dashboard, GpuMonitor, RunView};
pub use theme::Theme;

use crate::config::RunConfig;

/// Whether stdin and stdout are both terminals (the wizard needs both).
pub fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Runs the wizard on the terminal. Returns the configuration when the user presses Start,
/// `None` when they quit. The terminal is restored on every exit, panics included.
pub fn run_wizard(
    initial: RunConfig,
    profile: Option<(String, PathBuf)>,
    theme: Theme,
) -> Result<Option<RunConfig>> {
    if theme.name == "mono" {
        // crossterm 0.29 under NO_COLOR still emits a bare reset that cancels attributes.
        crossterm::style::force_color_output(true);
    }
    let machine = Machine::probe();
    let mut app = App::new(initial, profile, theme, machine);
    // try_init installs a panic hook that restores the terminal before taking it.
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> Result<Option<RunConfig>> {
        loop {
            terminal.draw(|f| app.draw(f))?;
            // Stop on read errors (a vanished terminal) rather than spinning.
            if !event::poll(Duration::from_millis(500))? {
                continue;
            }
            match event::read()? {
                Event::Key(k) => match app.handle_key(k) {
                    Action::Continue => {}
                    Action::Quit => return Ok(None),
                    Action::Start(cfg) => return Ok(Some(*cfg)),
                },
                Event::Resize(..) => terminal.autoresize()?,
                _ => {}
            }
        }
    })();
    ratatui::restore();
    result
}

/// How often the dashboard re-reads the run's state and the GPU.
const STATE_EVERY: Duration = Duration::from_secs(1);
const GPU_EVERY: Duration = Duration::from_secs(2);

/// Shows a run's dashboard until the user detaches (`q`), or the terminal goes away (the
/// dashboard then ends; it never spins). Training is never affected by leaving.
pub fn run_dashboard(info: &crate::runs::RunInfo, theme: Theme) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use crate::runs::state::{Status, hostname, load_checked};

    if theme.name == "mono" {
        crossterm::style::force_color_output(true);
    }
    let mut tail = crate::runs::tail::EventTail::new(&info.events_path());
    let view = RunView::from_events(&tail.poll()?);
    let remote = |st: &crate::runs::state::RunState| st.host.is_some() && st.host != hostname();
    let mut gpu = GpuMonitor::new();
    let first = gpu.read(&view.device, remote(&info.state));
    let mut dash = Dashboard::new(&info.id, info.state.clone(), view, first, theme);
    // A hang-up (the SSH connection dropped) or a termination request ends the dashboard.
    let gone = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGHUP, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, gone.clone())?;
    }
    let mut terminal = ratatui::try_init()?;
    let (mut last_state, mut last_gpu) = (Instant::now(), Instant::now());
    let result = (|| -> Result<()> {
        while !gone.load(Ordering::SeqCst) {
            for e in tail.poll()? {
                dash.view.apply(&e);
            }
            if last_state.elapsed() >= STATE_EVERY && dash.state.state == Status::Running {
                last_state = Instant::now();
                if let Ok(st) = load_checked(&info.dir) {
                    dash.state = st;
                }
            }
            if last_gpu.elapsed() >= GPU_EVERY && dash.running() {
                last_gpu = Instant::now();
                dash.gpu = gpu.read(&dash.view.device, remote(&dash.state));
            }
            if terminal.draw(|f| dash.draw(f)).is_err() {
                return Ok(());
            }
            // Errors here mean the terminal is gone: leave instead of spinning.
            match event::poll(Duration::from_millis(250)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => return Ok(()),
            }
            match event::read() {
                Ok(Event::Key(k)) => match dash.handle_key(k) {
                    DashAction::Continue => {}
                    DashAction::Detach => return Ok(()),
                    DashAction::Send(req) => {
                        let current = crate::runs::RunInfo {
                            state: dash.state.clone(),
                            ..info.clone()
                        };
                        match crate::runs::request(&current, req) {
                            Ok(_) => dash.set_notice(true, req.sent_note()),
                            Err(e) => dash.set_notice(false, format!("{e:#}")),
                        }
                    }
                },
                Ok(Event::Resize(..)) => {
                    let _ = terminal.autoresize();
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}
