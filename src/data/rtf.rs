//! Rich text (`.rtf`, as Word, WordPad, TextEdit, LibreOffice, Scrivener and pandoc save it)
//! as dataset text: the paragraphs of the document's body, in order, a blank line between
//! them, built as Word documents' are (`Paragraphs`).
//!
//! What is kept and what is left out (decided, as for `.docx`, for training on a writer's
//! prose):
//! - the body's text: a paragraph mark (`\par`, or TextEdit's backslash at the end of a
//!   line), the end of a table cell or row and a page, column or section break end a
//!   paragraph; `\line` is a newline, `\tab` a tab, a non-breaking hyphen a hyphen; RTF's
//!   named characters (`\emdash`, `\ldblquote`, `\bullet`, …) are the characters they name;
//! - characters: `\uN` is Unicode (surrogate pairs joined, the fallback after it skipped as
//!   `\ucN` says); `\'hh` bytes and 8-bit text are in the code page of their font's
//!   character set (`\fcharset`, `\cpg`), else the document's (`\ansicpg`, `\mac`), else
//!   Windows-1252;
//! - fields show their result (a hyperlink's text), except generated ones: tables of
//!   contents, indexes, page numbers;
//! - tracked changes read as accepted: deleted text (`\deleted`) is left out;
//! - left out: the font, colour, style and list tables, document information, pictures,
//!   objects, shapes and text boxes, headers and footers, footnotes and endnotes, comments,
//!   bookmarks and index entries, list numbers and bullets written for older readers
//!   (`\listtext`, `\pntext`), hidden text (`\v`), symbol-font characters (`\fcharset2`),
//!   Scrivener's inline annotations and footnotes (`{\Scrv_annot …}`), and any other
//!   destination marked ignorable (`\*`).
//!
//! A file that is not RTF, one cut short (it ends inside an open group) and a document
//! without text are errors naming the file.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::paragraphs::Paragraphs;

/// Bumped when the text made from a document changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "rtf-text-1";

/// The text of the RTF document at `path` (see the module documentation).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = text_of(&bytes).map_err(|why| anyhow!("{}: {why}", path.display()))?;
    if text.is_empty() {
        bail!(
            "{}: the document has no text in its body (only pictures, text boxes or notes?); softtune learns from text",
            path.display()
        );
    }
    Ok(text)
}

/// The text of an RTF document's bytes, or why there is none.
pub(super) fn text_of(bytes: &[u8]) -> std::result::Result<String, String> {
    let start = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = &start[start.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    if !start.starts_with(b"{\\rtf") {
        return Err(match super::foreign(bytes) {
            Some(why) => why.to_string(),
            None => "not an RTF document: it does not start with `{\\rtf`; if it is plain text, name it .txt".to_string(),
        });
    }
    Reader::new(start).read()
}

/// Destinations (groups) that are not part of the text, whether or not they are marked
/// ignorable: tables, document information, pictures and objects, shapes and drawing
/// objects, headers and footers, notes and their separators, comments, bookmarks, index
/// and table-of-contents entries, list text and nested tables' text for older readers.
const SKIPPED: [&str; 61] = [
    "colortbl",
    "stylesheet",
    "listtable",
    "listoverridetable",
    "revtbl",
    "rsidtbl",
    "filetbl",
    "pgdsctbl",
    "info",
    "pict",
    "nonshppict",
    "shppict",
    "object",
    "objdata",
    "result",
    "shp",
    "shpinst",
    "shprslt",
    "shptxt",
    "do",
    "dptxbxtext",
    "header",
    "headerl",
    "headerr",
    "headerf",
    "footer",
    "footerl",
    "footerr",
    "footerf",
    "footnote",
    "ftnsep",
    "ftnsepc",
    "ftncn",
    "aftnsep",
    "aftnsepc",
    "aftncn",
    "annotation",
    "atnid",
    "atnauthor",
    "atntime",
    "atnref",
    "atnicn",
    "atrfstart",
    "atrfend",
    "bkmkstart",
    "bkmkend",
    "xe",
    "tc",
    "tcn",
    "txe",
    "listtext",
    "pntext",
    "pn",
    "pntxta",
    "pntxtb",
    "mmath",
    "template",
    "formfield",
    "datafield",
    "nonesttables",
    // Scrivener's inline annotations and footnotes (`{\Scrv_annot …\end_Scrv_annot}`,
    // `{\Scrv_fn=…}`): the control word is the letters, `Scrv`.
    "Scrv",
];

/// What the text of a group is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Dest {
    /// The document's text.
    Text,
    /// The font table: fonts' numbers and character sets.
    Fonts,
    /// A field's instruction (`HYPERLINK "…"`), kept to decide on its result.
    Instruction,
    /// Not part of the text.
    Skip,
}

/// The state a group inherits from the one around it and restores when it closes.
#[derive(Clone, Copy, Debug)]
struct State {
    dest: Dest,
    /// In an `\upr` group (ANSI text with a Unicode twin in `\ud`): what `\ud` reads as.
    upr: Option<Dest>,
    /// How many characters of fallback follow each `\uN`.
    uc: usize,
    /// The font (`\fN`), `None` for the default (`\deffN`).
    font: Option<i32>,
    /// Hidden text (`\v`).
    hidden: bool,
    /// Deleted text of a tracked change (`\deleted`).
    deleted: bool,
}

/// What a font says about the bytes written in it.
#[derive(Clone, Copy, Default, Debug)]
struct Font {
    /// The code page of its character set, `None` for the document's.
    codepage: Option<u16>,
    /// A symbol font (`\fcharset2`): its characters are pictures, not text.
    symbol: bool,
}

/// One unit of RTF.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    Open,
    Close,
    /// A control word and its parameter.
    Word(&'a str, Option<i32>),
    /// A control symbol: `\` and one character that is not a letter.
    Symbol(u8),
    /// `\'hh`: a byte in the current code page.
    Hex(u8),
    /// A byte of text.
    Text(u8),
}

struct Lexer<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Lexer<'a> {
    fn next_token(&mut self) -> Option<Token<'a>> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(match b {
            b'{' => Token::Open,
            b'}' => Token::Close,
            b'\\' => self.control(),
            b => Token::Text(b),
        })
    }

    /// The control word or symbol after a backslash.
    fn control(&mut self) -> Token<'a> {
        let bytes = self.bytes;
        let Some(&first) = bytes.get(self.at) else {
            return Token::Symbol(b'\\');
        };
        if first.is_ascii_alphabetic() {
            let start = self.at;
            // A control word is at most 32 letters (the specification's limit).
            while self.at - start < 32 && bytes.get(self.at).is_some_and(u8::is_ascii_alphabetic) {
                self.at += 1;
            }
            let name = std::str::from_utf8(&bytes[start..self.at]).unwrap_or_default();
            let negative = bytes.get(self.at) == Some(&b'-')
                && bytes.get(self.at + 1).is_some_and(u8::is_ascii_digit);
            let digits_at = self.at + usize::from(negative);
            let mut end = digits_at;
            while end - digits_at < 10 && bytes.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            let param = if end > digits_at {
                self.at = end;
                let n = bytes[digits_at..end]
                    .iter()
                    .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
                let n = if negative { -n } else { n };
                Some(n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
            } else {
                None
            };
            // A space ends a control word and belongs to it.
            if bytes.get(self.at) == Some(&b' ') {
                self.at += 1;
            }
            Token::Word(name, param)
        } else if first == b'\''
            && let Some(hex) = bytes.get(self.at + 1..self.at + 3)
            && let Some(b) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            self.at += 3;
            Token::Hex(b)
        } else {
            self.at += 1;
            Token::Symbol(first)
        }
    }
}

struct Reader<'a> {
    lexer: Lexer<'a>,
    /// The states of the open groups around the current one.
    stack: Vec<State>,
    state: State,
    fonts: HashMap<i32, Font>,
    /// The font the font table is describing.
    table_font: i32,
    default_font: Option<i32>,
    /// The document's code page.
    codepage: u16,
    out: Paragraphs,
    /// Bytes of text not yet decoded (a double-byte character comes as two `\'hh`), and
    /// their code page.
    pending: Vec<u8>,
    pending_codepage: u16,
    /// A `\uN` high surrogate waiting for its low half.
    high: Option<u16>,
    /// Characters of a `\uN`'s fallback still to skip.
    fallback: usize,
    /// After `\*`: the next control word names a destination that may be skipped when unknown.
    ignorable: bool,
    /// The instruction of the last field read.
    instruction: String,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            lexer: Lexer { bytes, at: 0 },
            stack: Vec::new(),
            state: State {
                dest: Dest::Text,
                upr: None,
                uc: 1,
                font: None,
                hidden: false,
                deleted: false,
            },
            fonts: HashMap::new(),
            table_font: 0,
            default_font: None,
            codepage: 1252,
            out: Paragraphs::default(),
            pending: Vec::new(),
            pending_codepage: 1252,
            high: None,
            fallback: 0,
            ignorable: false,
            instruction: String::new(),
        }
    }

    fn read(mut self) -> std::result::Result<String, String> {
        while let Some(token) = self.lexer.next_token() {
            if !matches!(token, Token::Symbol(b'*')) {
                self.ignorable = matches!(token, Token::Word(..)) && self.ignorable;
            }
            match token {
                Token::Open => {
                    self.flush();
                    self.fallback = 0;
                    self.stack.push(self.state);
                }
                Token::Close => {
                    self.flush();
                    self.fallback = 0;
                    if let Some(outer) = self.stack.pop() {
                        self.state = outer;
                    }
                    if self.stack.is_empty() {
                        // The document's group has closed; what follows (NUL padding some
                        // writers add) is not part of it.
                        self.flush();
                        return Ok(self.out.finish());
                    }
                }
                Token::Word(name, param) => self.word(name, param),
                Token::Symbol(s) => self.symbol(s),
                Token::Hex(b) => self.byte(b),
                Token::Text(b'\r' | b'\n' | 0) => {}
                Token::Text(b) if b < 0x80 => {
                    if !self.skip_fallback() {
                        self.char(char::from(b));
                    }
                }
                Token::Text(b) => self.byte(b),
            }
        }
        Err(format!(
            "the document ends inside {} open group(s): it is cut short or damaged; open it in your word processor and save it again",
            self.stack.len()
        ))
    }

    /// Whether the token just read is part of a `\uN`'s fallback (and so skipped).
    fn skip_fallback(&mut self) -> bool {
        if self.fallback > 0 {
            self.fallback -= 1;
            true
        } else {
            false
        }
    }

    fn font(&self) -> Font {
        self.state
            .font
            .or(self.default_font)
            .and_then(|f| self.fonts.get(&f))
            .copied()
            .unwrap_or_default()
    }

    fn visible(&self) -> bool {
        self.state.dest == Dest::Text
            && !self.state.hidden
            && !self.state.deleted
            && !self.font().symbol
    }

    /// A character of text (or of a field's instruction).
    fn char(&mut self, c: char) {
        self.flush();
        match self.state.dest {
            Dest::Instruction => self.instruction.push(c),
            Dest::Text if self.visible() => self.out.push(c),
            _ => {}
        }
    }

    /// A byte of text in the current font's code page.
    fn byte(&mut self, b: u8) {
        if self.skip_fallback() || !self.visible() {
            return;
        }
        let codepage = self.font().codepage.unwrap_or(self.codepage);
        if codepage != self.pending_codepage {
            self.flush();
            self.pending_codepage = codepage;
        }
        self.pending.push(b);
    }

    /// Decodes the pending bytes into the text; a high surrogate still waiting is dropped.
    fn flush(&mut self) {
        self.high = None;
        if self.pending.is_empty() {
            return;
        }
        let encoding = codepage::to_encoding(self.pending_codepage)
            .filter(|e| *e != encoding_rs::UTF_16LE && *e != encoding_rs::UTF_16BE)
            .unwrap_or(encoding_rs::WINDOWS_1252);
        let (text, _) = encoding.decode_without_bom_handling(&self.pending);
        self.out.push_str(&text);
        self.pending.clear();
    }

    /// `\uN`: a UTF-16 code unit (negative above 32767), then `uc` characters of fallback.
    fn unicode(&mut self, n: i32) {
        let high = self.high.take();
        self.flush();
        // A high surrogate waits (through the fallback) for its low half.
        let unit = if n < 0 { n + 0x10000 } else { n };
        let unit = u32::try_from(unit).unwrap_or(0xFFFD);
        let c = match unit {
            0xD800..=0xDBFF => {
                self.high = Some(unit as u16);
                None
            }
            0xDC00..=0xDFFF => high.and_then(|h| {
                char::decode_utf16([h, unit as u16])
                    .next()
                    .and_then(|c| c.ok())
            }),
            _ => char::from_u32(unit),
        };
        if let Some(c) = c {
            self.char(c);
        }
        self.fallback = self.state.uc;
    }

    /// Ends the current paragraph (a paragraph mark of deleted text joins it to the next).
    fn paragraph(&mut self) {
        self.flush();
        self.fallback = 0;
        if self.state.dest == Dest::Text && !self.state.deleted {
            self.out.end();
        }
    }

    fn symbol(&mut self, s: u8) {
        match s {
            b'*' => self.ignorable = true,
            b'\\' | b'{' | b'}' | b'~' | b'_' => {
                if !self.skip_fallback() {
                    self.char(match s {
                        b'~' => '\u{A0}',
                        b'_' => '-',
                        s => char::from(s),
                    });
                }
            }
            // TextEdit ends its paragraphs with a backslash before the newline.
            b'\n' | b'\r' => self.paragraph(),
            // A soft hyphen, an index subentry, a formula: no text.
            _ => {
                self.skip_fallback();
            }
        }
    }

    fn word(&mut self, name: &str, param: Option<i32>) {
        let ignorable = std::mem::take(&mut self.ignorable);
        let on = param != Some(0);
        match name {
            // Binary data, skipped whatever its bytes (braces included).
            "bin" => {
                let n = usize::try_from(param.unwrap_or(0)).unwrap_or(0);
                self.lexer.at = self.lexer.at.saturating_add(n).min(self.lexer.bytes.len());
                return;
            }
            "fonttbl" => {
                self.state.dest = Dest::Fonts;
                return;
            }
            "fldinst" => {
                self.instruction.clear();
                if self.state.dest != Dest::Skip {
                    self.state.dest = Dest::Instruction;
                }
                return;
            }
            "fldrslt" => {
                if super::docx::generated(&self.instruction) {
                    self.state.dest = Dest::Skip;
                }
                return;
            }
            "upr" => {
                self.state.upr = Some(self.state.dest);
                self.state.dest = Dest::Skip;
                return;
            }
            "ud" => {
                if let Some(dest) = self.state.upr {
                    self.state.dest = dest;
                }
                return;
            }
            _ if ignorable || SKIPPED.contains(&name) => {
                self.state.dest = Dest::Skip;
                return;
            }
            _ => {}
        }
        if self.state.dest == Dest::Fonts {
            match (name, param) {
                ("f", Some(n)) => self.table_font = n,
                ("fcharset", Some(n)) => {
                    let font = self.fonts.entry(self.table_font).or_default();
                    font.symbol = n == 2;
                    font.codepage = charset_codepage(n);
                }
                ("cpg", Some(n)) => {
                    if let Ok(cp) = u16::try_from(n) {
                        self.fonts.entry(self.table_font).or_default().codepage = Some(cp);
                    }
                }
                _ => {}
            }
            return;
        }
        match (name, param) {
            ("ansi", _) => self.codepage = 1252,
            ("mac", _) => self.codepage = 10000,
            ("pc", _) => self.codepage = 437,
            ("pca", _) => self.codepage = 850,
            ("ansicpg", Some(n)) => {
                if let Ok(cp) = u16::try_from(n) {
                    self.codepage = cp;
                }
            }
            ("deff", Some(n)) => self.default_font = Some(n),
            ("f", Some(n)) => self.state.font = Some(n),
            ("plain", _) => {
                self.state.font = None;
                self.state.hidden = false;
                self.state.deleted = false;
            }
            ("uc", Some(n)) => self.state.uc = usize::try_from(n).unwrap_or(0),
            ("u", Some(n)) => self.unicode(n),
            ("v", _) => self.state.hidden = on,
            ("deleted", _) => self.state.deleted = on,
            ("par" | "sect" | "page" | "column" | "cell" | "nestcell" | "row" | "nestrow", _) => {
                self.paragraph()
            }
            _ => {
                if let Some(c) = named_char(name) {
                    if !self.skip_fallback() {
                        self.char(c);
                    }
                } else if matches!(
                    name,
                    "zwbo"
                        | "zwnbo"
                        | "ltrmark"
                        | "rtlmark"
                        | "chftn"
                        | "chatn"
                        | "chpgn"
                        | "chdate"
                        | "chtime"
                ) {
                    // Characters with no text: break opportunities, direction marks,
                    // note and page numbers.
                    self.skip_fallback();
                }
            }
        }
    }
}

/// The character a control word stands for.
fn named_char(name: &str) -> Option<char> {
    Some(match name {
        "line" => '\n',
        "tab" => '\t',
        "emdash" => '—',
        "endash" => '–',
        "emspace" | "enspace" | "qmspace" => ' ',
        "bullet" => '•',
        "lquote" => '‘',
        "rquote" => '’',
        "ldblquote" => '“',
        "rdblquote" => '”',
        "zwj" => '\u{200D}',
        "zwnj" => '\u{200C}',
        _ => return None,
    })
}

/// The Windows code page of a font character set (`\fcharsetN`); `None` for ANSI and the
/// default (the document's code page) and for the symbol set.
fn charset_codepage(charset: i32) -> Option<u16> {
    Some(match charset {
        77 => 10000,
        128 => 932,
        129 => 949,
        134 => 936,
        136 => 950,
        161 => 1253,
        162 => 1254,
        163 => 1258,
        177 => 1255,
        178 => 1256,
        186 => 1257,
        204 => 1251,
        222 => 874,
        238 => 1250,
        254 => 437,
        255 => 850,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rtf: &str) -> String {
        text_of(rtf.as_bytes()).unwrap()
    }

    #[test]
    fn lexer_words_parameters_and_symbols() {
        let mut l = Lexer {
            bytes: br"\par\fs-24 x\'e9\'zz\~\uc0\u8212 \*{}",
            at: 0,
        };
        let mut tokens = Vec::new();
        while let Some(t) = l.next_token() {
            tokens.push(t);
        }
        assert_eq!(
            tokens,
            [
                Token::Word("par", None),
                Token::Word("fs", Some(-24)),
                Token::Text(b'x'),
                Token::Hex(0xE9),
                Token::Symbol(b'\''),
                Token::Text(b'z'),
                Token::Text(b'z'),
                Token::Symbol(b'~'),
                Token::Word("uc", Some(0)),
                Token::Word("u", Some(8212)),
                Token::Symbol(b'*'),
                Token::Open,
                Token::Close,
            ]
        );
    }

    /// As WordPad (RichEdit) saves a document.
    #[test]
    fn wordpad() {
        let rtf = "{\\rtf1\\ansi\\ansicpg1252\\deff0\\nouicompat\\deflang1033{\\fonttbl{\\f0\\fnil\\fcharset0 Calibri;}}\r\n\
{\\*\\generator Riched20 10.0.19041}\\viewkind4\\uc1 \r\n\
\\pard\\sa200\\sl276\\slmult1\\f0\\fs22\\lang9 Chapter One\\par\r\n\
It was a dark and stormy night; the caf\\'e9 was \\b closed\\b0 .\\par\r\n\
\\par\r\n\
\\tab She said \\ldblquote no\\rdblquote\\emdash twice.\\par\r\n\
}\r\n\0";
        assert_eq!(
            text(rtf),
            "Chapter One\n\nIt was a dark and stormy night; the café was closed.\n\nShe said “no”—twice."
        );
    }

    /// As TextEdit (Cocoa) saves a document: paragraphs end with a backslash before the
    /// newline, characters outside the code page as `\uc0\uN`, lists with `\listtext`.
    #[test]
    fn textedit() {
        let rtf = r"{\rtf1\ansi\ansicpg1252\cocoartf2761
\cocoatextscaling0\cocoaplatform0{\fonttbl\f0\fswiss\fcharset0 Helvetica;\f1\fnil\fcharset134 PingFangSC-Regular;}
{\colortbl;\red255\green255\blue255;}
{\*\expandedcolortbl;;}
{\*\listtable{\list\listtemplateid1\listhybrid{\listlevel\levelnfc23{\leveltext\leveltemplateid1\'01\uc0\u8226 ;}{\levelnumbers;}\fi-360\li720\lin720 }{\listname ;}\listid1}}
\paperw11900\paperh16840\margl1440\margr1440\vieww11520\viewh8400\viewkind0
\pard\tx566\pardirnatural\partightenfactor0

\f0\fs24 \cf0 The na\'efve writer\'92s \uc0\u8220 draft\u8221  \'97 \f1 \'c4\'e3\'ba\'c3 \f0 \uc0\u55357 \u56832  done.\
Second line\
\
\pard\tx220\tx720\li720\fi-720\pardirnatural\partightenfactor0
\ls1\ilvl0\cf0 {\listtext	\uc0\u8226 	}An item\
}";
        assert_eq!(
            text(rtf),
            "The naïve writer’s “draft” — 你好 😀 done.\n\nSecond line\n\nAn item"
        );
    }

    /// As Word saves a document: tables in the header, `\u` with a `\'hh` fallback, fields,
    /// bookmarks, a footnote, a comment, hidden and deleted text, a table, a page break.
    #[test]
    fn word() {
        let rtf = r#"{\rtf1\adeflang1025\ansi\ansicpg1252\uc1\adeff31507\deff0\stshfdbch31505\stshfloch31506\stshfhich31506\stshfbi31507\deflang1033\deflangfe1033\themelang1033\themelangfe0\themelangcs0{\fonttbl{\f0\fbidi \froman\fcharset0\fprq2{\*\panose 02020603050405020304}Times New Roman;}{\f3\fbidi \froman\fcharset2\fprq2{\*\panose 05050102010706020507}Symbol;}
{\f204\fbidi \froman\fcharset204\fprq2 Times New Roman Cyr;}}{\colortbl;\red0\green0\blue0;}{\*\defchp \fs24\lang1033 }{\stylesheet{\ql \li0\ri0\widctlpar\wrapdefault\aspalpha\aspnum\faauto\adjustright\rin0\lin0\itap0 \rtlch\fcs1 \af31507\afs24\alang1025 \ltrch\fcs0 \fs24\lang1033\langfe1033\cgrid\langnp1033\langfenp1033 \snext0 \sqformat \spriority0 Normal;}{\s1\ql \sbasedon0 \snext0 heading 1;}}
{\*\rsidtbl \rsid1001\rsid2002}{\*\mmathPr\mmathFont34\mbrkBin0}{\info{\title A Title}{\author Ann Writer}{\creatim\yr2026\mo1\dy2\hr3\min4}}{\*\xmlnstbl {\xmlns1 http://schemas.microsoft.com/office/word/2003/wordml}}
\paperw12240\paperh15840\margl1440\margr1440 {\*\themedata 504b030414000600080000002100e9de0fbfff0000001c020000130000005b436f6e74656e745f54797065735d2e786d6cac91cb4ec3301045f748fc83e52d4a}
{\*\datastore 01050000020000001800000004d73006f00660074002e004f006600660069006300650}{\*\latentstyles\lsdstimax376\lsdlockeddef0{\lsdlockedexcept \lsdqformat1 Normal;}}
\pard\plain \ltrpar\s1\ql \outlinelevel0\rin0\lin0\itap0\pararsid1001 \rtlch\fcs1 \af31507 \ltrch\fcs0 \b\insrsid1001 {\*\bkmkstart _Toc1}Chapter One{\*\bkmkend _Toc1}\par
\pard\plain \ltrpar\ql \rtlch\fcs1 \af31507 \ltrch\fcs0 \fs24\insrsid1001 {\field{\*\fldinst {\rtlch\fcs1 \af31507 \ltrch\fcs0 \insrsid1001  TOC \\o "1-3" \\h \\z \\u }}{\fldrslt {\rtlch\fcs1 \ltrch\fcs0 \insrsid1001 Chapter One\tab 1}}}\sectd \par
\pard\plain \ltrpar\ql {\rtlch\fcs1 \af31507 \ltrch\fcs0 \insrsid1001 \u8220\'93It\u8217\'92s late,\u8221\'94 she said. Her notes are }{\v hidden }{\deleted\revauth1 gone }{\insrsid2002 here}{\rtlch\fcs1 \ltrch\fcs0 \cs15\super\insrsid1001 \chftn {\footnote \ltrpar \pard\plain \ltrpar\s16\ql {\rtlch\fcs1 \ltrch\fcs0 \cs15\super \chftn } A footnote.}}{\*\atnid AW}{\*\atnauthor Ann}\chatn {\*\annotation{\*\atndate 12345}\pard\plain A comment.}. See {\field{\*\fldinst { HYPERLINK "https://example.com/" }}{\fldrslt {\rtlch\fcs1 \ul\cf2\insrsid1001 the site}}}{\insrsid1001  on page {\field{\*\fldinst { PAGE }}{\fldrslt {\lang1024\noproof 3}}} }{\f3 \'b7}{\field{\*\fldinst SYMBOL 183 \\f "Symbol" \\s 12}{\fldrslt {\f3\fs24 \'b7}}}\par
\pard\plain {\f204 \'cf\'f0\'e8\'e2\'e5\'f2}{\shp{\*\shpinst\shpleft0{\sp{\sn shapeType}{\sv 202}}{\shptxt \pard\plain Box text\par}}}\par
\trowd \irow0\irowband0\ltrrow\ts11\trgaph108\trleft-108\cellx4680\cellx9468\pard\plain \ltrpar\ql \intbl {cell one\cell }{cell two\cell }{\row }
\pard\plain {\*\pnseclvl1\pnucrm\pnstart1\pnindent720\pnhang {\pntxta .}}{\listtext\pard\plain \f3 \'b7\tab}Listed\par
\pard\plain A\~b\_c\-d \{x\}\\ end.{\page }\pard\plain {\pict{\*\picprop}\pngblip\picw10\pich10 89504e470d0a1a0a}After.\par
{\*\Scrv_annot \color={\*\Scrv_annot A note}}Last{\Scrv_annot \color={\R=0.5\G=0.5\B=0.5} \text=An inline note \end_Scrv_annot}{\Scrv_fn=An inline footnote\end_Scrv_fn}.}"#;
        assert_eq!(
            text(rtf),
            "Chapter One\n\n“It’s late,” she said. Her notes are here. See the site on page\n\nПривет\n\ncell one\n\ncell two\n\nListed\n\nA b-cd {x}\\ end.\n\nAfter.\n\nLast."
        );
    }

    /// As LibreOffice Writer saves a document.
    #[test]
    fn libreoffice() {
        let rtf = r"{\rtf1\ansi\deff4\adeflang1025
{\fonttbl{\f0\froman\fprq2\fcharset0 Times New Roman;}{\f4\froman\fprq2\fcharset0 Liberation Serif{\*\falt Times New Roman};}}
{\colortbl;\red0\green0\blue0;}
{\stylesheet{\s0\snext0\dbch\af6\langfe2052\dbch\af7\afs24\alang1081\loch\f4\fs24\lang2057 Normal;}}{\*\generator LibreOffice/7.6.4.1$Linux_X86_64 LibreOffice_project/e19e193f88cd6c0525a17fb7a176ed8e6a3e2aa1}{\info{\creatim\yr2026\mo2\dy3\hr4\min5}{\revtim\yr2026\mo2\dy3\hr4\min6}}{\*\userprops{\propname AppVersion}\proptype30{\staticval 16.0000}}\deftab709
\hyphauto1\viewscale100\formshade\paperh16838\paperw11906\margl1134\margr1134\margt1134\margb1134\sectd\sbknone\sftnnar\saftnnrlc\sectunlocked1\pgwsxn11906\pghsxn16838\marglsxn1134\margrsxn1134\margtsxn1134\margbsxn1134\pgndec\ftnbj\ftnstart1\ftnrstcont\ftnnar\aenddoc\aftnrstcont\aftnstart1\aftnnrlc
{\*\ftnsep\chftnsep}\pgndec\pard\plain \s0\pardirnatural\dbch\af6\langfe2052\dbch\af7\afs24\alang1081\loch\f4\fs24\lang2057{\loch
Er lief \u252\'fcber die Stra\u223\'dfe, }{\i\loch
schnell}{\loch
.}
\par \pard\plain \s0\dbch\af6{\loch
Zweiter Absatz mit Fu\u223\'dfnote}{\super\chftn}{\*\ftnalt\chftn\pard\plain Note}{\loch
.}
\par }";
        assert_eq!(
            text(rtf),
            "Er lief über die Straße, schnell.\n\nZweiter Absatz mit Fußnote."
        );
    }

    #[test]
    fn code_pages_and_unicode() {
        // Shift-JIS in a font of the Japanese character set: each character two `\'hh`.
        assert_eq!(
            text(
                r"{\rtf1\ansi\ansicpg932{\fonttbl{\f1\fnil\fcharset128 MS Mincho;}}\f1 \'93\'fa\'96\'7b\'8c\'ea}"
            ),
            "日本語"
        );
        // The document's code page when the font says nothing; Mac Roman for `\mac`.
        assert_eq!(text(r"{\rtf1\ansi\ansicpg1251 \'cf\'f0\'e8}"), "При");
        assert_eq!(text(r"{\rtf1\mac Caf\'8e}"), "Café");
        // A font's own code page (`\cpg`) wins over its character set.
        assert_eq!(
            text(r"{\rtf1\ansi{\fonttbl{\f2\fcharset0\cpg1253 Greek;}}\f2 \'e1}"),
            "α"
        );
        // Raw 8-bit text, as old writers save it.
        assert_eq!(text_of(b"{\\rtf1\\ansi caf\xe9}").unwrap(), "café");
        // Unicode with two fallback characters, and a skipped `\uc` scope ending with its
        // group.
        assert_eq!(
            text(r"{\rtf1\ansi{\uc2\u26085 ??}\u26412 ?\u-10179 ?\u-8704 ?.}"),
            "日本😀."
        );
        // `\upr`: the Unicode twin (`\ud`) is read, not the ANSI one.
        assert_eq!(
            text(r"{\rtf1\ansi {\upr{ansi text}{\*\ud{unicode text}}} end}"),
            "unicode text end"
        );
    }

    #[test]
    fn binary_data_is_skipped_braces_and_all() {
        let mut rtf = b"{\\rtf1 Before {\\pict\\bin6 ".to_vec();
        rtf.extend_from_slice(b"}{\\\0\xff{");
        rtf.extend_from_slice(b"}after}");
        assert_eq!(text_of(&rtf).unwrap(), "Before after");
    }

    /// Documents written by pandoc's RTF writer (tests/fixtures/rtf/make_rtf.py): the Word
    /// fixture book converted, and a story with notes, lists, a table and a link.
    #[test]
    fn pandoc_documents() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let expected = std::fs::read_to_string(fixtures.join("docx/book.txt")).unwrap();
        assert_eq!(read_text(&fixtures.join("rtf/book.rtf")).unwrap(), expected);
        let expected = std::fs::read_to_string(fixtures.join("rtf/story.txt")).unwrap();
        assert_eq!(
            read_text(&fixtures.join("rtf/story.rtf")).unwrap(),
            expected
        );
    }

    #[test]
    fn not_rtf_cut_short_and_empty() {
        let e = text_of(b"%PDF-1.7 ...").unwrap_err();
        assert!(e.contains("PDF"), "{e}");
        let e = text_of(b"Just some text.").unwrap_err();
        assert!(
            e.contains("not an RTF document") && e.contains(".txt"),
            "{e}"
        );
        let e = text_of(br"{\rtf1\ansi {\b Chapter One\par").unwrap_err();
        assert!(e.contains("cut short") && e.contains("2 open group"), "{e}");
        assert_eq!(text("\u{FEFF}\n {\\rtf1 ok}"), "ok");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pictures.rtf");
        std::fs::write(&path, br"{\rtf1\ansi{\pict\pngblip 89504e47}\par}").unwrap();
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(e.contains("pictures.rtf") && e.contains("no text"), "{e}");
        let e = format!(
            "{:#}",
            read_text(&dir.path().join("missing.rtf")).unwrap_err()
        );
        assert!(e.contains("missing.rtf"), "{e}");
    }
}
