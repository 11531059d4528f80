//! HTML as dataset text: web pages and books saved as `.html` or `.htm` (Project
//! Gutenberg's HTML books, Archive of Our Own downloads, a story saved from a browser),
//! and the visible text of the XHTML documents inside EPUB books ([`super::epub`]).
//!
//! How a page becomes text (decided for training on an author's prose, as a reader sees
//! the page):
//! - block elements (`p`, `div`, headings, list items, …) become paragraphs separated by a
//!   blank line, `<br>` a line break; whitespace collapses as a browser collapses it, except
//!   inside `<pre>`;
//! - left out: `<head>`, scripts, styles, SVG, MathML, ruby annotations (`<rt>`, `<rp>`),
//!   `<noscript>`, and elements whose `epub:type` marks a note reference, a footnote or
//!   endnote, a page break marker (so no stray "12" lands mid-sentence) or a table of
//!   contents;
//! - a no-break space becomes a space; soft hyphens (U+00AD, hyphenation hints) are dropped;
//!   character references (`&mdash;`, `&#8212;`) are resolved;
//! - a work downloaded from the Archive of Our Own loses its preface, notes and afterword
//!   ([`super::ao3`]); a story saved by FanFicFare its title page, table of contents,
//!   update log and chapter notes ([`super::fanficfare`]);
//! - pages are parsed as browsers parse them (html5ever, through `scraper`): unclosed
//!   paragraphs, stray end tags and unquoted attributes read as they display.
//!
//! A page's encoding: UTF-8 (with or without a byte-order mark) or UTF-16 with a mark; else
//! the encoding its `<meta charset>` (or XML declaration) names; else, as browsers do for
//! an undeclared page that is not UTF-8, Windows-1252.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ego_tree::iter::Edge;
use scraper::{Html, Node};

use super::{ao3, fanficfare};

/// Bumped when the text made from a page changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "html-text-2";

/// Whether the page whose bytes these are has characters decoded the wrong way that
/// [`read_text`] puts back ([`super::mojibake`]); cheap enough for the cache key, which
/// then takes the repair's version (so pages without them keep their caches).
pub fn shows_mangling(bytes: &[u8]) -> bool {
    decode(bytes).is_ok_and(|source| super::mojibake::shows_mangling(&source))
}

/// The file name extensions of HTML pages.
pub const EXTENSIONS: &[&str] = &["html", "htm"];

/// Whether `path` names an HTML page (`.html`, `.htm`, any case).
pub fn is_page(path: &Path) -> bool {
    super::has_extension(path, EXTENSIONS)
}

/// The text of the page at `path` (see the module documentation).
pub fn read_text(path: &Path) -> Result<String> {
    Ok(read_text_repaired(path)?.0)
}

/// [`read_text`], and what putting back characters decoded the wrong way before the page
/// was saved did ([`super::mojibake`]; done on the page's source, before no-break spaces
/// and soft hyphens, which stood for pieces of mangled characters, are read as spaces or
/// dropped).
pub fn read_text_repaired(path: &Path) -> Result<(String, Option<super::mojibake::Repaired>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let source = decode(&bytes).map_err(|why| anyhow!("{}: {why}", path.display()))?;
    let (source, repaired) = super::mojibake::repaired(source);
    let text = page_text(&source);
    if text.is_empty() {
        bail!(
            "{}: the page has no text (only images, or a page its scripts fill in?); softtune learns from text: save the page's text, or the story's download",
            path.display()
        );
    }
    Ok((text, repaired))
}

/// The visible text of an HTML page's source.
pub fn page_text(source: &str) -> String {
    let page = Html::parse_document(source);
    let mut visible = Visible::new(ao3::is_work(source));
    for edge in page.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(e) => visible.start(
                    e.name(),
                    &Attrs {
                        id: e.id(),
                        class: e.attr("class"),
                        epub_type: e.attr("epub:type"),
                    },
                ),
                Node::Text(t) => visible.text(t),
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(e) = node.value() {
                    visible.end(e.name());
                }
            }
        }
    }
    visible.finish()
}

/// An HTML file's bytes as text (see the module documentation for the encodings).
fn decode(bytes: &[u8]) -> std::result::Result<String, String> {
    let marked = [b"\xEF\xBB\xBF".as_slice(), b"\xFF\xFE", b"\xFE\xFF"]
        .iter()
        .any(|m| bytes.starts_with(m));
    if marked || super::foreign(bytes).is_some() || std::str::from_utf8(bytes).is_ok() {
        return super::decode_text(bytes);
    }
    let encoding = declared_encoding(bytes);
    match encoding {
        Some(e) if e == encoding_rs::UTF_8 => super::decode_text(bytes),
        Some(e) => e
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|text| text.into_owned())
            .ok_or_else(|| {
                format!(
                    "not valid {} (the encoding the page declares); save it as UTF-8",
                    e.name()
                )
            }),
        None => Ok(encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned()),
    }
}

/// The encoding the start of a page names (`<meta charset="…">`, `content="…;
/// charset=…"`, or an XML declaration's `encoding="…"`), if it is one WHATWG knows.
fn declared_encoding(bytes: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let head = &bytes[..bytes.len().min(2048)];
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    ["charset=", "encoding="].iter().find_map(|key| {
        let at = head.find(key)? + key.len();
        let value: String = head[at..]
            .trim_start_matches(['"', '\''])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
            .collect();
        encoding_rs::Encoding::for_label(value.as_bytes())
    })
}

/// The attributes of an element that decide whether its content is read.
#[derive(Default)]
pub(super) struct Attrs<'a> {
    pub id: Option<&'a str>,
    pub class: Option<&'a str>,
    pub epub_type: Option<&'a str>,
}

/// Elements whose content is not part of the text.
const SKIPPED: [&str; 9] = [
    "head", "script", "style", "svg", "math", "rt", "rp", "template", "noscript",
];

/// Elements that start and end a paragraph.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "center",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hgroup",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tr",
    "ul",
];

/// `epub:type` values whose element is left out: notes and their references, page-break
/// markers, and navigation (tables of contents, landmarks, lists of pages, illustrations,
/// tables, audio and video).
const SKIPPED_TYPES: [&str; 13] = [
    "noteref",
    "footnote",
    "endnote",
    "rearnote",
    "pagebreak",
    "annoref",
    "toc",
    "landmarks",
    "page-list",
    "loi",
    "lot",
    "loa",
    "lov",
];

fn is_block(name: &str) -> bool {
    BLOCKS.contains(&name)
}

/// The visible text of a document, fed its elements' starts and ends and its text in
/// document order (by a parser of HTML or of XHTML).
pub(super) struct Visible {
    text: Text,
    open: Vec<Open>,
    /// Whether AO3's preface, notes and afterword are left out ([`ao3`]).
    ao3: bool,
    /// An AO3 label ("Chapter Notes") was just left out: the quotation after it goes too.
    after_label: bool,
}

struct Open {
    name: String,
    skip: bool,
    pre: bool,
    /// Where the element's text began, for a block of an AO3 work that may be one of its
    /// own lines.
    mark: Option<Mark>,
}

impl Visible {
    pub fn new(ao3: bool) -> Self {
        Self {
            text: Text::default(),
            open: Vec::new(),
            ao3,
            after_label: false,
        }
    }

    fn skipping(&self) -> bool {
        self.open.iter().any(|o| o.skip)
    }

    pub fn start(&mut self, name: &str, attrs: &Attrs) {
        let name = name.to_ascii_lowercase();
        let mut skip = SKIPPED.contains(&name.as_str())
            || attrs.epub_type.is_some_and(|t| {
                t.split_ascii_whitespace()
                    .any(|t| SKIPPED_TYPES.contains(&t))
            })
            || fanficfare::skipped(attrs.class)
            || (self.ao3 && ao3::skipped(attrs.id, attrs.class));
        if std::mem::take(&mut self.after_label) {
            skip |= name == "blockquote";
        }
        let skipping = skip || self.skipping();
        let mark = (self.ao3 && !skipping && is_block(&name)).then(|| self.text.mark());
        if !skipping {
            self.text.element(&name);
        }
        let pre = name == "pre";
        self.open.push(Open {
            name,
            skip,
            pre,
            mark,
        });
    }

    pub fn end(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        let Some(at) = self.open.iter().rposition(|o| o.name == name) else {
            return;
        };
        let mark = self.open[at].mark;
        self.open.truncate(at);
        if self.skipping() {
            return;
        }
        if let Some(mark) = mark {
            match ao3::line(self.text.since(mark)) {
                ao3::Line::Prose => {}
                ao3::Line::Label => {
                    self.text.rewind(mark);
                    self.after_label = true;
                }
                ao3::Line::Boilerplate => self.text.rewind(mark),
            }
        }
        if is_block(&name) {
            self.text.paragraph();
        }
    }

    pub fn text(&mut self, s: &str) {
        if !self.skipping() {
            let pre = self.open.iter().any(|o| o.pre);
            self.text.push(s, pre);
        }
    }

    pub fn finish(self) -> String {
        self.text.text
    }
}

/// A place in the text being built, to go back to.
#[derive(Clone, Copy)]
struct Mark {
    len: usize,
    newlines: usize,
    space: bool,
}

/// The text being built: breaks wait until the next visible character, so none leads or
/// trails and runs of them collapse.
#[derive(Default)]
struct Text {
    text: String,
    /// Newlines owed before the next character (0, 1 for a line break, 2 for a paragraph).
    newlines: usize,
    space: bool,
}

impl Text {
    fn element(&mut self, name: &str) {
        if name == "br" {
            self.newlines = (self.newlines + 1).min(2);
        } else if is_block(name) {
            self.paragraph();
        } else if matches!(name, "td" | "th") {
            self.space = true;
        }
    }

    fn paragraph(&mut self) {
        self.newlines = 2;
    }

    fn mark(&self) -> Mark {
        Mark {
            len: self.text.len(),
            newlines: self.newlines,
            space: self.space,
        }
    }

    fn since(&self, mark: Mark) -> &str {
        &self.text[mark.len..]
    }

    fn rewind(&mut self, mark: Mark) {
        self.text.truncate(mark.len);
        self.newlines = mark.newlines;
        self.space = mark.space;
    }

    fn push(&mut self, s: &str, pre: bool) {
        for c in s.chars() {
            match c {
                '\u{AD}' => {}
                '\u{A0}' => self.space = true,
                '\n' if pre => self.newlines = (self.newlines + 1).min(2),
                ' ' | '\t' | '\n' | '\r' | '\u{C}' if !pre => self.space = true,
                c => {
                    if !self.text.is_empty() {
                        if self.newlines > 0 {
                            for _ in 0..self.newlines {
                                self.text.push('\n');
                            }
                        } else if self.space {
                            self.text.push(' ');
                        }
                    }
                    self.newlines = 0;
                    self.space = false;
                    self.text.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/html")
            .join(name)
    }

    /// A page as people save them: no `</head>`, unclosed paragraphs, a script with `<` in
    /// it, legacy entities without their semicolon, a table, `<pre>`, a comment.
    #[test]
    fn pages_read_as_a_browser_shows_them() {
        let page = r#"<!DOCTYPE html><html><head><title>Ch. 1</title>
<meta charset=utf-8>
<script>if (a < b && c) { document.write("<p>not text</p>"); }</script>
<body>
<h1>Chapter&nbsp;One</h1>
<p>It was a <i>dark</i> and stormy night&mdash;the rain fell in
   torrents, except at occa&shy;sional intervals.
<p>&copy 1830 Bulwer &amp Lytton<br>All rights reversed.
<!-- a comment <p>hidden</p> -->
<noscript><p>Turn on JavaScript</p></noscript>
<table><tr><td>one</td><td>two</td></tr></table>
<pre>  two  spaces
kept</pre>
<div><p>Nested</p> tail</div>
"#;
        assert_eq!(
            page_text(page),
            "Chapter One\n\nIt was a dark and stormy night—the rain fell in torrents, except at occasional intervals.\n\n© 1830 Bulwer & Lytton\nAll rights reversed.\n\none two\n\n  two  spaces\nkept\n\nNested\n\ntail"
        );
    }

    /// A work downloaded from the Archive of Our Own (the shape of AO3's HTML download)
    /// reads as its chapters' headings and text: no preface, tags, summary, notes or
    /// afterword. A line of the story that only looks like a label stays.
    #[test]
    fn ao3_downloads_keep_only_the_chapters() {
        let expected = std::fs::read_to_string(fixture("ao3-work.txt")).unwrap();
        assert_eq!(read_text(&fixture("ao3-work.html")).unwrap(), expected);
        // A page that is not AO3's keeps its preface and notes.
        let book = r#"<div id="preface"><h2>Preface</h2><p>Why I wrote this.</p></div>
<p>Notes</p><blockquote>Kept.</blockquote>"#;
        assert_eq!(
            page_text(book),
            "Preface\n\nWhy I wrote this.\n\nNotes\n\nKept."
        );
    }

    /// A one-chapter work has no chapter heading or chapter notes, only the text.
    #[test]
    fn ao3_one_chapter_works_keep_their_text() {
        let page = r#"<html><body><div id="preface"><p class="message">Posted originally on the
<a href="https://archiveofourown.org/">Archive of Our Own</a> at
<a href="https://archiveofourown.org/works/2">https://archiveofourown.org/works/2</a>.</p>
<div class="meta"><h1>Drabble</h1><div class="byline">by <a>someone</a></div></div></div>
<div id="chapters" class="userstuff"><div class="userstuff"><p>One hundred words exactly.</p></div></div>
<div id="afterword"><p class="message">Please drop by the Archive and comment!</p></div>
</body></html>"#;
        assert_eq!(page_text(page), "One hundred words exactly.");
    }

    #[test]
    fn encodings_are_read_as_declared_or_as_browsers_guess() {
        // Windows-1252 curly quotes and é, undeclared: read as browsers read them.
        let undeclared = b"<p>\x93Caf\xe9,\x94 she said.</p>";
        assert_eq!(
            page_text(&decode(undeclared).unwrap()),
            "\u{201c}Café,\u{201d} she said."
        );
        // Declared Latin-1 (WHATWG reads it as Windows-1252) and KOI8-R.
        let latin1 = b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"><p>na\xefve</p>";
        assert_eq!(page_text(&decode(latin1).unwrap()), "naïve");
        let koi8 = b"<?xml version='1.0' encoding='koi8-r'?><p>\xf0\xd2\xc9\xd7\xc5\xd4</p>";
        assert_eq!(page_text(&decode(koi8).unwrap()), "Привет");
        // UTF-8 with and without a mark, UTF-16 with one.
        assert_eq!(decode("<p>é</p>".as_bytes()).unwrap(), "<p>é</p>");
        assert_eq!(decode(b"\xEF\xBB\xBF<p>x</p>").unwrap(), "<p>x</p>");
        assert_eq!(decode(b"\xFF\xFE<\0p\0>\0").unwrap(), "<p>");
        // A page that says UTF-8 and is not: where, and what to do.
        let e = decode(b"<meta charset=\"utf-8\"><p>caf\xe9</p>").unwrap_err();
        assert!(e.contains("UTF-8 at byte offset 28"), "{e}");
        // Shift_JIS declared, and bytes that are not Shift_JIS.
        let e = decode(b"<meta charset=shift_jis><p>\x82</p>").unwrap_err();
        assert!(
            e.contains("not valid Shift_JIS") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn pages_without_text_and_files_that_are_not_pages_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("app.html");
        std::fs::write(
            &empty,
            "<html><head><script src=app.js></script></head><body><div id=root></div></body></html>",
        )
        .unwrap();
        let e = read_text(&empty).unwrap_err().to_string();
        assert!(
            e.starts_with(&empty.display().to_string()) && e.contains("no text"),
            "{e}"
        );
        let pdf = dir.path().join("story.htm");
        std::fs::write(&pdf, b"%PDF-1.7\n").unwrap();
        assert_eq!(
            crate::data::document_of(&pdf).map(|d| d.glob),
            Some("*.htm*")
        );
        let e = crate::data::read_text(&pdf).unwrap_err().to_string();
        assert!(e.contains("story.htm") && e.contains("a PDF"), "{e}");
    }

    /// Project Gutenberg's HTML books lose their header and license, as its text files do.
    #[test]
    fn gutenberg_html_books_lose_header_and_license() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg1342-images.html");
        std::fs::write(
            &path,
            r#"<html><body><section class="pg-boilerplate pgheader" id="pg-header">
<h2>The Project Gutenberg eBook of Pride and Prejudice</h2>
<p>This ebook is for the use of anyone anywhere in the United States.</p></section>
<div id="pg-start-separator"><span>*** START OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***</span></div>
<h2>Chapter I.</h2>
<p>It is a truth universally acknowledged.</p>
<div id="pg-end-separator"><span>*** END OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***</span></div>
<section class="pg-boilerplate pgheader" id="pg-footer"><p>Updated editions will replace the previous one.</p></section>
</body></html>"#,
        )
        .unwrap();
        assert_eq!(
            crate::data::read_text(&path).unwrap(),
            "Chapter I.\n\nIt is a truth universally acknowledged."
        );
    }
}
