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

/// What the terminal had to say.
pub enum Input {
    Events(Vec<Event>),
    /// Nothing within the timeout.
    Idle,
    /// The terminal hung up or failed: stop reading it.
    Gone,
}

/// Waits up to `timeout` for input on the terminal (stdin) and returns every event that
/// arrived. crossterm 0.29 keeps re-reading a terminal that has hung up (end of file) at
/// full speed inside its own poll, so the hang-up is detected here first, with `poll(2)`.
pub fn next_input(timeout: Duration) -> Input {
    #[cfg(unix)]
    {
        let mut p = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc < 0 {
            return if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                Input::Idle
            } else {
                Input::Gone
            };
        }
        if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Input::Gone;
        }
        if p.revents & libc::POLLIN == 0 {
            // Resizes arrive by signal, not on stdin; the next draw adapts to them.
            return Input::Idle;
        }
    }
    #[cfg(not(unix))]
    match event::poll(timeout) {
        Ok(true) => {}
        Ok(false) => return Input::Idle,
        Err(_) => return Input::Gone,
    }
    let mut out = Vec::new();
    loop {
        match event::poll(Duration::ZERO) {
            Ok(true) => match event::read() {
                Ok(e) => out.push(e),
                Err(_) => return Input::Gone,
            },
            Ok(false) => break,
            Err(_) => return Input::Gone,
        }
    }
    if out.is_empty() {
        Input::Idle
    } else {
        Input::Events(out)
    }
}

/// Gives the terminal back. A terminal that has gone away is left alone: restoring it
/// would fail, and ratatui reports such failures on standard error, which is gone too.
fn leave(terminal: ratatui::DefaultTerminal, gone: bool) {
    if gone {
        std::mem::forget(terminal);
    } else {
        drop(terminal);
        let _ = ratatui::try_restore();
    }
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
    let mut gone_terminal = false;
    let result = (|| -> Result<Option<RunConfig>> {
        loop {
            if let Err(e) = terminal.draw(|f| app.draw(f)) {
                gone_terminal = true;
                return Err(e.into());
            }
            let events = match next_input(Duration::from_millis(500)) {
                Input::Events(e) => e,
                Input::Idle => continue,
                // The terminal went away: nothing to show, nobody to ask.
                Input::Gone => {
                    gone_terminal = true;
                    return Ok(None);
                }
            };
            for e in events {
                match e {
                    Event::Key(k) => match app.handle_key(k) {
                        Action::Continue => {}
                        Action::Quit => return Ok(None),
                        Action::Start(cfg) => return Ok(Some(*cfg)),
                    },
                    Event::Resize(..) => terminal.autoresize()?,
                    _ => {}
                }
            }
        }
    })();
    leave(terminal, gone_terminal);
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

    use crate::runs::state::{hostname, load_checked};

    if theme.name == "mono" {
        crossterm::style::force_color_output(true);
    }
    let mut tail = crate::runs::tail::EventTail::new(&info.events_path());
    let view = RunView::from_events(&tail.poll()?);
    let remote = |st: &crate::runs::state::RunState| st.host.is_some() && st.host != hostname();
    let mut gpu = GpuMonitor::new();
    let first = gpu.read(&view.device, remote(&info.state));
    let mut dash = Dashboard::new(&info.id, info.state.clone(), view, first, theme);
    // A termination request ends the dashboard and restores the terminal. A hang-up (the
    // SSH connection dropped) keeps its default action, ending the process at once: there
    // is no terminal left to restore.
    let gone = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, gone.clone())?;
    let mut terminal = ratatui::try_init()?;
    let mut gone_terminal = false;
    let (mut last_state, mut last_gpu) = (Instant::now(), Instant::now());
    let result = (|| -> Result<()> {
        while !gone.load(Ordering::SeqCst) {
            for e in tail.poll()? {
                dash.view.apply(&e);
            }
            // Also when the run has ended: `softtune resume` from another shell starts it
            // again, and this dashboard follows.
            if last_state.elapsed() >= STATE_EVERY {
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
                gone_terminal = true;
                return Ok(());
            }
            let events = match next_input(Duration::from_millis(250)) {
                Input::Events(e) => e,
                Input::Idle => continue,
                // The terminal is gone: leave instead of spinning.
                Input::Gone => {
                    gone_terminal = true;
                    return Ok(());
                }
            };
            for e in events {
                match e {
                    Event::Key(k) => match dash.handle_key(k) {
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
                        DashAction::Restart => {
                            let current = crate::runs::RunInfo {
                                state: dash.state.clone(),
                                ..info.clone()
                            };
                            match crate::runs::launch::resume(&current) {
                                Ok(r) => {
                                    if let Ok(st) = crate::runs::state::RunState::read(&info.dir) {
                                        dash.state = st;
                                    }
                                    dash.set_notice(
                                        true,
                                        match r.from_step {
                                            Some(s) => format!("resuming from step {s}"),
                                            None => "no checkpoint yet: starting again".into(),
                                        },
                                    );
                                }
                                Err(e) => dash.set_notice(false, format!("{e:#}")),
                            }
                        }
                    },
                    Event::Resize(..) => {
                        let _ = terminal.autoresize();
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    })();
    leave(terminal, gone_terminal);
    result
}
