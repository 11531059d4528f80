//! Hard-wrapped text: plain-text books (Project Gutenberg's among them), old e-texts and
//! e-mails break every line at a fixed width, about 70 characters, in the middle of
//! sentences. A model trained on them learns to do the same: its continuations break lines
//! every few words. [`detect`] tells whether a text is wrapped and at what width; [`join`]
//! joins the lines of its paragraphs again (the dataset's `unwrap` setting).
//!
//! A line break is judged a wrap when the next line's first word would not have fitted on
//! the line within the wrap width: that is why a wrapping editor broke the line there. A
//! break the next word would have fitted before was made on purpose (verse, an address, a
//! list, a short last line of a paragraph) and stays, as does a break before a line indented
//! more than the one before it (verse, quotations, the first line of a paragraph in books
//! that indent instead of leaving a blank line). Blank lines, which separate paragraphs,
//! always stay. Text indented as a whole (a quoted letter, a license) joins as any other,
//! its paragraphs keeping their first line's indentation.
//!
//! A text is judged wrapped when it has enough line breaks inside paragraphs, at least half
//! of them wraps, and a wrap width of at most [`MAX_WIDTH`]. So a text with one paragraph
//! per line, a book from an EPUB, and a collection of verse are left alone.

/// Bumped when [`detect`] or [`join`] changes; enters the token cache's key when the
/// dataset's `unwrap` is on.
pub const VERSION: &str = "unwrap-1";

/// The widest wrap width judged a wrap (typewriter-era texts use 60–80 characters).
pub const MAX_WIDTH: usize = 120;

/// The fewest line breaks inside paragraphs a text needs to be judged wrapped.
const MIN_BREAKS: usize = 20;

/// The share of non-blank lines at most as long as the wrap width, in per mille: the width
/// is that percentile of line lengths, so that a few overlong lines (a table, an address)
/// do not set it.
const WIDTH_PERMILLE: usize = 950;

/// The wrap width of `text` when it is hard-wrapped (see the module documentation), in
/// characters; `None` when it is not.
pub fn detect(text: &str) -> Option<usize> {
    let width = width(text)?;
    let (mut breaks, mut wraps) = (0usize, 0usize);
    for (a, b) in pairs(text) {
        breaks += 1;
        wraps += usize::from(is_wrap(a, b, width));
    }
    (breaks >= MIN_BREAKS && 2 * wraps >= breaks).then_some(width)
}

/// `text` with the line breaks that are wraps at `width` (see the module documentation)
/// replaced by a space, or by nothing after a dash that ends a word (`well-` `known`); the
/// blanks around a joined break go with it. Other breaks, and the rest of every line, stay
/// as they are.
pub fn join(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    let mut joined = false;
    while let Some(raw) = lines.next() {
        // A line joined to the one before loses its indentation (judging the next break
        // takes it into account).
        let line = if joined { raw.trim_start() } else { raw };
        joined = false;
        match lines.peek() {
            Some(next) if !raw.trim().is_empty() && is_wrap(raw, next, width) => {
                let line = line.trim_end();
                out.push_str(line);
                if !ends_in_dash(line) {
                    out.push(' ');
                }
                joined = true;
            }
            Some(_) => {
                out.push_str(line);
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The [`WIDTH_PERMILLE`] percentile of the lengths of `text`'s non-blank lines; `None`
/// when it is over [`MAX_WIDTH`] or the text has no such lines.
fn width(text: &str) -> Option<usize> {
    // Lengths 0..=MAX_WIDTH, then one bucket for the longer lines.
    let mut counts = [0usize; MAX_WIDTH + 2];
    let mut lines = 0;
    for line in text.split('\n') {
        let line = line.trim_end();
        if !line.is_empty() {
            counts[line.chars().count().min(MAX_WIDTH + 1)] += 1;
            lines += 1;
        }
    }
    let wanted = (lines * WIDTH_PERMILLE).div_ceil(1000).max(1);
    let mut seen = 0;
    for (len, n) in counts.iter().enumerate().take(MAX_WIDTH + 1) {
        seen += n;
        if seen >= wanted {
            return (lines > 0).then_some(len);
        }
    }
    None
}

/// Pairs of consecutive lines that are both non-blank: the line breaks inside paragraphs.
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut lines = text.split('\n');
    let mut previous = lines.next();
    lines.filter_map(move |line| {
        let pair = previous.map(|p| (p, line));
        previous = Some(line);
        pair.filter(|(a, b)| !a.trim().is_empty() && !b.trim().is_empty())
    })
}

/// Whether the break between the non-blank lines `a` and `b` is a wrap at `width`: `b` is
/// not indented more than `a`, and its first word would not have fitted after `a`.
fn is_wrap(a: &str, b: &str, width: usize) -> bool {
    let words = b.trim_start();
    if words.is_empty() || indent(b) > indent(a) {
        return false;
    }
    let a = a.trim_end();
    let gap = usize::from(!ends_in_dash(a));
    let word = words.split(char::is_whitespace).next().unwrap_or(words);
    a.chars().count() + gap + word.chars().count() > width
}

/// The number of blanks that start `line`.
fn indent(line: &str) -> usize {
    line.chars().take_while(|c| c.is_whitespace()).count()
}

/// Whether `line` ends in a hyphen or dash attached to a word (`well-`, `said--`, `and—`),
/// where a wrapping editor may break a line without a space.
fn ends_in_dash(line: &str) -> bool {
    let mut rev = line.chars().rev();
    matches!(rev.next(), Some('-' | '\u{2010}' | '\u{2013}' | '\u{2014}'))
        && rev.next().is_some_and(|c| !c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Greedy wrapping at `width`, as editors and `fmt` do it: words go on a line while
    /// they fit.
    fn wrap(paragraph: &str, width: usize) -> String {
        let mut out = String::new();
        let mut line = String::new();
        for word in paragraph.split(' ') {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                out.push_str(&line);
                out.push('\n');
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&line);
        out
    }

    /// Prose: paragraphs of varied length, with dialogue (short paragraphs), em-dashes
    /// and hyphenated words.
    fn prose() -> Vec<String> {
        let words = "the of and a to in he was that it his her with as had for she on at \
            by but not be which have from this they all were an my so one said when there \
            would who been their if more what no out into very could about only like then \
            than them some well-known—and over such after before good-natured himself \
            never little things house morning together evening Elizabeth Darcy Bingley";
        let words: Vec<&str> = words.split_whitespace().collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        (0..60)
            .map(|p| {
                let n = if p % 3 == 0 {
                    4 + next(8)
                } else {
                    20 + next(120)
                };
                let mut s: Vec<&str> = (0..n).map(|_| words[next(words.len())]).collect();
                s[0] = "It";
                format!("{}.", s.join(" "))
            })
            .collect()
    }

    #[test]
    fn wrapped_prose_is_found_and_joined_back() {
        let paragraphs = prose();
        let text = paragraphs.join("\n\n");
        for width in [60, 70, 72, 80, 100] {
            let wrapped: Vec<String> = paragraphs.iter().map(|p| wrap(p, width)).collect();
            let wrapped = wrapped.join("\n\n");
            let found = detect(&wrapped).expect("wrapped prose");
            assert!(
                (width - 8..=width).contains(&found),
                "{width}: found {found}"
            );
            assert_eq!(join(&wrapped, found), text, "width {width}");
            // Unwrapped text is not wrapped.
            assert_eq!(detect(&text), None);
        }
    }

    #[test]
    fn breaks_made_on_purpose_stay() {
        let paragraphs = prose();
        let mut text = paragraphs
            .iter()
            .map(|p| wrap(p, 70))
            .collect::<Vec<_>>()
            .join("\n\n");
        // A letter's address, verse (indented and not), a list: breaks the next word would
        // have fitted before.
        let kept = "\n\nMr. Bennet\nLongbourn House\nHertfordshire\n\n\
            Shall I compare thee to a summer's day?\n\
            Thou art more lovely and more temperate:\n\
            \x20 Rough winds do shake the darling buds of May,\n\
            \x20 And summer's lease hath all too short a date;\n\n\
            - eggs\n- a loaf of bread\n- milk\n";
        text.push_str(kept);
        let width = detect(&text).unwrap();
        assert!(join(&text, width).ends_with(kept), "{}", join(&text, width));
        // Indented paragraphs (no blank line between them) stay apart. The indentation
        // counts in the width: it is wrapped as part of the first word.
        let indented = paragraphs
            .iter()
            .map(|p| wrap(&format!("____{p}"), 70).replacen("____", "    ", 1))
            .collect::<Vec<_>>()
            .join("\n");
        let width = detect(&indented).unwrap();
        let joined = join(&indented, width);
        assert_eq!(joined.lines().count(), paragraphs.len());
        for (line, p) in joined.lines().zip(&paragraphs) {
            assert_eq!(line, format!("    {p}"));
        }
    }

    /// Text indented as a whole (a license, a quoted letter) joins; each paragraph keeps
    /// its first line's indentation.
    #[test]
    fn indented_text_joins_within_its_indentation() {
        let paragraphs = prose();
        let wrapped = paragraphs
            .iter()
            .map(|p| {
                wrap(p, 64)
                    .lines()
                    .map(|l| format!("      {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        let width = detect(&wrapped).unwrap();
        let expected: Vec<String> = paragraphs.iter().map(|p| format!("      {p}")).collect();
        assert_eq!(join(&wrapped, width), expected.join("\n\n"));
    }

    #[test]
    fn dashes_at_line_ends_join_without_a_space() {
        let x = "x".repeat(60);
        let text = format!("{x} well-\nknown {x} and--\nso {x} and —\nwe {x} and\u{2014}\nthen");
        assert_eq!(
            join(&text, 70),
            format!("{x} well-known {x} and--so {x} and — we {x} and\u{2014}then")
        );
        // A hyphen alone is not a word's.
        assert_eq!(
            join(&format!("{x} so -\nthen"), 64),
            format!("{x} so - then")
        );
    }

    #[test]
    fn other_texts_are_not_wrapped() {
        let paragraphs = prose();
        // One paragraph per line, with and without blank lines between them.
        assert_eq!(detect(&paragraphs.join("\n")), None);
        assert_eq!(detect(&paragraphs.join("\n\n")), None);
        // Short lines of a chat log or verse, one per line: few of their breaks are wraps.
        let verse: String = (0..40)
            .map(|i| format!("{} the summer's day\n", "and so ".repeat(1 + i % 5)))
            .collect();
        assert_eq!(detect(&verse), None);
        // Too few breaks to judge; nothing at all.
        assert_eq!(detect(&wrap(&paragraphs[1], 70)), None);
        assert_eq!(detect(""), None);
        assert_eq!(detect("\n\n\n"), None);
        // Wrapped wider than any typewriter: not judged.
        let wide = paragraphs
            .iter()
            .map(|p| wrap(p, 200))
            .collect::<Vec<_>>()
            .join("\n\n");
        assert_eq!(detect(&wide), None);
    }

    #[test]
    fn join_keeps_what_it_does_not_join() {
        assert_eq!(join("", 70), "");
        assert_eq!(join("one\n\ntwo\n", 70), "one\n\ntwo\n");
        // A wrapped line's trailing blanks go with its break; other lines keep theirs.
        let a = "word ".repeat(14);
        assert_eq!(
            join(&format!("{a}  \nnext  \n"), 70),
            format!("{}next  \n", a)
        );
    }
}
