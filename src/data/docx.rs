//! Word documents (`.docx`, Office Open XML, as Word, LibreOffice, Google Docs and Pages
//! save them) as dataset text: the paragraphs of the document's body, in order, a blank line
//! between them.
//!
//! What is kept and what is left out (decided for training on a writer's prose):
//! - the main document's paragraphs (headings, list items and table cells included), as
//!   `Paragraphs` builds them: spaces and tabs inside a line as written, indentation and
//!   trailing blanks dropped; a line break (`<w:br/>`, `<w:cr/>`) is a newline, a page or
//!   column break a paragraph break, a non-breaking hyphen a hyphen;
//! - tracked changes as if accepted: insertions kept, deletions and moved-away text left out,
//!   a paragraph whose mark was deleted joined to the next one;
//! - left out: hidden text (`<w:vanish/>`), field instructions, the generated contents of
//!   tables of contents and indexes and page numbers, drawings and text boxes (their text
//!   floats outside the flow), equations, symbol-font characters; headers, footers,
//!   footnotes, endnotes and comments live in other parts of the package and are not read.
//!
//! A password-protected document (Word stores it as an OLE compound file, not a zip) or a
//! Word 97–2003 file named `.docx`, a damaged package and a document without text are
//! errors naming the file and, where there is one, the part inside it.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{Result, bail};
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::archive::{Archive, Kind, attribute, entity, resolve, xml_error};
use super::paragraphs::Paragraphs;

/// Bumped when the text made from a document changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "docx-text-1";

const KIND: Kind = Kind {
    name: "Word document",
    noun: "the document",
    redo: "open it in your word processor and save it as .docx again",
    ole: "a password-protected Word document, or a Word 97–2003 document named .docx; open it in Word, remove the password (File › Info › Protect Document) or save it as .docx",
};

/// The relationship type of a package's main document (transitional and strict OOXML).
const OFFICE_DOCUMENT: [&str; 2] = [
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument",
    "http://purl.oclc.org/ooxml/officeDocument/relationships/officeDocument",
];

/// The text of the document at `path` (see the module documentation).
pub fn read_text(path: &Path) -> Result<String> {
    let mut doc = Archive::open(path, KIND)?;
    let main = main_part(&mut doc)?;
    let xml = doc.document(&main)?;
    let text = body_text(&xml).map_err(|e| doc.damaged(&main, e))?;
    if text.is_empty() {
        bail!(
            "{}: the document has no text in its body (only images or text boxes?); softtune learns from text",
            path.display()
        );
    }
    Ok(text)
}

/// The zip path of the main document part, from the package's relationships
/// (`word/document.xml` in every writer seen, which is taken when `_rels/.rels` is absent).
fn main_part(doc: &mut Archive) -> Result<String> {
    const RELS: &str = "_rels/.rels";
    if !doc.has(RELS) {
        return Ok("word/document.xml".into());
    }
    let rels = doc.document(RELS)?;
    let mut reader = Reader::from_str(&rels);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == "Relationship" => {
                let kind = attribute(&e, "Type").unwrap_or_default();
                if OFFICE_DOCUMENT.contains(&kind.as_str())
                    && let Some(target) = attribute(&e, "Target")
                {
                    return Ok(resolve("", &target));
                }
            }
            Ok(Event::Eof) => {
                return Err(doc.damaged(
                    RELS,
                    "it names no main document (no officeDocument relationship)".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(doc.damaged(RELS, xml_error(&reader, e))),
        }
    }
}

/// Elements whose content is not part of the text: properties (which hold tab stops and
/// run formatting, not text), tracked deletions and moves away, field instructions,
/// drawings, text boxes, embedded objects, equations and the fallback copies of
/// alternate content.
const SKIPPED: [&str; 20] = [
    "pPr",
    "rPr",
    "sectPr",
    "tblPr",
    "tblGrid",
    "trPr",
    "tcPr",
    "sdtPr",
    "sdtEndPr",
    "del",
    "moveFrom",
    "delText",
    "instrText",
    "delInstrText",
    "drawing",
    "pict",
    "object",
    "oMath",
    "oMathPara",
    "Fallback",
];

/// Fields whose result is generated layout (tables of contents, indexes, page numbers),
/// not the writer's text.
const GENERATED_FIELDS: [&str; 7] = [
    "TOC",
    "INDEX",
    "TOA",
    "PAGE",
    "NUMPAGES",
    "SECTIONPAGES",
    "PAGEREF",
];

/// A complex field (`<w:fldChar>` begin … separate … end) being read.
struct Field {
    instruction: String,
    /// Past `separate`: in the field's result.
    in_result: bool,
}

impl Field {
    fn generated(&self) -> bool {
        generated(&self.instruction)
    }
}

/// Whether a field with this instruction (`TOC \o "1-3"`, `HYPERLINK "…"`) generates its
/// result (one of [`GENERATED_FIELDS`]), rather than showing the writer's text.
pub(super) fn generated(instruction: &str) -> bool {
    instruction
        .split_whitespace()
        .next()
        .is_some_and(|w| GENERATED_FIELDS.contains(&w.to_ascii_uppercase().as_str()))
}

/// An `on/off` property (`<w:vanish/>`, `<w:vanish w:val="false"/>`) that is on.
fn on(e: &BytesStart) -> bool {
    !matches!(attribute(e, "val").as_deref(), Some("0" | "false" | "off"))
}

/// The text of a main document part (see the module documentation).
fn body_text(xml: &str) -> Result<String, String> {
    let mut reader = Reader::from_str(xml);
    let mut out = Paragraphs::default();
    // Open elements (local names), and how many of them are skipped.
    let mut open: Vec<String> = Vec::new();
    let mut skipped = 0usize;
    // Whether the run being read is hidden (`<w:rPr><w:vanish/>`).
    let mut hidden = false;
    let mut fields: Vec<Field> = Vec::new();
    // Depth of `<w:fldSimple>` elements whose result is generated.
    let mut simple_generated = 0usize;
    // Whether the paragraph being read ends in a deleted paragraph mark.
    let mut joined = false;
    let mut root_checked = false;
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
        let characters = match &event {
            Event::Text(t) => Some(t.xml10_content()),
            Event::GeneralRef(r) => Some(Cow::Owned(entity(r)?)),
            _ => None,
        };
        if let Some(text) = characters {
            take_text(
                &open,
                skipped,
                hidden,
                simple_generated,
                &mut fields,
                &mut out,
                &text,
            );
            continue;
        }
        let start = matches!(event, Event::Start(_));
        match event {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.local_name().as_ref().to_string();
                if !root_checked {
                    root_checked = true;
                    if name != "document" {
                        return Err(format!(
                            "its main part is a <{}>, not a Word <document> (a spreadsheet or a presentation?)",
                            name
                        ));
                    }
                }
                // A run's own properties: is it hidden?
                if name == "vanish"
                    && open.len() >= 2
                    && open[open.len() - 1] == "rPr"
                    && open[open.len() - 2] == "r"
                    && on(&e)
                {
                    hidden = true;
                }
                if name == "r" {
                    hidden = false;
                }
                // A deleted paragraph mark: accepting the deletion joins the paragraph to
                // the next one. (Only in a paragraph that is read: the properties are the
                // only skipped elements open.)
                if matches!(name.as_str(), "del" | "moveFrom")
                    && skipped == 2
                    && open.len() >= 2
                    && open[open.len() - 1] == "rPr"
                    && open[open.len() - 2] == "pPr"
                {
                    joined = true;
                }
                let skip = SKIPPED.contains(&name.as_str());
                if skipped == 0 {
                    // Field bookkeeping happens outside skipped content only; instruction
                    // text is read below even though it is skipped.
                    if name == "fldChar" {
                        match attribute(&e, "fldCharType").as_deref() {
                            Some("begin") => fields.push(Field {
                                instruction: String::new(),
                                in_result: false,
                            }),
                            Some("separate") => {
                                if let Some(f) = fields.last_mut() {
                                    f.in_result = true;
                                }
                            }
                            Some("end") => {
                                fields.pop();
                            }
                            _ => {}
                        }
                    }
                    // Inside a generated simple field, every nested one counts too, so the
                    // count drops to 0 at the generated field's end.
                    if name == "fldSimple"
                        && start
                        && (simple_generated > 0
                            || generated(&attribute(&e, "instr").unwrap_or_default()))
                    {
                        simple_generated += 1;
                    }
                    let visible = !hidden
                        && simple_generated == 0
                        && fields.iter().all(|f| f.in_result && !f.generated());
                    match name.as_str() {
                        "tab" | "ptab" if visible && in_run(&open) => out.push('\t'),
                        "br" if visible && in_run(&open) => {
                            match attribute(&e, "type").as_deref() {
                                Some("page" | "column") => out.end(),
                                _ => out.push('\n'),
                            }
                        }
                        "cr" if visible && in_run(&open) => out.push('\n'),
                        "noBreakHyphen" if visible && in_run(&open) => out.push('-'),
                        _ => {}
                    }
                }
                if start {
                    if skip {
                        skipped += 1;
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
                if skipped == 0 {
                    match name {
                        "p" if joined => joined = false,
                        "p" => out.end(),
                        "fldSimple" if simple_generated > 0 => simple_generated -= 1,
                        _ => {}
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_checked {
        return Err("it is empty".into());
    }
    Ok(out.finish())
}

/// Whether the innermost open element is a run (where tabs and breaks are characters; in
/// properties they are tab stops and settings).
fn in_run(open: &[String]) -> bool {
    open.last().is_some_and(|o| o == "r")
}

/// Character data inside `open`: text of a `<w:t>`, or a field instruction.
fn take_text(
    open: &[String],
    skipped: usize,
    hidden: bool,
    simple_generated: usize,
    fields: &mut [Field],
    out: &mut Paragraphs,
    text: &str,
) {
    let Some(inner) = open.last() else { return };
    match inner.as_str() {
        // Instruction text is skipped content, but it says what the field is. Only the
        // instructions of fields outside skipped content count (a deleted instruction's
        // `delInstrText` is not `instrText`).
        "instrText" if skipped == 1 => {
            if let Some(f) = fields.last_mut()
                && !f.in_result
            {
                f.instruction.push_str(text);
            }
        }
        "t" if skipped == 0
            && !hidden
            && simple_generated == 0
            && fields.iter().all(|f| f.in_result && !f.generated()) =>
        {
            out.push_str(text);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = r#"xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" xmlns:m="http://schemas.openxmlformats.org/officeDocument/2006/math""#;

    fn document(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document {W}><w:body>{body}<w:sectPr><w:pgSz w:w="12240" w:h="15840"/></w:sectPr></w:body></w:document>"#
        )
    }

    const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="/word/main%20doc.xml"/></Relationships>"#;

    fn write_docx(path: &Path, files: &[(&str, &str)]) {
        crate::data::archive::write_zip(path, None, files);
    }

    fn text_of(body: &str) -> String {
        body_text(&document(body)).unwrap()
    }

    #[test]
    fn paragraphs_runs_tabs_and_breaks() {
        let body = r#"
<w:p><w:pPr><w:pStyle w:val="Heading1"/><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs><w:rPr><w:b/></w:rPr></w:pPr><w:r><w:t>Chapter One</w:t></w:r></w:p>
<w:p><w:r><w:tab/><w:t xml:space="preserve">It was a dark </w:t></w:r><w:r><w:rPr><w:i/></w:rPr><w:t>and</w:t></w:r><w:r><w:t xml:space="preserve"> stormy night &amp; &#8212; “rain”.  </w:t></w:r></w:p>
<w:p/>
<w:p><w:r><w:t>Line one</w:t><w:br/><w:t>line</w:t><w:tab/><w:t>two</w:t><w:cr/><w:t>non</w:t><w:noBreakHyphen/><w:t>breaking, soft</w:t><w:softHyphen/><w:t>hyphen</w:t></w:r></w:p>
<w:p><w:r><w:t>Before the page break</w:t><w:br w:type="page"/><w:t>after it</w:t></w:r></w:p>
<w:tbl><w:tblPr><w:tblW w:w="0" w:type="auto"/></w:tblPr><w:tr><w:tc><w:tcPr/><w:p><w:r><w:t>cell one</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>cell two</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
<w:p><w:hyperlink w:history="1"><w:r><w:t>a link</w:t></w:r></w:hyperlink><w:sdt><w:sdtPr><w:alias w:val="x"/></w:sdtPr><w:sdtContent><w:r><w:t xml:space="preserve"> in a control</w:t></w:r></w:sdtContent></w:sdt></w:p>"#;
        assert_eq!(
            text_of(body),
            "Chapter One\n\nIt was a dark and stormy night & — “rain”.\n\nLine one\nline\ttwo\nnon-breaking, softhyphen\n\nBefore the page break\n\nafter it\n\ncell one\n\ncell two\n\na link in a control"
        );
    }

    /// Tracked changes read as accepted; hidden text, generated fields, drawings, text
    /// boxes, equations and alternate content's fallback are left out.
    #[test]
    fn what_the_reader_leaves_out() {
        let body = r#"
<w:p><w:r><w:t xml:space="preserve">She </w:t></w:r><w:del w:id="1" w:author="A"><w:r><w:delText>never </w:delText></w:r></w:del><w:ins w:id="2" w:author="A"><w:r><w:t xml:space="preserve">always </w:t></w:r></w:ins><w:r><w:t>wrote.</w:t></w:r></w:p>
<w:p><w:pPr><w:rPr><w:del w:id="9" w:author="A"/></w:rPr></w:pPr><w:r><w:t xml:space="preserve">A deleted paragraph mark </w:t></w:r></w:p><w:p><w:r><w:t>joins.</w:t></w:r></w:p>
<w:p><w:moveFrom w:id="3"><w:r><w:t>Moved away.</w:t></w:r></w:moveFrom><w:moveTo w:id="4"><w:r><w:t>Moved here.</w:t></w:r></w:moveTo></w:p>
<w:p><w:r><w:rPr><w:vanish/></w:rPr><w:t>Hidden. </w:t></w:r><w:r><w:rPr><w:vanish w:val="0"/></w:rPr><w:t xml:space="preserve">Shown </w:t></w:r><w:r><w:t>again.</w:t></w:r></w:p>
<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve"> TOC \o "1-3" \h </w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>Chapter One</w:t><w:tab/><w:t>1</w:t></w:r></w:p>
<w:p><w:r><w:t>Chapter Two</w:t><w:tab/><w:t>7</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">Written on </w:t></w:r><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText>DATE</w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>May 1</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r><w:r><w:t xml:space="preserve">, page </w:t></w:r><w:fldSimple w:instr=" PAGE "><w:r><w:t>3</w:t></w:r></w:fldSimple><w:fldSimple w:instr="AUTHOR"><w:r><w:t>Ann</w:t></w:r></w:fldSimple><w:r><w:t>.</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">A picture </w:t></w:r><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wps:txbx><w:txbxContent><w:p><w:r><w:t>box text</w:t></w:r></w:p></w:txbxContent></wps:txbx></w:drawing></mc:Choice><mc:Fallback><w:pict><w:p><w:r><w:t>box text again</w:t></w:r></w:p></w:pict></mc:Fallback></mc:AlternateContent></w:r><w:r><w:t>here</w:t></w:r><m:oMathPara><m:oMath><m:r><m:t>x=1</m:t></m:r></m:oMath></m:oMathPara><w:r><w:footnoteReference w:id="1"/><w:sym w:font="Wingdings" w:char="F04A"/><w:t>.</w:t></w:r></w:p>"#;
        assert_eq!(
            text_of(body),
            "She always wrote.\n\nA deleted paragraph mark joins.\n\nMoved here.\n\nShown again.\n\nWritten on May 1, page Ann.\n\nA picture here."
        );
    }

    #[test]
    fn reads_the_main_part_the_relationships_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Novel.DOCX");
        let main = document(r#"<w:p><w:r><w:t>Hello.</w:t></w:r></w:p>"#);
        write_docx(
            &path,
            &[("_rels/.rels", RELS), ("word/main doc.xml", &main)],
        );
        assert_eq!(
            crate::data::document_of(&path).map(|d| d.glob),
            Some("*.docx")
        );
        assert_eq!(read_text(&path).unwrap(), "Hello.");
        // Through the dataset reader too.
        assert_eq!(crate::data::read_text(&path).unwrap(), "Hello.");
        // Without relationships: word/document.xml.
        write_docx(&path, &[("word/document.xml", &main)]);
        assert_eq!(read_text(&path).unwrap(), "Hello.");
    }

    #[test]
    fn bad_documents_are_errors_naming_the_file_and_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let err = |name: &str, files: &[(&str, &str)]| {
            let path = dir.path().join(name);
            write_docx(&path, files);
            format!("{:#}", read_text(&path).unwrap_err())
        };
        let e = err("nobody.docx", &[("_rels/.rels", RELS)]);
        assert!(
            e.contains("nobody.docx")
                && e.contains("word/main doc.xml")
                && e.contains("save it as .docx"),
            "{e}"
        );
        let e = err(
            "broken.docx",
            &[("word/document.xml", "<w:document><w:body><w:p></w:body>")],
        );
        assert!(
            e.contains("broken.docx")
                && e.contains("word/document.xml")
                && e.contains("not well-formed"),
            "{e}"
        );
        let norel = r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"/>"#;
        let e = err("norel.docx", &[("_rels/.rels", norel)]);
        assert!(
            e.contains("_rels/.rels") && e.contains("no main document"),
            "{e}"
        );
        let sheet = r#"<worksheet><sheetData/></worksheet>"#;
        let e = err("sheet.docx", &[("word/document.xml", sheet)]);
        assert!(e.contains("<worksheet>"), "{e}");
        let empty = document(r#"<w:p><w:r><w:drawing/></w:r></w:p>"#);
        let e = err("images.docx", &[("word/document.xml", &empty)]);
        assert!(e.contains("images.docx") && e.contains("no text"), "{e}");

        let path = dir.path().join("locked.docx");
        let mut ole = super::super::archive::OLE_MAGIC.to_vec();
        ole.resize(512, 0);
        std::fs::write(&path, ole).unwrap();
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(e.contains("locked.docx") && e.contains("password"), "{e}");
        std::fs::write(&path, b"plain text").unwrap();
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(e.contains("not a zip archive"), "{e}");
    }

    /// A document written by another tool (python-docx, from Word's own template: see
    /// `tests/fixtures/docx/make_docx.py`) reads as the paragraphs it was made from.
    #[test]
    fn reads_a_document_made_by_python_docx() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docx");
        let expected = std::fs::read_to_string(dir.join("book.txt")).unwrap();
        assert_eq!(read_text(&dir.join("book.docx")).unwrap(), expected);
    }
}
