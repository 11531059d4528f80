//! Text decoded the wrong way ("mojibake"): UTF-8 read as Windows-1252 (or Latin-1) and
//! saved again as UTF-8, so `’` reads `â€™`, `é` reads `Ã©` and a no-break space `Â `.
//! Stories copied from web pages and archives often come so, and a prompt trained on them
//! learns to write `â€™`. KoboldAI's tuner cleaned every dataset file with ftfy for this;
//! [`repair`] does the part of it that matters for prose: each run of characters that
//! stands for the bytes of one UTF-8 character goes back to that character, again while a
//! text was mangled twice.
//!
//! Only a text that shows the mangling is touched: one with a sequence no writer types (`Â`,
//! `Ã` or `â` followed by the characters that were the rest of a UTF-8 character, as in
//! `â€™`, `Ã©`, `Â°`). In such a text every character outside ASCII was mangled, so the
//! other sequences are mangled characters too; a text without one is left exactly as it
//! is, so `CAFÉ…` in a correct text stays.

/// Bumped when [`repair`] changes; enters the token cache's key of the files it changes.
pub const VERSION: &str = "mojibake-1";

/// The byte `c` stood for when UTF-8 was read as Windows-1252 as browsers read it (the
/// five bytes Windows-1252 leaves undefined read as the C1 controls of the same number) or
/// as Latin-1: Latin-1 characters are their own byte, and Windows-1252's characters for
/// 0x80–0x9F (`€`, `’`, `™`, …) theirs.
fn byte_of(c: char) -> Option<u8> {
    if let Ok(b) = u8::try_from(u32::from(c)) {
        return Some(b);
    }
    static HIGH: std::sync::OnceLock<Vec<(char, u8)>> = std::sync::OnceLock::new();
    let high = HIGH.get_or_init(|| {
        (0x80..=0x9F_u8)
            .filter_map(|b| {
                let byte = [b];
                let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&byte);
                text.chars().next().map(|c| (c, b))
            })
            .collect()
    });
    high.iter().find(|&&(h, _)| h == c).map(|&(_, b)| b)
}

/// What [`repair`] did to a text.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Repaired {
    /// The characters put back (a character mangled twice counts once; a byte-order mark
    /// that goes, none).
    pub characters: usize,
    /// The first mangled sequence and the character it was, as in `("â€™", "’")`.
    pub example: Option<(String, String)>,
}

/// `text` with its mangled characters put back, and what was done; `None` when the text
/// shows no mangling (see the module documentation) and is left as it is. A byte-order
/// mark that was mangled (`ï»¿`, where a file started) goes.
pub fn repair(text: &str) -> Option<(String, Repaired)> {
    let mut report = Repaired::default();
    let mut current: Option<String> = None;
    // A text mangled twice (`Ã¢â‚¬Å“` for `“`) comes back in two passes.
    for _ in 0..3 {
        let from = current.as_deref().unwrap_or(text);
        let found = sequences(from);
        if !found.iter().any(|s| s.telling) {
            break;
        }
        let mut fixed = String::with_capacity(from.len());
        let mut at = 0;
        for s in &found {
            fixed.push_str(&from[at..s.start]);
            fixed.extend(s.character);
            at = s.end;
        }
        fixed.push_str(&from[at..]);
        if report.example.is_none() {
            let telling = |s: &&Sequence| s.telling && s.character.is_some();
            let first = found.iter().find(telling);
            report.example = first.or_else(|| found.iter().find(|s| s.telling)).map(|s| {
                let to = s.character.map_or_else(String::new, String::from);
                (from[s.start..s.end].to_string(), to)
            });
        }
        // The last pass puts back whole characters (the earlier ones, their pieces).
        report.characters = found.iter().filter(|s| s.character.is_some()).count();
        current = Some(fixed);
    }
    current.map(|fixed| (fixed, report))
}

/// `text` as [`repair`] leaves it, and what it did (`None`: the text is returned as it is).
pub fn repaired(text: String) -> (String, Option<Repaired>) {
    match repair(&text) {
        Some((fixed, report)) => (fixed, Some(report)),
        None => (text, None),
    }
}

/// A mangled sequence in a text: its byte range and the character it stands for (`None`
/// for a byte-order mark, which goes).
struct Sequence {
    start: usize,
    end: usize,
    character: Option<char>,
    /// Whether it is a sequence no writer types: led by `Â`, `Ã` or `â` and followed by
    /// characters that were continuation bytes, or a mangled byte-order mark.
    telling: bool,
}

/// The mangled sequences of `text`, in order: a character that was a UTF-8 lead byte
/// followed by as many characters as it needs that were continuation bytes, together the
/// bytes of one character outside ASCII (a C1 control too: a text mangled twice holds the
/// `\u{9d}` of `”` mangled once). `Â` or `Ã` followed by a
/// plain space stands for the lead and a no-break space whose space became a plain one (`Â
/// ` was a no-break space, `Ã ` an `à`), but only tells of mangling with other sequences.
fn sequences(text: &str) -> Vec<Sequence> {
    let mut found = Vec::new();
    // Every telling sequence starts with one of these; most texts have none.
    if !text.contains(['Â', 'Ã', 'â', 'ï']) {
        return found;
    }
    let mut rest = text.char_indices();
    while let Some((start, c)) = rest.next() {
        let lead = byte_of(c).unwrap_or(0);
        let need = match lead {
            0xC2..=0xDF => 1,
            0xE0..=0xEF => 2,
            0xF0..=0xF4 => 3,
            _ => continue,
        };
        let mut ahead = rest.clone();
        let mut bytes = vec![lead];
        let mut spaced = false;
        for _ in 0..need {
            let Some((_, next)) = ahead.next() else {
                break;
            };
            match byte_of(next) {
                Some(b @ 0x80..=0xBF) => bytes.push(b),
                _ if next == ' ' && need == 1 && matches!(lead, 0xC2 | 0xC3) => {
                    bytes.push(0xA0);
                    spaced = true;
                }
                _ => break,
            }
        }
        let decoded = (bytes.len() == need + 1)
            .then(|| std::str::from_utf8(&bytes).ok())
            .flatten()
            .and_then(|s| s.chars().next())
            .filter(|d| !d.is_ascii());
        if let Some(d) = decoded {
            let end = ahead.offset();
            let bom = d == '\u{feff}';
            found.push(Sequence {
                start,
                end,
                character: (!bom).then_some(d),
                telling: bom || (matches!(c, 'Â' | 'Ã' | 'â') && !spaced),
            });
            rest = ahead;
        }
    }
    found
}

/// Whether [`repair`] changes `text`: whether it shows the mangling.
pub fn shows_mangling(text: &str) -> bool {
    sequences(text).iter().any(|s| s.telling)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mangles `text` as a program that read UTF-8 as Windows-1252 did.
    fn mangle(text: &str) -> String {
        encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(text.as_bytes())
            .0
            .into_owned()
    }

    const PROSE: &str = "“It’s late,” said Zoë — the café’s last customer… 30 °C, £5, naïve, œuvre, Ελένη, Ёжик, 東京, 🙂.\n";

    #[test]
    fn mangled_text_comes_back() {
        let mangled = mangle(PROSE);
        assert!(
            mangled.contains("â€™") && mangled.contains("Ã©"),
            "{mangled}"
        );
        let (fixed, report) = repair(&mangled).unwrap();
        assert_eq!(fixed, PROSE);
        assert_eq!(
            report.characters,
            PROSE.chars().filter(|c| !c.is_ascii()).count()
        );
        assert_eq!(report.example, Some(("â€œ".into(), "“".into())));
        // Mangled twice: back in two passes, counted once.
        let (fixed, report) = repair(&mangle(&mangled)).unwrap();
        assert_eq!(fixed, PROSE);
        assert_eq!(
            report.characters,
            PROSE.chars().filter(|c| !c.is_ascii()).count()
        );
        assert_eq!(report.example, Some(("Ã¢".into(), "â".into())));
    }

    #[test]
    fn latin1_readings_and_lost_no_break_spaces_come_back() {
        // Read as Latin-1: the bytes 0x80–0x9F became C1 controls.
        let latin1: String = PROSE.bytes().map(char::from).collect();
        assert_eq!(repair(&latin1).unwrap().0, PROSE);
        // A no-break space turned into a space on the way.
        let text = "déjà vu\u{a0}!\n";
        let spaced = mangle(text).replace('\u{a0}', " ");
        assert_eq!(spaced, "dÃ©jÃ  vuÂ !\n");
        assert_eq!(repair(&spaced).unwrap().0, text);
        // A mangled byte-order mark goes, and tells of mangling on its own.
        assert_eq!(repair("ï»¿Title\n").unwrap().0, "Title\n");
        assert_eq!(
            repair("ï»¿CafÃ©\n").unwrap(),
            (
                "Café\n".to_string(),
                Repaired {
                    characters: 1,
                    example: Some(("Ã©".into(), "é".into())),
                }
            )
        );
    }

    #[test]
    fn correct_text_is_left_alone() {
        for text in [
            PROSE,
            "CAFÉ… „Spaß“ — À «bientôt» — SÃO PAULO — Â la carte\n",
            "plain ASCII\n",
            "",
        ] {
            assert_eq!(repair(text), None, "{text}");
        }
    }
}
