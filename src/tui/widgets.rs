//! A single-line text input: insert, delete, cursor movement, Home / End.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;

/// A single-line text input. The cursor is a character index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    text: String,
    cursor: usize,
}

impl Input {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let cursor = text.chars().count();
        Input { text, cursor }
    }

    pub fn value(&self) -> &str {
        &self.text
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn set(&mut self, text: impl Into<String>) {
        *self = Input::new(text);
    }

    fn byte_at(&self, char_idx: usize) -> usize {
        self.text
            .char_indices()
            .nth(char_idx)
            .map_or(self.text.len(), |(i, _)| i)
    }

    /// Handles an editing key; returns whether it was one.
    pub fn handle(&mut self, key: KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.text.chars().count(),
            KeyCode::Char('u') if ctrl => {
                let b = self.byte_at(self.cursor);
                self.text.replace_range(..b, "");
                self.cursor = 0;
            }
            KeyCode::Char(_) if ctrl => return false,
            KeyCode::Char(c) => {
                let b = self.byte_at(self.cursor);
                self.text.insert(b, c);
                self.cursor += 1;
            }
            KeyCode::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    let b = self.byte_at(self.cursor);
                    self.text.remove(b);
                }
            }
            KeyCode::Delete => {
                if self.cursor < self.text.chars().count() {
                    let b = self.byte_at(self.cursor);
                    self.text.remove(b);
                }
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.text.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.text.chars().count(),
            _ => return false,
        }
        true
    }

    /// The visible part of the text for a box `width` cells wide, and the cursor column in it.
    pub fn window(&self, width: usize) -> (String, usize) {
        let width = width.max(1);
        let start = (self.cursor + 1).saturating_sub(width);
        let shown: String = self.text.chars().skip(start).take(width).collect();
        (shown, self.cursor - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn edits() {
        let mut i = Input::new("ab");
        i.handle(k(KeyCode::Left));
        i.handle(k(KeyCode::Char('é')));
        assert_eq!(i.value(), "aéb");
        i.handle(k(KeyCode::Home));
        i.handle(k(KeyCode::Delete));
        assert_eq!(i.value(), "éb");
        i.handle(k(KeyCode::End));
        i.handle(k(KeyCode::Backspace));
        assert_eq!((i.value(), i.cursor()), ("é", 1));
        let long = Input::new("0123456789");
        assert_eq!(long.window(4), ("789".to_string(), 3));
    }
}

/// Completes the last component of a path the way a shell does: the longest common prefix
/// of the entries in its folder that start with it (hidden entries only when asked for), with
/// a trailing `/` when that is a unique folder. `None` when nothing would be added or the
/// text already names an existing file or folder (then Tab moves to the next field).
pub fn complete_path(text: &str) -> Option<String> {
    if text.is_empty() || std::path::Path::new(text).exists() {
        return None;
    }
    let (dir, prefix) = match text.rfind('/') {
        Some(i) => (&text[..=i], &text[i + 1..]),
        None => ("", text),
    };
    let listed = if dir.is_empty() { "." } else { dir };
    let mut names: Vec<(String, bool)> = std::fs::read_dir(listed)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hidden_ok = prefix.starts_with('.') || !name.starts_with('.');
            (name.starts_with(prefix) && hidden_ok).then(|| (name, e.path().is_dir()))
        })
        .collect();
    names.sort();
    let first = &names.first()?.0;
    let common = names.iter().fold(first.clone(), |acc, (n, _)| {
        acc.chars()
            .zip(n.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect()
    });
    let mut out = format!("{dir}{common}");
    if names.len() == 1 && names[0].1 {
        out.push('/');
    }
    (out != text).then_some(out)
}

#[cfg(test)]
mod completion_tests {
    use super::complete_path;

    #[test]
    fn completes_like_a_shell() {
        // cargo runs tests in the crate root.
        assert_eq!(complete_path("demo/kj").as_deref(), Some("demo/kjv/"));
        assert_eq!(
            complete_path("demo/kjv/gen").as_deref(),
            Some("demo/kjv/genesis.txt")
        );
        assert_eq!(
            complete_path("tests/fixtures/gpt_n").as_deref(),
            Some("tests/fixtures/gpt_neo")
        );
        assert_eq!(
            complete_path("demo/kjv/genesis.txt"),
            None,
            "nothing to add"
        );
        assert_eq!(complete_path("no-such-folder/x"), None);
    }
}

/// A `w`×`h` rectangle in the middle of `area` (clipped to it).
pub(crate) fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

pub(crate) fn truncate_left(s: &str, n: usize) -> String {
    let c = s.chars().count();
    if c <= n {
        s.to_string()
    } else {
        let t: String = s.chars().skip(c - n.saturating_sub(1)).collect();
        format!("…{t}")
    }
}
