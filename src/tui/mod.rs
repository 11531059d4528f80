//! The wizard: `softtune` with no arguments, on a terminal. Seven guided steps with
//! up-front validation, profiles and themes. The wizard never trains: Start hands the
//! configuration back to the caller.

pub mod app;
pub mod steps;
pub mod theme;
pub mod widgets;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use crossterm::event::{self, Event};

pub use app::{Action, App, Machine};
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
