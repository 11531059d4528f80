//! OpenDocument text (`.odt`, as LibreOffice Writer and other office suites save it) as
//! dataset text: the paragraphs and headings of the document's body, in order, a blank line
//! between them.
//!
//! Kept and left out as for Word documents ([`super::docx`]), with OpenDocument's rules for
//! spaces: runs of whitespace in the XML collapse to one space, `<text:s text:c="N"/>`
//! stands for N spaces, `<text:tab/>` for a tab, `<text:line-break/>` for a newline; spaces
//! and tabs at the start and end of a line are dropped (`Paragraphs`). Left out: notes
//! (footnotes and endnotes), comments, deleted text of tracked changes (insertions are kept),
//! frames (images, text boxes) and shapes, hidden text, tables of contents and indexes,
//! page numbers, ruby annotations.
//!
//! A password-protected document (its `content.xml` encrypted), a damaged package, a
//! spreadsheet or presentation named `.odt` and a document without text are errors naming
//! the file and, where there is one, the part inside it.

use std::path::Path;

use anyhow::{Result, bail};
use quick_xml::events::Event;
use quick_xml::reader::Reader;

use super::archive::{Archive, Kind, attribute, entity, xml_error};
use super::paragraphs::Paragraphs;

/// Bumped when the text made from a document changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "odt-text-1";

const KIND: Kind = Kind {
    name: "OpenDocument text",
    noun: "the document",
    redo: "open it in LibreOffice Writer and save it as .odt again",
    ole: "",
};

const CONTENT: &str = "content.xml";

/// The text of the document at `path` (see the module documentation).
pub fn read_text(path: &Path) -> Result<String> {
    let mut doc = Archive::open(path, KIND)?;
    if encrypted(&mut doc)? {
        bail!(
            "{}: the document is password-protected; open it in LibreOffice Writer and save it without a password (File › Properties › Security)",
            path.display()
        );
    }
    let xml = doc.document(CONTENT)?;
    let text = body_text(&xml).map_err(|e| doc.damaged(CONTENT, e))?;
    if text.is_empty() {
        bail!(
            "{}: the document has no text in its body (only images or frames?); softtune learns from text",
            path.display()
        );
    }
    Ok(text)
}

/// Whether the manifest lists `content.xml` as encrypted.
fn encrypted(doc: &mut Archive) -> Result<bool> {
    const MANIFEST: &str = "META-INF/manifest.xml";
    if !doc.has(MANIFEST) {
        return Ok(false);
    }
    let xml = doc.document(MANIFEST)?;
    let mut reader = Reader::from_str(&xml);
    let mut in_content = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                "file-entry" => {
                    in_content = attribute(&e, "full-path").as_deref() == Some(CONTENT);
                }
                "encryption-data" if in_content => return Ok(true),
                _ => {}
            },
            Ok(Event::End(e)) if e.local_name().as_ref() == "file-entry" => in_content = false,
            Ok(Event::Eof) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(doc.damaged(MANIFEST, xml_error(&reader, e))),
        }
    }
}

/// Elements of the text body whose content is not part of the text.
const SKIPPED: [&str; 29] = [
    "note",
    "annotation",
    "tracked-changes",
    "hidden-text",
    "hidden-paragraph",
    "frame",
    "custom-shape",
    "rect",
    "ellipse",
    "circle",
    "line",
    "polyline",
    "polygon",
    "regular-polygon",
    "path",
    "connector",
    "caption",
    "measure",
    "g",
    "table-of-content",
    "alphabetical-index",
    "illustration-index",
    "table-index",
    "object-index",
    "user-index",
    "bibliography",
    "page-number",
    "page-count",
    "ruby-text",
];

/// The text of a `content.xml` (see the module documentation).
fn body_text(xml: &str) -> Result<String, String> {
    let mut reader = Reader::from_str(xml);
    let mut out = Paragraphs::default();
    // Open elements (local names); depth of the text body's element, if open; how many open
    // elements are skipped; how many paragraphs and headings are open.
    let mut open: Vec<String> = Vec::new();
    let mut body: Option<usize> = None;
    let mut skipped = 0usize;
    let mut paragraphs = 0usize;
    let mut root_checked = false;
    let mut kind_of_body: Option<String> = None;
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
        let start = matches!(event, Event::Start(_));
        match event {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.local_name().as_ref().to_string();
                if !root_checked {
                    root_checked = true;
                    if name != "document-content" {
                        return Err(format!(
                            "its root is a <{}>, not an OpenDocument <document-content>",
                            name
                        ));
                    }
                }
                if body.is_none() && open.last().is_some_and(|o| o == "body") {
                    kind_of_body = Some(name.clone());
                    if name == "text" && start {
                        body = Some(open.len());
                    }
                }
                let skip = SKIPPED.contains(&name.as_str());
                if body.is_some() && skipped == 0 && !skip {
                    match name.as_str() {
                        "p" | "h" => out.end(),
                        "s" if paragraphs > 0 => {
                            let n = attribute(&e, "c")
                                .and_then(|c| c.trim().parse::<usize>().ok())
                                .unwrap_or(1);
                            for _ in 0..n.min(1000) {
                                out.push(' ');
                            }
                        }
                        "tab" if paragraphs > 0 => out.push('\t'),
                        "line-break" if paragraphs > 0 => out.push('\n'),
                        _ => {}
                    }
                }
                if start {
                    if skip {
                        skipped += 1;
                    }
                    if matches!(name.as_str(), "p" | "h") {
                        paragraphs += 1;
                    }
                    open.push(name);
                }
            }
            Event::End(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                // The reader checks that end tags match their start tags.
                open.pop();
                if SKIPPED.contains(&name) {
                    skipped -= 1;
                }
                if matches!(name, "p" | "h") {
                    paragraphs -= 1;
                    if body.is_some() && skipped == 0 {
                        out.end();
                    }
                }
                if body == Some(open.len()) {
                    body = None;
                }
            }
            Event::Text(t) if body.is_some() && skipped == 0 && paragraphs > 0 => {
                push_collapsed(&mut out, &t.xml10_content());
            }
            Event::GeneralRef(r) if body.is_some() && skipped == 0 && paragraphs > 0 => {
                push_collapsed(&mut out, &entity(&r)?);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match kind_of_body.as_deref() {
        Some("text") => Ok(out.finish()),
        Some(other) => Err(format!(
            "its body is a <{other}>, not a <text> (a spreadsheet or a presentation?)"
        )),
        None if !root_checked => Err("it is empty".into()),
        None => Err("it has no <office:body>".into()),
    }
}

/// `s` with each run of XML whitespace collapsed to one space, and none at the start of a
/// paragraph or after another space.
fn push_collapsed(out: &mut Paragraphs, s: &str) {
    for c in s.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            if !out.at_space() {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:dc="http://purl.org/dc/elements/1.1/" office:version="1.3">
<office:automatic-styles><style:style xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" style:name="P1"><style:text-properties/></style:style></office:automatic-styles>
<office:body>
<office:text>
<text:sequence-decls><text:sequence-decl text:display-outline-level="0" text:name="Figure"/></text:sequence-decls>
{body}
</office:text>
</office:body>
</office:document-content>"#
        )
    }

    fn write_odt(path: &Path, files: &[(&str, &str)]) {
        let mimetype = "application/vnd.oasis.opendocument.text";
        crate::data::archive::write_zip(path, Some(mimetype), files);
    }

    #[test]
    fn paragraphs_headings_and_spaces() {
        let body = r#"<text:h text:style-name="Heading_20_1" text:outline-level="1">Chapter <text:span text:style-name="T1">One</text:span></text:h>
<text:p text:style-name="P1">  It was   a dark <text:span text:style-name="T2">and</text:span>
 stormy night &amp; &#8212; two<text:s/>spaces,<text:s text:c="3"/>four, a<text:tab/>tab<text:line-break/>and a new line.<text:soft-page-break/></text:p>
<text:p/>
<text:list><text:list-item><text:p>An item</text:p></text:list-item></text:list>
<table:table><table:table-row><table:table-cell><text:p>cell one</text:p></table:table-cell><table:table-cell><text:p>cell two</text:p></table:table-cell></table:table-row></table:table>
<text:p>A <text:a xlink:href="http://x" xmlns:xlink="http://www.w3.org/1999/xlink">link</text:a>.</text:p>"#;
        assert_eq!(
            body_text(&content(body)).unwrap(),
            "Chapter One\n\nIt was a dark and stormy night & — two spaces,   four, a\ttab\nand a new line.\n\nAn item\n\ncell one\n\ncell two\n\nA link."
        );
    }

    #[test]
    fn what_the_reader_leaves_out() {
        let body = r#"<text:tracked-changes><text:changed-region text:id="c1"><text:deletion><office:change-info><dc:creator>A</dc:creator></office:change-info><text:p>deleted words</text:p></text:deletion></text:changed-region></text:tracked-changes>
<text:table-of-content text:name="TOC"><text:index-body><text:p>Chapter One<text:tab/>1</text:p></text:index-body></text:table-of-content>
<text:p>She<text:change text:change-id="c1"/> wrote<text:note text:id="n1" text:note-class="footnote"><text:note-citation>1</text:note-citation><text:note-body><text:p>A footnote.</text:p></text:note-body></text:note>.<office:annotation><dc:creator>A</dc:creator><text:p>A comment.</text:p></office:annotation> Page <text:page-number>3</text:page-number><draw:frame draw:name="img"><draw:text-box><text:p>box text</text:p></draw:text-box></draw:frame>end.</text:p>
<text:p><text:hidden-text text:condition="true" text:string-value="x">hidden</text:hidden-text>shown</text:p>"#;
        assert_eq!(
            body_text(&content(body)).unwrap(),
            "She wrote. Page end.\n\nshown"
        );
    }

    #[test]
    fn bad_documents_are_errors_naming_the_file_and_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let err = |name: &str, files: &[(&str, &str)]| {
            let path = dir.path().join(name);
            write_odt(&path, files);
            format!("{:#}", read_text(&path).unwrap_err())
        };
        let e = err("nocontent.odt", &[]);
        assert!(
            e.contains("nocontent.odt") && e.contains("content.xml"),
            "{e}"
        );
        let e = err(
            "broken.odt",
            &[(
                "content.xml",
                "<office:document-content><office:body><office:text><text:p>a</office:text>",
            )],
        );
        assert!(
            e.contains("content.xml") && e.contains("not well-formed"),
            "{e}"
        );
        let sheet = r#"<office:document-content xmlns:office="o"><office:body><office:spreadsheet/></office:body></office:document-content>"#;
        let e = err("sheet.odt", &[("content.xml", sheet)]);
        assert!(e.contains("<spreadsheet>"), "{e}");
        let empty = content(r#"<text:p><draw:frame/></text:p>"#);
        let e = err("images.odt", &[("content.xml", &empty)]);
        assert!(e.contains("images.odt") && e.contains("no text"), "{e}");
        let manifest = r#"<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">
 <manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.text"/>
 <manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml" manifest:size="1234">
  <manifest:encryption-data manifest:checksum-type="SHA1/1K" manifest:checksum="x"><manifest:algorithm manifest:algorithm-name="Blowfish CFB"/></manifest:encryption-data>
 </manifest:file-entry>
</manifest:manifest>"#;
        let e = err(
            "locked.odt",
            &[
                ("META-INF/manifest.xml", manifest),
                ("content.xml", "\u{1}\u{2}"),
            ],
        );
        assert!(e.contains("locked.odt") && e.contains("password"), "{e}");
        // The same manifest without encryption reads.
        let open = manifest.replace("encryption-data", "other-data");
        let path = dir.path().join("open.odt");
        write_odt(
            &path,
            &[
                ("META-INF/manifest.xml", &open),
                ("content.xml", &content("<text:p>Hi.</text:p>")),
            ],
        );
        assert_eq!(
            crate::data::document_of(&path).map(|d| d.glob),
            Some("*.odt")
        );
        assert_eq!(crate::data::read_text(&path).unwrap(), "Hi.");
    }

    /// A document written by another tool (odfpy: see `tests/fixtures/docx/make_docx.py`)
    /// reads as the paragraphs it was made from.
    #[test]
    fn reads_a_document_made_by_odfpy() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docx");
        let expected = std::fs::read_to_string(dir.join("book.txt")).unwrap();
        assert_eq!(read_text(&dir.join("book.odt")).unwrap(), expected);
    }
}
