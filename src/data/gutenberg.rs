//! Project Gutenberg's header and license: books downloaded from Project Gutenberg (plain
//! text or EPUB) open with a header (title, release date, "This ebook is for the use of
//! anyone…") that ends in a `*** START OF THE PROJECT GUTENBERG EBOOK … ***` line, and close
//! with an `*** END OF THE PROJECT GUTENBERG EBOOK … ***` line followed by about 18 KB of
//! license. They are not the author's prose: a dataset of twenty such books would spend 4%
//! of its tokens on the license. [`strip`] keeps the text between the markers (older books
//! say "THIS PROJECT GUTENBERG", and end the text with an "End of the Project Gutenberg
//! EBook of …" line before the marker, which goes too).

/// Bumped when [`strip`] changes; enters the token cache's key of text files that
/// [`mentions`] Project Gutenberg.
pub const VERSION: &str = "gutenberg-1";

/// Whether `bytes` mention Project Gutenberg (ASCII, any case): a superset of the texts
/// [`strip`] changes, cheap enough to check every dataset file for the cache key.
pub fn mentions(bytes: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"project gutenberg";
    bytes
        .windows(NEEDLE.len())
        .any(|w| w[0] | 0x20 == b'p' && w.eq_ignore_ascii_case(NEEDLE))
}

/// `text` without the Project Gutenberg header before the START marker and the license
/// from the END marker on (see the module documentation); a text without the markers is
/// returned as it is.
pub fn strip(text: String) -> String {
    let mut start = None;
    let mut end = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        match marker(line) {
            Some(Marker::Start) if start.is_none() && end.is_none() => {
                start = Some(offset + line.len());
            }
            Some(Marker::End) if end.is_none() => end = Some(offset),
            _ => {}
        }
        offset += line.len();
    }
    if start.is_none() && end.is_none() {
        return text;
    }
    let from = start.unwrap_or(0);
    let mut to = end.unwrap_or(text.len()).max(from);
    // Older books end the text with "End of the Project Gutenberg EBook of …" (and end
    // that with "by AUTHOR") just before the END marker.
    if end.is_some() {
        let body = &text[from..to];
        let last = body.trim_end().rfind('\n').map_or(0, |i| i + 1);
        let line = body[last..].trim_start().to_ascii_lowercase();
        if line.starts_with("end of the project gutenberg")
            || line.starts_with("end of project gutenberg")
        {
            to = from + last;
        }
    }
    text[from..to].trim_matches('\n').to_string()
}

enum Marker {
    Start,
    End,
}

/// Whether `line` is a START or END marker line (`*** START OF THE PROJECT GUTENBERG EBOOK
/// … ***`, `***START OF THIS PROJECT GUTENBERG EBOOK …`).
fn marker(line: &str) -> Option<Marker> {
    let line = line.trim();
    if !line.starts_with('*') || line.len() > 300 {
        return None;
    }
    let words = line
        .trim_start_matches('*')
        .to_ascii_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for (prefix, marker) in [("START OF", Marker::Start), ("END OF", Marker::End)] {
        if let Some(rest) = words.strip_prefix(prefix)
            && (rest.starts_with(" THE PROJECT GUTENBERG")
                || rest.starts_with(" THIS PROJECT GUTENBERG"))
        {
            return Some(marker);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "\u{feff}The Project Gutenberg eBook of Pride and Prejudice\n\nThis ebook is for the use of anyone anywhere in the United States and\nmost other parts of the world at no cost.\n\nTitle: Pride and Prejudice\n\nAuthor: Jane Austen\n\n*** START OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***\n\n\n\n";
    const BODY: &str = "Chapter I.\n\nIt is a truth universally acknowledged, that a single man in possession\nof a good fortune, must be in want of a wife.";
    const FOOTER: &str = "\n\n\n\n*** END OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***\n\nUpdated editions will replace the previous one--the old editions will\nbe renamed.\n\nSTART: FULL LICENSE\n\nTHE FULL PROJECT GUTENBERG LICENSE\n";

    #[test]
    fn the_header_and_license_go() {
        let book = format!("{HEADER}{BODY}{FOOTER}");
        assert!(mentions(book.as_bytes()));
        assert_eq!(strip(book), BODY);
        // Older markers: "THIS", no space after the stars, and the "End of" line.
        let old = format!(
            "Project Gutenberg's Alice, by Lewis Carroll\n\n***START OF THIS PROJECT GUTENBERG EBOOK ALICE***\n\n{BODY}\n\n\n\nEnd of Project Gutenberg's Alice's Adventures in Wonderland, by Lewis Carroll\n\n*** END OF THIS PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***\n\nlicense"
        );
        assert_eq!(strip(old), BODY);
        // Only one of the markers: only that side is cut.
        assert_eq!(strip(format!("{HEADER}{BODY}")), BODY);
        assert_eq!(strip(format!("{BODY}{FOOTER}")), BODY);
    }

    #[test]
    fn other_texts_are_left_alone() {
        let text = "Chapter 1\n\n*** START OF something else ***\n\nHe read a Project Gutenberg book.\n\n*** END OF PART ONE ***\n".to_string();
        assert_eq!(strip(text.clone()), text);
        assert!(mentions(b"... PROJECT gutenberg ..."));
        assert!(!mentions(BODY.as_bytes()));
    }
}
