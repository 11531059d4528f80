//! Text inputs: a single line (insert, delete, cursor movement, Home / End), and the same
//! text edited over several lines (Enter breaks the line, ↑ / ↓ move between lines).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};

use super::app::{MIN_HEIGHT, MIN_WIDTH};
use super::theme::Theme;

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

    /// (start, end) char indices of every line (split at `\n`, which belongs to no line).
    fn line_spans(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        for c in self.text.chars() {
            if c == '\n' {
                out.push((start, i));
                start = i + 1;
            }
            i += 1;
        }
        out.push((start, i));
        out
    }

    /// Line and column of the cursor.
    fn line_col(&self) -> (usize, usize) {
        let spans = self.line_spans();
        let line = spans
            .iter()
            .position(|&(a, b)| self.cursor >= a && self.cursor <= b)
            .unwrap_or(spans.len() - 1);
        (line, self.cursor - spans[line].0)
    }

    /// Handles a key of the multi-line editor: Enter breaks the line, ↑ / ↓ move between
    /// lines, Home / End go to the line's ends; other keys as on one line. Returns whether
    /// the key was used (↑ on the first line and ↓ on the last are not).
    pub fn handle_multiline(&mut self, key: KeyEvent) -> bool {
        let spans = self.line_spans();
        let (line, col) = self.line_col();
        match key.code {
            KeyCode::Enter => {
                let b = self.byte_at(self.cursor);
                self.text.insert(b, '\n');
                self.cursor += 1;
            }
            KeyCode::Up | KeyCode::Down => {
                let target = match key.code {
                    KeyCode::Up if line > 0 => line - 1,
                    KeyCode::Down if line + 1 < spans.len() => line + 1,
                    _ => return false,
                };
                let (a, b) = spans[target];
                self.cursor = a + col.min(b - a);
            }
            KeyCode::Home => self.cursor = spans[line].0,
            KeyCode::End => self.cursor = spans[line].1,
            _ => return self.handle(key),
        }
        true
    }

    /// The text wrapped to `width` cells in `rows` rows, scrolled so the cursor is visible,
    /// and the cursor's (row, column) in that view.
    pub fn view(&self, width: usize, rows: usize) -> (Vec<String>, (usize, usize)) {
        let width = width.max(1);
        let rows = rows.max(1);
        let chars: Vec<char> = self.text.chars().collect();
        let mut wrapped: Vec<String> = Vec::new();
        let mut cursor = (0, 0);
        for (a, b) in self.line_spans() {
            let mut start = a;
            loop {
                let end = (start + width).min(b);
                if self.cursor >= start && (self.cursor < end || (self.cursor == end && (end == b)))
                {
                    cursor = (wrapped.len(), self.cursor - start);
                }
                wrapped.push(chars[start..end].iter().collect());
                if end >= b {
                    break;
                }
                start = end;
            }
        }
        if cursor.1 >= width {
            // At the end of a full row: show it at the start of the next one.
            cursor = (cursor.0 + 1, 0);
            if cursor.0 == wrapped.len() {
                wrapped.push(String::new());
            }
        }
        let first = (cursor.0 + 1).saturating_sub(rows);
        let shown: Vec<String> = wrapped.into_iter().skip(first).take(rows).collect();
        (shown, (cursor.0 - first, cursor.1))
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

    #[test]
    fn multiline_editing_and_view() {
        let mut i = Input::new("");
        for c in "ab".chars() {
            i.handle_multiline(k(KeyCode::Char(c)));
        }
        i.handle_multiline(k(KeyCode::Enter));
        for c in "cdefg".chars() {
            i.handle_multiline(k(KeyCode::Char(c)));
        }
        assert_eq!(i.value(), "ab\ncdefg");
        // ↑ keeps the column where the line allows it; ↓ comes back.
        assert!(i.handle_multiline(k(KeyCode::Up)));
        assert_eq!(i.cursor(), 2, "end of \"ab\"");
        assert!(!i.handle_multiline(k(KeyCode::Up)), "no line above");
        i.handle_multiline(k(KeyCode::Home));
        assert_eq!(i.cursor(), 0);
        assert!(i.handle_multiline(k(KeyCode::Down)));
        assert_eq!(i.cursor(), 3, "start of the second line");
        i.handle_multiline(k(KeyCode::End));
        assert_eq!(i.cursor(), 8);
        // Wrapped at 3 columns: ab / cde / fg, cursor after g.
        assert_eq!(
            i.view(3, 5),
            (vec!["ab".into(), "cde".into(), "fg".into()], (2, 2))
        );
        // Two rows scroll to the cursor.
        assert_eq!(i.view(3, 2), (vec!["cde".into(), "fg".into()], (1, 2)));
        // A full last row puts the cursor on a fresh row.
        let full = Input::new("abc");
        assert_eq!(full.view(3, 3), (vec!["abc".into(), "".into()], (1, 0)));
        // Backspace at a line start joins the lines.
        i.handle_multiline(k(KeyCode::Up));
        i.handle_multiline(k(KeyCode::Down));
        i.handle_multiline(k(KeyCode::Home));
        i.handle_multiline(k(KeyCode::Backspace));
        assert_eq!(i.value(), "abcdefg");
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

/// Draws the "terminal too small" message (with `hint` as its last line) when the frame is
/// below 80×24; returns whether it did (then nothing else should be drawn).
pub(crate) fn draw_too_small(frame: &mut Frame, theme: &Theme, hint: Line<'static>) -> bool {
    let area = frame.area();
    if area.width >= MIN_WIDTH && area.height >= MIN_HEIGHT {
        return false;
    }
    let msg = vec![
        Line::styled("terminal too small", theme.error),
        Line::styled(
            format!(
                "need {MIN_WIDTH}×{MIN_HEIGHT}, have {}×{}",
                area.width, area.height
            ),
            theme.text,
        ),
        hint,
    ];
    let y = area.height.saturating_sub(3) / 2;
    let r = Rect::new(area.x, area.y + y, area.width, area.height.min(3));
    frame.render_widget(Paragraph::new(msg).centered().wrap(Wrap { trim: true }), r);
    true
}
