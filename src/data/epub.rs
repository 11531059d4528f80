//! EPUB books as dataset text: the documents of the book's reading order (the package's
//! spine), each XHTML document's visible text, a blank line between paragraphs.
//!
//! What is kept and what is left out (decided for training on an author's prose):
//! - every spine document in reading order, except those marked `linear="no"` (notes,
//!   answer keys: content the reading system shows out of the main flow);
//! - block elements (`p`, `div`, headings, list items, …) become paragraphs separated by a
//!   blank line, `<br>` a line break; whitespace collapses as a browser collapses it, except
//!   inside `<pre>`;
//! - left out: `<head>`, scripts, styles, SVG, ruby annotations (`<rt>`, `<rp>`), and
//!   elements whose `epub:type` marks a note reference, a footnote or endnote, or a page
//!   break marker (so no stray "12" lands mid-sentence);
//! - a no-break space becomes a space; soft hyphens (U+00AD, hyphenation hints) are dropped;
//! - HTML's named character references (`&mdash;`, `&nbsp;`, …) are resolved.
//!
//! A DRM-protected book (its documents listed as encrypted in `META-INF/encryption.xml`,
//! other than the font obfuscation EPUB allows) is an error, as is a damaged one; every
//! error names the book and, where there is one, the document inside it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Result, bail};
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::archive::{Archive, Kind, attribute, first_attribute, resolve, xml_error};

/// Bumped when the text made from a book changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "epub-text-2";

/// The text of the book at `path` (see the module documentation).
pub fn read_text(path: &Path) -> Result<String> {
    let mut book = Book(Archive::open(path, KIND)?);
    book.text()
}

const KIND: Kind = Kind {
    name: "EPUB",
    noun: "the book",
    redo: "download or export the book again",
    ole: "",
};

struct Book<'a>(Archive<'a>);

/// Encryption algorithms EPUB uses to obfuscate embedded fonts; anything else encrypted is
/// DRM.
const FONT_OBFUSCATION: [&str; 2] = [
    "http://www.idpf.org/2008/embedding",
    "http://ns.adobe.com/pdf/enc#RC",
];

impl Book<'_> {
    fn text(&mut self) -> Result<String> {
        let book = &mut self.0;
        let container = book.document("META-INF/container.xml")?;
        let package = first_attribute(&container, "rootfile", "full-path")
            .map_err(|e| book.damaged("META-INF/container.xml", e))?
            .ok_or_else(|| {
                book.damaged(
                    "META-INF/container.xml",
                    "it names no package document (no <rootfile full-path=\"…\">)".into(),
                )
            })?;
        let encrypted = self.encrypted()?;
        let book = &mut self.0;
        let opf = book.document(&package)?;
        let spine = spine(&opf, &package).map_err(|e| book.damaged(&package, e))?;
        let mut out = String::new();
        for href in spine {
            if encrypted.contains(&href) {
                bail!(
                    "{}: the book is protected by DRM ({href} is encrypted); softtune reads DRM-free EPUBs only",
                    book.path.display()
                );
            }
            let xhtml = book.document(&href)?;
            let text = xhtml_text(&xhtml).map_err(|e| book.damaged(&href, e))?;
            if !text.is_empty() {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(&text);
            }
        }
        if out.is_empty() {
            bail!(
                "{}: the book has no text in its reading order (only images?); softtune learns from text",
                book.path.display()
            );
        }
        Ok(out)
    }

    /// The documents `META-INF/encryption.xml` lists as encrypted, other than obfuscated
    /// fonts (none when the file is absent).
    fn encrypted(&mut self) -> Result<HashSet<String>> {
        const NAME: &str = "META-INF/encryption.xml";
        let book = &mut self.0;
        if !book.has(NAME) {
            return Ok(HashSet::new());
        }
        let xml = book.document(NAME)?;
        let mut reader = Reader::from_str(&xml);
        let mut out = HashSet::new();
        let mut algorithm = String::new();
        loop {
            match reader.read_event() {
                Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                    "EncryptedData" => algorithm.clear(),
                    "EncryptionMethod" => {
                        algorithm = attribute(&e, "Algorithm").unwrap_or_default();
                    }
                    "CipherReference" => {
                        if let Some(uri) = attribute(&e, "URI")
                            && !FONT_OBFUSCATION.contains(&algorithm.as_str())
                        {
                            out.insert(resolve("", &uri));
                        }
                    }
                    _ => {}
                },
                Ok(Event::Eof) => return Ok(out),
                Ok(_) => {}
                Err(e) => return Err(book.damaged(NAME, xml_error(&reader, e))),
            }
        }
    }
}

/// The zip paths of the spine's documents in reading order (`linear="no"` left out), read
/// from the package document at `package`.
fn spine(opf: &str, package: &str) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(opf);
    let mut manifest: HashMap<String, (String, String)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut in_spine = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                "item" => {
                    if let (Some(id), Some(href)) = (attribute(&e, "id"), attribute(&e, "href")) {
                        let media = attribute(&e, "media-type").unwrap_or_default();
                        manifest.insert(id, (href, media));
                    }
                }
                "spine" => in_spine = true,
                "itemref" if in_spine => {
                    let linear = attribute(&e, "linear").unwrap_or_default();
                    if let Some(id) = attribute(&e, "idref")
                        && linear.trim() != "no"
                    {
                        order.push(id);
                    }
                }
                _ => {}
            },
            Ok(Event::End(e)) if e.local_name().as_ref() == "spine" => in_spine = false,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(xml_error(&reader, e)),
        }
    }
    if order.is_empty() {
        return Err("its spine lists no documents".into());
    }
    let base = package.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut out = Vec::new();
    for id in order {
        let (href, media) = manifest
            .get(&id)
            .ok_or_else(|| format!("the spine names \"{id}\", which the manifest lacks"))?;
        // EPUB 3 allows other content (SVG) in the spine; it holds no prose to learn from.
        if matches!(media.as_str(), "application/xhtml+xml" | "text/html" | "") {
            out.push(resolve(base, href));
        }
    }
    Ok(out)
}

/// Elements whose content is not part of the text.
const SKIPPED: [&str; 8] = [
    "head", "script", "style", "svg", "math", "rt", "rp", "template",
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

/// `epub:type` values whose element is left out.
const SKIPPED_TYPES: [&str; 6] = [
    "noteref",
    "footnote",
    "endnote",
    "rearnote",
    "pagebreak",
    "annoref",
];

/// The visible text of an XHTML document (see the module documentation).
fn xhtml_text(xhtml: &str) -> Result<String, String> {
    let mut reader = Reader::from_str(xhtml);
    let config = reader.config_mut();
    // Books are often hand-made: tolerate a stray `&` and mismatched end tags.
    config.allow_dangling_amp = true;
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    let mut out = Text::default();
    // Open elements: (name, whether it is skipped, whether it is `<pre>`).
    let mut open: Vec<(String, bool, bool)> = Vec::new();
    let skipping = |open: &[(String, bool, bool)]| open.iter().any(|o| o.1);
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_ascii_lowercase();
                let skip = SKIPPED.contains(&name.as_str()) || skipped_type(&e);
                if !skip && !skipping(&open) {
                    out.element(&name);
                }
                let pre = name == "pre";
                open.push((name, skip, pre));
            }
            Event::Empty(e) => {
                let name = e.local_name().as_ref().to_ascii_lowercase();
                if !skipping(&open) && !skipped_type(&e) {
                    out.element(&name);
                }
            }
            Event::End(e) => {
                let name = e.local_name().as_ref().to_ascii_lowercase();
                if let Some(at) = open.iter().rposition(|o| o.0 == name) {
                    open.truncate(at);
                    if !skipping(&open) && is_block(&name) {
                        out.paragraph();
                    }
                }
            }
            Event::Text(t) if !skipping(&open) => {
                let pre = open.iter().any(|o| o.2);
                out.push(&t.xml10_content(), pre);
            }
            Event::CData(t) if !skipping(&open) => {
                let pre = open.iter().any(|o| o.2);
                out.push(&t, pre);
            }
            Event::GeneralRef(r) if !skipping(&open) => {
                let pre = open.iter().any(|o| o.2);
                let name = r.to_string();
                match r.resolve_char_ref() {
                    Ok(Some(c)) => out.push(c.encode_utf8(&mut [0; 4]), pre),
                    Ok(None) => match quick_xml::escape::resolve_html5_entity(&name) {
                        Some(s) => out.push(s, pre),
                        // An entity the document's own DTD would define: kept as written.
                        None => out.push(&format!("&{name};"), pre),
                    },
                    Err(_) => out.push(&format!("&{name};"), pre),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out.text)
}

fn is_block(name: &str) -> bool {
    BLOCKS.contains(&name)
}

fn skipped_type(e: &BytesStart) -> bool {
    e.attributes().flatten().any(|a| {
        a.key.local_name().as_ref() == "type"
            && a.key.prefix().is_some_and(|p| p.as_ref() == "epub")
            && a.value
                .split_ascii_whitespace()
                .any(|t| SKIPPED_TYPES.contains(&t))
    })
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
    use crate::data::archive::percent_decode;

    const CONTAINER: &str = r#"<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"#;

    /// A package whose manifest lists the documents in another order than the spine, one in
    /// a subfolder with an escaped name, a non-linear note and a cover image.
    const OPF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>T</dc:title></metadata>
  <manifest>
    <item id="notes" href="Text/notes.xhtml" media-type="application/xhtml+xml"/>
    <item id="c2" href="Text/chapter%202.xhtml" media-type="application/xhtml+xml"/>
    <item id="cover" href="Images/cover.jpg" media-type="image/jpeg"/>
    <item id="c1" href="Text/../Text/ch1.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
  </manifest>
  <spine>
    <itemref idref="c1"/>
    <itemref idref="notes" linear="no"/>
    <itemref idref="c2"/>
  </spine>
</package>"#;

    const CH1: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Chapter One</title><style>p { margin: 0 }</style></head>
<body>
  <h1 class="chapter">Chapter
     One</h1>
  <p>It was a <em>dark</em>&#160;and stormy night&mdash;the rain fell in
     torrents<a epub:type="noteref" href="notes.xhtml#n1"><sup>1</sup></a>, except at
     occa&#xAD;sional intervals.</p>
  <p>&nbsp;</p>
  <p>“Who’s there?” said Zoë &amp; Ann.<br/>Nobody answered.</p>
  <span epub:type="pagebreak" title="12">12</span>
  <div><p>Nested</p> tail</div>
  <script>var x = "not text";</script>
  <pre>  two  spaces
kept</pre>
</body></html>"#;

    const CH2: &str = r#"<html xmlns="http://www.w3.org/1999/xhtml"><body>
<p>Second <ruby>漢<rt>kan</rt></ruby> chapter &unknownentity; end.</p></body></html>"#;

    const NOTES: &str =
        r#"<html xmlns="http://www.w3.org/1999/xhtml"><body><p>A footnote.</p></body></html>"#;

    const EXPECTED: &str = "Chapter One\n\nIt was a dark and stormy night—the rain fell in torrents, except at occasional intervals.\n\n“Who’s there?” said Zoë & Ann.\nNobody answered.\n\nNested\n\ntail\n\n  two  spaces\nkept\n\nSecond 漢 chapter &unknownentity; end.";

    fn write_epub(path: &Path, files: &[(&str, &str)]) {
        crate::data::archive::write_zip(path, Some("application/epub+zip"), files);
    }

    fn book<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut files = vec![
            ("META-INF/container.xml", CONTAINER),
            ("OEBPS/content.opf", OPF),
            ("OEBPS/Text/ch1.xhtml", CH1),
            ("OEBPS/Text/chapter 2.xhtml", CH2),
            ("OEBPS/Text/notes.xhtml", NOTES),
        ];
        files.extend_from_slice(extra);
        files
    }

    #[test]
    fn reads_the_spine_in_reading_order_as_paragraphs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Book.EPUB");
        write_epub(&path, &book(&[]));
        assert_eq!(
            crate::data::document_of(&path).map(|d| d.extension),
            Some("epub")
        );
        assert_eq!(read_text(&path).unwrap(), EXPECTED);
        // Through the dataset reader too.
        assert_eq!(crate::data::read_text(&path).unwrap(), EXPECTED);
    }

    /// A book written by another EPUB tool (ebooklib: see `tests/fixtures/epub/make_epub.py`)
    /// reads as the chapters' titles and paragraphs it was made from.
    #[test]
    fn reads_a_book_made_by_ebooklib() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/epub");
        let expected = std::fs::read_to_string(dir.join("book.txt")).unwrap();
        assert_eq!(read_text(&dir.join("book.epub")).unwrap(), expected);
    }

    #[test]
    fn fonts_may_be_obfuscated_but_encrypted_chapters_are_drm() {
        let dir = tempfile::tempdir().unwrap();
        let fonts = r#"<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" xmlns:enc="http://www.w3.org/2001/04/xmlenc#">
  <enc:EncryptedData><enc:EncryptionMethod Algorithm="http://www.idpf.org/2008/embedding"/>
    <enc:CipherData><enc:CipherReference URI="OEBPS/Text/ch1.xhtml"/></enc:CipherData></enc:EncryptedData>
</encryption>"#;
        let path = dir.path().join("fonts.epub");
        write_epub(&path, &book(&[("META-INF/encryption.xml", fonts)]));
        assert_eq!(read_text(&path).unwrap(), EXPECTED);

        let drm = fonts.replace(
            "http://www.idpf.org/2008/embedding",
            "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
        );
        let path = dir.path().join("drm.epub");
        write_epub(&path, &book(&[("META-INF/encryption.xml", &drm)]));
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(
            e.contains("drm.epub") && e.contains("DRM") && e.contains("OEBPS/Text/ch1.xhtml"),
            "{e}"
        );
    }

    #[test]
    fn damaged_books_are_errors_naming_the_book_and_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let err = |name: &str, files: &[(&str, &str)]| {
            let path = dir.path().join(name);
            write_epub(&path, files);
            format!("{:#}", read_text(&path).unwrap_err())
        };

        let e = err("nocontainer.epub", &book(&[])[1..]);
        assert!(
            e.contains("nocontainer.epub") && e.contains("META-INF/container.xml"),
            "{e}"
        );

        let mut files = book(&[]);
        files.retain(|f| f.0 != "OEBPS/Text/chapter 2.xhtml");
        let e = err("missing.epub", &files);
        assert!(
            e.contains("missing.epub") && e.contains("OEBPS/Text/chapter 2.xhtml"),
            "{e}"
        );

        let mut files = book(&[]);
        files[1].1 = "<package><spine><itemref idref=\"c1\"/></spine>";
        let e = err("nomanifest.epub", &files);
        assert!(
            e.contains("OEBPS/content.opf") && e.contains("\"c1\""),
            "{e}"
        );

        let mut files = book(&[]);
        files[2].1 = "<html><body><p attr=\"unclosed></body></html>";
        let e = err("badxml.epub", &files);
        assert!(
            e.contains("OEBPS/Text/ch1.xhtml") && e.contains("not well-formed"),
            "{e}"
        );

        let images = [
            ("META-INF/container.xml", CONTAINER),
            (
                "OEBPS/content.opf",
                r#"<package><manifest><item id="p" href="p.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="p"/></spine></package>"#,
            ),
            (
                "OEBPS/p.xhtml",
                r#"<html><body><img src="a.jpg" alt="A picture"/></body></html>"#,
            ),
        ];
        let e = err("images.epub", &images);
        assert!(e.contains("images.epub") && e.contains("no text"), "{e}");

        let path = dir.path().join("notzip.epub");
        std::fs::write(&path, "plain text").unwrap();
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(e.contains("notzip.epub") && e.contains("not a zip"), "{e}");
    }

    #[test]
    fn hrefs_resolve_against_the_package_folder() {
        assert_eq!(
            resolve("OEBPS", "Text/a%20b.xhtml#c"),
            "OEBPS/Text/a b.xhtml"
        );
        assert_eq!(resolve("OEBPS/x", "../y/./z.xhtml"), "OEBPS/y/z.xhtml");
        assert_eq!(resolve("", "ch.xhtml"), "ch.xhtml");
        assert_eq!(resolve("OEBPS", "/root.xhtml"), "root.xhtml");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%E2%80%94"), "—");
    }
}
