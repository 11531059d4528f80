//! The text of word-processor documents (`.docx`, `.odt`) as the readers build it: one
//! paragraph at a time, paragraphs separated by a blank line.

/// Text being built a paragraph at a time. Within a paragraph, text is kept as written
/// (tabs and runs of spaces too), except that spaces and tabs at the start and end of each
/// line are dropped (indentation and trailing blanks are layout, not prose), a no-break
/// space becomes a space and soft hyphens (U+00AD, hyphenation hints) are dropped. Empty
/// paragraphs vanish, and a paragraph holds at most one empty line in a row.
#[derive(Default)]
pub(super) struct Paragraphs {
    text: String,
    current: String,
}

impl Paragraphs {
    /// Appends `s` to the current paragraph.
    pub fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            self.push(c);
        }
    }

    /// Appends `c` to the current paragraph (`'\n'`: a line break).
    pub fn push(&mut self, c: char) {
        match c {
            '\u{AD}' | '\r' => {}
            '\u{A0}' => self.current.push(' '),
            c => self.current.push(c),
        }
    }

    /// Whether the current paragraph ends in a space, or has no text yet.
    pub fn at_space(&self) -> bool {
        self.current.is_empty() || self.current.ends_with([' ', '\t', '\n'])
    }

    /// Ends the current paragraph.
    pub fn end(&mut self) {
        let mut lines: Vec<&str> = Vec::new();
        for line in self.current.split('\n') {
            let line = line.trim_matches([' ', '\t']);
            if !line.is_empty() || lines.last().is_some_and(|l| !l.is_empty()) {
                lines.push(line);
            }
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        if !lines.is_empty() {
            if !self.text.is_empty() {
                self.text.push_str("\n\n");
            }
            self.text.push_str(&lines.join("\n"));
        }
        self.current.clear();
    }

    /// The text, the current paragraph ended.
    pub fn finish(mut self) -> String {
        self.end();
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_trimmed_and_separated_by_a_blank_line() {
        let mut p = Paragraphs::default();
        p.push_str("\t  It was\u{A0}a dark  night.\u{AD}  ");
        p.end();
        p.end();
        p.push_str("  \n\t\n");
        p.end();
        p.push_str("First line \n\n\n  second\tline\r\n\n");
        assert!(p.at_space());
        p.push_str("x");
        assert!(!p.at_space());
        assert_eq!(
            p.finish(),
            "It was a dark  night.\n\nFirst line\n\nsecond\tline\n\nx"
        );
        assert_eq!(Paragraphs::default().finish(), "");
    }
}
